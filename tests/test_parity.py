"""Parity with Google's `gemma` package, checked without it.

tests/fixtures/gemma_parity.npz holds top-k logits that gm.nn computed on the configs, params and
prompts of benchmarks/parity_gemma.py (regenerate it there). Here our model reproduces them.
"""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import fixture_files
from ttc_jax.model import transformer as tr

_ROOT = fixture_files.ROOT
FIXTURE = _ROOT / 'tests' / 'fixtures' / 'gemma_parity.npz'
RTOL = 1e-4

bench = fixture_files.load_benchmark('parity_gemma')


def _fixture() -> tuple[dict, dict[str, np.ndarray]]:
  return fixture_files.read_fixture(FIXTURE)


NAMES = sorted(_fixture()[0]['configs'])


@functools.cache
def _config_and_params(name: str):
  spec, _ = _fixture()
  config = bench.config_from_fields(spec['configs'][name])
  return config, bench.make_params(config, spec['seed'])


def _compare(name: str) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
  """(our top-k indices, gm's, our logits at gm's top-k, gm's), at the fixture positions."""
  spec, arrays = _fixture()
  config, params = _config_and_params(name)
  logits = bench.our_logits(config, params, arrays['tokens'].astype(np.int32))
  rows = np.arange(logits.shape[0])[:, None]
  at = logits[rows, arrays['positions'].astype(np.int32)]  # [B, P, V]
  idx = arrays[f'{name}.topk_idx'].astype(np.int32)
  ours_idx = bench.topk(at, spec['top_k'])
  return ours_idx, idx, np.take_along_axis(at, idx, axis=-1), arrays[f'{name}.topk_logits']


def _rel_err(ours: np.ndarray, theirs: np.ndarray) -> float:
  return float(np.abs(ours - theirs).max() / np.abs(theirs).max())


def test_fixture_matches_benchmark_inputs():
  spec, arrays = _fixture()
  assert sorted(bench.parity_configs()) == NAMES, 'stale fixture: rerun parity_gemma.py'
  for name, config in bench.parity_configs().items():
    assert bench.config_fields(config) == spec['configs'][name], f'stale fixture for {name}'
  vocab_size = bench.config_from_fields(spec['configs'][NAMES[0]]).vocab_size
  tokens, _ = bench.make_prompts(vocab_size, spec['seed'])
  np.testing.assert_array_equal(tokens, arrays['tokens'])


@pytest.mark.parametrize('name', NAMES)
def test_params_regenerate_from_seed(name):
  # The fixture stores a seed, not params: init_params must be deterministic across runs.
  spec, _ = _fixture()
  sums, _ = bench.param_fingerprint(_config_and_params(name)[1])
  np.testing.assert_allclose(sums, spec['param_fingerprint'][name], rtol=1e-6)


@pytest.mark.parametrize('name', NAMES)
def test_logits_match_gemma_package(name):
  ours_idx, idx, ours, theirs = _compare(name)
  np.testing.assert_array_equal(ours_idx, idx)
  assert _rel_err(ours, theirs) < RTOL
  np.testing.assert_allclose(ours, theirs, rtol=RTOL, atol=0)


# Plausible bugs, each of which the parity check above must catch.

_rope, _masks = tr.apply_rope, tr._masks


def _interleaved_rope(x, positions, base, scale):
  """RoPE on (even, odd) pairs instead of Gemma's (first half, second half)."""
  h = x.shape[-1]
  perm = jnp.arange(h).reshape(h // 2, 2).T.reshape(-1)
  return _rope(x[..., perm], positions, base, scale)[..., jnp.argsort(perm)]


class _NormWithoutOffset(nn.Module):
  """RMSNorm scaling by `scale` instead of Gemma's `1 + scale`."""

  @nn.compact
  def __call__(self, x):
    scale = self.param('scale', nn.initializers.zeros_init(), (x.shape[-1],), x.dtype)
    normed = x * jax.lax.rsqrt(jnp.mean(jnp.square(x), axis=-1, keepdims=True) + 1e-6)
    return normed * scale.reshape((1,) * (x.ndim - 1) + scale.shape)


def _window_one_wider(valid, slot_pos, positions, start, t, window):
  return _masks(valid, slot_pos, positions, start, t, window + 1)


BUGS = {
    'interleaved_rope': ('apply_rope', _interleaved_rope),
    'norm_without_offset': ('RMSNorm', _NormWithoutOffset),
    'window_one_wider': ('_masks', _window_one_wider),
}


@pytest.mark.parametrize('bug', sorted(BUGS))
def test_parity_check_catches(bug, monkeypatch):
  monkeypatch.setattr(tr, *BUGS[bug])
  ours_idx, idx, ours, theirs = _compare('gemma3_gqa')
  assert _rel_err(ours, theirs) > 100 * RTOL
  assert not np.array_equal(ours_idx, idx)
