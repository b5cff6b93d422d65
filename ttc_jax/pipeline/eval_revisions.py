"""Stage `eval_revisions`: the revision model's chains on the sample split, per budget and bin.

Every problem runs the nested chains of `analysis.chain_lengths(eval_revisions.budget)` (chain 0
runs `budget` attempts, chain i budget / 2**ceil(log2(i + 1))), so one run covers pass@1 at every
revision step 1..budget, sequential (1 x N) vs parallel (N x 1) at every budget N, and every
power-of-two (chains x length) split of each ratio budget. Each attempt is graded and scored by
the revision ORM (`train_revision_orm`) and by the base PRM (on the problem alone, as it was
trained). Files, atomic, one per batch of problems (a kill loses at most the one in progress):
revisions/<model>/<split>/on_<backbone>/batch_00000.json ...; then eval_revisions/<model>/<split>/on_<backbone>/ gets
revisions.json (every table and the paper's findings as measured), per_problem.npz (for the
policy: accuracy:revisions_l<length>:<selection> [problems, budgets]) and the paper's Figures 6
(revisions_fig6.png) and 7 (revisions_fig7.png).
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
from ttc_jax.errors import ConfigError
from ttc_jax.pipeline import common, eval_search, figures, train_prm
from ttc_jax.pipeline.train_revision import load_revision_model
from ttc_jax.pipeline.train_revision_orm import load_revision_verifier, verifier_prompt
from ttc_jax.revision import analysis, chains
from ttc_jax.tasks import arith
from ttc_jax.verifiers import scoring, selection


STAGE = 'eval_revisions'
VERIFIERS = ('revision_orm', 'base_prm')


def outputs(config: ml_collections.ConfigDict, workdir: str) -> list[manifest.Artifact]:
  check(config)
  return [artifacts.revision_chains(config, workdir), artifacts.revision_eval(config, workdir)]


def check(config: ml_collections.ConfigDict) -> None:
  """One-line errors for budgets the nested chains cannot serve."""
  e = config.eval_revisions
  if e.budget < 1 or e.budget & (e.budget - 1):
    raise ConfigError(f'--config.eval_revisions.budget={e.budget}: expected a power of two >= 1 '
                      '(the longest chain; every split of it is chains x length in powers of two)')
  for key in ('budgets', 'ratio_budgets'):
    for b in e[key]:
      if b < 1 or b > e.budget or b & (b - 1):
        raise ConfigError(f'--config.eval_revisions.{key} has {b}: expected powers of two in '
                          f'1..--config.eval_revisions.budget={e.budget}')


def _batch_path(config, workdir: str, index: int) -> str:
  return artifacts.revision_chains(config, workdir).file(f'batch_{index:05d}.json')


def _batches(config, problems) -> list[list[arith.Problem]]:
  # Equal batches (the chain sampler pads each to a power of two): one set of shapes.
  per = max(1, config.revision.rows_per_batch // config.eval_revisions.budget)
  per = -(-len(problems) // -(-len(problems) // per))
  return [problems[i:i + per] for i in range(0, len(problems), per)]


def run(config: ml_collections.ConfigDict, workdir: str) -> None:
  problems, bins = eval_search.select_problems(config, workdir,
                                               config.eval_revisions.max_problems, STAGE)
  batches = _batches(config, problems)
  todo = [i for i in range(len(batches)) if not os.path.exists(_batch_path(config, workdir, i))]
  if todo:
    tok = common.load_tokenizer(config, workdir, STAGE)
    model, params = load_revision_model(config, workdir, STAGE)
    vmodel, orm = load_revision_verifier(config, workdir, STAGE)
    _, prm = train_prm.load_verifier(config, workdir, 'prm', STAGE)
    scorer = scoring.Scorer(vmodel, delimiter_id=tok.id_of(arith.STEP_DELIMITER),
                            eos_id=tok.eos_id)
    t0, done = time.perf_counter(), 0
    for i in todo:
      recs, stats = run_batch(config, batches[i], tok, model, params, scorer, orm, prm,
                               jax.random.fold_in(jax.random.key(config.eval_revisions.seed), i))
      wd.atomic_write_json(_batch_path(config, workdir, i), {'problems': recs, **stats})
      done += len(batches[i])
      elapsed = time.perf_counter() - t0
      left = sum(len(batches[j]) for j in todo if j > i)
      logging.info('%s: batch %d/%d (num_ops %d-%d): %.1f attempts/s, %.0fs elapsed, ETA %.0fs',
                   STAGE, i + 1, len(batches), batches[i][0].num_ops, batches[i][-1].num_ops,
                   stats['attempts'] / stats['seconds'], elapsed, elapsed / done * left)
  summarize(config, workdir, problems, bins, len(batches))


def run_batch(config, batch, tok, model, params, scorer, orm, prm, key,
              lengths: list[int] | None = None) -> tuple[list, dict]:
  """Chains of the revision model on `batch` (chain i runs lengths[i] attempts; default the
  nested chains of eval_revisions.budget), each attempt graded and scored by the revision ORM
  and the PRM: (per problem {id, num_ops, chains: [[attempt]]}, batch statistics)."""
  r = config.revision
  lengths = lengths or analysis.chain_lengths(config.eval_revisions.budget)
  prompts = [common.encode_example(tok, p)[0] for p in batch]
  res = chains.run_chains(model, params, prompts, lengths, key, eos_id=tok.eos_id,
                          max_new_tokens=common.attempt_tokens(config, batch, r.max_new_tokens),
                          temperature=r.temperature,
                          top_k=r.top_k, top_p=r.top_p, window=r.window,
                          rows_per_batch=max(r.rows_per_batch, len(batch) * len(lengths)))
  flat = [(pi, ci, j) for pi, cs in enumerate(res.attempts) for ci, a in enumerate(cs)
          for j in range(len(a))]
  completions = [res.attempts[pi][ci][j] for pi, ci, j in flat]
  problem_prompts = [prompts[pi] for pi, _, _ in flat]
  orm_prompts = [verifier_prompt(prompts[pi], res.attempts[pi][ci][:j], config, tok.eos_id)
                 for pi, ci, j in flat]
  t0 = time.perf_counter()
  last = lambda scores: [float(s[-1]) if len(s) else 0.0 for s in scores]
  if config.revision_orm.context:
    orm_s = last(scorer.score(orm, orm_prompts, completions))
    prm_s = last(scorer.score(prm, problem_prompts, completions))
  else:  # one backbone pass for both heads
    both = scorer.score_verifiers({'orm': orm, 'prm': prm}, problem_prompts, completions)
    orm_s, prm_s = last(both['orm']), last(both['prm'])
  score_seconds = time.perf_counter() - t0
  recs = []
  for pi, p in enumerate(batch):
    recs.append({'id': p.id, 'num_ops': p.num_ops, 'chains': [[] for _ in lengths]})
  verifier_tokens = 0
  for (pi, ci, j), ids, op, o, s in zip(flat, completions, orm_prompts, orm_s, prm_s):
    text = tok.decode(ids)
    recs[pi]['chains'][ci].append({
        'answer': arith.extract_answer(text), 'correct': arith.grade(text, batch[pi].answer),
        'revision_orm': o, 'base_prm': s, 'tokens': len(ids)})
    verifier_tokens += len(op) + len(ids)
  return recs, {'attempts': len(flat), 'seconds': res.seconds, 'score_seconds': score_seconds,
                'sampled_tokens': res.sampled_tokens, 'prefill_tokens': res.prefill_tokens,
                'prefills': res.prefills, 'verifier_tokens': verifier_tokens}


def read_chains(config: ml_collections.ConfigDict, workdir: str, problems
                ) -> dict[str, list[list[dict]]]:
  """{problem id: its chains, each a list of attempts (answer, correct, tokens, scores)}."""
  return _read(config, workdir, problems, len(_batches(config, problems)))[0]


def _read(config, workdir: str, problems, num_batches: int) -> tuple[dict, dict]:
  by_id, stats = {}, {}
  for i in range(num_batches):
    path = _batch_path(config, workdir, i)
    res = wd.read_json(path, stage=STAGE)
    for r in res['problems']:
      by_id[r['id']] = r
    for k, v in res.items():
      if k != 'problems':
        stats[k] = stats.get(k, 0) + v
  if sorted(by_id) != sorted(p.id for p in problems):
    raise wd.damaged(artifacts.revision_chains(config, workdir).path,
                     'holds other problems than this config selects', STAGE)
  return {i: r['chains'] for i, r in by_id.items()}, stats


def _load(config, workdir: str, problems, num_batches: int) -> tuple[list[analysis.Chains], dict]:
  chains, stats = _read(config, workdir, problems, num_batches)
  budget = config.eval_revisions.budget
  out = []
  for p in problems:
    cs = chains[p.id]
    shape = (len(cs), budget)
    valid = np.zeros(shape, bool)
    correct = np.zeros(shape, bool)
    scores = {v: np.zeros(shape) for v in VERIFIERS}
    answers = np.full(shape, -1)
    ids = selection.answer_ids([a['answer'] for c in cs for a in c])
    k = 0
    for i, c in enumerate(cs):
      for j, a in enumerate(c):
        valid[i, j], correct[i, j], answers[i, j] = True, a['correct'], ids[k]
        for v in VERIFIERS:
          scores[v][i, j] = a[v]
        k += 1
    out.append(analysis.Chains(answers, correct, scores, valid))
  return out, stats


def _mean_by_bin(values: np.ndarray, bin_of: np.ndarray) -> dict:
  return {str(b): float(values[bin_of == b].mean()) for b in sorted(set(bin_of.tolist()))}


def summarize(config: ml_collections.ConfigDict, workdir: str, problems, bins,
              num_batches: int) -> None:
  e = config.eval_revisions
  out = artifacts.revision_eval(config, workdir)
  chs, stats = _load(config, workdir, problems, num_batches)
  ids = [p.id for p in problems]
  bin_of = np.array([bins[i] for i in ids])
  groups = {'all': np.ones(len(ids), bool), **{str(b): bin_of == b for b in sorted(set(bin_of.tolist()))}}
  p1 = {g: analysis.pass_at_1([c for c, m in zip(chs, mask) if m]) for g, mask in groups.items()}

  def table(c: int, l: int, how: str, verifier: str = 'revision_orm') -> np.ndarray:
    return np.array([analysis.split_correct(ch, c, l, how, verifier) for ch in chs], float)

  def entry(v: np.ndarray) -> dict:
    return {'accuracy': float(v.mean()), 'bins': _mean_by_bin(v, bin_of)}

  # Selections: the revision ORM (hierarchical weighted), majority, the base PRM (hierarchical).
  sels = (('verifier', ('verifier',)), ('majority', ('majority',)),
          ('base_prm', ('verifier', 'base_prm')))
  seq_par = {str(n): {mode: {how: entry(table(c, l, *sel)) for how, sel in sels}
                      for mode, (c, l) in (('sequential', (1, n)), ('parallel', (n, 1)))}
             for n in e.budgets}
  ratios, per_problem = {}, {}
  for n in e.ratio_budgets:
    ratios[str(n)] = {f'{c}x{l}': {how: entry(table(c, l, *sel)) for how, sel in sels}
                      for c, l in analysis.splits(n)}
  budgets = sorted(set(e.budgets) | set(e.ratio_budgets))
  lengths = [1 << k for k in range(int(np.log2(e.budget)) + 1)]
  for l in lengths:  # the policy's strategies: chains of length l, budget / l of them
    for how, sel in sels[:2]:
      acc = np.full((len(ids), len(budgets)), np.nan)
      for j, n in enumerate(budgets):
        if l <= n:
          acc[:, j] = table(n // l, l, *sel)
      per_problem[f'accuracy:revisions_l{l}:{how}'] = acc
  steps = [4] + ([16] if e.budget >= 16 else [])
  result = {
      'model': artifacts.revision_model_name(config), 'split': config.sample.split,
      'num_problems': len(ids), 'budget_unit': 'attempts (generations) per problem',
      'problems_per_bin': {g: int(m.sum()) for g, m in groups.items() if g != 'all'},
      'chain_lengths': analysis.chain_lengths(e.budget), 'window': config.revision.window,
      'pass_at_1': {g: {'by_step': v.tolist(), 'chains': n.astype(int).tolist()}
                    for g, (v, n) in p1.items()},
      'sequential_vs_parallel': seq_par, 'ratios': ratios,
      'transitions': [analysis.transitions(chs, s, 'revision_orm') for s in steps
                      if s <= e.budget],
      'cost': {**stats, 'attempts_per_s': stats['attempts'] / max(stats['seconds'], 1e-9)},
  }
  result['findings'] = findings(result)
  wd.atomic_write_npz(out.file('per_problem.npz'), ids=np.array(ids), bins=bin_of,
                      budgets=np.array(budgets), **per_problem)
  _plot_fig6(result, out.file('revisions_fig6.png'))
  _plot_fig7(result, out.file('revisions_fig7.png'))
  wd.atomic_write_json(out.file('revisions.json'), result)
  logging.info('%s: wrote %s', STAGE, out.path)


def _best_split(splits: dict, how: str, group: str = 'all') -> str:
  """The split with the best accuracy (ties: the more sequential one)."""
  acc = lambda k: (splits[k][how]['accuracy'] if group == 'all'
                   else splits[k][how]['bins'][group])
  return max(splits, key=lambda k: (acc(k), -int(k.split('x')[0])))


def findings(result: dict) -> dict:
  """The paper's Section 6 claims, as measured here."""
  p1 = result['pass_at_1']['all']['by_step']
  out = {'pass_at_1_step_1': p1[0], 'pass_at_1_step_4': p1[3] if len(p1) > 3 else None,
         'pass_at_1_last_step': p1[-1], 'last_step': len(p1)}
  if len(p1) > 4:
    # Past the 4 attempts the model was trained with: the mean over steps 5.. vs step 4.
    out['pass_at_1_mean_after_step_4_minus_step_4'] = float(np.mean(p1[4:]) - p1[3])
  out['sequential_minus_parallel'] = {
      n: {how: t['sequential'][how]['accuracy'] - t['parallel'][how]['accuracy']
          for how in ('verifier', 'majority')}
      for n, t in result['sequential_vs_parallel'].items()}
  out['revision_orm_minus_base_prm'] = {
      n: {mode: t[mode]['verifier']['accuracy'] - t[mode]['base_prm']['accuracy']
          for mode in ('sequential', 'parallel')}
      for n, t in result['sequential_vs_parallel'].items()}
  best = {}
  for n, splits in result['ratios'].items():
    groups = ['all', *sorted(next(iter(splits.values()))['verifier']['bins'])]
    best[n] = {g: _best_split(splits, 'verifier', g) for g in groups}
  out['best_split_by_verifier'] = best  # 'CxL': C chains of L attempts; 1xN = all sequential
  return out


def _plot_fig6(result: dict, path: str) -> None:
  plt = figures.pyplot()
  fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
  for group, v in result['pass_at_1'].items():
    ys = v['by_step']
    left.plot(range(1, len(ys) + 1), ys, label=group if group == 'all' else f'bin {group}',
              lw=2.5 if group == 'all' else 1)
  left.axvline(4, color='grey', ls=':', lw=1)
  left.set_xscale('log', base=2)
  left.set_xlabel('revision step (attempt number in the chain)')
  left.set_ylabel('pass@1')
  left.set_title('pass@1 per revision step (dotted: trained context)')
  left.legend(fontsize=7)
  table = result['sequential_vs_parallel']
  xs = sorted(int(n) for n in table)
  for mode, style in (('sequential', '-'), ('parallel', '--')):
    for how, color in (('verifier', 'C0'), ('majority', 'C1'), ('base_prm', 'C2')):
      right.plot(xs, [table[str(x)][mode][how]['accuracy'] for x in xs], style, color=color,
                 marker='o', label=f'{mode}, {how}')
  right.set_xscale('log', base=2)
  right.set_xlabel('generation budget (attempts per problem)')
  right.set_ylabel('accuracy')
  right.set_title('sequential revisions vs parallel sampling')
  right.legend(fontsize=6)
  fig.tight_layout()
  wd.atomic_write_figure(fig, path)
  plt.close(fig)


def _plot_fig7(result: dict, path: str) -> None:
  plt = figures.pyplot()
  fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
  length = lambda k: int(k.split('x')[1])
  for n, splits in sorted(result['ratios'].items(), key=lambda kv: int(kv[0])):
    keys = list(splits)
    xs = [length(k) for k in keys]
    left.plot(xs, [splits[k]['verifier']['accuracy'] for k in keys], marker='o',
              label=f'N={n}, verifier')
    left.plot(xs, [splits[k]['majority']['accuracy'] for k in keys], ls='--', marker='x',
              label=f'N={n}, majority')
  for ax in (left, right):
    ax.set_xscale('log', base=2)
    ax.set_xlabel('attempts per chain (N / that = chains; left end parallel, right sequential)')
  left.set_ylabel('accuracy')
  left.set_title('accuracy vs sequential/parallel ratio')
  left.legend(fontsize=7)
  top = max(result['ratios'], key=int)
  splits = result['ratios'][top]
  keys = list(splits)
  for b in sorted(next(iter(splits.values()))['verifier']['bins']):
    right.plot([length(k) for k in keys], [splits[k]['verifier']['bins'][b] for k in keys],
               marker='o', label=f'bin {b}')
  right.set_ylabel('accuracy (revision ORM, hierarchical)')
  right.set_title(f'ratio per difficulty bin, N={top}')
  right.legend(fontsize=7)
  fig.tight_layout()
  wd.atomic_write_figure(fig, path)
  plt.close(fig)
