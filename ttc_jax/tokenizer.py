"""SentencePiece tokenizer: trains our task tokenizers (Gemma's special ids) and loads any `.model`.

Trained models keep text byte-exact (no normalization, no dummy prefix, spaces kept), split digits
into single pieces, and keep each user-defined symbol (e.g. the step delimiter) as one piece.
"""

from __future__ import annotations

import io
import os
from typing import Iterable, Sequence

import sentencepiece as spm

from ttc_jax import workdir
from ttc_jax.errors import MissingInputError

# Gemma's convention; our models also treat token 0 as padding.
PAD_ID, EOS_ID, BOS_ID, UNK_ID = 0, 1, 2, 3


class Tokenizer:
  """A loaded SentencePiece model."""

  def __init__(self, processor: spm.SentencePieceProcessor):
    self._sp = processor

  @classmethod
  def load(cls, path: str | os.PathLike, *, stage: str = '') -> Tokenizer:
    """Any SentencePiece `.model` file (ours or Gemma's); `stage` is the one that writes it."""
    path = os.fspath(path)
    if not os.path.isfile(path):
      raise MissingInputError(f'tokenizer model {path} not found; expected a SentencePiece .model')
    try:
      return cls(spm.SentencePieceProcessor(model_file=path))
    except (RuntimeError, OSError):  # e.g. "INTERNAL: could not parse ModelProto from <path>"
      raise workdir.damaged(path, 'not a SentencePiece model', stage) from None

  @classmethod
  def train(cls, texts: Iterable[str], path: str | os.PathLike, vocab_size: int,
            user_defined_symbols: Sequence[str] = (), byte_fallback: bool = False) -> Tokenizer:
    """Trains a BPE model on `texts` and writes it atomically to `path`.

    `vocab_size` is an upper bound: a small alphabet (like arith's) yields fewer pieces. With
    `byte_fallback` unseen characters encode as bytes, which needs vocab_size >= ~280.
    """
    if vocab_size <= UNK_ID + 1 + len(user_defined_symbols):
      raise ValueError(f'vocab_size {vocab_size} leaves no room beyond the 4 special ids and '
                       f'{len(user_defined_symbols)} user-defined symbols')
    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(texts), model_writer=model, model_type='bpe',
        vocab_size=vocab_size, hard_vocab_limit=False, character_coverage=1.0,
        split_digits=True, byte_fallback=byte_fallback,
        user_defined_symbols=list(user_defined_symbols),
        normalization_rule_name='identity', remove_extra_whitespaces=False,
        add_dummy_prefix=False, max_sentence_length=1 << 16,
        pad_id=PAD_ID, eos_id=EOS_ID, bos_id=BOS_ID, unk_id=UNK_ID, minloglevel=2)
    # Readers must never see a half-written model: a temporary file, then renamed.
    workdir.atomic_write_bytes(os.fspath(path), model.getvalue())
    return cls(spm.SentencePieceProcessor(model_proto=model.getvalue()))

  def encode(self, text: str, add_bos: bool = False, add_eos: bool = False) -> list[int]:
    return self._sp.encode(text, add_bos=add_bos, add_eos=add_eos)

  def decode(self, ids: Iterable[int]) -> str:
    """Text of `ids`; special ids (pad, bos, eos) and ids past the vocabulary (a model whose
    embedding table is padded) decode to nothing."""
    return self._sp.decode([int(i) for i in ids if 0 <= int(i) < self.vocab_size])

  def piece(self, i: int) -> str:
    return self._sp.id_to_piece(int(i))

  def id_of(self, piece: str) -> int:
    """The id of a whole piece, e.g. the step delimiter as a stop token."""
    i = self._sp.piece_to_id(piece)
    if i == self._sp.unk_id() and piece != self.piece(i):
      raise ValueError(f'{piece!r} is not a single piece of this tokenizer')
    return i

  @property
  def vocab_size(self) -> int:
    return self._sp.get_piece_size()

  @property
  def pad_id(self) -> int:
    """-1 for a model without a pad piece; ours and Gemma's use 0."""
    return self._sp.pad_id()

  @property
  def bos_id(self) -> int:
    return self._sp.bos_id()

  @property
  def eos_id(self) -> int:
    return self._sp.eos_id()

  @property
  def unk_id(self) -> int:
    return self._sp.unk_id()
