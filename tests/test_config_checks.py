"""config_checks.check: every shipped config passes; a bad value fails with one line naming its
`--config.` key and the value (configs only, no JAX work)."""

import math

import pytest

from configs import arith, demo, gemma3_270m_gsm8k
from ttc_jax import config_checks
from ttc_jax.errors import ConfigError

CONFIGS = {'arith': arith, 'gemma': gemma3_270m_gsm8k, 'demo': demo}
SHIPPED = [*(('arith', v) for v in ('default', 'large', 'tiny', 'gpu')),
           *(('gemma', v) for v in gemma3_270m_gsm8k.VARIANTS),
           ('demo', None), ('demo', 'gemma3_1b')]


def config_with(name, variant, **values):
  """The shipped config with `values` ({'train.steps': -5}, dotted) set, types ignored as a
  config built in code could have them (the command line casts to the field's type)."""
  config = CONFIGS[name].get_config(variant)
  for key, value in values.items():
    *path, last = key.split('.')
    node = config
    for part in path:
      node = node[part]
    with node.ignore_type():
      node[last] = value
  return config


def error_of(config) -> str:
  with pytest.raises(ConfigError) as e:
    config_checks.check(config)
  return str(e.value)


@pytest.mark.parametrize('name,variant', SHIPPED)
def test_shipped_configs_pass(name, variant):
  config_checks.check(CONFIGS[name].get_config(variant))


BAD = [
    ('arith', 'default', 'train.steps', -5),
    ('arith', 'default', 'train.batch_size', 0),
    ('arith', 'tiny', 'calibrate.num_bins', 21),  # 20 test problems
    ('arith', 'default', 'sample.top_p', 0),
    ('arith', 'default', 'sample.top_p', 1.5),
    ('arith', 'default', 'sample.temperature', -1),
    ('arith', 'default', 'sample.top_k', -1),
    ('arith', 'default', 'sample.max_problems', -1),
    ('arith', 'default', 'sample.split', 'dev'),
    ('arith', 'default', 'calibrate.ks', ()),
    ('arith', 'default', 'calibrate.ks', (1, 0)),
    ('arith', 'default', 'eval_verifiers.ns', (1, 2.5)),
    ('arith', 'default', 'train.steps', 2.5),
    ('arith', 'default', 'train.steps', True),
    ('arith', 'default', 'train.learning_rate', math.nan),
    ('arith', 'default', 'train.grad_clip', 0.0),
    ('arith', 'default', 'train.max_len', 0),
    ('arith', 'default', 'train_prm.checkpoint_every', 0),
    ('arith', 'default', 'train_verifier_backbone.steps', -1),
    ('arith', 'default', 'train_prm.freeze_backbone', 1),
    ('arith', 'default', 'seed', -1),
    ('arith', 'tiny', 'prm_data.train_problems', 401),  # 400 train problems
    ('arith', 'tiny', 'prm_data.validation_problems', 21),  # 20 validation problems
    ('arith', 'default', 'prm_data.num_rollouts', 0),
    ('arith', 'default', 'model_name', 'huge'),
    ('arith', 'default', 'verifier_backbone', 'huge'),
    ('arith', 'default', 'train_verifier_backbone.init', 'huge'),
    ('arith', 'default', 'train_init', 'base'),  # the model being trained
    ('arith', 'default', 'models.base.num_kv_heads', 3),  # 4 heads
    ('arith', 'default', 'models.large.embed_dim', 0),
    ('arith', 'default', 'models.base.generation', 'gemma9'),
    ('arith', 'tiny', 'task.num_ops_min', 5),  # num_ops_max 4
    ('arith', 'default', 'task.test_size', 0),
    ('arith', 'default', 'task.name', 'gsm8k'),
    ('arith', 'default', 'tokenizer.vocab_size', 0),
    ('gemma', 'default', 'task.name', 'foo'),
    ('gemma', 'default', 'task.num_shots', -1),
    ('gemma', 'math500', 'sample.split', 'train'),  # MATH500 has a test split only
    ('gemma', 'tiny', 'sft.train.batch_size', 0),
    ('gemma', 'default', 'calibrate.majority_draws', 0),
    ('gemma', 'default', 'model.name', 'gemma9_1t'),
    ('demo', None, 'sampling.num_samples', 0),
    ('demo', None, 'demo.prompt_tokens', ()),
]


@pytest.mark.parametrize('name,variant,key,value', BAD)
def test_bad_value_names_key_and_value(name, variant, key, value):
  message = error_of(config_with(name, variant, **{key: value}))
  assert message.startswith(f'--config.{key}='), message
  assert str(value) in message, message  # -1 reads -1.0 in a float field
  assert ': expected ' in message and '\n' not in message, message


def test_message():
  assert (error_of(config_with('arith', 'default', **{'train.steps': -5}))
          == '--config.train.steps=-5: expected an integer >= 1')
  assert (error_of(config_with('arith', 'tiny', **{'calibrate.num_bins': 21}))
          == '--config.calibrate.num_bins=21: expected an integer <= --config.task.test_size=20, '
          'the number of problems sampled')


def test_first_bad_value_in_fixed_order():
  config = config_with('arith', 'default', **{'train.batch_size': 0, 'train.steps': -5})
  assert error_of(config).startswith('--config.train.steps=-5:')


def test_num_bins_limited_by_max_problems():
  config = config_with('arith', 'default', **{'sample.max_problems': 3})
  assert error_of(config).startswith(
      '--config.calibrate.num_bins=5: expected an integer <= --config.sample.max_problems=3')


@pytest.mark.parametrize('values', [
    {'sample.temperature': 0.0},  # greedy
    {'prm_data.validation_problems': 0},  # no held-out labels
    {'train.warmup_steps': 2000, 'train.steps': 10},  # the trainer handles warmup > steps
    {'verifier_backbone': '', 'train_init': 'large'},
    {'sample.max_problems': 10_000},  # more than the split: all of it
])
def test_allowed_edge_values(values):
  config_checks.check(config_with('arith', 'default', **values))


def test_config_error_is_a_value_error():
  # The launcher prints ValueErrors as one line and exits 2.
  assert issubclass(ConfigError, ValueError)
