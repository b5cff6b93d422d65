"""Which value head selects best, and how far could one go? Heads on a frozen verifier backbone,
compared on a sample pool (use the validation split to choose designs, not the test split).

Every distinct sample of the pool and every prm_data training solution goes through the
backbone once (`Scorer.step_inputs`); each head below is then a few matrix products:

  trained PRM / ORM      the heads `train_prm` / `train_orm` wrote (this checkpoint's design)
  fit: one weight set    exact logistic fit (L-BFGS) on prm_data's step labels, the same weights
                         at every step end (the likelihood-reading head before
                         it had answer-step weights)
  fit: answer-step       the same with weights of their own at the answer step (EOS), as
                         `objectives.ValueHead`
  ceiling: pool outcomes a head fit to this pool's own answer-step inputs and outcomes: fit and
                         scored in-sample, so an upper bound for any linear, calibrated head on
                         these inputs (not a result: a limit)

and each is scored by weighted `last`, BoN `last` and weighted `prod` at N = the pool size, per
difficulty bin, with the gap between pass@1 and the oracle that weighted `last` closes.

  python -m launch.main --config=configs/arith.py --workdir=WORKDIR --mode=all \
      --config.sample.split=validation
  python experiments/verifier_heads.py --workdir=WORKDIR --split=validation
"""

from __future__ import annotations

import datetime
import os
import sys
from typing import Callable

import numpy as np
import scipy.optimize
import scipy.special
from absl import app, flags

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from configs.arith import get_config  # noqa: E402
from ttc_jax import artifacts  # noqa: E402
from ttc_jax import manifest  # noqa: E402
from ttc_jax import workdir as wd  # noqa: E402
from ttc_jax.pipeline import common, prm_data, sample, train_base, train_prm  # noqa: E402
from ttc_jax.tasks import arith  # noqa: E402
from ttc_jax.training.objectives import ValueHead  # noqa: E402
from ttc_jax.verifiers import evaluation, scoring, selection  # noqa: E402
from ttc_jax.verifiers.evaluation import Method  # noqa: E402

_WORKDIR = flags.DEFINE_string('workdir', 'workdir', 'Workdir with samples of --split, prm_data '
                               'and the verifier backbone (and trained PRM/ORM, if any).')
_SPLIT = flags.DEFINE_string('split', 'validation', 'The pool: sample-stage split to evaluate on.')
_DRAWS = flags.DEFINE_integer('draws', 20, 'Random draws per problem (orders, at N = pool).')
_L2 = flags.DEFINE_float('l2', 1e-4, 'L2 penalty of the logistic fits (bias excluded).')
_JSON = flags.DEFINE_string('json', 'experiments/results/verifier_heads_cpu.json', 'Output JSON.')

STAGE = 'verifier_heads'
METHODS = (Method('weighted_last', 'weighted', 'last'), Method('bon_last', 'best_of_n', 'last'),
           Method('weighted_prod', 'weighted', 'prod'))


def answer_step(x: np.ndarray) -> np.ndarray:
  """[rows, 2F-1] design of an answer-step fit: [x ; flag * x ; flag] (flag = x's last column)."""
  body, flag = x[:, :-1], x[:, -1:]
  return np.concatenate([body, flag * body, flag], axis=1)


def logistic_fit(x: np.ndarray, y: np.ndarray, weight: np.ndarray, l2: float) -> np.ndarray:
  """Exact minimiser of weighted mean BCE(sigmoid(x w + b), y) + l2 |w|^2: returns [w ; b]."""
  x1 = np.concatenate([x, np.ones((len(x), 1))], axis=1).astype(np.float64)
  weight = weight / weight.sum()

  def objective(w):
    z = x1 @ w
    grad = x1.T @ (weight * (scipy.special.expit(z) - y)) + 2 * l2 * np.r_[w[:-1], 0.0]
    return (weight * (np.logaddexp(0.0, z) - y * z)).sum() + l2 * (w[:-1] ** 2).sum(), grad

  result = scipy.optimize.minimize(objective, np.zeros(x1.shape[1]), jac=True, method='L-BFGS-B',
                                   options=dict(maxiter=5000))
  return result.x


def linear(w: np.ndarray, design: Callable[[np.ndarray], np.ndarray]):
  return lambda x: scipy.special.expit(design(x).astype(np.float64) @ w[:-1] + w[-1])


def evaluate(head, inputs: list[np.ndarray], owners: list[list[tuple[int, int]]],
             answer_ids: np.ndarray, correct: np.ndarray, bins: np.ndarray, draws: int) -> dict:
  """{method: {bin: accuracy}, 'gap_closed': {bin: ...}} of `head` ([steps, F] -> [steps])."""
  scores = {how: np.zeros(correct.shape) for how in ('last', 'prod')}
  for x, places in zip(inputs, owners):
    s = head(x)
    for i, k in places:
      scores['last'][i, k], scores['prod'][i, k] = s[-1], np.prod(s)
  subsets = evaluation.draw_subsets(np.random.default_rng(0), len(bins), correct.shape[1],
                                    correct.shape[1], draws)
  out = {}
  for m in METHODS:
    acc = evaluation.method_accuracy(m, answer_ids, correct, scores, subsets)
    out[m.name] = {str(b): float(acc[bins == b].mean()) for b in sorted(set(bins.tolist()))}
  return out


def main(argv):
  del argv
  config = get_config()
  config.sample.split = _SPLIT.value
  workdir = _WORKDIR.value
  tok = common.load_tokenizer(config, workdir, STAGE)
  recs = sample.load_samples(config, workdir, STAGE)
  problems = common.load_problems(config, workdir, config.sample.split, STAGE)
  prompts = {p.id: common.encode_example(tok, p)[0] for p in problems}
  answer_ids = np.stack([selection.answer_ids([arith.extract_answer(t) for t in r['completions']])
                         for r in recs])
  correct = np.array([r['correct'] for r in recs], bool)
  bins = evaluation.difficulty_bins(correct.mean(1), config.calibrate.num_bins)
  backbone_name = artifacts.backbone_name(config)
  model, backbone = train_base.load_model(config, workdir, backbone_name, STAGE)
  scorer = scoring.Scorer(model, delimiter_id=tok.id_of(arith.STEP_DELIMITER), eos_id=tok.eos_id,
                          batch_tokens=config.eval_verifiers.batch_tokens)

  owners: dict[tuple[str, str], list[tuple[int, int]]] = {}
  for i, r in enumerate(recs):
    for k, t in enumerate(r['completions']):
      owners.setdefault((r['id'], t), []).append((i, k))
  keys = list(owners)
  print(f'{STAGE}: {len(recs)} problems x {correct.shape[1]} samples of {_SPLIT.value} '
        f'({len(keys)} distinct), backbone {backbone_name}', flush=True)
  pool = scorer.step_inputs(backbone, [prompts[i] for i, _ in keys],
                            [tok.encode(t, add_eos=True) for _, t in keys])
  labels = prm_data.load_labels(config, workdir, 'train', STAGE)
  train = scorer.step_inputs(backbone, [l.prompt_ids for l in labels],
                             [l.completion_ids for l in labels])
  print(f'{STAGE}: head inputs of the pool and of {len(labels)} prm_data solutions', flush=True)

  heads = {}
  for kind in artifacts.VERIFIER_KINDS:
    if manifest.status(artifacts.verifier(config, workdir, kind)).state is manifest.State.DONE:
      head = train_prm.load_verifier(config, workdir, kind, STAGE)[1]['value_head']
      heads[f'trained {kind.upper()}'] = lambda x, h=head: scoring.sigmoid(
          ValueHead().apply({'params': h}, x))
  x = np.concatenate(train)
  y = np.concatenate([l.labels for l in labels])
  plain = lambda x: x[:, :-1]
  heads['fit: one weight set'] = linear(logistic_fit(plain(x), y, np.ones(len(y)), _L2.value),
                                        plain)
  heads['fit: answer-step'] = linear(logistic_fit(answer_step(x), y, np.ones(len(y)), _L2.value),
                                     answer_step)
  finals = np.stack([s[-1] for s in pool])
  outcome = np.array([float(correct[places[0]]) for places in owners.values()])
  count = np.array([len(places) for places in owners.values()], np.float64)
  heads['ceiling: pool outcomes'] = linear(
      logistic_fit(plain(finals), outcome, count, _L2.value), plain)

  groups = sorted(set(bins.tolist()))
  pass1 = {str(b): float(correct[bins == b].mean()) for b in groups}
  oracle = {str(b): float(correct[bins == b].any(1).mean()) for b in groups}
  majority = evaluation.method_accuracy(
      Method('majority', 'majority'), answer_ids, correct, {}, evaluation.draw_subsets(
          np.random.default_rng(0), len(bins), correct.shape[1], correct.shape[1], _DRAWS.value))
  result = {'date': datetime.datetime.now().isoformat(timespec='seconds'), 'workdir': workdir,
            'split': _SPLIT.value, 'backbone': backbone_name, 'pool': int(correct.shape[1]),
            'num_problems': {str(b): int((bins == b).sum()) for b in groups},
            'pass@1': pass1, 'oracle': oracle,
            'majority': {str(b): float(majority[bins == b].mean()) for b in groups}, 'heads': {}}
  gap = lambda acc, b: (acc - pass1[b]) / max(oracle[b] - pass1[b], 1e-9)
  print(f'\nN = {correct.shape[1]}; bins {", ".join(map(str, groups))}:')
  print(f'{"":24s} pass@1 {pass1}  majority {result["majority"]}')
  for name, head in heads.items():
    row = evaluate(head, pool, list(owners.values()), answer_ids, correct, bins, _DRAWS.value)
    row['gap_closed'] = {b: gap(a, b) for b, a in row['weighted_last'].items()}
    result['heads'][name] = row
    cells = ' | '.join(f'{m.name} ' + ' / '.join(f'{row[m.name][str(b)]:.2f}' for b in groups)
                       for m in METHODS)
    print(f'{name:24s} {cells} | gap closed ' +
          ' / '.join(f'{100 * row["gap_closed"][str(b)]:.0f}%' for b in groups), flush=True)
  wd.atomic_write_json(_JSON.value, result)
  print(f'wrote {_JSON.value}')


if __name__ == '__main__':
  app.run(main)
