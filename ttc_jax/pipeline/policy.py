"""Stage `policy`: the compute-optimal policy, the FLOPs of every strategy, the exchange (Sec. 3, 7).

Strategy spaces, from the saved per-problem results of eval_search and eval_revisions (the same
test problems): `search` (best-of-N weighted, beam, lookahead, DVTS, each with the PRM),
`revisions` (chains of length L, budget / L of them, hierarchical weighted selection with the
revision ORM: every sequential/parallel ratio) and `combined` (either, per bin). Per space,
difficulty bin (oracle, predicted and deployable, from stage difficulty) and budget, the strategy
with the best accuracy on one fold of the problems is scored on the other (`policy.folds`-fold
cross-validation, folds stratified by oracle bin, seed `policy.seed`). The deployable policy pays
for its predictor: its curve sits `difficulty.deploy_k` generations to the right.

FLOPs per strategy and budget (`ttc_jax.compute.flops`): the paper's 2·N·(generated tokens), ours
with prompt/context and verifier tokens charged, and ours plus attention's context term. The
exchange against `policy.large` (when its greedy calibration is done in this workdir): per R of
`policy.ratios` and oracle bin, the compute-optimal accuracy at K = M + 3(M - 1)/R generations
(the largest measured budget <= K, marked when K exceeds every measured budget) and at the
FLOPs-matched budget of our accounting, against the large model's greedy pass@1.

Writes policy/<model>/<split>/on_<backbone>/: policy.json, flops.json, exchange.json, policy_fig4.png (search),
policy_fig8.png (revisions), policy_fig9.png (the exchange).
"""

from __future__ import annotations

import ml_collections
import numpy as np
from absl import logging

from ttc_jax import artifacts
from ttc_jax import manifest
from ttc_jax import workdir as wd
from ttc_jax.compute import flops
from ttc_jax.errors import ConfigError
from ttc_jax.pipeline import common, difficulty, eval_revisions, eval_search, figures
from ttc_jax.pipeline import exchange as exchange_lib
from ttc_jax.policy import selection


STAGE = 'policy'
BINNINGS = ('oracle', 'predicted', 'deployable')
SPACES = ('search', 'revisions', 'combined')
# Per space: (best-of-N weighted, majority) over the same model's parallel samples.
BASELINES = {'search': ('best_of_n', 'best_of_n:majority'),
             'revisions': ('revisions_l1', 'revisions_l1:majority'),
             'combined': ('best_of_n', 'best_of_n:majority')}


def outputs(config: ml_collections.ConfigDict, workdir: str) -> list[manifest.Artifact]:
  return [artifacts.policy(config, workdir)]


def check(config: ml_collections.ConfigDict) -> None:
  p = config.policy
  if p.folds < 2:
    raise ConfigError(f'--config.policy.folds={p.folds}: expected at least 2 (a fold is scored by '
                      'choices made on the others)')
  if not p.ratios or any(r <= 0 for r in p.ratios):
    raise ConfigError(f'--config.policy.ratios={tuple(p.ratios)}: expected positive '
                      'D_inference / D_pretrain ratios, e.g. (0.16, 0.79, 22.0)')


# --- the strategy tables ------------------------------------------------------------------------

def _npz(a: manifest.Artifact, stage: str) -> dict[str, np.ndarray]:
  manifest.require(a, stage)
  return wd.read_npz(a.file('per_problem.npz'), stage=a.stage, keys=('ids', 'budgets'))


def tables(config: ml_collections.ConfigDict, workdir: str
           ) -> tuple[list[str], tuple[int, ...], dict[str, dict[str, np.ndarray]]]:
  """(problem ids, budgets, {space: {strategy: accuracy [problems, budgets]}}), NaN where a
  strategy has no run at a budget; the baselines' selections are included under their labels."""
  s = _npz(artifacts.search_eval(config, workdir), STAGE)
  r = _npz(artifacts.revision_eval(config, workdir), STAGE)
  ids = s['ids'].tolist()
  if sorted(ids) != sorted(r['ids'].tolist()):
    raise wd.damaged(artifacts.revision_eval(config, workdir).file('per_problem.npz'),
                     'holds other problems than eval_search; rerun both on this config', STAGE)
  budgets = tuple(sorted(set(s['budgets'].tolist()) | set(r['budgets'].tolist())))

  def widen(z, key):  # onto the union of budgets, rows in eval_search's problem order
    pos = {i: n for n, i in enumerate(z['ids'].tolist())}
    order = [pos[i] for i in ids]
    out = np.full((len(ids), len(budgets)), np.nan)
    for j, b in enumerate(z['budgets'].tolist()):
      out[:, budgets.index(b)] = z[key][order, j]
    return out

  search = {k.split(':', 1)[1]: widen(s, k) for k in s if k.startswith('accuracy:')}
  revisions = {}
  for k in r:
    if k.startswith('accuracy:revisions_l'):
      label, how = k.split(':')[1:]
      revisions[label if how == 'verifier' else f'{label}:{how}'] = widen(r, k)
  return ids, budgets, {'search': search, 'revisions': revisions}


def space_strategies(space: str, found: dict[str, dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
  """The strategies a space chooses among (weighted selections only; majority is a baseline)."""
  pick = lambda t: {k: v for k, v in t.items() if ':' not in k}
  if space == 'combined':
    return {**pick(found['search']), **pick(found['revisions'])}
  return pick(found[space])


# --- costs --------------------------------------------------------------------------------------

def costs(config: ml_collections.ConfigDict, workdir: str, ids: list[str], budgets: tuple[int, ...],
          found: dict) -> dict[str, dict[int, list[flops.Cost]]]:
  """{strategy: {budget: per-problem Cost}} for every weighted-selection strategy of `found` (a
  majority baseline spends what its strategy does; search: the first seed's runs)."""
  tok = common.load_tokenizer(config, workdir, STAGE)
  shapes = difficulty.model_shapes(config, tok.vocab_size)
  out: dict[str, dict[int, list[flops.Cost]]] = {}
  seed = config.search.seeds[0]
  for name, budget, s, _ in eval_search.runs(config):
    if s != seed:
      continue
    rows = eval_search.read_run(config, workdir, name, budget, seed, ids)
    per = [flops.search_cost(rows[i], shapes) for i in ids]
    out.setdefault(name, {})[budget] = per  # its other selections read the same samples
  problems = {p.id: p for p in common.load_problems(config, workdir, config.sample.split, STAGE)}
  chosen = [problems[i] for i in ids]
  chains = eval_revisions.read_chains(config, workdir, chosen)
  prompt_len = {p.id: len(common.encode_example(tok, p)[0]) for p in chosen}
  for label in (x for x in found['revisions'] if ':' not in x):
    length = int(label[len('revisions_l'):])
    for b in budgets:
      if b >= length and b % length == 0 and b <= config.eval_revisions.budget:
        out.setdefault(label, {})[b] = [
            flops.revision_cost(chains[i], b // length, length, prompt_len[i], config.revision.window,
                          shapes) for i in ids]
  return out


# --- the stage ----------------------------------------------------------------------------------

def run(config: ml_collections.ConfigDict, workdir: str) -> None:
  check(config)
  p, out = config.policy, artifacts.policy(config, workdir)
  ids, budgets, found = tables(config, workdir)
  arrays, diff = difficulty.load(config, workdir, STAGE)
  pos = {i: n for n, i in enumerate(arrays['ids'].tolist())}
  rows = [pos[i] for i in ids]
  bins = {b: arrays[f'{b}_bin'][rows] for b in BINNINGS}
  fold_of = selection.folds(bins['oracle'], p.folds, p.seed)
  k = config.difficulty.deploy_k
  sizes = difficulty.model_sizes(config, workdir, STAGE)
  cost = costs(config, workdir, ids, budgets, found)
  flops_table = {label: {str(b): flops.Cost.sum(per).scaled(1 / len(per)).as_dict(sizes['proposer'], sizes['verifier'])
                         for b, per in sorted(by_budget.items())}
                 for label, by_budget in sorted(cost.items())}

  result = {'model': config.model_name, 'split': config.sample.split, 'num_problems': len(ids),
            'budgets': list(budgets), 'budget_unit': 'generations per problem',
            'folds': p.folds, 'seed': p.seed, 'deploy_k': k,
            'fold_sizes': [int((fold_of == f).sum()) for f in range(p.folds)], 'spaces': {}}
  policies = {}
  table = {**found['search'], **found['revisions']}
  for space in SPACES:
    strategies = space_strategies(space, found)
    base_w, base_m = BASELINES[space]
    # The budgets this space measured (any of its strategies runs there; for `combined`, both
    # spaces do, so a budget is never won by default).
    ran = lambda t, j: any(not np.isnan(v[:, j]).all() for v in space_strategies(t, found).values())
    cols = [j for j in range(len(budgets))
            if (all(ran(t, j) for t in ('search', 'revisions')) if space == 'combined'
                else ran(space, j))]
    sb = tuple(budgets[j] for j in cols)
    sub = {name: v[:, cols] for name, v in strategies.items()}
    entry = {'budgets': list(sb), 'strategies': sorted(sub),
             'baselines': {'best_of_n_weighted': base_w, 'majority': base_m}, 'curves': {},
             'choices': {}, 'efficiency_gain': {}}
    for how, label in (('best_of_n_weighted', base_w), ('majority', base_m)):
      entry['curves'][how] = _curve(sb, _column_means(table[label][:, cols]))
    for binning in BINNINGS:
      pol = selection.cross_validate(sub, sb, bins[binning], fold_of)
      policies[(space, binning)] = (pol, cols)
      shift = k if binning == 'deployable' else 0
      xs = tuple(b + shift for b in sb)
      entry['curves'][f'compute_optimal_{binning}'] = {
          **_curve(xs, pol.mean), 'per_fold': pol.accuracy.tolist(),
          'per_bin': {str(b): _curve(xs, _column_means(pol.per_problem[bins[binning] == b]))
                      for b in pol.bins}}
      entry['choices'][binning] = [
          {str(sb[j]): {str(b): c for b, c in per_budget.items()}
           for j, per_budget in enumerate(fold)} for fold in pol.choices]
      entry.setdefault('deployed', {})[binning] = {
          str(b): {str(x): name for x, name in per_bin.items()}
          for b, per_bin in selection.fit(sub, sb, bins[binning]).items()}
      baseline = _column_means(table[base_w][:, cols])
      entry['efficiency_gain'][binning] = selection.efficiency_gain(sb, baseline, xs, pol.mean)
    entry['findings'] = _space_findings(entry)
    result['spaces'][space] = entry
    logging.info('%s[%s]: compute-optimal (oracle) %s; best-of-N weighted %s; gain %s', STAGE,
                 space, _fmt(entry['curves']['compute_optimal_oracle']),
                 _fmt(entry['curves']['best_of_n_weighted']),
                 entry['efficiency_gain']['oracle']['gain'])
  result['predicted_minus_oracle'] = {
      space: {str(b): (result['spaces'][space]['curves']['compute_optimal_predicted']['accuracy'][i]
                       - result['spaces'][space]['curves']['compute_optimal_oracle']['accuracy'][i])
              for i, b in enumerate(result['spaces'][space]['budgets'])} for space in SPACES}
  result['difficulty_agreement'] = diff['agreement']
  exchange = exchange_lib.compare(config, workdir, ids, budgets, bins['oracle'], policies, cost, sizes, found)
  wd.atomic_write_json(out.file('flops.json'), {
      'model_params': sizes, 'budget_unit': 'generations per problem',
      'per_problem_mean': flops_table, 'difficulty': diff['cost_per_problem'],
      'columns': {
          'flops_paper': "2·N·(generated tokens): the paper's inference FLOPs",
          'flops_with_verifier': '2·N_proposer·(generated + prompt/context tokens read) + '
                                 '2·N_verifier·(verifier tokens)',
          'flops_with_attention': "flops_with_verifier + attention's context term (4·d_attn per "
                                  'query-key pair per layer)'}})
  wd.atomic_write_json(out.file('exchange.json'), exchange)
  _plot_curves(result['spaces']['search'], 'search (PRM)', out.file('policy_fig4.png'))
  _plot_curves(result['spaces']['revisions'], 'revisions (revision ORM)',
               out.file('policy_fig8.png'))
  _plot_exchange(exchange, out.file('policy_fig9.png'))
  wd.atomic_write_json(out.file('policy.json'), result)
  logging.info('%s: wrote %s', STAGE, out.path)


def _column_means(a: np.ndarray) -> np.ndarray:
  """Mean of each column over its rows, NaN for a column without a value (no warning)."""
  known = ~np.isnan(a)
  return np.where(known.any(axis=0), np.where(known, a, 0).sum(axis=0)
                  / np.maximum(known.sum(axis=0), 1), np.nan)


def _curve(budgets, acc) -> dict:
  return {'budgets': [float(b) for b in budgets],
          'accuracy': [None if np.isnan(a) else float(a) for a in acc]}


def _fmt(curve: dict) -> str:
  return ' '.join(f'{b:g}:{a:.2f}' for b, a in zip(curve['budgets'], curve['accuracy'])
                  if a is not None)


def _space_findings(entry: dict) -> dict:
  """The paper's "4x fewer generations", as measured: the generations the oracle-bin policy needs
  to match best-of-N weighted at the largest budget, against a quarter of that budget."""
  sb = entry['budgets']
  top = sb[-1]
  bon = entry['curves']['best_of_n_weighted']['accuracy'][-1]
  oracle = entry['curves']['compute_optimal_oracle']
  need = selection.matching_budget(oracle['budgets'], oracle['accuracy'], bon) if bon is not None \
      else None
  quarter = top / 4
  at_quarter = (oracle['accuracy'][sb.index(quarter)] if quarter in sb else None)
  return {'best_of_n_weighted_at_largest_budget': {'budget': top, 'accuracy': bon},
          'quarter_budget': quarter, 'compute_optimal_oracle_at_quarter_budget': at_quarter,
          'generations_to_match_best_of_n_at_largest_budget': need,
          'matches_with_at_most_a_quarter': (None if bon is None else
                                             need is not None and bool(need <= quarter + 1e-9))}


# --- figures ------------------------------------------------------------------------------------

_STYLE = {'compute_optimal_oracle': ('compute-optimal (oracle bins)', 'C3', '-'),
          'compute_optimal_predicted': ('compute-optimal (predicted bins)', 'C1', '-'),
          'compute_optimal_deployable': ('compute-optimal (deployable bins, cost charged)', 'C5',
                                         '--'),
          'best_of_n_weighted': ('best-of-N weighted', 'C0', '-'),
          'majority': ('majority', 'C7', ':')}


def _plot_curves(entry: dict, title: str, path: str) -> None:
  """The paper's Figure 4 (search) / Figure 8 (revisions): accuracy vs generation budget."""
  plt = figures.pyplot()
  fig, ax = plt.subplots(figsize=(6, 4))
  for key, (label, color, ls) in _STYLE.items():
    c = entry['curves'][key]
    pts = [(b, a) for b, a in zip(c['budgets'], c['accuracy']) if a is not None]
    if pts:
      ax.plot(*zip(*pts), marker='o', color=color, ls=ls, label=label)
  ax.set_xscale('log', base=2)
  ax.set_xlabel('generation budget (per problem)')
  ax.set_ylabel('test accuracy (2-fold cross-validated)')
  ax.set_title(f'compute-optimal {title}')
  ax.legend(fontsize=7)
  fig.tight_layout()
  wd.atomic_write_figure(fig, path)
  plt.close(fig)


def _plot_exchange(exchange: dict, path: str) -> None:
  """The paper's Figure 9: per R and oracle bin, the relative improvement (%) of the small model
  with compute-optimal test-time compute over the larger model's greedy pass@1."""
  plt = figures.pyplot()
  fig, axes = plt.subplots(1, 2, figsize=(11, 4), sharey=True)
  for ax, space in zip(axes, ('revisions', 'search')):
    ax.set_title(f'{space}: small + test-time compute vs {exchange.get("large_model", "large")}')
    ax.axhline(0, color='k', lw=0.8)
    ax.set_xlabel('difficulty bin (oracle, 1 = easiest)')
    if not exchange.get('available'):
      ax.text(0.5, 0.5, 'no larger model in this workdir', ha='center', transform=ax.transAxes)
      continue
    ratios = list(exchange['ratios'])
    bins = [b for b in next(iter(exchange['ratios'].values()))['spaces'][space]['bins']
            if b != 'all']
    width = 0.8 / max(1, len(ratios))
    for n, r in enumerate(ratios):
      cells = exchange['ratios'][r]['spaces'][space]['bins']
      ys = [cells[b].get('relative_paper_%') for b in bins]
      xs = np.arange(len(bins)) + n * width
      paper = exchange['ratios'][r]['spaces'][space]['paper']
      shown = f', shown at {paper["budget"]}' if paper['K_exceeds_measured'] else ''
      ax.bar(xs, [0 if y is None else y for y in ys], width,
             label=f'R = {r} (K = {exchange["ratios"][r]["K"]:.0f}{shown})')
      for x, y in zip(xs, ys):
        if y is None:
          ax.text(x, 0, 'n/a', ha='center', va='bottom', fontsize=6)
    ax.set_xticks(np.arange(len(bins)) + 0.4 - width / 2, bins)
    ax.legend(fontsize=7)
  axes[0].set_ylabel('relative improvement over the larger model (%)')
  fig.tight_layout()
  wd.atomic_write_figure(fig, path)
  plt.close(fig)
