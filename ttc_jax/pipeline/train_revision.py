"""Stage `train_revision`: the revision model, SFT from the proposer's weights on revision_data.

Each trajectory is one example: the chain context of its incorrect attempts
(`chains.context_tokens`: problem, then each attempt and an EOS separator) and the correct attempt,
the only tokens the loss covers. With train_revision.packing (default) examples are packed into
rows of train_revision.pack_len (segments attend only to themselves, positions restart; a
trajectory longer than that has a row of its own, up to max_len), so a batch holds real tokens
rather than padding, and attention's cost (a row's length squared) stays that of short rows (docs/revisions.md: tokens/s packed vs unpacked).
Checkpoints and info.json go to models/revision_<model> (`artifacts.revision_model`); read a
finished one with `load_revision_model`.
"""

from __future__ import annotations

import os

import ml_collections
import numpy as np
from absl import logging

from ttc_jax import artifacts
from ttc_jax import manifest
from ttc_jax import workdir as wd
from ttc_jax.model import transformer
from ttc_jax.model.config import TransformerConfig
from ttc_jax.pipeline import common, revision_data, train_base
from ttc_jax.training import data, objectives, trainer

STAGE = 'train_revision'


def outputs(config: ml_collections.ConfigDict, workdir: str) -> list[manifest.Artifact]:
  return [artifacts.revision_model(config, workdir)]


def examples(config: ml_collections.ConfigDict, workdir: str, stage: str
             ) -> tuple[data.Examples, int, int]:
  """(the SFT rows, packed or one per row per train_revision.packing; the trajectory count;
  the replayed plain examples)."""
  tok = common.load_tokenizer(config, workdir, stage)
  pairs = [t.example(tok.eos_id, config.revision.window)
           for t in revision_data.load_trajectories(config, workdir, stage)]
  cfg = config.train_revision
  # Replay: plain problem -> reference solution examples of the base task (the first training
  # problems, which revision_data also samples), so the fine-tune stays a solver.
  num_replay = int(round(cfg.replay * len(pairs)))
  replay = [common.encode_example(tok, p) for p in common.load_problems(
      config, workdir, 'train', stage)[:num_replay]]
  contexts = [c for c, _ in pairs] + [p for p, _ in replay]
  targets = [t for _, t in pairs] + [c for _, c in replay]
  if cfg.packing:
    ex = data.pack_segments(contexts, targets, cfg.max_len, row_len=cfg.pack_len,
                            max_len_key='train_revision.max_len')
  else:
    ex = data.pack(contexts, targets, cfg.max_len, max_len_key='train_revision.max_len')
  return ex, len(pairs), num_replay


def run(config: ml_collections.ConfigDict, workdir: str) -> None:
  cfg, name = config.train_revision, artifacts.revision_model_name(config)
  target = artifacts.revision_model(config, workdir)
  ex, num_trajectories, num_replay = examples(config, workdir, STAGE)
  model, params = train_base.load_model(config, workdir, config.model_name, STAGE)
  real = (ex.tokens != 0).sum(axis=1)
  logging.info('%s: %s from %s, %d rows (%s, %.0f real tokens per row of %d), %d steps of %d',
               STAGE, name, config.model_name, ex.size,
               'packed' if cfg.packing else 'one trajectory each', real.mean(), cfg.max_len,
               cfg.steps, cfg.batch_size)
  trainer.train(objectives.LanguageModeling(model), ex, cfg, target.path, f'{STAGE}[{name}]',
                init_params=params, **common.train_sharding(config))
  base_info = wd.read_json(artifacts.model(config, workdir).file('info.json'), stage='train_base')
  n_params = transformer.count_params(params)
  tokens_seen = cfg.steps * cfg.batch_size * float(real.mean())
  metrics = wd.read_jsonl(os.path.join(target.path, 'metrics.jsonl'), stage=STAGE)
  rate = float(np.mean([m['steps_per_s'] for m in metrics[1:] or metrics]))
  wd.atomic_write_json(target.file('info.json'), {
      'model': name, 'kind': 'revision', 'init_from': config.model_name, 'num_params': n_params,
      'steps': cfg.steps, 'batch_size': cfg.batch_size, 'packing': cfg.packing,
      'rows': ex.size, 'trajectories': num_trajectories, 'replay_examples': num_replay,
      'loss_tokens_per_row': float(ex.loss_mask.sum(axis=1).mean()),
      'real_tokens_per_row': float(real.mean()), 'padding_fraction': float(1 - real.mean() / cfg.max_len),
      'tokens_seen': tokens_seen, 'real_tokens_per_s': rate * cfg.batch_size * float(real.mean()),
      'finetune_flops': 6.0 * n_params * tokens_seen,
      'pretrain_flops': base_info['pretrain_flops'] + 6.0 * n_params * tokens_seen,
      'final_train_metrics': metrics[-1]})
  logging.info('%s: %s done (final loss %.4f)', STAGE, name, metrics[-1]['loss'])


def load_revision_model(config: ml_collections.ConfigDict, workdir: str, stage: str
                        ) -> tuple[TransformerConfig, dict]:
  """(model config, params) of a finished train_revision."""
  a = artifacts.revision_model(config, workdir)
  manifest.require(a, stage)
  tok = common.load_tokenizer(config, workdir, stage)
  model = common.model_config(config, config.model_name, tok.vocab_size)
  info = wd.read_json(a.file('info.json'), stage=STAGE)
  params = trainer.load_params(a.path, objectives.LanguageModeling(model), config.train_revision,
                               step=info['steps'], stage=STAGE)
  return model, params
