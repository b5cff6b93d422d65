"""Stage `eval_verifiers`: accuracy vs N of majority, PRM/ORM best-of-N and weighted best-of-N.

Every pooled sample of the sample split is scored once by the PRM and the ORM (one forward pass
per sample, all step ends; the two heads share it when they sit on one frozen backbone); the
step scores are cached per sample shard in `artifacts.verifier_scores` (atomic; a rerun skips
them, a kill loses at most one shard). Then, for each N and difficulty bin, every method's
accuracy is averaged over many random draws of N samples from the pool (the same draws for all
methods). Writes into `artifacts.verifier_eval` (eval_verifiers/<model>/<split>/on_<backbone>/):
verifiers.json (bin means), per_problem.npz (per problem, method and N: the accuracy over the
draws), verifiers.png (accuracy vs N, overall and per bin), and the PRM's calibration on held-out
Monte-Carlo step labels (prm_reliability.png).
"""

from __future__ import annotations

import functools
import os
import time
from typing import Callable

import ml_collections
import numpy as np
from absl import logging

from ttc_jax import artifacts
from ttc_jax import manifest
from ttc_jax import workdir as wd
from ttc_jax.errors import BadInputError, UserError
from ttc_jax.pipeline import common, figures, prm_data, sample, sample_shards, train_prm
from ttc_jax.tasks import arith
from ttc_jax.verifiers import evaluation, scoring, selection
from ttc_jax.verifiers.evaluation import Method


STAGE = 'eval_verifiers'
KINDS = artifacts.VERIFIER_KINDS
METHODS = (
    Method('majority', 'majority'),
    *(Method(f'prm_bon_{a}', 'best_of_n', f'prm/{a}') for a in selection.AGGREGATIONS),
    *(Method(f'prm_weighted_{a}', 'weighted', f'prm/{a}') for a in selection.AGGREGATIONS),
    Method('orm_bon', 'best_of_n', 'orm/last'),
    Method('orm_weighted', 'weighted', 'orm/last'),
)


def outputs(config: ml_collections.ConfigDict, workdir: str) -> list[manifest.Artifact]:
  return [*(artifacts.verifier_scores(config, workdir, kind) for kind in KINDS),
          artifacts.verifier_eval(config, workdir)]


def _read_scores(path: str, ids: list[str]) -> list[np.ndarray] | None:
  """Cached flat step scores of one shard, or None if absent or made for other samples."""
  if not os.path.exists(path):
    return None
  z = wd.read_npz(path, stage=STAGE, keys=('ids', 'steps', 'offsets'))
  if z['ids'].tolist() != ids:
    logging.warning('%s: %s holds other samples; rescoring', STAGE, path)
    return None
  steps, offsets = z['steps'], z['offsets']
  return [steps[a:b] for a, b in zip(offsets[:-1], offsets[1:])]


def score_samples(config: ml_collections.ConfigDict, workdir: str, recs: list[dict],
                  prompts: dict[str, list[int]], tok,
                  verifiers: Callable[[], tuple[scoring.Scorer, dict[str, dict]]]
                  ) -> dict[str, list[list[np.ndarray]]]:
  """{kind: per record, per sample: the verifier's score at each step end} for the verifiers
  `verifiers()` loads ({kind: params}); cached per shard and kind. Kinds missing from a shard's
  cache are scored together (a frozen backbone's pass is shared: `Scorer.score_verifiers`)."""
  per_shard = config.sample.problems_per_batch
  out: dict[str, list[list[np.ndarray]]] = {}
  total = sample_shards.num_shards(len(recs), per_shard)
  t0, done = time.perf_counter(), 0
  for shard in range(total):
    chunk = recs[shard * per_shard:(shard + 1) * per_shard]
    ids = [r['id'] for r in chunk]
    paths = {kind: artifacts.verifier_scores(config, workdir, kind).file(f'shard_{shard:05d}.npz')
             for kind in KINDS}
    flats = {kind: _read_scores(path, ids) for kind, path in paths.items()}
    todo = [kind for kind, flat in flats.items() if flat is None]
    if todo:
      scorer, params = verifiers()
      # Equal samples of a problem (frequent on easy ones) are scored once. The jsonl holds
      # decoded text: re-encode it, EOS appended (a sample cut off at max_new_tokens had none,
      # but it rarely has an answer line, so it is rarely selectable).
      keys = [(r['id'], t) for r in chunk for t in r['completions']]
      unique = list(dict.fromkeys(keys))
      scored = scorer.score_verifiers(
          {kind: params[kind] for kind in todo}, [prompts[i] for i, _ in unique],
          [tok.encode(t, add_eos=True) for _, t in unique])
      for kind in todo:
        by_key = dict(zip(unique, scored[kind]))
        flats[kind] = [by_key[k].astype(np.float32) for k in keys]  # as cached
        offsets = np.cumsum([0] + [len(x) for x in flats[kind]])
        wd.atomic_write_npz(paths[kind], ids=np.array(ids), offsets=offsets,
                            steps=np.concatenate(flats[kind]).astype(np.float32))
      done += len(keys)
      logging.info('%s[%s]: shard %d/%d (%d distinct of %d samples), %.1f samples/s', STAGE,
                   '+'.join(todo), shard + 1, total, len(unique), len(keys),
                   done / (time.perf_counter() - t0))
    k = len(chunk[0]['completions'])
    for kind, flat in flats.items():
      out.setdefault(kind, []).extend(flat[i * k:(i + 1) * k] for i in range(len(chunk)))
  return out


def prm_calibration(config: ml_collections.ConfigDict, workdir: str,
                    verifiers: Callable[[], tuple[scoring.Scorer, dict[str, dict]]]) -> dict | None:
  """The PRM's step scores against the held-out Monte-Carlo labels of prm_data's validation split
  (solutions to task validation problems, never trained on): Brier score, ECE, reliability bins."""
  labels = prm_data.load_labels(config, workdir, 'validation', STAGE)
  if not labels:
    logging.warning('%s: prm_data has no validation labels; no PRM calibration', STAGE)
    return None
  scorer, params = verifiers()
  scores = scorer.score(params['prm'], [s.prompt_ids for s in labels],
                        [s.completion_ids for s in labels])
  for s, x in zip(labels, scores):
    if len(x) != len(s.labels):
      raise BadInputError(f'prm_data solution {s.problem_id}/{s.sample_index} has {len(s.labels)} '
                       f'labels but {len(x)} step ends; expected equal (relabel with prm_data)')
  out = evaluation.reliability(np.concatenate(scores), np.concatenate(
      [s.labels for s in labels]), config.eval_verifiers.calibration_bins)
  out.update(labels='prm_data validation split', num_solutions=len(labels))
  logging.info('%s: PRM on %d held-out step labels: Brier %.4f (constant predictor %.4f), '
               'ECE %.4f', STAGE, out['num_steps'], out['brier'], out['brier_constant'],
               out['ece'])
  return out


def candidate_scores(step_scores: list[list[np.ndarray]]) -> dict[str, np.ndarray]:
  """{aggregation: [P, K]} from per-record, per-sample step scores."""
  out = {}
  for how in selection.AGGREGATIONS:
    out[how] = np.stack([selection.aggregate_padded(*selection.pad_steps(r), how)
                         for r in step_scores])
  return out


def accuracy_table(answer_ids: np.ndarray, correct: np.ndarray, scores: dict[str, np.ndarray],
                   bins: np.ndarray, ns: tuple[int, ...], draws: int, seed: int
                   ) -> tuple[dict, dict[str, np.ndarray]]:
  """({'overall'|bin: {method: {'accuracy': [per N], 'stderr': [per N]}}}, {method: [P, len(ns)]
  accuracy per problem}), both over the same subsampled draws."""
  groups = {'overall': np.ones(len(bins), bool)}
  groups.update({str(b): bins == b for b in sorted(set(bins.tolist()))})
  table = {g: {'num_problems': int(m.sum()), 'methods': {}} for g, m in groups.items()}
  rng = np.random.default_rng(seed)
  pool = correct.shape[1]
  columns: dict[str, list[np.ndarray]] = {}
  for n in ns:
    subsets = evaluation.draw_subsets(rng, len(bins), pool, n, draws)
    per_problem = {m.name: evaluation.method_accuracy(m, answer_ids, correct, scores, subsets)
                   for m in METHODS}
    per_problem['oracle'] = evaluation.oracle_accuracy(correct, subsets)
    per_problem['pass@N'] = np.array([evaluation.pass_at_k(pool, int(c), n)
                                      for c in correct.sum(1)])
    for name, acc in per_problem.items():
      columns.setdefault(name, []).append(acc)
    for g, m in groups.items():
      for name, acc in per_problem.items():
        row = table[g]['methods'].setdefault(name, {'accuracy': [], 'stderr': []})
        row['accuracy'].append(float(acc[m].mean()))
        row['stderr'].append(float(acc[m].std() / np.sqrt(max(m.sum(), 1))))
    overall = table['overall']['methods']
    logging.info('%s: N=%d overall %s', STAGE, n, ' '.join(
        f'{k}={overall[k]["accuracy"][-1]:.3f}'
        for k in ('majority', 'prm_weighted_last', 'orm_weighted', 'pass@N')))
  return table, {name: np.stack(cols, axis=1) for name, cols in columns.items()}


def run(config: ml_collections.ConfigDict, workdir: str) -> None:
  c = config.eval_verifiers
  out = artifacts.verifier_eval(config, workdir)
  recs = sample.load_samples(config, workdir, STAGE)
  pool = len(recs[0]['completions'])
  ns = tuple(int(n) for n in c.ns if n <= pool)
  if not ns:
    raise UserError(f'--config.eval_verifiers.ns={tuple(c.ns)} has no N <= the pool of {pool} '
                    'samples; expected at least one')
  tok = common.load_tokenizer(config, workdir, STAGE)
  problems = common.load_problems(config, workdir, config.sample.split, STAGE)
  prompts = {p.id: common.encode_example(tok, p)[0] for p in problems}

  @functools.cache
  def verifiers() -> tuple[scoring.Scorer, dict[str, dict]]:
    params = {}
    for kind in KINDS:  # both sit on the backbone model config.verifier_backbone
      model, params[kind] = train_prm.load_verifier(config, workdir, kind, STAGE)
    return scoring.Scorer(model, delimiter_id=tok.id_of(arith.STEP_DELIMITER),
                          eos_id=tok.eos_id, batch_tokens=c.batch_tokens), params

  scores = {}
  for kind, per_sample in score_samples(config, workdir, recs, prompts, tok, verifiers).items():
    for how, arr in candidate_scores(per_sample).items():
      scores[f'{kind}/{how}'] = arr
  answer_ids = np.stack([selection.answer_ids([arith.extract_answer(t) for t in r['completions']])
                         for r in recs])
  correct = np.array([r['correct'] for r in recs], bool)
  bins = evaluation.difficulty_bins(correct.mean(1), config.calibrate.num_bins)
  table, per_problem = accuracy_table(answer_ids, correct, scores, bins, ns, c.num_draws, c.seed)
  result = {'model': config.model_name, 'verifier_backbone': artifacts.backbone_name(config),
            'split': config.sample.split, 'pool': pool,
            'num_draws': c.num_draws, 'seed': c.seed, 'ns': list(ns),
            'methods': {m.name: {'selection': m.selection, 'score': m.score} for m in METHODS},
            'groups': table,
            'prm_calibration': prm_calibration(config, workdir, verifiers)}
  _plot_accuracy(result, out.file('verifiers.png'))
  if result['prm_calibration'] is not None:
    _plot_reliability(result['prm_calibration'], out.file('prm_reliability.png'))
  # Per problem (rows in sample order), per method, per N (columns `ns`): the accuracy averaged
  # over the draws; the policy's cross-validation over problems reads these.
  wd.atomic_write_npz(out.file('per_problem.npz'), ids=np.array([r['id'] for r in recs]),
                      bins=bins, pass1=correct.mean(1), ns=np.array(ns),
                      **{f'accuracy:{name}': acc for name, acc in per_problem.items()})
  wd.atomic_write_json(out.file('verifiers.json'), result)
  logging.info('%s: wrote %s', STAGE, out.path)


PLOTTED = ('majority', 'prm_bon_last', 'prm_bon_min', 'prm_bon_prod', 'prm_weighted_last',
           'orm_bon', 'orm_weighted', 'pass@N')


def _save(fig, path: str) -> None:
  plt = figures.pyplot()
  wd.atomic_write_figure(fig, path)
  plt.close(fig)


def _plot_accuracy(result: dict, path: str) -> None:
  plt = figures.pyplot()
  groups = result['groups']
  fig, axes = plt.subplots(2, -(-len(groups) // 2), figsize=(13, 7), sharex=True)
  for ax, (g, row) in zip(axes.ravel(), groups.items()):
    for name in PLOTTED:
      style = '--' if name == 'pass@N' else ('-' if name.startswith('prm') else ':')
      ax.plot(result['ns'], row['methods'][name]['accuracy'], style, marker='o', ms=3,
              label=name)
    ax.set_xscale('log', base=2)
    ax.set_xticks(result['ns'], [str(n) for n in result['ns']])
    ax.set_title(f'{g if g == "overall" else "bin " + g} ({row["num_problems"]} problems)',
                 fontsize=9)
    ax.set_ylim(0, 1.02)
    ax.set_xlabel('N (samples)')
    ax.set_ylabel('accuracy')
  for ax in axes.ravel()[len(groups):]:
    ax.axis('off')
  axes.ravel()[0].legend(fontsize=7)
  fig.suptitle(f"{result['model']} (verifiers on {result['verifier_backbone']}): selection "
               "accuracy vs N "
               f"({result['num_draws']} draws per point; bin 1 = easiest)")
  fig.tight_layout()
  _save(fig, path)


def _plot_reliability(calib: dict, path: str) -> None:
  plt = figures.pyplot()
  fig, ax = plt.subplots(figsize=(4.5, 4))
  used = [b for b in calib['bins'] if b['count']]
  ax.plot([0, 1], [0, 1], ':', color='gray')
  ax.plot([b['mean_predicted'] for b in used], [b['mean_label'] for b in used], marker='o')
  ax.set_xlabel('PRM score (bin mean)')
  ax.set_ylabel('Monte-Carlo label (bin mean)')
  ax.set_title(f"PRM calibration: Brier {calib['brier']:.4f}, {calib['num_steps']} steps",
               fontsize=9)
  fig.tight_layout()
  _save(fig, path)
