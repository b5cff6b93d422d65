"""Is there a generator-verifier gap on the task? Four diagnostics on a finished default workdir.

  python experiments/verifier_gap.py --workdir=WORKDIR --mode=confidence   # ~4 min on 2 cores
  python experiments/verifier_gap.py --workdir=WORKDIR --mode=confidence --scorer=large \
      --bins=2,3,4
  python experiments/verifier_gap.py --workdir=WORKDIR --mode=more_labels  # ~25 min on 2 cores
  python experiments/verifier_gap.py --workdir=WORKDIR --mode=bon_picks    # seconds, after
                                                                          # eval_verifiers
  python experiments/verifier_gap.py --workdir=WORKDIR --mode=gold_nll \
      --models=base,large,base_long

Add `--json experiments/results/verifier_gap_<mode>.json` to keep the table (the committed ones are
there; docs/verifier.md reads them).

`confidence`: the generator's own probability of each pooled test sample (teacher-forced, one
forward pass) used as a verifier score: the whole sample's probability, its least likely token,
and its least likely step. If weighted / best-of-N selection with these scores does not beat
majority at N=64, the errors are confident ones: the generator's knowledge cannot tell them apart.
With `--scorer=large` the `large` model (trained by `train_base` with `:large` in the same
workdir) scores the base model's samples instead: does a model that knows more arithmetic see
the base model's confident errors (a generator-verifier gap a larger verifier could exploit)?

`more_labels`: an ORM (value head on the base backbone, fine-tuned with it) trained on 12x the
labelled solutions of the default prm_data (400 test problems x 64 pooled samples, final correctness),
evaluated on the 100 other test problems. Test problems are used for training here ONLY to get
many labelled samples without a new sampling run: it is an upper bound on what more labels buy,
not a result to compare with eval_verifiers.

`bon_picks`: what the PRM's best-of-N (`last`) picks from the whole pool of each test problem, using
eval_verifiers' cached scores: how often it is right (vs pass@1), the within-problem AUC of the
score for right vs wrong samples, the kind of the first wrong step (`arith.first_wrong_step`) in
the picked wrong samples vs all wrong samples, and how often that wrong step made the expression
*smaller* (sum of |numbers| below the correct step's), to test whether the PRM prefers errors
that leave an easier-looking expression.

`gold_nll`: how much arithmetic each trained model knows, before any verifier is built on it:
the teacher-forced NLL per completion token and the argmax token accuracy on the gold solutions
of the test problems (seconds per model).

The first two print per-bin accuracy of majority vs the score-based selections (difficulty bins as
calibrate).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(__file__), '..'))

from configs import arith as arith_config  # noqa: E402
from ttc_jax.model.transformer import Transformer  # noqa: E402
from ttc_jax.pipeline import common, eval_verifiers, sample, train_base  # noqa: E402
from ttc_jax.sampling.sampler import bucket_length  # noqa: E402
from ttc_jax.tasks import arith  # noqa: E402
from ttc_jax.training import data, objectives, trainer  # noqa: E402
from ttc_jax.verifiers import evaluation, scoring, selection  # noqa: E402
from ttc_jax.verifiers.evaluation import Method  # noqa: E402
from ttc_jax.verifiers.steps import step_ends  # noqa: E402

STAGE = 'verifier_gap'
MAX_LEN = 384
BUCKETS = tuple(range(64, MAX_LEN + 1, 64))  # teacher-forced batch widths (confidence)


def _table(name, answer_ids, correct, bins, scores, methods, ns, draws, seed) -> dict:
  rng = np.random.default_rng(seed)
  out = {}
  for n in ns:
    subsets = evaluation.draw_subsets(rng, len(bins), correct.shape[1], n, draws(n))
    acc = {m.name: evaluation.method_accuracy(m, answer_ids, correct, scores, subsets)
           for m in methods}
    acc['oracle'] = evaluation.oracle_accuracy(correct, subsets)
    acc['pass@1'] = correct.mean(1)
    for b in sorted(set(bins.tolist())):
      m = bins == b
      row = {k: float(v[m].mean()) for k, v in acc.items()}
      out[f'N={n} bin={b}'] = row
      print(f'{name} N={n} bin {b} ({int(m.sum())} problems) ' +
            ' '.join(f'{k}={v:.3f}' for k, v in row.items()), flush=True)
  return out


def confidence(config, workdir, recs, tok, prompts, answer_ids, correct, bins,
               scorer_model: str) -> dict:
  """The `scorer_model`'s (the proposer's own, or another trained model's) probability of each
  distinct pooled sample, teacher-forced in length-bucketed batches."""
  model, params = train_base.load_model(config, workdir, scorer_model, STAGE)

  @jax.jit
  def token_logprobs(params, tokens):
    logits = Transformer(model).apply({'params': params}, tokens).logits.astype(jnp.float32)
    lp = jax.nn.log_softmax(logits, -1)
    return jnp.take_along_axis(lp[:, :-1], tokens[:, 1:, None], -1)[..., 0]

  distinct = {}  # (problem id, completion) -> [(i, k), ...]: every sample scored once
  for i, r in enumerate(recs):
    for k, t in enumerate(r['completions']):
      distinct.setdefault((r['id'], t), []).append((i, k))
  rows = sorted(((prompts[pid], tok.encode(t, add_eos=True), at)
                 for (pid, t), at in distinct.items()), key=lambda x: len(x[0]) + len(x[1]))
  p, k = correct.shape
  whole, min_token, min_step = np.zeros((p, k)), np.zeros((p, k)), np.zeros((p, k))
  delimiter = tok.id_of(arith.STEP_DELIMITER)
  batch, t0 = 64, time.perf_counter()
  print(f'{STAGE}: {len(rows)} distinct of {p * k} samples, scored by {scorer_model}', flush=True)
  for s in range(0, len(rows), batch):
    chunk = rows[s:s + batch]
    width = bucket_length(min(MAX_LEN, max(len(pr) + len(c) for pr, c, _ in chunk)), BUCKETS)
    tokens = np.zeros((batch, width), np.int32)
    for j, (pr, c, _) in enumerate(chunk):
      seq = (pr + c)[:width]
      tokens[j, :len(seq)] = seq
    lp = np.asarray(token_logprobs(params, tokens))
    for j, (pr, c, at) in enumerate(chunk):
      a = lp[j, len(pr) - 1:len(pr) - 1 + len(c)]
      # Each step's log-probability: split after every delimiter (the text after the last one,
      # the answer line, is a step too).
      cuts = np.flatnonzero(np.asarray(c[:len(a)]) == delimiter) + 1
      step_lp = min(x.sum() for x in np.split(a, cuts))
      for i, kk in at:
        whole[i, kk], min_token[i, kk], min_step[i, kk] = a.sum(), a.min(), step_lp
    if s % (batch * 25) == 0:
      print(f'{STAGE}: {s}/{len(rows)} distinct samples, {time.perf_counter() - t0:.0f}s',
            flush=True)
  scores = {'min_token': np.exp(min_token), 'whole': np.exp(whole), 'min_step': np.exp(min_step)}
  methods = [Method('majority', 'majority')]
  methods += [Method(f'weighted_{s}', 'weighted', s) for s in scores]
  methods += [Method(f'bon_{s}', 'best_of_n', s) for s in scores]
  return _table(f'confidence[{scorer_model}]', answer_ids, correct, bins, scores, methods,
                (16, 64), lambda n: 50 if n < 64 else 1, 0)


def more_labels(config, workdir, recs, tok, prompts, answer_ids, correct, bins, steps,
                out_dir) -> dict:
  model, backbone = train_base.load_model(config, workdir, config.model_name, STAGE)
  perm = np.random.default_rng(0).permutation(len(recs))
  train_idx, test_idx = perm[:400], perm[400:]
  delimiter, eos = tok.id_of(arith.STEP_DELIMITER), tok.eos_id
  ps, cs, values = [], [], []
  for i in train_idx:
    r = recs[i]
    for t, ok in zip(r['completions'], r['correct']):
      c = tok.encode(t, add_eos=True)
      if len(prompts[r['id']]) + len(c) > 320:
        continue
      ps.append(prompts[r['id']])
      cs.append(c)
      values.append({step_ends(c, delimiter, eos)[-1]: float(ok)})
  ex = data.pack(ps, cs, 320, values=values)
  print(f'{STAGE}: {ex.size} labelled solutions', flush=True)
  cfg = trainer.default_config()
  cfg.update(dict(steps=steps, batch_size=64, learning_rate=5e-4, warmup_steps=50,
                  log_every=100, checkpoint_every=steps))
  cfg.max_len = 320
  objective = objectives.ValueRegression(model)
  init = objective.init(jax.random.key(0), backbone=backbone)
  params = trainer.train(objective, ex, cfg, out_dir, 'orm_more_labels', init_params=init)
  scorer = scoring.Scorer(model, delimiter_id=delimiter, eos_id=eos)
  k = correct.shape[1]
  sc = np.zeros((len(test_idx), k))
  for j, i in enumerate(test_idx):
    r = recs[i]
    s = scorer.score(params, [prompts[r['id']]] * k,
                     [tok.encode(t, add_eos=True) for t in r['completions']])
    sc[j] = eval_verifiers.candidate_scores([s])['last'][0]
  methods = [Method('majority', 'majority'), Method('weighted', 'weighted', 'orm'),
             Method('bon', 'best_of_n', 'orm')]
  return _table('more_labels', answer_ids[test_idx], correct[test_idx], bins[test_idx],
                {'orm': sc}, methods, (4, 16, 64), lambda n: 100 if n < 64 else 1, 1)


def _magnitude(expression: str) -> int:
  return sum(abs(int(n)) for n in re.findall(r'-?\d+', expression))


def bon_picks(config, workdir, recs, tok, prompts, answer_ids, correct, problems) -> dict:
  def no_verifiers():
    raise FileNotFoundError(f'no cached verifier scores in {workdir}: run --mode=eval_verifiers '
                            'first')

  per_sample = eval_verifiers.score_samples(config, workdir, recs, prompts, tok,
                                            no_verifiers)['prm']
  last = eval_verifiers.candidate_scores(per_sample)['last']
  picks = selection.select_index(answer_ids, last, 'best_of_n')  # -1: no valid answer
  by_id = {p.id: p for p in problems}
  picked_right = [pick >= 0 and bool(right[pick]) for pick, right in zip(picks, correct)]
  aucs = []
  kinds = {'picked': [], 'all': []}
  smaller = {'picked': [], 'all': []}
  for rec, scores, right, ids, pick in zip(recs, last, correct, answer_ids, picks):
    scores = np.where(ids >= 0, scores, -np.inf)  # invalid answers rank last, as in selection
    if right.any() and (~right).any():
      pos, neg = scores[right][:, None], scores[~right][None, :]
      aucs.append(float((pos > neg).mean() + 0.5 * (pos == neg).mean()))
    for j in np.flatnonzero(~right & (ids >= 0)):
      check = arith.first_wrong_step(by_id[rec['id']], rec['completions'][j])
      if check.index is None:
        continue
      groups = ('all', 'picked') if j == pick else ('all',)
      for g in groups:
        kinds[g].append(check.kind)
        if check.kind in ('arithmetic', 'copy') and check.got is not None:
          smaller[g].append(_magnitude(check.got) < _magnitude(check.expected))
  out = {'problems': len(recs), 'pass@1': float(correct.mean()),
         'bon_picks_right': float(np.mean(picked_right)),
         'within_problem_auc_mean': float(np.mean(aucs)), 'auc_problems': len(aucs)}
  for g in ('picked', 'all'):
    out[f'{g}_wrong'] = len(kinds[g])
    for k in ('arithmetic', 'copy', 'structure'):
      out[f'{g}_wrong_{k}'] = float(np.mean([x == k for x in kinds[g]])) if kinds[g] else 0.0
    out[f'{g}_wrong_step_smaller'] = float(np.mean(smaller[g])) if smaller[g] else 0.0
  for k, v in out.items():
    print(f'{k:<32} {v:.3f}' if isinstance(v, float) else f'{k:<32} {v}')
  return out


def gold_nll(config, workdir, tok, problems, models: list[str]) -> dict:
  pairs = [common.encode_example(tok, p) for p in problems]
  ex = data.pack([p for p, _ in pairs], [c for _, c in pairs], config.train.max_len)
  out = {}
  for name in models:
    model, params = train_base.load_model(config, workdir, name, STAGE)
    loss = jax.jit(objectives.LanguageModeling(model).loss)
    nll = correct = total = 0.0
    for i in range(0, ex.size, 100):
      batch = data.batch_at(
          data.Examples(tokens=ex.tokens[i:i + 100], loss_mask=ex.loss_mask[i:i + 100]),
          0, min(100, ex.size - i), seed=0)
      weight = float(batch.loss_mask[:, 1:].sum())
      value, metrics = loss(params, batch)
      nll, correct, total = (nll + float(value) * weight,
                             correct + float(metrics['token_accuracy']) * weight, total + weight)
    out[name] = {'nll_per_token': nll / total, 'token_accuracy': correct / total,
                 'tokens': int(total)}
    print(f'{name}: gold-solution NLL {nll / total:.4f} per token, argmax token accuracy '
          f'{correct / total:.4f} ({int(total)} completion tokens)')
  return out


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--workdir', required=True,
                      help='a workdir made by launch.main --config=configs/arith.py')
  parser.add_argument('--mode', choices=('confidence', 'more_labels', 'bon_picks', 'gold_nll'),
                      required=True)
  parser.add_argument('--steps', type=int, default=1500, help='more_labels: ORM training steps')
  parser.add_argument('--scorer', default='base',
                      help='confidence: the trained model whose probabilities score the samples '
                           '(base, the proposer itself; or another trained model: large, base_long)')
  parser.add_argument('--bins', default='1,2,3,4,5',
                      help='confidence: difficulty bins to keep (comma-separated)')
  parser.add_argument('--models', default='base,large',
                      help='gold_nll: trained models to compare (comma-separated)')
  parser.add_argument('--json', default=None,
                      help='write the table here (experiments/results/verifier_gap_*.json)')
  args = parser.parse_args()
  config = arith_config.get_config(None)
  recs = sample.load_samples(config, args.workdir, STAGE)
  tok = common.load_tokenizer(config, args.workdir, STAGE)
  problems = common.load_problems(config, args.workdir, config.sample.split, STAGE)
  prompts = {p.id: common.encode_example(tok, p)[0] for p in problems}
  answer_ids = np.stack([selection.answer_ids([arith.extract_answer(t) for t in r['completions']])
                         for r in recs])
  correct = np.array([r['correct'] for r in recs], bool)
  bins = evaluation.difficulty_bins(correct.mean(1), config.calibrate.num_bins)
  if args.mode == 'confidence':
    keep = np.isin(bins, [int(b) for b in args.bins.split(',')])
    recs, answer_ids, correct, bins = ([r for r, x in zip(recs, keep) if x], answer_ids[keep],
                                       correct[keep], bins[keep])
  if args.mode == 'gold_nll':
    result = gold_nll(config, args.workdir, tok, problems, args.models.split(','))
  elif args.mode == 'bon_picks':
    result = bon_picks(config, args.workdir, recs, tok, prompts, answer_ids, correct, problems)
  elif args.mode == 'confidence':
    result = confidence(config, args.workdir, recs, tok, prompts, answer_ids, correct, bins,
                        args.scorer)
  else:
    result = more_labels(config, args.workdir, recs, tok, prompts, answer_ids, correct, bins,
                         args.steps, os.path.join(args.workdir, 'verifier_gap_orm'))
  if args.json:
    with open(args.json, 'w') as f:
      json.dump({'mode': args.mode, 'workdir': args.workdir, 'table': result}, f, indent=1)


if __name__ == '__main__':
  main()
