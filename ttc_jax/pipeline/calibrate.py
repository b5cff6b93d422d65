"""Stage `calibrate`: pass@k per difficulty bin and per num_ops, the error-locality measure, a plot.

Bins are quintiles of oracle difficulty (each problem's pass@1 over its samples, graded against
the gold answer), bin 1 = easiest, as in the paper. The difficulty is always the base model's: a
second model (`large`) is binned by the base model's samples, so each bin holds the same problems
for both and its rows also carry the base model's pass@1 (the FLOPs-matched comparison's bins).
"""

from __future__ import annotations


import ml_collections
import numpy as np
from absl import logging

from ttc_jax import artifacts
from ttc_jax import manifest
from ttc_jax import workdir as wd
from ttc_jax.errors import UserError
from ttc_jax.pipeline import common, figures, sample
from ttc_jax.tasks import arith
from ttc_jax.verifiers.evaluation import difficulty_bins, pass_at_k


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


def outputs(config: ml_collections.ConfigDict, workdir: str) -> list[manifest.Artifact]:
  return [artifacts.calibration(config, workdir)]


def run(config: ml_collections.ConfigDict, workdir: str) -> None:
  name, c = config.model_name, config.calibrate
  out = artifacts.calibration(config, workdir)
  recs = sample.load_samples(config, workdir, 'calibrate')
  problems = {p.id: p for p in common.load_problems(
      config, workdir, config.sample.split, 'calibrate')}
  ks = tuple(c.ks)
  base = recs
  if name != 'base':
    by_id = {r['id']: r for r in sample.load_samples(config, workdir, 'calibrate', 'base')}
    missing = [r['id'] for r in recs if r['id'] not in by_id]
    if missing:
      raise UserError(f'calibrate[{name}]: {len(missing)} problems (e.g. {missing[0]}) have no '
                      f'base-model samples to bin them by; sample the base model on them first')
    base = [by_id[r['id']] for r in recs]
  if c.num_bins > len(recs):
    raise UserError(f'--config.calibrate.num_bins={c.num_bins} exceeds the {len(recs)} sampled '
                    'problems; expected at most one bin per problem')
  base_pass1 = np.array([np.mean(r['correct']) for r in base])
  bins = difficulty_bins(base_pass1, c.num_bins)
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
  # Per problem, in sample order: the policy's cross-validation over problems reads these.
  wd.atomic_write_json(out.file('per_problem.json'), {
      'model': name, 'split': config.sample.split, 'bins_by': 'base',
      'problems': [{'id': r['id'], 'num_ops': r['num_ops'], 'num_samples': len(r['correct']),
                    'pass@1': float(np.mean(r['correct'])), 'base_pass@1': float(p1),
                    'bin': int(b)} for r, p1, b in zip(recs, base_pass1, bins)]})
  wd.atomic_write_json(out.file('difficulty.json'), {
      'kind': 'oracle', 'by': "the base model's pass@1 over its sample pool, against the gold "
      'answer', 'num_bins': c.num_bins, 'bin_1': 'easiest',
      'bins': {r['id']: int(b) for r, b in zip(recs, bins)}})
  _plot(result, ks, out.file('pass_at_k.png'))
  wd.atomic_write_json(out.file('calibration.json'), result)


def _plot(result: dict, ks: tuple[int, ...], path: str) -> None:
  plt = figures.pyplot()
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
  wd.atomic_write_figure(fig, path, dpi=120)
  plt.close(fig)
