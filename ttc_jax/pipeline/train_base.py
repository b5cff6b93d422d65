"""Stage `train_base`: train an LM (config.model_name: `base`, `large`, ...) on the task.

From a random start, or, with config.train_init naming a trained model of the same architecture,
from its final weights (e.g. `base_long`: the base model trained on for more steps). Writes
checkpoints to models/<name>/ (resumable) and, when finished, models/<name>/info.json with the
parameter count and pretraining FLOPs 6*N*D (a continued model's include its start's). Read a
finished one with `load_model`: it loads the checkpoint at the step info.json records.
"""

from __future__ import annotations

import ml_collections
import numpy as np
from absl import logging

from ttc_jax import artifacts
from ttc_jax import manifest
from ttc_jax import workdir as wd
from ttc_jax.errors import UserError
from ttc_jax.model import transformer
from ttc_jax.pipeline import common
from ttc_jax.training import data, objectives, trainer


def outputs(config: ml_collections.ConfigDict, workdir: str) -> list[manifest.Artifact]:
  check_init(config, 'train_init')
  return [artifacts.model(config, workdir)]


def check_init(config: ml_collections.ConfigDict, init_key: str) -> None:
  """Before any work: the model config.train_init names has this model's parameter shapes."""
  source, name = config.train_init, config.model_name
  if source and source != name and source in config.models:
    shapes = lambda m: transformer.param_shapes(common.model_config(config, m, 64))
    if shapes(source) != shapes(name):
      raise UserError(f'{init_key}={source!r} has other parameter shapes than {name!r}; '
                      'expected a model of the same architecture')


def run(config: ml_collections.ConfigDict, workdir: str,
        init_key: str = 'train_init') -> None:
  """`init_key`: the config key that set config.train_init, as error messages name it."""
  name = config.model_name
  stage = 'train_base' if init_key == 'train_init' else 'train_verifier_backbone'
  target = artifacts.model(config, workdir)
  info_path = target.file('info.json')
  tok = common.load_tokenizer(config, workdir, stage)
  problems = common.load_problems(config, workdir, 'train', stage)
  pairs = [common.encode_example(tok, p) for p in problems]
  examples = data.pack([p for p, _ in pairs], [c for _, c in pairs], config.train.max_len)
  model = common.model_config(config, name, tok.vocab_size)
  objective = objectives.LanguageModeling(model)
  n_params = transformer.count_params(transformer.param_shapes(model))
  cfg = config.train
  init, init_info = _initial_params(config, workdir, init_key, stage)
  logging.info('%s: model %s, %d params, %d examples, %d steps of %d%s', stage, name, n_params,
               examples.size, cfg.steps, cfg.batch_size,
               f', from {config.train_init}' if init is not None else '')
  trainer.train(objective, examples, cfg, target.path, f'{stage}[{name}]',
                init_params=init, **common.train_sharding(config))
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
  logging.info('%s: %s done: %.3g training FLOPs (6ND)', stage, name, info['pretrain_flops'])


def _initial_params(config: ml_collections.ConfigDict, workdir: str, init_key: str, stage: str):
  """(params, info.json) of the trained model config.train_init names, which `name` continues
  from; (None, {}) for a random start."""
  source = config.train_init
  if not source:
    return None, {}
  check_init(config, init_key)
  start = artifacts.model(config, workdir, source)
  _, params = _load(config, workdir, manifest.foreign(start), stage)
  return params, wd.read_json(start.file('info.json'), stage=start.stage)


def load_model(config: ml_collections.ConfigDict, workdir: str, name: str, stage: str):
  """(model config, params) of a finished train_base (or train_verifier_backbone) run."""
  return _load(config, workdir, artifacts.model(config, workdir, name), stage)


def _load(config, workdir: str, a: manifest.Artifact, stage: str):
  manifest.require(a, stage)
  tok = common.load_tokenizer(config, workdir, stage)
  model = common.model_config(config, a.name.split('/')[-1], tok.vocab_size)
  info = wd.read_json(a.file('info.json'), stage=a.stage)
  params = trainer.load_params(a.path, objectives.LanguageModeling(model), config.train,
                               step=info['steps'], stage=a.stage)
  return model, params
