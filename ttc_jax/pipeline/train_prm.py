"""Stages `train_verifier_backbone`, `train_prm` and `train_orm`: value heads on a trained LM.

The backbone is config.verifier_backbone (default `base_long`: the base architecture trained on
from the base model, which `train_verifier_backbone` trains with config.train_verifier_backbone),
or the proposer (config.model_name) when that is ''. The labels are always the proposer's
rollouts. PRM and ORM are the backbone plus a fresh `objectives.ValueHead` (reading the
activation and the backbone's likelihood of the completion), trained with BCE, AdamW, through the
one trainer (config.train_prm). With freeze_backbone (the default) only the head trains, on the
backbone's `head_inputs` at the step ends, computed in one pass per solution before training
(`objectives.HeadRegression`); the checkpoint then holds the head alone. The PRM's targets are
the soft Monte-Carlo labels at every step end (`steps.step_ends`); the ORM's is the solution's
correctness at its last step end only. Checkpoints go to models/<verifier_name> (`prm`, `orm`;
`prm_<proposer>` for another proposer, `..._on_<backbone>` for a backbone other than the
proposer); info.json, written when done, holds the final training metrics and the held-out
(validation labels) BCE and Brier score. Read a finished one with `load_verifier`.
"""

from __future__ import annotations

import functools
import json
import os
import time

import jax
import ml_collections
import numpy as np
from absl import logging

from ttc_jax import artifacts
from ttc_jax import manifest
from ttc_jax import workdir as wd
from ttc_jax.errors import BadInputError, UserError
from ttc_jax.model import transformer
from ttc_jax.model.config import TransformerConfig
from ttc_jax.model.transformer import PAD_ID
from ttc_jax.pipeline import common, prm_data, train_base
from ttc_jax.tasks import arith
from ttc_jax.training import data, objectives, trainer
from ttc_jax.verifiers import scoring

def run_backbone(config: ml_collections.ConfigDict, workdir: str) -> None:
  """Stage train_verifier_backbone: `train_base` for the verifier backbone, continued from the
  trained model config.train_verifier_backbone.init ('' = a random start) with that block's
  steps and learning rate (`artifacts.backbone_config`). Nothing to do when the verifiers sit on
  the proposer."""
  name = artifacts.backbone_name(config)
  if name == config.model_name:
    logging.info('train_verifier_backbone: the verifiers sit on the proposer %s; nothing to train',
                 name)
    return
  train_base.run(artifacts.backbone_config(config), workdir, init_key='train_verifier_backbone.init')


def backbone_outputs(config: ml_collections.ConfigDict, workdir: str) -> list[manifest.Artifact]:
  name = artifacts.backbone_name(config)
  if name == config.model_name:
    return []
  train_base.check_init(artifacts.backbone_config(config), 'train_verifier_backbone.init')
  return [artifacts.model(config, workdir, name)]


def prm_outputs(config: ml_collections.ConfigDict, workdir: str) -> list[manifest.Artifact]:
  return [artifacts.verifier(config, workdir, 'prm')]


def orm_outputs(config: ml_collections.ConfigDict, workdir: str) -> list[manifest.Artifact]:
  return [artifacts.verifier(config, workdir, 'orm')]


def targets(labels: prm_data.StepLabels, kind: str) -> dict[int, float]:
  """{completion index: target}: every step end's soft label (prm), or correctness at the last."""
  if kind == 'prm':
    return dict(zip(labels.step_ends, labels.labels))
  return {labels.step_ends[-1]: float(labels.correct)}


def examples(labels: list[prm_data.StepLabels], kind: str, max_len: int) -> data.Examples:
  return data.pack([l.prompt_ids for l in labels], [l.completion_ids for l in labels], max_len,
                   max_len_key='train_prm.max_len',
                   values=[targets(l, kind) for l in labels])


def head_examples(labels: list[prm_data.StepLabels], kind: str,
                  inputs: list[np.ndarray]) -> data.Examples:
  """Examples for `HeadRegression`: row n holds solution n's step ends only (its step-end
  tokens, their head inputs, and the `targets` there); inputs[n] is [num_steps, F]
  (`Scorer.step_inputs`)."""
  width = max(len(l.step_ends) for l in labels)
  n, f = len(labels), inputs[0].shape[1]
  tokens = np.full((n, width), PAD_ID, np.int32)
  features = np.zeros((n, width, f), np.float32)
  value_targets = np.zeros((n, width), np.float32)
  value_mask = np.zeros((n, width), np.float32)
  for i, (l, x) in enumerate(zip(labels, inputs)):
    if len(x) != len(l.step_ends):
      raise BadInputError(f'prm_data solution {l.problem_id}/{l.sample_index} has '
                       f'{len(l.step_ends)} step ends but the scorer finds {len(x)}; expected '
                       'equal (relabel with prm_data)')
    s = len(l.step_ends)
    tokens[i, :s] = [l.completion_ids[e] for e in l.step_ends]
    features[i, :s] = x
    t = targets(l, kind)
    for step, e in enumerate(l.step_ends):
      if e in t:
        value_targets[i, step], value_mask[i, step] = t[e], 1.0
  return data.Examples(tokens=tokens, loss_mask=np.zeros((n, width), np.float32),
                       value_targets=value_targets, value_mask=value_mask, features=features)


@functools.partial(jax.jit, static_argnames=('config', 'eos_id'))
def _probabilities(params, tokens_BxT, completion_BxT, *, config: TransformerConfig, eos_id: int):
  return jax.nn.sigmoid(objectives.value_logits(config, params, tokens_BxT, completion_BxT,
                                                eos_id))


def heldout_metrics(model: TransformerConfig, params, labels: list[prm_data.StepLabels],
                    max_len: int, eos_id: int, batch_size: int = 64) -> dict[str, float]:
  """Brier score and BCE of the head's probabilities against the MC labels at every step end
  (`step_*`) and against correctness at the last step end (`final_*`)."""
  out = {}
  for kind, prefix in (('prm', 'step'), ('orm', 'final')):
    ex = examples(labels, kind, max_len)
    probs = np.concatenate([
        np.asarray(_probabilities(params, ex.tokens[i:i + batch_size],
                                  ex.loss_mask[i:i + batch_size], config=model,
                                  eos_id=eos_id))
        for i in range(0, ex.size, batch_size)])
    m = ex.value_mask > 0
    p, y = np.clip(probs[m], 1e-6, 1 - 1e-6), ex.value_targets[m]
    out[f'{prefix}_brier'] = float(np.mean((p - y) ** 2))
    out[f'{prefix}_bce'] = float(np.mean(-(y * np.log(p) + (1 - y) * np.log(1 - p))))
    out[f'{prefix}_count'] = int(m.sum())
  return out


def train(config: ml_collections.ConfigDict, workdir: str, kind: str,
          stop_after: int | None = None) -> None:
  """Trains the `kind` verifier (resuming its checkpoints); writes info.json when finished."""
  stage = f'train_{kind}'
  target = artifacts.verifier(config, workdir, kind)
  train_labels = prm_data.load_labels(config, workdir, 'train', stage)
  if not train_labels:
    raise UserError(f'stage {stage}: prm_data kept no solution with a parseable answer (the '
                    f'proposer {config.model_name} writes none); train it longer')
  backbone_model = artifacts.backbone_name(config)
  model, backbone = train_base.load_model(config, workdir, backbone_model, stage)
  cfg = config.train_prm
  directory = target.path
  scorer = _scorer(config, model, workdir, stage)
  if cfg.freeze_backbone:
    t0 = time.perf_counter()
    inputs = scorer.step_inputs(
        backbone, [l.prompt_ids for l in train_labels], [l.completion_ids for l in train_labels])
    logging.info('%s: head inputs of %d solutions from one backbone pass each in %.1f s', stage,
                 len(inputs), time.perf_counter() - t0)
    ex = head_examples(train_labels, kind, inputs)
    objective = objectives.HeadRegression(model)
    init = None
  else:
    ex = examples(train_labels, kind, cfg.max_len)
    objective = objectives.ValueRegression(model, eos_id=scorer.eos_id)
    init = objective.init(jax.random.key(cfg.seed), backbone=backbone)
  logging.info('%s: backbone %s (%s), %d solutions, %d targets, %d steps of %d', stage,
               backbone_model, 'frozen' if cfg.freeze_backbone else 'trained', ex.size,
               int(ex.value_mask.sum()), cfg.steps, cfg.batch_size)
  params = trainer.train(objective, ex, cfg, directory, stage, init_params=init,
                         stop_after=stop_after, **common.train_sharding(config))
  if stop_after is not None and stop_after < cfg.steps:
    return
  whole = dict(params, transformer=backbone) if cfg.freeze_backbone else params
  final = wd.read_jsonl(os.path.join(directory, 'metrics.jsonl'), stage=stage)[-1]
  valid = prm_data.load_labels(config, workdir, 'validation', stage)
  info = {'kind': kind, 'proposer': config.model_name, 'backbone': backbone_model,
          'num_params': transformer.count_params(backbone),
          'freeze_backbone': cfg.freeze_backbone,
          'steps': cfg.steps,
          'train_solutions': ex.size, 'train_targets': int(ex.value_mask.sum()),
          'final_train_metrics': final, 'validation_solutions': len(valid),
          'validation': heldout_metrics(model, whole, valid, cfg.max_len,
                                        scorer.eos_id) if valid else {}}
  wd.atomic_write_json(target.file('info.json'), info)
  logging.info('%s: done: %s', stage, json.dumps(info['validation']))


def _scorer(config: ml_collections.ConfigDict, model: TransformerConfig, workdir: str,
            stage: str) -> scoring.Scorer:
  tok = common.load_tokenizer(config, workdir, stage)
  return scoring.Scorer(model, delimiter_id=tok.id_of(arith.STEP_DELIMITER), eos_id=tok.eos_id)


def run_prm(config: ml_collections.ConfigDict, workdir: str) -> None:
  train(config, workdir, 'prm')


def run_orm(config: ml_collections.ConfigDict, workdir: str) -> None:
  train(config, workdir, 'orm')


def load_verifier(config: ml_collections.ConfigDict, workdir: str, kind: str,
                  stage: str) -> tuple[TransformerConfig, dict]:
  """(model config, {'transformer', 'value_head'} params) of a finished train_prm / train_orm.

  Score with `verifiers.scoring.Scorer` (or `objectives.value_logits`; sigmoid -> probability).
  """
  a = artifacts.verifier(config, workdir, kind)
  manifest.require(a, stage)
  model, backbone = train_base.load_model(config, workdir, artifacts.backbone_name(config), stage)
  info = wd.read_json(a.file('info.json'), stage=a.stage)
  if info['freeze_backbone']:  # the checkpoint holds the head alone
    head = trainer.load_params(a.path, objectives.HeadRegression(model), config.train_prm,
                               step=info['steps'], stage=a.stage)
    return model, dict(head, transformer=backbone)
  return model, trainer.load_params(a.path, objectives.ValueRegression(model), config.train_prm,
                                    step=info['steps'], stage=a.stage)
