"""Weighted best-of-N against how sharp the verifier's scores are, from eval_verifiers' cache.

Weighted BoN (the paper's) sums each distinct answer's verifier scores. With a calibrated verifier
a sample that looks wrong still scores its probability of being right (0.05-0.2 here), and a
frequent wrong answer sums many of those past a rare right one. Raising every score to a power k
before the sum (k = 1: the paper) moves weighted BoN from majority-like (k -> 0) to best-of-N-like
(k -> inf). This measures that curve on the scores `eval_verifiers` cached for a pool: per
difficulty bin at N, weighted `last` / `min` / `prod` with the PRM and weighted with the ORM for
each k, beside majority, best-of-N and the gap between pass@1 and the oracle that each closes.
It changes nothing in the pipeline: choose on the validation pool, read the test pool once.

  python -m launch.main --config=configs/arith.py --workdir=WORKDIR --mode=all \
      --config.sample.split=validation
  python experiments/weighted_voting.py --workdir=WORKDIR --split=validation \
      --json=experiments/results/weighted_voting_validation_cpu.json
"""

from __future__ import annotations

import datetime
import os
import sys

import numpy as np
from absl import app, flags

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from configs.arith import get_config  # noqa: E402
from ttc_jax import workdir as wd  # noqa: E402
from ttc_jax.pipeline import eval_verifiers, sample  # noqa: E402
from ttc_jax.tasks import arith  # noqa: E402
from ttc_jax.verifiers import evaluation, selection  # noqa: E402
from ttc_jax.verifiers.evaluation import Method  # noqa: E402

_WORKDIR = flags.DEFINE_string('workdir', 'workdir', 'Workdir where eval_verifiers ran on --split.')
_SPLIT = flags.DEFINE_string('split', 'validation', 'The pool: sample-stage split to read.')
_N = flags.DEFINE_integer('n', 64, 'Candidates per draw (at most the pool size).')
_DRAWS = flags.DEFINE_integer('draws', 20, 'Random draws per problem.')
_POWERS = flags.DEFINE_list('powers', ['1', '2', '4', '8', '16'], 'Score powers k to compare.')
_JSON = flags.DEFINE_string('json', 'experiments/results/weighted_voting_cpu.json', 'Output JSON.')

STAGE = 'weighted_voting'


def _not_cached():
  raise FileNotFoundError(f'{_WORKDIR.value} has no cached verifier scores of the '
                          f'{_SPLIT.value} pool: run --mode=eval_verifiers '
                          f'--config.sample.split={_SPLIT.value} first')


def main(argv):
  del argv
  config = get_config()
  config.sample.split = _SPLIT.value
  recs = sample.load_samples(config, _WORKDIR.value, STAGE)
  pool = len(recs[0]['completions'])
  if not 1 <= _N.value <= pool:
    raise ValueError(f'--n={_N.value}; expected 1 to the pool size {pool}')
  steps = eval_verifiers.score_samples(config, _WORKDIR.value, recs, {}, None, _not_cached)
  scores = {f'{kind}/{how}': arr for kind, per_sample in steps.items()
            for how, arr in eval_verifiers.candidate_scores(per_sample).items()}
  answer_ids = np.stack([selection.answer_ids([arith.extract_answer(t) for t in r['completions']])
                         for r in recs])
  correct = np.array([r['correct'] for r in recs], bool)
  bins = evaluation.difficulty_bins(correct.mean(1), config.calibrate.num_bins)
  groups = [str(b) for b in sorted(set(bins.tolist()))]
  masks = {g: bins == int(g) for g in groups}
  subsets = evaluation.draw_subsets(np.random.default_rng(0), len(bins), pool, _N.value,
                                    _DRAWS.value)
  oracle_per_problem = evaluation.oracle_accuracy(correct, subsets)
  pass1 = {g: float(correct[m].mean()) for g, m in masks.items()}
  oracle = {g: float(oracle_per_problem[m].mean()) for g, m in masks.items()}

  rows: dict[str, dict] = {}

  def add(name: str, selection_rule: str, score: np.ndarray | None) -> None:
    method = Method(name, selection_rule, None if score is None else 'x')
    acc = evaluation.method_accuracy(method, answer_ids, correct, {'x': score}, subsets)
    row = {g: float(acc[m].mean()) for g, m in masks.items()}
    row['gap_closed'] = {g: (row[g] - pass1[g]) / max(oracle[g] - pass1[g], 1e-9)
                         for g in groups}
    row['overall'] = float(acc.mean())
    rows[name] = row

  add('majority', 'majority', None)
  for key in ('prm/last', 'prm/min', 'prm/prod', 'orm/last'):
    for k in _POWERS.value:
      add(f'{key} weighted, score^{k}', 'weighted', scores[key] ** float(k))
    add(f'{key} best-of-N', 'best_of_n', scores[key])

  print(f'{STAGE}: {_SPLIT.value} pool of {len(recs)} problems x {pool}, N = {_N.value}, '
        f'{_DRAWS.value} draws; accuracy per bin {" / ".join(groups)} (gap closed)')
  print(f'{"pass@1":32s} ' + ' / '.join(f'{pass1[g]:.3f}' for g in groups))
  print(f'{"oracle":32s} ' + ' / '.join(f'{oracle[g]:.3f}' for g in groups))
  for name, row in rows.items():
    print(f'{name:32s} ' + ' / '.join(f'{row[g]:.3f}' for g in groups) + '   (' +
          ' / '.join(f'{100 * row["gap_closed"][g]:.0f}%' for g in groups) +
          f')   overall {row["overall"]:.3f}')
  result = {'date': datetime.datetime.now().isoformat(timespec='seconds'),
            'workdir': _WORKDIR.value, 'split': _SPLIT.value, 'pool': pool, 'n': _N.value,
            'draws': _DRAWS.value, 'num_problems': {g: int(m.sum()) for g, m in masks.items()},
            'pass@1': pass1, 'oracle': oracle, 'methods': rows}
  wd.atomic_write_json(_JSON.value, result)
  print(f'wrote {_JSON.value}')


if __name__ == '__main__':
  app.run(main)
