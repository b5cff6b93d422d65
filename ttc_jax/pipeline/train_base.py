"""Stage `train_base`: train an LM (config.model_name: `base`, `large`, ...) on the task.

From a random start, or, with config.train_init naming a trained model of the same architecture,
from its final weights (e.g. `base_long`: the base model trained on for more steps). Writes
checkpoints to models/<name>/ (resumable) and, when finished, models/<name>/info.json with the
parameter count and pretraining FLOPs 6*N*D (a continued model's include its start's).
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


def run(config: ml_collections.ConfigDict, workdir: str,
        init_key: str = 'train_init') -> None:
  """`init_key`: the config key that set config.train_init, as error messages name it."""
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
  init, init_info = _initial_params(config, workdir, name, model, init_key)
  logging.info('train_base: model %s, %d params, %d examples, %d steps of %d%s', name, n_params,
               examples.size, cfg.steps, cfg.batch_size,
               f', from {config.train_init}' if init is not None else '')
  trainer.train(objective, examples, cfg, common.model_dir(workdir, name), f'train_base[{name}]',
                init_params=init)
  tokens_per_example = float(np.mean((examples.tokens != 0).sum(axis=1)))
  tokens_seen = cfg.steps * cfg.batch_size * tokens_per_example
  # FLOPs and tokens include those of the model this one continues (train_init).
  info = {'model': name, 'num_params': n_params, 'steps': cfg.steps, 'batch_size': cfg.batch_size,
          'tokens_seen': tokens_seen + init_info.get('tokens_seen', 0.0),
          'pretrain_flops': 6.0 * n_params * tokens_seen + init_info.get('pretrain_flops', 0.0),
          'vocab_size': tok.vocab_size}
  if init is not None:
    info.update(init_from=config.train_init, init_steps=init_info['steps'])
  wd.atomic_write_json(info_path, info)
  logging.info('train_base: %s done: %.3g training FLOPs (6ND)', name, info['pretrain_flops'])


def _initial_params(config: ml_collections.ConfigDict, workdir: str, name: str, model,
                    init_key: str):
  """(params, info.json) of the trained model config.train_init names, which `name` continues
  from; (None, {}) for a random start."""
  source = config.train_init
  if not source:
    return None, {}
  if source == name:
    raise ValueError(f'{init_key}={source!r} is the model being trained; name another model')
  source_model = common.model_config(config, source, model.vocab_size)
  if transformer.param_shapes(source_model) != transformer.param_shapes(model):
    raise ValueError(f'{init_key}={source!r} has other parameter shapes than {name!r}; '
                     'expected a model of the same architecture')
  _, params = load_model(config, workdir, source, 'train_base')
  return params, wd.read_json(common.model_info_path(workdir, source))


def load_model(config: ml_collections.ConfigDict, workdir: str, name: str, stage: str):
  """(model config, params) of a finished train_base run."""
  common.require(common.model_info_path(workdir, name), stage,
                 'train_base' + ('' if name == 'base' else f' with --config.model_name={name}'))
  tok = common.load_tokenizer(workdir, stage)
  model = common.model_config(config, name, tok.vocab_size)
  params = trainer.load_params(common.model_dir(workdir, name),
                               objectives.LanguageModeling(model), config.train)
  return model, params
