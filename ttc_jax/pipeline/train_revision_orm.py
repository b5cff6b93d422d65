"""Stage `train_revision_orm`: an ORM trained on the revision model's own attempts.

The revision model runs config.revision_orm.chains chains of revision_orm.length attempts on
training problems it was not fine-tuned on (the revision_orm.problems + validation_problems after
revision_data's); every attempt is graded. A fresh value head on the verifier backbone (the
PRM's, frozen) learns each attempt's final correctness at its last step end, through the
verifier code: `Scorer.step_inputs`, `train_prm.head_examples`, `objectives.HeadRegression`,
config.train_prm's trainer settings. With revision_orm.context the head reads each attempt after
the chain's earlier attempts (the paper's Appendix J); without, after the problem alone.
Writes models/orm_revision_<model>[_on_<backbone>]: samples.json (the graded attempts, reused by
a rerun), checkpoints, info.json (held-out Brier / BCE / AUC beside the base PRM's on the same
attempts). Read it with `load_revision_verifier`.
"""

from __future__ import annotations

import os
import time

import jax
import ml_collections
import numpy as np
from absl import logging

from ttc_jax import artifacts
from ttc_jax import manifest
from ttc_jax import workdir as wd
from ttc_jax.model.config import TransformerConfig
from ttc_jax.pipeline import common, prm_data, revision_data, train_base, train_prm
from ttc_jax.pipeline.train_revision import load_revision_model
from ttc_jax.revision import chains
from ttc_jax.tasks import arith
from ttc_jax.training import objectives, trainer
from ttc_jax.verifiers import scoring
from ttc_jax.verifiers.steps import step_ends

STAGE = 'train_revision_orm'


def outputs(config: ml_collections.ConfigDict, workdir: str) -> list[manifest.Artifact]:
  return [artifacts.revision_verifier(config, workdir)]


def verifier_prompt(prompt: list[int], earlier: list[list[int]], config: ml_collections.ConfigDict,
                    eos_id: int) -> list[int]:
  """What the revision ORM reads before an attempt: the chain's context (revision_orm.context)
  or the problem alone."""
  if not config.revision_orm.context:
    return list(prompt)
  return chains.context_tokens(prompt, earlier, eos_id=eos_id, window=config.revision.window)


def _sample(config, workdir: str, problems: list[arith.Problem]) -> list[dict]:
  """The revision model's chains on `problems`, graded: one record per attempt."""
  o, r = config.revision_orm, config.revision
  model, params = load_revision_model(config, workdir, STAGE)
  tok = common.load_tokenizer(config, workdir, STAGE)
  prompts = [common.encode_example(tok, p)[0] for p in problems]
  t0, attempts_of, seconds = time.perf_counter(), [], 0.0
  # Batches of similar problems, each sampled only as long as its longest correct solution.
  per = max(1, r.rows_per_batch // o.chains)
  for b, start in enumerate(range(0, len(problems), per)):
    batch = problems[start:start + per]
    res = chains.run_chains(model, params, prompts[start:start + per], [o.length] * o.chains,
                            jax.random.fold_in(jax.random.key(config.seed), b),
                            eos_id=tok.eos_id,
                            max_new_tokens=common.attempt_tokens(config, batch, r.max_new_tokens),
                            temperature=r.temperature, top_k=r.top_k, top_p=r.top_p,
                            window=r.window, rows_per_batch=r.rows_per_batch)
    attempts_of += res.attempts
    seconds += res.seconds
    logging.info('%s: %d/%d problems sampled, %.0fs', STAGE, start + len(batch), len(problems),
                 time.perf_counter() - t0)
  out = []
  for p, prompt, problem_chains in zip(problems, prompts, attempts_of):
    for c, attempts in enumerate(problem_chains):
      for j, ids in enumerate(attempts):
        text = tok.decode(ids)
        out.append({'problem_id': p.id, 'num_ops': p.num_ops, 'answer': p.answer, 'chain': c,
                    'step': j + 1, 'problem_ids': prompt,
                    'prompt_ids': verifier_prompt(prompt, attempts[:j], config, tok.eos_id),
                    'completion_ids': ids, 'completion': text,
                    'correct': arith.grade(text, p.answer)})
  logging.info('%s: %d attempts in %.0fs (%.1f attempts/s)', STAGE, len(out), seconds,
               len(out) / max(seconds, 1e-9))
  return out


def _labels(recs: list[dict], delimiter_id: int, eos_id: int) -> list[prm_data.StepLabels]:
  out = []
  for r in recs:
    ends = step_ends(r['completion_ids'], delimiter_id, eos_id)
    out.append(prm_data.StepLabels(
        problem_id=r['problem_id'], num_ops=r['num_ops'], answer=r['answer'],
        sample_index=r['step'], prompt_ids=r['prompt_ids'], completion_ids=r['completion_ids'],
        completion=r['completion'], step_ends=ends, labels=[float(r['correct'])] * len(ends),
        correct=r['correct']))
  return [l for l in out if l.step_ends]


def _auc(p: np.ndarray, y: np.ndarray) -> float | None:
  """Probability that a right attempt outscores a wrong one (ties count half)."""
  pos, neg = p[y > 0.5], p[y <= 0.5]
  if not len(pos) or not len(neg):
    return None
  return float(((pos[:, None] > neg[None]).mean() + 0.5 * (pos[:, None] == neg[None]).mean()))


def _metrics(p: np.ndarray, y: np.ndarray) -> dict:
  p = np.clip(p, 1e-6, 1 - 1e-6)
  return {'brier': float(np.mean((p - y) ** 2)),
          'bce': float(np.mean(-(y * np.log(p) + (1 - y) * np.log(1 - p)))), 'auc': _auc(p, y)}


def run(config: ml_collections.ConfigDict, workdir: str) -> None:
  o = config.revision_orm
  target = artifacts.revision_verifier(config, workdir)
  samples_path = target.file('samples.json')
  if os.path.exists(samples_path):
    recs = wd.read_json(samples_path, stage=STAGE)
  else:
    problems = revision_data.training_problems(
        config, workdir, config.revision_data.problems, o.problems + o.validation_problems,
        STAGE, 'revision_orm.problems')
    recs = _sample(config, workdir, problems)
    wd.atomic_write_json(samples_path, recs)
  # Held out: every problem whose id sorts into the last validation_problems of them.
  ids = sorted({r['problem_id'] for r in recs})
  held = set(ids[len(ids) - o.validation_problems:]) if o.validation_problems else set()
  tok = common.load_tokenizer(config, workdir, STAGE)
  delimiter = tok.id_of(arith.STEP_DELIMITER)
  labels = _labels([r for r in recs if r['problem_id'] not in held], delimiter, tok.eos_id)
  held_recs = [r for r in recs if r['problem_id'] in held]
  valid = _labels(held_recs, delimiter, tok.eos_id)
  backbone_name = artifacts.backbone_name(config)
  model, backbone = train_base.load_model(config, workdir, backbone_name, STAGE)
  scorer = scoring.Scorer(model, delimiter_id=delimiter, eos_id=tok.eos_id)
  inputs = scorer.step_inputs(backbone, [l.prompt_ids for l in labels],
                              [l.completion_ids for l in labels])
  ex = train_prm.head_examples(labels, 'orm', inputs)
  logging.info('%s: %d attempts (%.0f%% right) from the revision model, %d held out; head on %s',
               STAGE, len(labels), 100 * np.mean([l.correct for l in labels]), len(valid),
               backbone_name)
  head = trainer.train(objectives.HeadRegression(model), ex, config.train_prm, target.path, STAGE,
                       **common.train_sharding(config))
  whole = dict(head, transformer=backbone)
  info = {'kind': 'orm', 'trained_on': artifacts.revision_model_name(config),
          'backbone': backbone_name, 'context': o.context, 'steps': config.train_prm.steps,
          'train_attempts': len(labels), 'train_accuracy': float(np.mean([l.correct for l in labels])),
          'validation_attempts': len(valid)}
  if valid:
    y = np.array([float(l.correct) for l in valid])
    final = lambda params, prompts: np.array([s[-1] for s in scorer.score(
        params, prompts, [l.completion_ids for l in valid])])
    info['validation'] = _metrics(final(whole, [l.prompt_ids for l in valid]), y)
    # The base PRM reads the problem alone, as it was trained: the distribution shift it meets.
    _, prm = train_prm.load_verifier(config, workdir, 'prm', STAGE)
    problem_only = [r['problem_ids'] for r in held_recs
                    if step_ends(r['completion_ids'], delimiter, tok.eos_id)]
    info['validation_base_prm'] = _metrics(final(prm, problem_only), y)
  wd.atomic_write_json(target.file('info.json'), info)
  logging.info('%s: done: %s', STAGE, info.get('validation'))


def load_revision_verifier(config: ml_collections.ConfigDict, workdir: str, stage: str
                           ) -> tuple[TransformerConfig, dict]:
  """(model config, {'transformer', 'value_head'}) of a finished train_revision_orm."""
  a = artifacts.revision_verifier(config, workdir)
  manifest.require(a, stage)
  model, backbone = train_base.load_model(config, workdir, artifacts.backbone_name(config), stage)
  info = wd.read_json(a.file('info.json'), stage=STAGE)
  head = trainer.load_params(a.path, objectives.HeadRegression(model), config.train_prm,
                             step=info['steps'], stage=STAGE)
  return model, dict(head, transformer=backbone)
