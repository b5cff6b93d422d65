"""Packed rows: a packed sequence computes what it computes alone; packing keeps every target."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ttc_jax.errors import ConfigError
from ttc_jax.model import config as cfg_lib
from ttc_jax.model import transformer as tr
from ttc_jax.training import data, objectives

LENGTHS = (13, 10, 11)  # each longer than the tiny configs' sliding window of 8


@functools.cache
def _params():
  """tiny_gemma3: global and sliding-window layers, window 8 (shorter than LENGTHS)."""
  config = cfg_lib.get_config('tiny_gemma3')
  return config, tr.init_params(config, jax.random.key(0))


def _seqs(lengths, vocab, seed=1):
  rng = np.random.default_rng(seed)
  return [rng.integers(1, vocab, n).tolist() for n in lengths]


def _packed_row(seqs, width):
  tokens = np.zeros((1, width), np.int32)
  segments = np.zeros((1, width), np.int32)
  at = 0
  for s, seq in enumerate(seqs, start=1):
    tokens[0, at:at + len(seq)] = seq
    segments[0, at:at + len(seq)] = s
    at += len(seq)
  return tokens, segments


def _absolute_positions(x, positions, base, scale):
  """In place of RoPE, which is relative: logits then change if positions do not restart."""
  del base, scale
  return x + 0.1 * positions[..., None, None].astype(x.dtype)


@pytest.mark.parametrize('rope', ['rope', 'absolute'])
def test_packed_logits_equal_each_sequence_alone(rope, monkeypatch):
  if rope == 'absolute':
    monkeypatch.setattr(tr, 'apply_rope', _absolute_positions)
  config, params = _params()
  assert set(config.attention_types) == set(cfg_lib.AttentionType)
  assert config.sliding_window_size < min(LENGTHS)
  seqs = _seqs(LENGTHS, config.vocab_size)
  tokens, segments = _packed_row(seqs, 40)  # trailing padding too
  apply = jax.jit(lambda t, s=None: tr.Transformer(config).apply({'params': params}, t,
                                                                 segment_ids_BxT=s).logits)
  packed = apply(tokens, segments)[0]
  # Each sequence alone in a row of its own; trailing padding (one shape) leaves it as it is.
  alone = apply(jnp.array([seq + [0] * (max(LENGTHS) - len(seq)) for seq in seqs]))
  at = 0
  for seq, row in zip(seqs, alone):
    np.testing.assert_allclose(packed[at:at + len(seq)], row[:len(seq)], atol=1e-5, rtol=0)
    at += len(seq)


def test_segment_positions_restart():
  segments = jnp.array([[1, 1, 1, 2, 2, 3, 0, 0], [1, 1, 1, 1, 1, 1, 1, 1]], jnp.int32)
  positions = tr.segment_positions(segments > 0, segments)
  np.testing.assert_array_equal(positions, [[0, 1, 2, 0, 1, 0, 0, 0], list(range(8))])


def _task(n=12, seed=0):
  """Prompts of 2*i+1 and completions of 2*i+2, so each token says where it came from."""
  rng = np.random.default_rng(seed)
  prompts = [[2 * i + 1] * int(rng.integers(1, 6)) for i in range(n)]
  completions = [[2 * i + 2] * int(rng.integers(1, 12)) for i in range(n)]
  return prompts, completions


def test_pack_segments_rows_and_masks():
  prompts, completions = _task()
  max_len = 24
  packed = data.pack_segments(prompts, completions, max_len)
  unpacked = data.pack(prompts, completions, max_len)
  assert packed.size < unpacked.size
  assert packed.loss_mask.sum() == unpacked.loss_mask.sum()
  seen = []
  for tokens, mask, segments in zip(packed.tokens, packed.loss_mask, packed.segment_ids):
    n = int((segments > 0).sum())
    assert (segments[n:] == 0).all() and (tokens[n:] == 0).all()
    starts = np.flatnonzero(np.diff(segments[:n], prepend=0))
    np.testing.assert_array_equal(segments[starts], np.arange(1, len(starts) + 1))
    for start, end in zip(starts, [*starts[1:], n]):
      i = (tokens[start] - 1) // 2
      np.testing.assert_array_equal(tokens[start:end], prompts[i] + completions[i])
      np.testing.assert_array_equal(mask[start:end], [0] * len(prompts[i]) + [1] * len(
          completions[i]))
      seen.append(i)
    assert (mask[n:] == 0).all()
  assert sorted(seen) == list(range(len(prompts)))


def test_pack_segments_first_fit_decreasing():
  lengths = [3, 6, 2, 5, 4, 2]
  packed = data.pack_segments([[1]] * len(lengths), [[2] * (n - 1) for n in lengths], 8)
  rows = [np.bincount(s[s > 0])[1:].tolist() for s in packed.segment_ids]
  assert rows == [[6, 2], [5, 3], [4, 2]]


def test_pack_segments_too_long_names_the_key():
  with pytest.raises(ConfigError, match=r'example 1 has 9 tokens; --config\.revise\.max_len=8'):
    data.pack_segments([[1], [1]], [[2], [2] * 8], 8, max_len_key='revise.max_len')


def test_packed_loss_equals_unpacked():
  config, params = _params()
  rng = np.random.default_rng(2)
  lengths = rng.integers(9, 20, 8)
  seqs = _seqs(lengths, config.vocab_size, seed=3)
  prompts = [s[:4] for s in seqs]
  completions = [s[4:] for s in seqs]
  obj = objectives.LanguageModeling(config)
  loss = jax.jit(lambda b: obj.loss(params, b)[0])
  as_batch = lambda ex: data.batch_at(ex, 0, ex.size, seed=0)
  packed = data.pack_segments(prompts, completions, 48)
  unpacked = data.pack(prompts, completions, 48)
  assert packed.size < unpacked.size
  np.testing.assert_allclose(loss(as_batch(packed)), loss(as_batch(unpacked)), atol=1e-5,
                             rtol=1e-5)


def test_segment_ids_with_cache_is_an_error():
  config, params = _params()
  tokens = jnp.ones((1, 4), jnp.int32)
  with pytest.raises(ValueError, match='segment_ids'):
    tr.Transformer(config).apply({'params': params}, tokens, cache=tr.init_cache(config, 1, 8),
                                 segment_ids_BxT=jnp.ones((1, 4), jnp.int32))
