"""Model tests without any peer: causality, cache equivalence, official sizes, bad names."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ttc_jax.model import config as cfg_lib
from ttc_jax.model import transformer as tr

GENERATIONS = ['tiny_gemma1', 'tiny_gemma2', 'tiny_gemma3']


def _params(name, seed=0):
  config = cfg_lib.get_config(name)
  return config, tr.init_params(config, jax.random.key(seed))


def _tokens(b, t, vocab, seed=1):
  return jax.random.randint(jax.random.key(seed), (b, t), 1, vocab)


def _forward(config):
  """The model's apply, jitted: one compilation instead of an eager dispatch per op."""
  model = tr.Transformer(config)
  return jax.jit(lambda params, *args, **kwargs: model.apply({'params': params}, *args, **kwargs))


@pytest.mark.parametrize('name', GENERATIONS)
def test_causality_by_gradient(name):
  config, params = _params(name)
  tokens = _tokens(1, 12, config.vocab_size)
  model = tr.Transformer(config)

  def logits_at(delta, t):
    def add_delta(next_fun, args, kwargs, context):
      out = next_fun(*args, **kwargs)
      return out + delta if context.method_name == 'encode' else out
    with nn.intercept_methods(add_delta):
      return model.apply({'params': params}, tokens).logits[0, t].sum()

  delta = jnp.zeros((1, 12, config.embed_dim))
  grad = jax.jit(jax.grad(logits_at))
  for t in (0, 5, 11):
    g = jnp.abs(grad(delta, t)).sum(axis=-1)[0]
    assert float(g[t + 1:].sum()) == 0.0, f'position {t} depends on later inputs'
    assert bool(jnp.all(g[:t + 1] > 0)), f'position {t} ignores earlier inputs'


@pytest.mark.parametrize('name', GENERATIONS)
def test_cache_decoding_equals_full_forward(name):
  # tiny_gemma3 has a sliding window of 8 and 6 layers (5 local, 1 global): 24 tokens cross it.
  config, params = _params(name)
  t = 24
  assert config.sliding_window_size is None or t > config.sliding_window_size
  tokens = _tokens(2, t, config.vocab_size)
  forward = _forward(config)
  full = forward(params, tokens).logits
  cache = tr.init_cache(config, 2, 32)
  outs = []
  for i in range(t):
    out = forward(params, tokens[:, i:i + 1], cache=cache)
    cache = out.cache
    outs.append(out.logits[:, 0])
  diff = float(jnp.max(jnp.abs(jnp.stack(outs, 1) - full)))
  assert diff < 1e-4, diff


def test_chunked_prefill_with_padding_equals_full_forward():
  config, params = _params('tiny_gemma3')
  tokens = _tokens(2, 20, config.vocab_size)
  forward = _forward(config)
  full = forward(params, tokens).logits
  # Row 0 arrives as chunks of 7 + 13 tokens, row 1 as 12 + 8: shorter rows are padded.
  cache = tr.init_cache(config, 2, 40)
  chunk1 = jnp.stack([jnp.pad(tokens[0, :7], (0, 5)), tokens[1, :12]])
  mask1 = jnp.arange(12)[None] < jnp.array([[7], [12]])
  o1 = forward(params, chunk1, mask1, cache=cache)
  chunk2 = jnp.stack([tokens[0, 7:], jnp.pad(tokens[1, 12:], (0, 5))])
  mask2 = jnp.arange(13)[None] < jnp.array([[13], [8]])
  o2 = forward(params, chunk2, mask2, cache=o1.cache)
  np.testing.assert_allclose(o1.logits[0, :7], full[0, :7], atol=1e-4)
  np.testing.assert_allclose(o2.logits[0], full[0, 7:], atol=1e-4)
  np.testing.assert_allclose(o2.logits[1, :8], full[1, 12:], atol=1e-4)


@pytest.mark.parametrize('name', sorted(cfg_lib.OFFICIAL_PARAM_COUNTS))
def test_official_parameter_counts(name):
  shapes = tr.param_shapes(cfg_lib.get_config(name))
  assert tr.count_params(shapes) == cfg_lib.OFFICIAL_PARAM_COUNTS[name]


def test_official_tree_names():
  shapes = tr.param_shapes(cfg_lib.get_config('gemma3_1b'))
  layer = shapes['layer_0']
  assert shapes['embedder']['input_embedding'].shape == (262_144, 1152)
  assert layer['attn']['q_einsum']['w'].shape == (4, 1152, 256)
  assert layer['attn']['kv_einsum']['w'].shape == (2, 1, 1152, 256)
  assert layer['attn']['attn_vec_einsum']['w'].shape == (4, 256, 1152)
  assert layer['attn']['_query_norm']['scale'].shape == (256,)
  assert layer['mlp']['gating_einsum'].shape == (2, 6912, 1152)
  assert layer['mlp']['linear'].shape == (6912, 1152)
  for norm in ('pre_attention_norm', 'post_attention_norm', 'pre_ffw_norm', 'post_ffw_norm'):
    assert layer[norm]['scale'].shape == (1152,)
  assert shapes['final_norm']['scale'].shape == (1152,)
  assert 'qkv_einsum' in tr.param_shapes(cfg_lib.get_config('gemma1_7b'))['layer_0']['attn']


def test_unknown_config_name():
  with pytest.raises(ValueError, match=r"unknown model config 'gemma9_1b'; expected one of"):
    cfg_lib.get_config('gemma9_1b')


@pytest.mark.parametrize('name', GENERATIONS)
def test_bf16_weights_keep_fp32_activations(name):
  config, params = _params(name)
  config16 = cfg_lib.get_config(name, weight_dtype='bfloat16')
  params16 = tr.cast_params(params, config16)
  kinds = {path[-1].key: leaf.dtype for path, leaf in jax.tree_util.tree_leaves_with_path(params16)}
  assert kinds['scale'] == jnp.float32  # norms keep the activation dtype
  assert kinds['input_embedding'] == kinds['w'] == kinds['linear'] == jnp.bfloat16
  assert kinds['gating_einsum'] == jnp.bfloat16
  tokens = _tokens(2, 12, config.vocab_size)
  ref = _forward(config)(params, tokens).logits
  out = _forward(config16)(params16, tokens)
  assert out.logits.dtype == jnp.float32
  err = float(jnp.max(jnp.abs(out.logits - ref)) / jnp.max(jnp.abs(ref)))
  assert 0 < err < 2e-2, err  # rounded, but only by bf16's 8-bit mantissa
