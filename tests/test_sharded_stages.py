"""The training stages on a device mesh (`config.mesh`): train_base on data=8 and fsdp=4 x data=2
ends with one device's parameters; a mesh that does not cover the devices is a one-line error."""

import jax
import numpy as np
import pytest

from ttc_jax import config_checks
from ttc_jax.errors import ConfigError
from ttc_jax.parallel import sharding
from ttc_jax.pipeline import stages, train_base


def _config(**mesh):
  from configs.arith import get_config
  config = get_config('tiny')
  config.train.update(dict(steps=6, checkpoint_every=3, log_every=3))
  config.mesh.update(mesh)
  return config


def _params(config, workdir):
  _, params = train_base.load_model(config, str(workdir), 'base', 'test')
  return [np.asarray(x) for x in jax.tree.leaves(params)]


@pytest.fixture(scope='module')
def one_device(tmp_path_factory):
  workdir = tmp_path_factory.mktemp('one')
  config = _config()
  for name in ('data', 'tokenizer', 'train_base'):
    stages.execute(stages.table(config)[name], config, str(workdir), rebuild_stale=False)
  return workdir


@pytest.mark.parametrize('mesh', [dict(data=8), dict(data=2, fsdp=4, rules='fsdp')])
def test_train_base_on_a_mesh_equals_one_device(one_device, tmp_path, mesh):
  import shutil
  assert jax.device_count() == 8
  for sub in ('data', 'tokenizer'):
    shutil.copytree(one_device / sub, tmp_path / sub)
  config = _config(**mesh)
  stages.execute(stages.table(config)['train_base'], config, str(tmp_path), rebuild_stale=False)
  for a, b in zip(_params(config, tmp_path), _params(config, one_device)):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_a_mesh_not_covering_the_devices(one_device, tmp_path):
  import shutil
  for sub in ('data', 'tokenizer'):
    shutil.copytree(one_device / sub, tmp_path / sub)
  config = _config(data=3)
  with pytest.raises(ConfigError, match='covers 3 devices but jax.device_count\\(\\) is 8'):
    stages.execute(stages.table(config)['train_base'], config, str(tmp_path), rebuild_stale=False)


def test_mesh_rules_are_checked():
  config = _config(rules='pipeline')
  with pytest.raises(ConfigError, match="--config.mesh.rules='pipeline'"):
    config_checks.check(config)
  # The checked names are the presets.
  for name in sharding.RULES:
    config_checks.check(_config(rules=name))
