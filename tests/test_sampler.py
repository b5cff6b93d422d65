"""Sampling-kernel tests: determinism, greedy == argmax, shared prefill, continuation, no recompiles."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ttc_jax.model import config as cfg_lib
from ttc_jax.model import transformer as tr
from ttc_jax.sampling import sampler as sampling

CONFIG = cfg_lib.get_config('tiny_gemma3')
PARAMS = tr.init_params(CONFIG, jax.random.key(0))
SAMPLER = sampling.Sampler(CONFIG, eos_id=1)


def _prompts(lengths, seed=0):
  rng = np.random.default_rng(seed)
  return [rng.integers(3, CONFIG.vocab_size, n).tolist() for n in lengths]


def test_same_key_same_tokens_other_key_other_tokens():
  prompts = _prompts([5, 9])
  run = lambda k: SAMPLER.sample(PARAMS, prompts, key=jax.random.key(k), max_new_tokens=12,
                                 num_samples=3).sequences()
  assert run(1) == run(1)
  assert run(1) != run(2)


def test_attention_ladder():
  assert sampling.attention_ladder(1000) == (128, 256, 1000)
  assert sampling.attention_ladder(385) == (128, 385)
  assert sampling.attention_ladder(384) == (384,)
  assert sampling.attention_ladder(26) == (26,)


@pytest.mark.parametrize('new_tokens', [10, 400])  # 400: two decode phases (128, 416)
def test_greedy_equals_argmax_of_full_forward(new_tokens):
  prompts = _prompts([6, 11])
  out = SAMPLER.sample(PARAMS, prompts, key=jax.random.key(0), max_new_tokens=new_tokens,
                       temperature=0.0, stop_tokens=[])
  model = tr.Transformer(CONFIG)
  forward = jax.jit(lambda seq: model.apply({'params': PARAMS}, seq).logits[0])
  for prompt, gen in zip(prompts, out.sequences()):
    assert len(gen) == new_tokens
    logits = forward(jnp.asarray([prompt + gen]))
    expected = jnp.argmax(logits[len(prompt) - 1:-1], axis=-1).tolist()
    assert gen == expected


def test_shared_prefill_equals_separate_prefills():
  prompt = _prompts([7])[0]
  key = jax.random.key(3)
  shared = SAMPLER.sample(PARAMS, [prompt], key=key, max_new_tokens=9, num_samples=4)
  separate = SAMPLER.sample(PARAMS, [prompt] * 4, key=key, max_new_tokens=9)
  assert shared.sequences() == separate.sequences()
  assert len(set(map(tuple, shared.sequences()))) > 1  # the samples do differ


@pytest.mark.parametrize('temperature', [0.0, 1.0])
def test_continuing_from_cache_equals_concatenated_prompt(temperature):
  prompts = _prompts([5, 8])
  first = SAMPLER.sample(PARAMS, prompts, key=jax.random.key(1), max_new_tokens=6,
                         temperature=temperature, stop_tokens=[], cache_size=64)
  extra = [[7, 8, 9], [10]]
  key = jax.random.key(2)
  generated = first.sequences()
  cont = SAMPLER.sample(PARAMS, sampling.continuation(first, extra), key=key, max_new_tokens=7,
                        temperature=temperature, stop_tokens=[], cache=first.cache)
  fresh = SAMPLER.sample(PARAMS, [p + g + e for p, g, e in zip(prompts, generated, extra)],
                         key=key, max_new_tokens=7, temperature=temperature, stop_tokens=[])
  assert cont.sequences() == fresh.sequences()


def test_per_row_stop_tokens_stop_each_row():
  prompts = _prompts([4, 4, 4])
  free = SAMPLER.sample(PARAMS, prompts, key=jax.random.key(5), max_new_tokens=8,
                        stop_tokens=[]).sequences()
  stops = [[free[0][2]], [free[1][0]], [-5]]  # stop row 0 at its 3rd token, row 1 at its 1st
  out = SAMPLER.sample(PARAMS, prompts, key=jax.random.key(5), max_new_tokens=8,
                       stop_tokens=stops).sequences()
  assert out[0] == free[0][:free[0].index(stops[0][0]) + 1]
  assert out[1] == free[1][:1]
  assert out[2] == free[2]


def test_same_bucket_does_not_recompile():
  SAMPLER.sample(PARAMS, _prompts([3, 5]), key=jax.random.key(0), max_new_tokens=5)
  before = sampling.generate._cache_size()
  SAMPLER.sample(PARAMS, _prompts([9, 14], seed=4), key=jax.random.key(1), max_new_tokens=5,
                 temperature=0.7, top_p=0.9)
  assert sampling.generate._cache_size() == before
  SAMPLER.sample(PARAMS, _prompts([20, 3]), key=jax.random.key(1), max_new_tokens=5)
  assert sampling.generate._cache_size() == before + 1  # a new bucket does compile


def test_top_k_one_is_greedy():
  prompts = _prompts([6])
  greedy = SAMPLER.sample(PARAMS, prompts, key=jax.random.key(0), max_new_tokens=8,
                          temperature=0.0).sequences()
  topk = SAMPLER.sample(PARAMS, prompts, key=jax.random.key(9), max_new_tokens=8, top_k=1,
                        num_samples=3).sequences()
  assert topk == greedy * 3


def test_tiny_top_p_is_greedy():
  prompts = _prompts([6])
  greedy = SAMPLER.sample(PARAMS, prompts, key=jax.random.key(0), max_new_tokens=8,
                          temperature=0.0).sequences()
  out = SAMPLER.sample(PARAMS, prompts, key=jax.random.key(9), max_new_tokens=8, top_p=1e-6,
                       num_samples=2).sequences()
  assert out == greedy * 2


def test_prompt_longer_than_cache_is_a_clear_error():
  with pytest.raises(ValueError, match=r'prompt of 30 tokens \(bucket 32\) \+ max_new_tokens=8 '
                     r'does not fit the KV cache of 24 slots; pass a larger cache_size'):
    SAMPLER.sample(PARAMS, _prompts([30]), key=jax.random.key(0), max_new_tokens=8,
                   cache_size=24)


def test_categorical_draw_matches_probabilities():
  logits = jnp.log(jnp.array([[0.5, 0.3, 0.15, 0.05]] * 20000))
  draws = sampling.sample_logits(logits, jax.random.key(0), jnp.float32(1.0), jnp.float32(1.0), 0)
  freq = np.bincount(np.asarray(draws), minlength=4) / 20000
  np.testing.assert_allclose(freq, [0.5, 0.3, 0.15, 0.05], atol=0.015)
  top2 = sampling.sample_logits(logits, jax.random.key(1), jnp.float32(1.0), jnp.float32(1.0), 2)
  assert set(np.asarray(top2).tolist()) == {0, 1}


def test_blocked_categorical_draw_across_blocks():
  # 600 tokens = 2 full blocks of 256 + a partial one; mass on block edges and in the last block.
  probs = np.zeros(600)
  probs[[0, 255, 256, 511, 512, 599]] = [0.1, 0.2, 0.15, 0.05, 0.3, 0.2]
  logits = jnp.log(jnp.asarray(np.tile(probs, (20000, 1)), jnp.float32))
  draws = np.asarray(sampling.sample_logits(logits, jax.random.key(2), jnp.float32(1.0),
                                            jnp.float32(1.0), 0))
  freq = np.bincount(draws, minlength=600) / 20000
  np.testing.assert_allclose(freq, probs, atol=0.015)
