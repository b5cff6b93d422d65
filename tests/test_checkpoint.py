"""Orbax parameter checkpoints: round trip, official nesting, clear errors for mismatches."""

import glob
import os

import jax
import numpy as np
import pytest

from ttc_jax.model import checkpoint as ckpt
from ttc_jax.model import config as cfg_lib
from ttc_jax.model import transformer as tr

CONFIG = cfg_lib.get_config('tiny_gemma3')
PARAMS = tr.init_params(CONFIG, jax.random.key(0))


def _equal(a, b):
  return all(np.array_equal(x, y) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


def test_round_trip(tmp_path):
  ckpt.save_params(str(tmp_path / 'c'), PARAMS)
  assert _equal(ckpt.load_params(str(tmp_path / 'c'), CONFIG), PARAMS)


def test_official_layout_loads_without_remapping(tmp_path):
  # Official Gemma checkpoints: a 'transformer' top level and '/'-joined module keys.
  flat = {'transformer/' + k: v for k, v in PARAMS.items()}
  flat['transformer/layer_0/attn'] = flat.pop('transformer/layer_0')['attn']
  flat['transformer/layer_0'] = {k: v for k, v in PARAMS['layer_0'].items() if k != 'attn'}
  ckpt.save_params(str(tmp_path / 'c'), flat)
  assert _equal(ckpt.load_params(str(tmp_path / 'c'), CONFIG), PARAMS)


def test_shape_mismatch_names_path_and_both_shapes(tmp_path):
  ckpt.save_params(str(tmp_path / 'c'), PARAMS)
  with pytest.raises(ckpt.CheckpointMismatchError,
                     match=r"'embedder/input_embedding' has checkpoint shape \(256, 64\) but the "
                     r"config expects \(256, 32\)"):
    ckpt.load_params(str(tmp_path / 'c'), cfg_lib.get_config('tiny_gemma3', embed_dim=32))


def test_missing_parameter_is_named(tmp_path):
  ckpt.save_params(str(tmp_path / 'c'), PARAMS)
  with pytest.raises(ckpt.CheckpointMismatchError, match=r"'layer_6/attn/"):
    ckpt.load_params(str(tmp_path / 'c'), _seven_layers())


def _seven_layers():
  from ttc_jax.model.config import gemma3
  return gemma3(vocab_size=256, embed_dim=64, hidden_dim=128, num_heads=4, head_dim=16,
                num_kv_heads=1, num_layers=7, sliding_window_size=8)


def test_truncated_checkpoint_is_a_one_line_error(tmp_path):
  path = str(tmp_path / 'c')
  ckpt.save_params(path, PARAMS)
  for f in glob.glob(os.path.join(path, 'ocdbt.process_0', 'd', '*')):
    with open(f, 'r+b') as fh:
      fh.truncate(os.path.getsize(f) // 2)
  with pytest.raises(ValueError, match=r'could not be read .*expected a complete orbax') as e:
    ckpt.load_params(path, CONFIG)
  assert '\n' not in str(e.value)


def test_missing_directory(tmp_path):
  with pytest.raises(FileNotFoundError, match='does not exist'):
    ckpt.load_params(str(tmp_path / 'nope'), CONFIG)


def test_load_casts_to_the_configs_weight_dtype(tmp_path):
  ckpt.save_params(str(tmp_path / 'c'), PARAMS)
  config16 = cfg_lib.get_config('tiny_gemma3', weight_dtype='bfloat16')
  loaded = ckpt.load_params(str(tmp_path / 'c'), config16)
  assert loaded['embedder']['input_embedding'].dtype == np.dtype('bfloat16')
  assert loaded['final_norm']['scale'].dtype == np.float32
  assert _equal(loaded, tr.cast_params(PARAMS, config16))
