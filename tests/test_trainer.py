"""Trainer: loss goes down; a run stopped mid-way and resumed equals an uninterrupted one."""

import os

import jax
import numpy as np
import pytest

from ttc_jax.errors import CorruptArtifactError
from ttc_jax.model import config as cfg_lib
from ttc_jax.training import data, objectives, trainer

CONFIG = cfg_lib.get_config('tiny_gemma1')


def _examples(n=64, seed=0):
  rng = np.random.default_rng(seed)
  prompts = [rng.integers(3, 50, 5).tolist() for _ in range(n)]
  completions = [[t + 1 for t in p] for p in prompts]  # learnable: copy shifted by one
  return data.pack(prompts, completions, max_len=16)


def _cfg(steps):
  c = trainer.default_config()
  c.update(dict(steps=steps, batch_size=16, learning_rate=3e-3, warmup_steps=5, log_every=5,
                checkpoint_every=5))
  return c


def _leaves_equal(a, b):
  return all(np.array_equal(x, y) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


def test_loss_decreases(tmp_path):
  obj = objectives.LanguageModeling(CONFIG)
  trainer.train(obj, _examples(), _cfg(60), str(tmp_path), 'lm')
  lines = (tmp_path / 'metrics.jsonl').read_text().splitlines()
  import json
  losses = [json.loads(l)['loss'] for l in lines]
  assert losses[-1] < 0.7 * losses[0], losses


def test_resume_equals_uninterrupted(tmp_path):
  obj = objectives.LanguageModeling(CONFIG)
  full = trainer.train(obj, _examples(), _cfg(20), str(tmp_path / 'full'), 'full')
  trainer.train(obj, _examples(), _cfg(20), str(tmp_path / 'cut'), 'cut', stop_after=10)
  resumed = trainer.train(obj, _examples(), _cfg(20), str(tmp_path / 'cut'), 'cut')
  assert _leaves_equal(full, resumed)
  loaded = trainer.load_params(str(tmp_path / 'cut'), obj, _cfg(20))
  assert _leaves_equal(loaded, full)
  steps = [int(l.split('"step": ')[1].split(',')[0].rstrip('}'))
           for l in (tmp_path / 'cut' / 'metrics.jsonl').read_text().splitlines()]
  assert steps == [5, 10, 15, 20]


def test_value_objective_trains(tmp_path):
  ex = _examples()
  targets = (ex.tokens % 2).astype(np.float32)
  ex = data.Examples(tokens=ex.tokens, loss_mask=ex.loss_mask, value_targets=targets,
                     value_mask=ex.loss_mask)
  obj = objectives.ValueRegression(CONFIG)
  trainer.train(obj, ex, _cfg(30), str(tmp_path), 'value')
  import json
  losses = [json.loads(l)['loss'] for l in (tmp_path / 'metrics.jsonl').read_text().splitlines()]
  assert losses[-1] < losses[0]


def test_head_regression_trains_the_head_alone(tmp_path):
  """HeadRegression on precomputed inputs: the loss falls, the parameters are the head alone,
  and the checkpoint loads back with the same objective."""
  rng = np.random.default_rng(0)
  obj = objectives.HeadRegression(CONFIG)
  f = objectives.head_input_size(CONFIG)
  features = rng.normal(size=(64, 6, f)).astype(np.float32)
  targets = 1 / (1 + np.exp(-features @ rng.normal(size=f)))
  ex = data.Examples(tokens=np.full((64, 6), 5, np.int32), loss_mask=np.zeros((64, 6), np.float32),
                     value_targets=targets.astype(np.float32),
                     value_mask=np.ones((64, 6), np.float32), features=features)
  params = trainer.train(obj, ex, _cfg(30), str(tmp_path), 'head')
  assert sorted(params) == ['value_head']
  import json
  losses = [json.loads(l)['loss'] for l in (tmp_path / 'metrics.jsonl').read_text().splitlines()]
  assert losses[-1] < 0.9 * losses[0], losses
  assert _leaves_equal(trainer.load_params(str(tmp_path), obj, _cfg(30)), params)


def test_corrupt_checkpoint_is_a_clear_error(tmp_path):
  obj = objectives.LanguageModeling(CONFIG)
  trainer.train(obj, _examples(), _cfg(10), str(tmp_path), 'lm')
  for root, _, files in os.walk(tmp_path / '10'):
    for f in files:
      if 'ocdbt' in root or f.startswith('manifest'):
        os.truncate(os.path.join(root, f), 0)
  with pytest.raises(CorruptArtifactError, match=r'checkpoint step 10 in .* is corrupt .*delete'):
    trainer.train(obj, _examples(), _cfg(20), str(tmp_path), 'lm')
