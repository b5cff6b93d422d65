"""Sharding: logical axes cover every param, rules and meshes, and a sharded training run
(data, fsdp x data, fsdp x tensor x data on 8 simulated CPU devices) ends with the parameters of
a one-device run, checkpoints and resumes in its sharded layout, and bad meshes are one-line
errors."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ttc_jax.errors import ConfigError
from ttc_jax.model import config as cfg_lib
from ttc_jax.model import transformer
from ttc_jax.parallel import sharding
from ttc_jax.training import data, objectives, trainer

# GQA (separate q and kv einsums), vocab and hidden divisible by 4 (fsdp) and kv heads by 2.
TINY = cfg_lib.gemma3(vocab_size=64, embed_dim=32, hidden_dim=64, num_heads=4, head_dim=8,
                      num_kv_heads=2, num_layers=2, sliding_window_size=8)
GiB = 2**30
V5E_HBM = 16 * GiB


def _examples(n=32, seed=0):
  rng = np.random.default_rng(seed)
  prompts = [rng.integers(3, 60, 5).tolist() for _ in range(n)]
  completions = [[t + 1 for t in p] for p in prompts]
  return data.pack(prompts, completions, max_len=16)


def _cfg(steps=5, batch_size=8):
  c = trainer.default_config()
  c.update(dict(steps=steps, batch_size=batch_size, learning_rate=3e-3, warmup_steps=2,
                log_every=5, checkpoint_every=5))
  return c


def _assert_close(a, b, atol=1e-6):
  for (path, x), y in zip(jax.tree_util.tree_leaves_with_path(a), jax.tree.leaves(b)):
    np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=1e-5, atol=atol,
                               err_msg=jax.tree_util.keystr(path))


# --- logical axes -------------------------------------------------------------------------------

@pytest.mark.parametrize('name', sorted(cfg_lib.NAMED))
def test_logical_axes_cover_every_official_config(name):
  config = cfg_lib.get_config(name)
  shapes = transformer.param_shapes(config)
  axes = sharding.logical_axes(shapes, config)
  sizes = {'vocab': config.vocab_size, 'embed': config.embed_dim, 'mlp': config.hidden_dim,
           'heads': config.num_heads, 'kv_heads': config.num_kv_heads, 'kv': config.head_dim}
  for x, a in zip(jax.tree.leaves(shapes), jax.tree.leaves(
      axes, is_leaf=lambda v: isinstance(v, tuple))):
    assert len(a) == x.ndim
    for dim, logical in zip(x.shape, a):
      if logical in sizes:
        assert dim == sizes[logical], (x.shape, a)
  # Without the config, the gating layout is read from the shapes alike.
  assert sharding.logical_axes(shapes) == axes


def test_logical_axes_of_value_head_objectives():
  shapes = jax.eval_shape(objectives.ValueRegression(TINY).init, jax.random.key(0))
  axes = sharding.logical_axes(shapes, TINY)
  assert axes['value_head']['proj']['kernel'] == ('head_in', 'head_out')
  assert axes['transformer']['embedder']['input_embedding'] == ('vocab', 'embed')


def test_unknown_param_is_an_error():
  shapes = dict(transformer.param_shapes(TINY), extra={'w': jax.ShapeDtypeStruct((4,), jnp.float32)})
  with pytest.raises(ValueError, match=r'no logical axes for param extra/w \(4,\).*PARAM_AXES'):
    sharding.logical_axes(shapes)


# --- rules, meshes, per-device memory -----------------------------------------------------------

def test_specs_and_divisibility_fallback():
  mesh = sharding.abstract_mesh({'data': 1, 'fsdp': 4, 'tensor': 2})
  one_kv = cfg_lib.gemma3(vocab_size=66, embed_dim=32, hidden_dim=64, num_heads=4, head_dim=8,
                          num_kv_heads=1, num_layers=1, sliding_window_size=8)
  specs = jax.tree.map(lambda s: s.spec, sharding.param_shardings(
      mesh, sharding.RULES['fsdp_tensor'], transformer.param_shapes(one_kv), one_kv))
  assert specs['embedder']['input_embedding'] == jax.sharding.PartitionSpec('tensor', 'fsdp')
  attn = specs['layer_0']['attn']
  assert attn['q_einsum']['w'] == jax.sharding.PartitionSpec('tensor', 'fsdp', None)
  # One kv head cannot be split over tensor=2: replicated on that dimension.
  assert attn['kv_einsum']['w'] == jax.sharding.PartitionSpec(None, None, 'fsdp', None)
  assert specs['layer_0']['mlp']['gating_einsum'] == jax.sharding.PartitionSpec(
      None, 'tensor', 'fsdp')
  fsdp = jax.tree.map(lambda s: s.spec, sharding.param_shardings(
      mesh, sharding.RULES['fsdp'], transformer.param_shapes(one_kv), one_kv))
  # Vocab 66 is not divisible by fsdp=4: the embedding is split by embed instead.
  assert fsdp['embedder']['input_embedding'] == jax.sharding.PartitionSpec(None, 'fsdp')
  assert fsdp['layer_0']['mlp']['linear'] == jax.sharding.PartitionSpec('fsdp', None)


@pytest.mark.parametrize('name', ['gemma3_1b', 'gemma2_2b'])
@pytest.mark.parametrize('shape', [{'data': 1, 'fsdp': 8, 'tensor': 1},
                                   {'data': 1, 'fsdp': 4, 'tensor': 2}])
def test_per_device_bytes_fit_a_v5e_chip(name, shape):
  config = cfg_lib.get_config(name)
  shapes = transformer.param_shapes(config)
  mesh = sharding.abstract_mesh(shape)
  sh = sharding.param_shardings(mesh, sharding.RULES['fsdp_tensor'], shapes, config)
  params = sharding.per_device_bytes(shapes, sh)
  total = 4 * transformer.count_params(shapes)  # fp32
  assert params <= total / 7.5  # close to an even 8-way split (1 kv head: not on tensor)
  # fp32 params + AdamW's mu and nu, sharded alike.
  assert 3 * params < V5E_HBM / 4
  print(f'{name} {shape}: params {params / GiB:.3f} GiB/device (of {total / GiB:.2f} GiB), '
        f'with Adam state {3 * params / GiB:.3f} GiB/device')


def test_make_mesh_with_wrong_device_count_is_an_error():
  assert sharding.make_mesh({'data': 2, 'fsdp': 4}).shape == {'data': 2, 'fsdp': 4}
  with pytest.raises(ConfigError, match=r"mesh shape \{'data': 3\} covers 3 devices but "
                     r'jax.device_count\(\) is 8: set axis sizes whose product is 8'):
    sharding.make_mesh({'data': 3})


def test_rule_naming_an_unknown_mesh_axis_is_an_error():
  mesh = sharding.make_mesh({'data': 8})
  with pytest.raises(ConfigError, match=r"names mesh axis 'fsdp', but the mesh has axes "
                     r"\('data',\)"):
    sharding.param_shardings(mesh, 'fsdp', transformer.param_shapes(TINY))


def test_batch_not_divisible_by_data_axes_is_an_error(tmp_path):
  with pytest.raises(ConfigError, match=r'train.batch_size=12 is not divisible by the data axes '
                     r'of the mesh \(data=2, fsdp=4: 8 devices\): set train.batch_size to a '
                     r'multiple of 8'):
    trainer.train(objectives.LanguageModeling(TINY), _examples(), _cfg(batch_size=12),
                  str(tmp_path), 'lm', mesh={'data': 2, 'fsdp': 4}, rules='fsdp')


def test_sharded_init_is_sharded_and_equals_unsharded():
  mesh = sharding.make_mesh({'data': 2, 'fsdp': 4})
  init = lambda k: transformer.init_params(TINY, k)
  params = sharding.sharded_init(init, jax.random.key(1), mesh, 'fsdp', TINY)
  emb = params['embedder']['input_embedding']
  assert emb.sharding.spec == jax.sharding.PartitionSpec('fsdp', None)
  assert emb.addressable_shards[0].data.shape == (16, 32)
  _assert_close(params, init(jax.random.key(1)))


# --- activations and the KV cache ---------------------------------------------------------------

def _prefill(params, tokens):
  cache = transformer.init_cache(TINY, tokens.shape[0], 16)
  return transformer.Transformer(TINY).apply({'params': params}, tokens, cache=cache)


def test_activations_and_cache_follow_the_rules():
  """Under `axis_rules`, the KV cache and logits come out of a jitted prefill in the layout their
  logical axes get (batch on data x fsdp, kv heads and vocab on tensor), with the same values."""
  params = transformer.init_params(TINY, jax.random.key(0))
  tokens = jnp.asarray(np.random.default_rng(0).integers(3, 60, (8, 6)), jnp.int32)
  want = jax.jit(_prefill)(params, tokens)
  mesh = sharding.make_mesh({'data': 2, 'fsdp': 2, 'tensor': 2})
  with sharding.axis_rules(mesh, 'fsdp_tensor'):
    got = jax.jit(_prefill)(params, tokens)
  P = jax.sharding.PartitionSpec
  k, v = got.cache.layers[0].k, got.cache.layers[0].v  # [B, K, H, S], [B, K, S, H]
  assert k.sharding.spec == P(('data', 'fsdp'), 'tensor')  # trailing dimensions replicated
  assert v.sharding.spec == P(('data', 'fsdp'), 'tensor')
  assert got.cache.valid.sharding.spec == P(('data', 'fsdp'))
  assert got.logits.sharding.spec == P(('data', 'fsdp'), None, 'tensor')  # [B, T, V]
  _assert_close(got, want, atol=1e-5)


def test_constraints_are_identity_outside_the_rules():
  params = transformer.init_params(TINY, jax.random.key(0))
  tokens = jnp.ones((8, 6), jnp.int32)
  outside = str(jax.make_jaxpr(_prefill)(params, tokens))
  assert 'sharding_constraint' not in outside
  with sharding.axis_rules(sharding.make_mesh({'data': 8}), 'data'):
    inside = str(jax.make_jaxpr(_prefill)(params, tokens))
  # residual, q, k, v, mlp per layer, the cache, the logits: every one named.
  assert inside.count('sharding_constraint') >= 2 * 5 + 4


def test_rules_naming_an_unknown_mesh_axis_fail_on_entry():
  with pytest.raises(ConfigError, match="names mesh axis 'fsdp'"):
    with sharding.axis_rules(sharding.make_mesh({'data': 8}), 'fsdp_tensor'):
      pass


# --- sharded training ---------------------------------------------------------------------------

def _metrics(directory):
  return [json.loads(line) for line in (directory / 'metrics.jsonl').read_text().splitlines()]


@pytest.fixture(scope='module')
def single_device(tmp_path_factory):
  directory = tmp_path_factory.mktemp('one')
  params = trainer.train(objectives.LanguageModeling(TINY), _examples(), _cfg(), str(directory),
                         'one')
  return params, _metrics(directory)


@pytest.mark.parametrize('shape,rules,sharded', [
    ({'data': 8}, 'data', False),
    ({'fsdp': 4, 'data': 2}, 'fsdp', True),
    ({'data': 2, 'fsdp': 2, 'tensor': 2}, 'fsdp_tensor', True),
])
def test_sharded_training_equals_one_device(tmp_path, single_device, shape, rules, sharded):
  params = trainer.train(objectives.LanguageModeling(TINY), _examples(), _cfg(), str(tmp_path),
                         'sharded', mesh=shape, rules=rules)
  _assert_close(params, single_device[0])
  # Loss and gradient norm too (AdamW hides a gradient's scale from the params).
  [got], [want] = _metrics(tmp_path), single_device[1]
  for key in ('loss', 'grad_norm', 'token_accuracy'):
    np.testing.assert_allclose(got[key], want[key], rtol=1e-5)
  # Trained sharded (in the layout checked last), returned whole on one device, so
  # a stage can compute with them beside params loaded there (a PRM head beside its backbone).
  mlp = params['layer_0']['mlp']['gating_einsum']
  assert mlp.sharding.device_set == {jax.local_devices()[0]}
  spec = sharding.param_shardings(sharding.make_mesh(shape), rules, params, TINY)
  assert spec['layer_0']['mlp']['gating_einsum'].is_fully_replicated != sharded


def test_sharded_checkpoint_resumes_in_sharded_layout(tmp_path, single_device):
  obj, mesh = objectives.LanguageModeling(TINY), {'fsdp': 4, 'data': 2}
  cfg = _cfg()
  cfg.checkpoint_every = 2
  trainer.train(obj, _examples(), cfg, str(tmp_path), 'cut', mesh=mesh, rules='fsdp',
                stop_after=2)
  # The resumed run restores step 2 into the sharded layout, then finishes as one run would.
  resumed = trainer.train(obj, _examples(), cfg, str(tmp_path), 'cut', mesh=mesh, rules='fsdp',
                          keep_layout=True)
  _assert_close(resumed, single_device[0])
  emb = resumed['embedder']['input_embedding']
  assert emb.sharding.spec == jax.sharding.PartitionSpec('fsdp', None)
  # The sharded checkpoint also loads without a mesh.
  _assert_close(trainer.load_params(str(tmp_path), obj, cfg), single_device[0])


def test_sharded_value_regression_equals_one_device(tmp_path):
  ex = _examples()
  ex = data.Examples(tokens=ex.tokens, loss_mask=ex.loss_mask, value_mask=ex.loss_mask,
                     value_targets=(ex.tokens % 2).astype(np.float32))
  obj = objectives.ValueRegression(TINY)
  one = trainer.train(obj, ex, _cfg(steps=3), str(tmp_path / 'one'), 'one')
  sharded = trainer.train(obj, ex, _cfg(steps=3), str(tmp_path / 'fsdp'), 'fsdp',
                          mesh={'data': 2, 'fsdp': 4}, rules='fsdp')
  _assert_close(sharded['value_head'], one['value_head'])
  # The head starts at zero, so the backbone's first gradients are ~0 and AdamW's per-element
  # normalization lifts their fp32 rounding (summation order differs across shards) to ~1e-5:
  # well under the ~lr=3e-3 each step moves a weight.
  _assert_close(sharded['transformer'], one['transformer'], atol=5e-5)
  # Returned whole on one device: the stage computes its held-out metrics with them.
  assert sharded['transformer']['embedder']['input_embedding'].sharding.device_set == {
      jax.local_devices()[0]}


def test_sharded_training_from_given_params(tmp_path, single_device):
  # As the fine-tuning stages call it: init_params made on one device, then sharded.
  init = transformer.init_params(TINY, jax.random.key(0))
  params = trainer.train(objectives.LanguageModeling(TINY), _examples(), _cfg(), str(tmp_path),
                         'ft', init_params=init, mesh={'fsdp': 8}, rules=(('embed', 'fsdp'),),
                         keep_layout=True)
  _assert_close(params, single_device[0])
  assert params['embedder']['input_embedding'].sharding.spec == jax.sharding.PartitionSpec(
      None, 'fsdp')
