"""Stage `eval_search`: PRM-guided search on the sample split (test), per method, budget and seed.

Every (method, budget, seed) of `config.search` is one result file
(search/<model>/<split>/<method>/n<N>_seed<S>.json, atomic): a kill loses at most the one in
progress, a rerun resumes. Budgets are generations per problem (the paper's unit); a method
that spends (k + 1) generations per beam (lookahead) runs n = budget / (k + 1) beams. Each file
holds per problem the pick, whether it is right (best-of-N weighted; for best-of-N also plain
best-of-N and majority over the same samples), pass@N of the candidates, and the tokens spent
(proposer sampled, verifier read, prompt). Then eval_search/<model>/<split>/ gets search.json
(accuracy per method, budget and oracle bin of `calibrate`), per_problem.npz (for the policy),
and search.png (the paper's Figure 3).

Problems: `search.max_problems` of the split (0 = all), the same number from each oracle bin
(lowest ids first), batched by `search.rows_per_batch` rows (problems x n) in num_ops order.
"""

from __future__ import annotations

import math
import os
import re
import time

import jax
import ml_collections
import numpy as np
from absl import logging

from ttc_jax import artifacts
from ttc_jax import manifest
from ttc_jax import workdir as wd
from ttc_jax.errors import ConfigError
from ttc_jax.parallel import hosts
from ttc_jax.pipeline import common, figures, train_base, train_prm
from ttc_jax.search import engine
from ttc_jax.tasks import arith
from ttc_jax.verifiers import selection


STAGE = 'eval_search'
_METHOD = re.compile(r'(best_of_n)|(beam|dvts)_m(\d+|sqrt)|(lookahead)_k(\d+)_m(\d+|sqrt)')
SELECTIONS = ('weighted', 'best_of_n', 'majority')


def parse_method(name: str, budget: int, c: ml_collections.ConfigDict) -> engine.SearchConfig | None:
  """The SearchConfig of a method name at a generation budget, or None if the method cannot spend
  exactly that budget (lookahead's n = budget / (k + 1) not a multiple of M, M > n)."""
  match = _METHOD.fullmatch(name)
  if not match:
    raise ConfigError(f'unknown search method {name!r} in --config.search.methods; expected '
                      'best_of_n, beam_m<M>, dvts_m<M>, lookahead_k<K>_m<M> (M a number or sqrt)')
  common_kw = dict(max_rounds=c.max_rounds, max_step_tokens=c.max_step_tokens,
                   max_new_tokens=c.max_new_tokens, temperature=c.temperature, top_k=c.top_k,
                   top_p=c.top_p)
  if match.group(1):
    return engine.SearchConfig(method='best_of_n', n=budget, **common_kw)
  method, k, m = ((match.group(2), 0, match.group(3)) if match.group(2)
                  else (match.group(4), int(match.group(5)), match.group(6)))
  if budget % (k + 1):
    return None
  n = budget // (k + 1)
  width = math.isqrt(n) if m == 'sqrt' else int(m)
  if m == 'sqrt' and width * width != n:
    return None
  if width < 1 or width > n or n % width:
    return None
  return engine.SearchConfig(method=method, n=n, beam_width=width, lookahead=k, **common_kw)


def runs(config: ml_collections.ConfigDict) -> list[tuple[str, int, int, engine.SearchConfig]]:
  """(method name, budget, seed, SearchConfig) of every run the config asks for."""
  c = config.search
  out = []
  for name in c.methods:
    for budget in c.budgets:
      sc = parse_method(name, int(budget), c)
      if sc is None:
        continue
      out.extend((name, int(budget), int(seed), sc) for seed in c.seeds)
  return out


def outputs(config: ml_collections.ConfigDict, workdir: str) -> list[manifest.Artifact]:
  return [*(artifacts.search_runs(config, workdir, m) for m in config.search.methods),
          artifacts.search_eval(config, workdir)]


def select_problems(config: ml_collections.ConfigDict, workdir: str, limit: int, stage: str
                    ) -> tuple[list[arith.Problem], dict[str, int]]:
  """(problems in batch order, {id: oracle bin}): `limit` problems of the sample split (0 =
  all), the same number from each oracle bin (lowest ids first), in (num_ops, id) order."""
  bins = common.load_difficulty(config, workdir, stage)
  problems = common.load_problems(config, workdir, config.sample.split, stage)
  if limit:
    per_bin = max(1, limit // config.calibrate.num_bins)
    chosen = []
    for b in sorted(set(bins.values())):
      chosen += sorted((p for p in problems if bins[p.id] == b), key=lambda p: p.id)[:per_bin]
    problems = chosen
  return sorted(problems, key=lambda p: (p.num_ops, p.id)), bins


def _run_file(config, workdir: str, name: str, budget: int, seed: int) -> str:
  return artifacts.search_runs(config, workdir, name).file(f'n{budget}_seed{seed}.json')


def run(config: ml_collections.ConfigDict, workdir: str) -> None:
  c = config.search
  problems, bins = select_problems(config, workdir, c.max_problems, STAGE)
  todo = [r for r in runs(config) if not os.path.exists(_run_file(config, workdir, *r[:3]))]
  if todo:
    tok = common.load_tokenizer(config, workdir, STAGE)
    model, params = train_base.load_model(config, workdir, config.model_name, STAGE)
    vmodel, vparams = train_prm.load_verifier(config, workdir, 'prm', STAGE)
    models = engine.Models(model, params, vmodel, vparams,
                           delimiter_id=tok.id_of(arith.STEP_DELIMITER), eos_id=tok.eos_id)
    answer_of = lambda ids: arith.extract_answer(tok.decode(ids))
    prompts = [common.encode_example(tok, p)[0] for p in problems]
    mesh = data_mesh()
    for i, (name, budget, seed, sc) in enumerate(todo):
      logging.info('%s: run %d/%d: %s at %d generations (n=%d), seed %d, %d problems', STAGE,
                   i + 1, len(todo), name, budget, sc.n, seed, len(problems))
      result = _search_all(sc, models, prompts, problems, bins, seed, c.rows_per_batch,
                           answer_of, mesh)
      result.update(method=name, budget=budget, seed=seed, settings=_settings(sc))
      wd.atomic_write_json(_run_file(config, workdir, name, budget, seed), result)
  if hosts.is_writer():  # reads the run files process 0 wrote
    summarize(config, workdir, problems, bins)


def _settings(sc: engine.SearchConfig) -> dict:
  return {'method': sc.method, 'n': sc.n, 'beam_width': sc.beam_width,
          'lookahead': sc.lookahead, 'generations': sc.generations}


def data_mesh() -> jax.sharding.Mesh | None:
  """A 1-D `data` mesh over this process's devices when it has several (problems sharded,
  params replicated; the results equal one device's), else None. Several processes share the
  problems batch by batch (`_search_all`)."""
  devices = jax.local_devices()
  if len(devices) == 1:
    return None
  return jax.sharding.Mesh(np.array(devices), ('data',),
                           axis_types=(jax.sharding.AxisType.Auto,))


def _search_all(sc: engine.SearchConfig, models: engine.Models, prompts, problems, bins, seed,
                rows_per_batch: int, answer_of, mesh) -> dict:
  # Equal batches (the last padded by the engine's rule: repeats, results dropped), so each
  # budget compiles one set of shapes.
  per_batch = max(1, rows_per_batch // sc.n)
  per_batch = -(-len(problems) // -(-len(problems) // per_batch))
  key = jax.random.key(seed)
  starts = range(0, len(problems), per_batch)
  # Several processes: batch b on process b mod count; each batch's key depends on its start
  # only, so the rows equal one process's.
  mine, t0, tokens, done = {}, time.perf_counter(), 0, 0
  for start in [starts[b] for b in hosts.owned(len(starts))]:
    batch = slice(start, start + per_batch)
    chunk = prompts[batch]
    chunk = chunk + [chunk[-1]] * (per_batch - len(chunk))
    results = engine.search(sc, models, chunk, jax.random.fold_in(key, start), answer_of,
                            mesh=mesh)
    mine[start] = []
    for p, r in zip(problems[batch], results):
      ids = selection.answer_ids(r.answers)
      correct = {'weighted': arith.grade(r.answer, p.answer)}
      if sc.method == 'best_of_n':
        for how in ('best_of_n', 'majority'):
          pick = int(selection.select_index(ids[None], r.scores[None], how)[0])
          correct[how] = pick >= 0 and arith.grade(r.answers[pick], p.answer)
      mine[start].append({
          'id': p.id, 'num_ops': p.num_ops, 'bin': bins[p.id], 'answer': r.answer,
          'correct': correct, 'pass@n': any(arith.grade(a, p.answer) for a in r.answers),
          'generations': r.generations, 'proposer_tokens': r.proposer_tokens,
          'verifier_tokens': r.verifier_tokens, 'prompt_tokens': r.prompt_tokens,
          'rounds': r.rounds})
      tokens += r.proposer_tokens
    done += len(mine[start])
    elapsed = time.perf_counter() - t0
    logging.info('%s: %d/%d problems%s, %.2f problems/s, %.0f proposer tokens/s', STAGE, done,
                 len(problems), f' (process {hosts.index()})' if hosts.shared() else '',
                 done / elapsed, tokens / elapsed)
  every = {start: r for part in hosts.gather(mine) for start, r in part.items()}
  rows = [row for start in starts for row in every[start]]
  seconds = time.perf_counter() - t0
  return {'problems': rows, 'seconds': seconds,
          'accuracy': float(np.mean([r['correct']['weighted'] for r in rows]))}


def read_run(config: ml_collections.ConfigDict, workdir: str, name: str, budget: int, seed: int,
             ids: list[str]) -> dict[str, dict]:
  """{problem id: its row} of one finished run (method, budget, seed) over the problems `ids`."""
  return _read_run(config, workdir, name, budget, seed, ids)[1]


def _read_run(config, workdir: str, name: str, budget: int, seed: int, ids: list[str]
              ) -> tuple[dict, dict[str, dict]]:
  path = _run_file(config, workdir, name, budget, seed)
  res = wd.read_json(path, stage=STAGE)
  by_id = {r['id']: r for r in res['problems']}
  if sorted(by_id) != sorted(ids):
    raise wd.damaged(path, 'holds other problems than this config selects', STAGE)
  return res, by_id


def summarize(config: ml_collections.ConfigDict, workdir: str, problems, bins) -> None:
  """search.json, per_problem.npz and search.png from every run file."""
  out = artifacts.search_eval(config, workdir)
  ids = [p.id for p in problems]
  bin_of = np.array([bins[i] for i in ids])
  table, per_problem = {}, {}
  for name, budget, seed, sc in runs(config):
    res, by_id = _read_run(config, workdir, name, budget, seed, ids)
    for how in (SELECTIONS if sc.method == 'best_of_n' else ('weighted',)):
      label = name if how == 'weighted' else f'{name}:{how}'
      correct = np.array([float(by_id[i]['correct'][how]) for i in ids])
      per_problem.setdefault((label, budget), []).append(correct)
      entry = table.setdefault(label, {}).setdefault(str(budget), {
          'n': sc.n, 'beam_width': sc.beam_width, 'lookahead': sc.lookahead, 'seeds': [],
          'accuracy_per_seed': [], 'bins_per_seed': [], 'seconds': 0.0})
      entry['seeds'].append(seed)
      entry['accuracy_per_seed'].append(float(correct.mean()))
      entry['bins_per_seed'].append({str(b): float(correct[bin_of == b].mean())
                                     for b in sorted(set(bin_of.tolist()))})
      entry['seconds'] += res['seconds']
      for key in ('proposer_tokens', 'verifier_tokens', 'prompt_tokens', 'generations'):
        entry[key] = float(np.mean([by_id[i][key] for i in ids]))
      entry['pass@n'] = float(np.mean([by_id[i]['pass@n'] for i in ids]))
  for label, budgets in table.items():
    for entry in budgets.values():
      entry['accuracy'] = float(np.mean(entry['accuracy_per_seed']))
      entry['bins'] = {b: float(np.mean([s[b] for s in entry['bins_per_seed']]))
                       for b in entry['bins_per_seed'][0]}
  result = {'model': config.model_name, 'split': config.sample.split,
            'verifier': artifacts.verifier_name(config, 'prm'), 'num_problems': len(ids),
            'problems_per_bin': {str(b): int((bin_of == b).sum())
                                 for b in sorted(set(bin_of.tolist()))},
            'budget_unit': 'generations per problem', 'methods': table,
            'findings': findings(table)}
  labels = sorted({label for label, _ in per_problem})
  budgets = sorted({b for _, b in per_problem})
  arrays = {}
  for label in labels:  # [problems, budgets], NaN where the method has no run at that budget
    acc = np.full((len(ids), len(budgets)), np.nan)
    for j, b in enumerate(budgets):
      if (label, b) in per_problem:
        acc[:, j] = np.mean(per_problem[(label, b)], axis=0)
    arrays[f'accuracy:{label}'] = acc
  wd.atomic_write_npz(out.file('per_problem.npz'), ids=np.array(ids), bins=bin_of,
                      budgets=np.array(budgets), **arrays)
  _plot(result, out.file('search.png'))
  wd.atomic_write_json(out.file('search.json'), result)
  logging.info('%s: wrote %s', STAGE, out.path)


def findings(table: dict) -> dict:
  """The paper's Section 5 claims, as measured here (None where a run is missing)."""
  def acc(label, budget, b=None):
    e = table.get(label, {}).get(str(budget))
    return None if e is None else (e['accuracy'] if b is None else e['bins'].get(b))

  out = {}
  for budget in (4, 16):
    a, b = acc('beam_m4', budget), acc('best_of_n', budget)
    out[f'beam_m4_minus_best_of_n_at_{budget}'] = None if None in (a, b) else a - b
  budgets = sorted({int(x) for e in table.values() for x in e})
  top = budgets[-1] if budgets else None
  bins = sorted(table.get('best_of_n', {}).get(str(top), {}).get('bins', {}))
  if top is not None and bins:
    out[f'beam_m4_minus_best_of_n_at_{top}_per_bin'] = {
        b: (None if None in (acc('beam_m4', top, b), acc('best_of_n', top, b))
            else acc('beam_m4', top, b) - acc('best_of_n', top, b)) for b in bins}
  for label in table:
    if label.startswith('lookahead'):
      out[f'{label}_minus_beam_m4_at_equal_generations'] = {
          str(g): acc(label, g) - acc('beam_m4', g) for g in budgets
          if acc(label, g) is not None and acc('beam_m4', g) is not None}
  return out


def _plot(result: dict, path: str) -> None:
  plt = figures.pyplot()
  fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
  for label, budgets in sorted(result['methods'].items()):
    xs = sorted(int(b) for b in budgets)
    left.plot(xs, [budgets[str(x)]['accuracy'] for x in xs], marker='o', label=label)
  left.set_xscale('log', base=2)
  left.set_xlabel('generation budget (per problem)')
  left.set_ylabel('accuracy')
  left.set_title('search methods vs budget')
  left.legend(fontsize=7)
  beam, bon = result['methods'].get('beam_m4', {}), result['methods'].get('best_of_n', {})
  budgets = sorted({int(b) for b in beam} & {int(b) for b in bon})
  bins = sorted(result['problems_per_bin'])
  width = 0.8 / max(1, 2 * len(budgets))
  for j, b in enumerate(budgets):
    for k, (label, table) in enumerate((('best_of_n', bon), ('beam_m4', beam))):
      xs = np.arange(len(bins)) + (2 * j + k) * width
      right.bar(xs, [table[str(b)]['bins'][x] for x in bins], width,
                label=f'{label} N={b}', alpha=0.5 + 0.5 * k)
  right.set_xticks(np.arange(len(bins)) + 0.4 - width / 2, [f'bin {b}' for b in bins])
  right.set_ylabel('accuracy')
  right.set_title('beam (M=4) vs best-of-N weighted, per difficulty bin')
  right.legend(fontsize=6, ncol=2)
  fig.tight_layout()
  wd.atomic_write_figure(fig, path)
  plt.close(fig)
