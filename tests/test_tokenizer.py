"""Tokenizer tests: byte-exact round trips, Gemma special ids, single-piece digits and delimiter."""

import os

import pytest

from ttc_jax import tokenizer as tok_lib
from ttc_jax.tasks import arith

PROBLEMS = arith.generate(500, seed=0)
TEXTS = list(arith.iter_texts(PROBLEMS))


@pytest.fixture(scope='module')
def trained(tmp_path_factory):
  path = tmp_path_factory.mktemp('tok') / 'arith.model'
  return tok_lib.Tokenizer.train(TEXTS, path, 64, arith.SPECIAL_SYMBOLS), path


def test_special_ids_follow_gemma(trained):
  tok, _ = trained
  assert (tok.pad_id, tok.eos_id, tok.bos_id, tok.unk_id) == (0, 1, 2, 3)
  assert [tok.piece(i) for i in range(4)] == ['<pad>', '</s>', '<s>', '<unk>']
  ids = tok.encode('1+2', add_bos=True, add_eos=True)
  assert ids[0] == 2 and ids[-1] == 1 and 0 not in ids
  assert tok.decode([0, 0] + ids + [0]) == '1+2'  # Padding and specials decode to nothing.


def test_round_trips_are_byte_exact(trained):
  tok, _ = trained
  extra = ['Q: 2-9*3\n-7*3\n#### -21', '  1  2 \n\n\n -3 \n', '-99+0\n#### -99']
  for text in TEXTS[:200] + extra:
    assert tok.decode(tok.encode(text)) == text


def test_byte_fallback_round_trips_unseen_characters(tmp_path):
  tok = tok_lib.Tokenizer.train(TEXTS, tmp_path / 'bytes.model', 400, arith.SPECIAL_SYMBOLS,
                                byte_fallback=True)
  text = 'Über  $\\frac{1}{2}$\n\n ⁇'
  assert tok.unk_id not in tok.encode(text) and tok.decode(tok.encode(text)) == text


def test_delimiter_and_digits_are_single_pieces(trained):
  tok, _ = trained
  newline, answer = tok.id_of(arith.STEP_DELIMITER), tok.id_of(arith.ANSWER_PREFIX)
  assert tok.encode('7*2-5\n14-5\n#### 9').count(newline) == 2
  assert tok.encode('#### 9')[0] == answer
  pieces = [tok.piece(i) for i in range(tok.vocab_size)]
  assert all(len(p) == 1 for p in pieces if any(c.isdigit() for c in p))
  assert {str(d) for d in range(10)} <= set(pieces)
  with pytest.raises(ValueError, match="'12' is not a single piece"):
    tok.id_of('12')


def test_prompt_and_completion_tokenize_independently(trained):
  # The sampler encodes the prompt alone and appends sampled steps; ids must agree.
  tok, _ = trained
  for p in PROBLEMS[:50]:
    prompt, completion = arith.prompt(p), arith.format_solution(p.steps)
    assert tok.encode(prompt) + tok.encode(completion) == tok.encode(prompt + completion)


def test_saved_model_loads_to_identical_ids(trained):
  tok, path = trained
  assert [f for f in os.listdir(path.parent)] == ['arith.model']  # No temporary left behind.
  loaded = tok_lib.Tokenizer.load(path)
  assert loaded.vocab_size == tok.vocab_size <= 64
  for text in TEXTS[:50]:
    assert loaded.encode(text) == tok.encode(text)


def test_bad_inputs(tmp_path):
  with pytest.raises(FileNotFoundError, match=str(tmp_path / 'none.model')):
    tok_lib.Tokenizer.load(tmp_path / 'none.model')
  with pytest.raises(ValueError, match='vocab_size 5'):
    tok_lib.Tokenizer.train(TEXTS, tmp_path / 'x.model', 5, arith.SPECIAL_SYMBOLS)
