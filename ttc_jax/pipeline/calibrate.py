"""Stage `calibrate`: pass@k per difficulty bin and per num_ops, the error-locality measure, a plot.

Bins are quintiles of oracle difficulty (each problem's pass@1 over its samples, graded against
the gold answer), bin 1 = easiest, as in the paper. The difficulty is always the base model's: a
second model (`large`) is binned by the base model's samples, so each bin holds the same problems
for both and its rows also carry the base model's pass@1 (the FLOPs-matched comparison's bins).
"""

from __future__ import annotations

import math
import os

import matplotlib
import ml_collections
import numpy as np
from absl import logging

from ttc_jax import workdir as wd
from ttc_jax.pipeline import common, real_tasks, sample
from ttc_jax.tasks import arith

matplotlib.use('Agg')
import matplotlib.pyplot as plt  # noqa: E402


def pass_at_k(n: int, c: int, k: int) -> float:
  """Unbiased pass@k of Chen et al. (2021) from c correct out of n samples."""
  if n - c < k:
    return 1.0
  return 1.0 - math.comb(n - c, k) / math.comb(n, k)


def difficulty_bins(pass1: np.ndarray, num_bins: int) -> np.ndarray:
  """Bin per problem, 1 = easiest: equal-size quantiles of pass@1 (ties broken by index)."""
  order = np.lexsort((np.arange(len(pass1)), -pass1))
  bins = np.empty(len(pass1), np.int64)
  for b, chunk in enumerate(np.array_split(order, num_bins)):
    bins[chunk] = b + 1
  return bins


def summarize(recs: list[dict], ks: tuple[int, ...]) -> dict:
  n = len(recs[0]['correct'])
  out = {'num_problems': len(recs)}
  for k in ks:
    if k <= n:
      out[f'pass@{k}'] = float(np.mean([pass_at_k(n, sum(r['correct']), k) for r in recs]))
  return out


def error_locality(recs: list[dict], problems: dict[str, arith.Problem], limit: int,
                   seed: int) -> dict:
  """How the first wrong step of wrong solutions fails (replaying each step)."""
  wrong = [(r, t) for r in recs for t, ok in zip(r['completions'], r['correct']) if not ok]
  rng = np.random.default_rng(seed)
  picked = [wrong[i] for i in rng.permutation(len(wrong))[:limit]]
  kinds = {'arithmetic': 0, 'copy': 0, 'structure': 0, 'none': 0}
  for r, text in picked:
    check = arith.first_wrong_step(problems[r['id']], text)
    kinds[check.kind or 'none'] += 1
  total = max(len(picked), 1)
  return {'num_wrong_sampled': len(picked),
          'fraction': {k: v / total for k, v in kinds.items()}}


def run(config: ml_collections.ConfigDict, workdir: str) -> None:
  if real_tasks.is_real(config):  # GSM8K / MATH500 with a real model
    from ttc_jax.pipeline import real_eval  # pylint: disable=g-import-not-at-top (cycle)
    return real_eval.calibrate(config, workdir)
  name, c = config.model_name, config.calibrate
  out_path = common.calibration_path(workdir, name)
  if os.path.exists(out_path):
    logging.info('calibrate: %s exists, skipping', out_path)
    return
  recs = sample.load_samples(config, workdir, 'calibrate')
  problems = {p.id: p for p in common.load_problems(
      config, workdir, config.sample.split, 'calibrate')}
  ks = tuple(c.ks)
  base = recs
  if name != 'base':
    base_config = config.copy_and_resolve_references()
    base_config.model_name = 'base'
    by_id = {r['id']: r for r in sample.load_samples(base_config, workdir, 'calibrate')}
    missing = [r['id'] for r in recs if r['id'] not in by_id]
    if missing:
      raise ValueError(f'calibrate[{name}]: {len(missing)} problems (e.g. {missing[0]}) have no '
                       f'base-model samples to bin them by; sample the base model on them first')
    base = [by_id[r['id']] for r in recs]
  bins = difficulty_bins(np.array([np.mean(r['correct']) for r in base]), c.num_bins)
  rows = {}
  for b in range(1, c.num_bins + 1):
    rows[str(b)] = summarize([r for r, x in zip(recs, bins) if x == b], ks)
    if name != 'base':
      rows[str(b)]['base_pass@1'] = summarize([r for r, x in zip(base, bins) if x == b],
                                              (1,))['pass@1']
  result = {
      'model': name, 'split': config.sample.split, 'num_samples': len(recs[0]['correct']),
      'bins_by': 'base', 'overall': summarize(recs, ks), 'bins': rows,
      'num_ops': {str(k): summarize([r for r in recs if r['num_ops'] == k], ks)
                  for k in sorted({r['num_ops'] for r in recs})},
      'error_locality': error_locality(recs, problems, c.error_sample, config.seed),
  }
  for b, row in result['bins'].items():
    logging.info('calibrate[%s]: bin %s %s', name, b,
                 ' '.join(f'{k}={v:.3f}' for k, v in row.items() if 'pass@' in k))
  logging.info('calibrate[%s]: first wrong step kinds %s', name,
               result['error_locality']['fraction'])
  _plot(result, ks, os.path.splitext(out_path)[0] + '.png')
  wd.atomic_write_json(out_path, result)


def _plot(result: dict, ks: tuple[int, ...], path: str) -> None:
  fig, ax = plt.subplots(figsize=(5, 3.5))
  for b, row in result['bins'].items():
    xs = [k for k in ks if f'pass@{k}' in row]
    ax.plot(xs, [row[f'pass@{k}'] for k in xs], marker='o', label=f'bin {b}')
  ax.set_xscale('log', base=2)
  ax.set_xlabel('k (samples)')
  ax.set_ylabel('pass@k')
  ax.set_ylim(0, 1.02)
  ax.set_title(f"{result['model']}: pass@k by difficulty bin (1 = easiest)")
  ax.legend(fontsize=7)
  fig.tight_layout()
  tmp = path + '.tmp.png'
  fig.savefig(tmp, dpi=120)
  plt.close(fig)
  os.replace(tmp, path)
