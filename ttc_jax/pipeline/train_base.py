"""Stage `train_base`: train the proposer LM (config.model_name: `base` or `large`) on the task.

Writes checkpoints to models/<name>/ (resumable) and, when finished, models/<name>/info.json with
the parameter count and pretraining FLOPs 6*N*D.
"""

from __future__ import annotations

import os

import ml_collections
import numpy as np
from absl import logging

from ttc_jax import workdir as wd
from ttc_jax.model import transformer
from ttc_jax.pipeline import common
from ttc_jax.training import data, objectives, trainer


def run(config: ml_collections.ConfigDict, workdir: str) -> None:
  name = config.model_name
  info_path = common.model_info_path(workdir, name)
  if os.path.exists(info_path):
    logging.info('train_base: %s exists, skipping', info_path)
    return
  tok = common.load_tokenizer(workdir, 'train_base')
  problems = common.load_problems(config, workdir, 'train', 'train_base')
  pairs = [common.encode_example(tok, p) for p in problems]
  examples = data.pack([p for p, _ in pairs], [c for _, c in pairs], config.train.max_len)
  model = common.model_config(config, name, tok.vocab_size)
  objective = objectives.LanguageModeling(model)
  n_params = transformer.count_params(transformer.param_shapes(model))
  cfg = config.train
  logging.info('train_base: model %s, %d params, %d examples, %d steps of %d', name, n_params,
               examples.size, cfg.steps, cfg.batch_size)
  trainer.train(objective, examples, cfg, common.model_dir(workdir, name), f'train_base[{name}]')
  tokens_per_example = float(np.mean((examples.tokens != 0).sum(axis=1)))
  tokens_seen = cfg.steps * cfg.batch_size * tokens_per_example
  wd.atomic_write_json(info_path, {
      'model': name, 'num_params': n_params, 'steps': cfg.steps, 'batch_size': cfg.batch_size,
      'tokens_seen': tokens_seen, 'pretrain_flops': 6.0 * n_params * tokens_seen,
      'vocab_size': tok.vocab_size})
  logging.info('train_base: %s done: %.3g training FLOPs (6ND)', name,
               6.0 * n_params * tokens_seen)


def load_model(config: ml_collections.ConfigDict, workdir: str, name: str, stage: str):
  """(model config, params) of a finished train_base run."""
  common.require(common.model_info_path(workdir, name), stage,
                 'train_base' + ('' if name == 'base' else f' with --config.model_name={name}'))
  tok = common.load_tokenizer(workdir, stage)
  model = common.model_config(config, name, tok.vocab_size)
  params = trainer.load_params(common.model_dir(workdir, name),
                               objectives.LanguageModeling(model), config.train)
  return model, params
