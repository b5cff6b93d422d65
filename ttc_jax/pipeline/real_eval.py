"""Stages `sample` and `calibrate` of the real tasks (GSM8K, MATH500), with an imported or SFT model.

sample: per problem, one greedy completion and `num_samples` sampled ones, graded, in shards
(samples/<model>/<task>_<split>/shard_*.jsonl, written atomically; a rerun skips finished shards).
calibrate: greedy accuracy, pass@k and majority@k for every k <= num_samples, overall and per
MATH level, to calibration/<model>/<task>_<split>/calibration.json.
"""

from __future__ import annotations

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
from ttc_jax.pipeline import real_tasks, sample_shards, sft
from ttc_jax.pipeline.sample_shards import num_shards, shard_path
from ttc_jax.sampling.sampler import Sampler
from ttc_jax.verifiers import evaluation, selection


def sample_outputs(config: ml_collections.ConfigDict, workdir: str) -> list[manifest.Artifact]:
  return [artifacts.samples(config, workdir)]


def calibrate_outputs(config: ml_collections.ConfigDict, workdir: str
                      ) -> list[manifest.Artifact]:
  return [artifacts.calibration(config, workdir)]


def _problems(config: ml_collections.ConfigDict, workdir: str) -> list[real_tasks.Problem]:
  return real_tasks.load_problems(config, workdir, config.sample.split)[
      :config.sample.max_problems or None]


def _stop_ids(config, tok) -> list[int]:
  """EOS, and the end-of-solution piece(s): Gemma has '\\n\\n', '\\n\\n\\n', ... as single pieces."""
  end = real_tasks.end_of_solution(config)
  return [tok.eos_id] + [tok.id_of(end + '\n' * i) for i in range(3)]


def sample(config: ml_collections.ConfigDict, workdir: str) -> None:
  s = config.sample
  problems = _problems(config, workdir)  # bad data paths fail before the model loads
  directory = artifacts.samples(config, workdir).path
  total = num_shards(len(problems), s.problems_per_batch)
  model, params, tok = sft.load_model(config, workdir, 'sample')
  prompts = {p.id: tok.encode(real_tasks.prompt(config, p), add_bos=True) for p in problems}
  # Similar prompt lengths in one batch: one length bucket, less padding.
  order = sorted(problems, key=lambda p: (len(prompts[p.id]), p.id))
  os.makedirs(directory, exist_ok=True)
  sampler, stop = Sampler(model, eos_id=tok.eos_id), _stop_ids(config, tok)
  t0, done_tokens, done_shards = time.perf_counter(), 0, 0
  for shard in range(total):
    path = shard_path(directory, shard)
    if os.path.exists(path):
      continue
    batch = order[shard * s.problems_per_batch:(shard + 1) * s.problems_per_batch]
    ids = [prompts[p.id] for p in batch]
    key = jax.random.fold_in(jax.random.key(config.seed), shard)
    greedy = sampler.sample(params, ids, key=key, max_new_tokens=s.max_new_tokens,
                            temperature=0.0, stop_tokens=stop).sequences()
    sampled = sampler.sample(params, ids, key=key, max_new_tokens=s.max_new_tokens,
                             num_samples=s.num_samples, temperature=s.temperature, top_k=s.top_k,
                             top_p=s.top_p, stop_tokens=stop).sequences()
    lines = []
    for i, p in enumerate(batch):
      rows = sampled[i * s.num_samples:(i + 1) * s.num_samples]
      texts = [tok.decode(r) for r in rows]
      preds = [real_tasks.extract(config, t) for t in texts]
      greedy_text = tok.decode(greedy[i])
      greedy_pred = real_tasks.extract(config, greedy_text)
      lines.append(json.dumps({
          'id': p.id, 'level': p.level, 'subject': p.subject, 'answer': p.answer,
          'prompt_tokens': len(ids[i]), 'greedy': greedy_text, 'greedy_pred': greedy_pred,
          'greedy_correct': real_tasks.grade(greedy_pred, p.answer), 'completions': texts,
          'preds': preds, 'correct': [real_tasks.grade(x, p.answer) for x in preds],
          'num_tokens': [len(r) for r in rows]}))
      done_tokens += sum(len(r) for r in rows) + len(greedy[i])
    wd.atomic_write_text(path, '\n'.join(lines) + '\n')
    done_shards += 1
    elapsed = time.perf_counter() - t0
    eta = elapsed / done_shards * (total - shard - 1)
    logging.info('sample[%s/%s]: shard %d/%d (prompt %d tokens) %.1f tokens/s ETA %dm%02ds',
                 config.model_name, config.task.name, shard + 1, total, len(ids[-1]),
                 done_tokens / elapsed, eta // 60, eta % 60)
  logging.info('sample[%s/%s]: %d problems x (greedy + %d samples) in %s', config.model_name,
               config.task.name, len(order), s.num_samples, directory)


def load_samples(config: ml_collections.ConfigDict, workdir: str, stage: str) -> list[dict]:
  return sample_shards.read(artifacts.samples(config, workdir), len(_problems(config, workdir)),
                            config.sample.problems_per_batch, stage,
                            (*sample_shards.FIELDS, 'preds', 'greedy_correct', 'level'))


def majority_at_k(recs: list[dict], k: int, rng: np.random.Generator, draws: int) -> np.ndarray:
  """[P] P(majority vote over k random samples is correct), by the one selection rule
  (`selection.select_index`: samples without an answer do not vote; a tie goes to the answer
  drawn first, so over random draws ties split evenly)."""
  n = len(recs[0]['preds'])
  subsets = evaluation.draw_subsets(rng, len(recs), n, k, draws)
  answer_ids = np.stack([selection.answer_ids(r['preds']) for r in recs])
  correct = np.array([r['correct'] for r in recs], bool)
  return evaluation.method_accuracy(evaluation.Method('majority', 'majority'), answer_ids,
                                    correct, {}, subsets)


def summarize(recs: list[dict], ks: tuple[int, ...], seed: int, draws: int) -> dict:
  n = len(recs[0]['correct'])
  rng = np.random.default_rng(seed)
  out = {'num_problems': len(recs),
         'greedy_accuracy': float(np.mean([r['greedy_correct'] for r in recs])),
         'answer_extracted': float(np.mean([p is not None for r in recs for p in r['preds']]))}
  for k in (k for k in ks if k <= n):
    out[f'pass@{k}'] = float(np.mean([evaluation.pass_at_k(n, sum(r['correct']), k)
                                      for r in recs]))
    out[f'maj@{k}'] = float(np.mean(majority_at_k(recs, k, rng, draws)))
  return out


def calibrate(config: ml_collections.ConfigDict, workdir: str) -> None:
  recs = load_samples(config, workdir, 'calibrate')
  c, ks = config.calibrate, tuple(config.calibrate.ks)
  result = {'model': config.model_name, 'task': config.task.name, 'split': config.sample.split,
            'num_samples': len(recs[0]['correct']), 'temperature': config.sample.temperature,
            'num_shots': config.task.num_shots, 'max_new_tokens': config.sample.max_new_tokens,
            'overall': summarize(recs, ks, config.seed, c.majority_draws)}
  levels = sorted({r['level'] for r in recs if r['level']})
  if levels:
    result['levels'] = {str(l): summarize([r for r in recs if r['level'] == l], ks, config.seed,
                                          c.majority_draws) for l in levels}
  for name, row in [('all', result['overall']), *result.get('levels', {}).items()]:
    logging.info('calibrate[%s/%s] %s: %s', config.model_name, config.task.name, name,
                 ' '.join(f'{k}={v:.3f}' for k, v in row.items() if k != 'num_problems'))
  wd.atomic_write_json(artifacts.calibration(config, workdir).file('calibration.json'), result)
