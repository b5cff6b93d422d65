"""Stage `report`: report/<model>/<split>/on_<backbone>/REPORT.md, every figure of the run and the paper's findings as measured.

Everything in it is read from the workdir's results (nothing is written by hand), in a fixed
order with fixed number formats, so rerunning `report` on the same workdir writes the same file.
Figures are copied into report/figures/ so the directory stands alone.
"""

from __future__ import annotations

import json
import os
import shutil

import ml_collections
import numpy as np

from ttc_jax import artifacts
from ttc_jax import manifest
from ttc_jax import workdir as wd
from ttc_jax.pipeline.policy import SPACES

STAGE = 'report'
# The predicted-bin policy counts as close to the oracle one within this accuracy (absolute).
PREDICTED_MARGIN = 0.05


def outputs(config: ml_collections.ConfigDict, workdir: str) -> list[manifest.Artifact]:
  return [artifacts.report(config, workdir)]


def _read(a: manifest.Artifact, name: str) -> dict:
  manifest.require(a, STAGE)
  return wd.read_json(a.file(name), stage=a.stage)


def _f(x, digits: int = 3) -> str:
  if x is None:
    return 'n/a'
  if isinstance(x, bool):
    return 'yes' if x else 'no'
  if isinstance(x, (int, np.integer)):
    return str(int(x))
  if abs(x) >= 1e5 or (x != 0 and abs(x) < 1e-3):
    return f'{x:.3g}'
  return f'{x:.{digits}f}'


def _table(header: list[str], rows: list[list]) -> list[str]:
  out = ['| ' + ' | '.join(header) + ' |', '|' + '---|' * len(header)]
  out += ['| ' + ' | '.join(c if isinstance(c, str) else _f(c) for c in row) + ' |' for row in rows]
  return out + ['']


def _duration(seconds: float) -> str:
  return f'{seconds:.1f} s' if seconds < 60 else f'{seconds / 60:.1f} min'


def _holds(ok: bool | None) -> str:
  return 'n/a' if ok is None else ('holds' if ok else 'does not hold')


def figures(config: ml_collections.ConfigDict, workdir: str) -> list[tuple[str, str, str]]:
  """(title, source path, name under report/figures/) of every figure, in report order."""
  cal = artifacts.calibration(config, workdir)
  ver = artifacts.verifier_eval(config, workdir)
  srch = artifacts.search_eval(config, workdir)
  rev = artifacts.revision_eval(config, workdir)
  pol = artifacts.policy(config, workdir)
  found = [
      ('pass@k per oracle difficulty bin (calibration)', cal.file('pass_at_k.png'),
       'calibration_pass_at_k.png'),
      ('verifiers: majority, PRM / ORM best-of-N and weighted, every PRM aggregation, vs N '
       '(the aggregation and PRM-vs-ORM ablations)', ver.file('verifiers.png'), 'verifiers.png'),
      ("the PRM's calibration on held-out Monte-Carlo labels", ver.file('prm_reliability.png'),
       'prm_reliability.png'),
      ('Figure 3: search methods vs budget; beam vs best-of-N per bin', srch.file('search.png'),
       'fig3_search.png'),
      ('Figure 4: compute-optimal search vs best-of-N weighted and majority',
       pol.file('policy_fig4.png'), 'fig4_compute_optimal_search.png'),
      ('Figure 6: pass@1 per revision step; sequential vs parallel', rev.file('revisions_fig6.png'),
       'fig6_revisions.png'),
      ('Figure 7: the sequential/parallel ratio per budget and bin', rev.file('revisions_fig7.png'),
       'fig7_revision_ratios.png'),
      ('Figure 8: compute-optimal revisions vs best-of-N weighted and majority',
       pol.file('policy_fig8.png'), 'fig8_compute_optimal_revisions.png'),
      ('Figure 9: the FLOPs-matched exchange against the larger model, per R and bin',
       pol.file('policy_fig9.png'), 'fig9_exchange.png'),
  ]
  return [f for f in found if os.path.exists(f[1])]


def findings(search: dict, revisions: dict, verifiers: dict, policy: dict, exchange: dict
             ) -> list[list[str]]:
  """[claim, measured, verdict] of each of the paper's findings this run measures."""
  rows = []
  fs = search['findings']
  for b in (4, 16):
    d = fs.get(f'beam_m4_minus_best_of_n_at_{b}')
    rows.append([f'Beam search (M=4) beats best-of-N weighted at a small budget ({b})',
                 f'beam - best-of-N = {_f(d)}', _holds(None if d is None else d > 0)])
  per_bin = {k: v for k, v in fs.items() if k.endswith('_per_bin')}
  for key, d in per_bin.items():
    easy, hard = [d[b] for b in sorted(d)[:2]], [d[b] for b in sorted(d)[2:]]
    known = None not in easy + hard and easy and hard
    rows.append(['At the largest budget beam search helps on the harder bins, not on the easiest '
                 'two', 'beam - best-of-N per bin: '
                 + ', '.join(f'{b}: {_f(v)}' for b, v in sorted(d.items())),
                 _holds(bool(max(easy) <= 0 < np.mean(hard)) if known else None)])
  for key, d in fs.items():
    if key.startswith('lookahead') and d:
      rows.append(['Lookahead search underperforms beam search at equal generations',
                   ', '.join(f'N={n}: {_f(v)}' for n, v in sorted(d.items(), key=lambda x: int(x[0]))),
                   _holds(all(v < 0 for v in d.values()))])
  g = verifiers['groups']['overall']['methods']
  top = len(verifiers['ns']) - 1
  n = verifiers['ns'][top]
  prm, orm, maj = (g[k]['accuracy'][top] for k in ('prm_weighted_last', 'orm_weighted', 'majority'))
  rows.append([f'PRM-weighted best-of-N beats majority voting (N={n})',
               f'{_f(prm)} vs {_f(maj)}', _holds(prm > maj)])
  rows.append([f'The PRM beats the ORM as a best-of-N verifier (weighted, N={n})',
               f'{_f(prm)} vs {_f(orm)}', _holds(prm > orm)])
  aggs = {k[len('prm_weighted_'):]: v['accuracy'][top] for k, v in g.items()
          if k.startswith('prm_weighted_')}
  best = max(aggs, key=aggs.get)
  rows.append([f"The PRM's last-step score is the best aggregation (N={n})",
               ', '.join(f'{k}: {_f(v)}' for k, v in sorted(aggs.items())),
               _holds(aggs.get('last', -1) >= aggs[best] - 1e-12)])
  fr = revisions['findings']
  rows.append(['Revision pass@1 improves with the revision step',
               f"step 1: {_f(fr.get('pass_at_1_step_1'))}, step 4: {_f(fr.get('pass_at_1_step_4'))}, "
               f"step {fr.get('last_step')}: {_f(fr.get('pass_at_1_last_step'))}",
               _holds(fr.get('pass_at_1_step_4', 0) > fr.get('pass_at_1_step_1', 1))])
  sp = fr.get('sequential_minus_parallel', {})
  if sp:
    rows.append(['Sequential revisions beat parallel sampling at equal budget (verifier)',
                 ', '.join(f'N={b}: {_f(v["verifier"])}'
                           for b, v in sorted(sp.items(), key=lambda x: int(x[0]))),
                 _holds(all(v['verifier'] > 0 for v in sp.values()))])
  for space, label in (('search', 'search'), ('revisions', 'revisions')):
    f = policy['spaces'][space]['findings']
    bon = f['best_of_n_weighted_at_largest_budget']
    need = f['generations_to_match_best_of_n_at_largest_budget']
    q = f['quarter_budget']
    rows.append([f'Compute-optimal {label} (oracle bins) matches best-of-N weighted at '
                 f'N={bon["budget"]} with <= {q:g} generations (4x fewer)',
                 f'best-of-N at {bon["budget"]}: {_f(bon["accuracy"])}; the policy matches it at '
                 f'{_f(need, 1)} generations (at {q:g}: '
                 f'{_f(f["compute_optimal_oracle_at_quarter_budget"])})',
                 _holds(f['matches_with_at_most_a_quarter'])])
    gap = policy['predicted_minus_oracle'][space]
    worst = min(gap.values())
    rows.append([f'Predicted-difficulty {label} policy stays within {PREDICTED_MARGIN} of the '
                 'oracle-bin one', ', '.join(f'N={b}: {_f(gap[b])}' for b in sorted(gap, key=int)),
                 _holds(worst >= -PREDICTED_MARGIN)])
  if exchange.get('available'):
    ratios = sorted(exchange['ratios'], key=float)
    lo, hi = ratios[0], ratios[-1]
    for space in ('search', 'revisions'):
      cells = exchange['ratios'][lo]['spaces'][space]['bins']
      bins = [b for b in cells if b != 'all']
      easy = [cells[b].get('relative_paper_%') for b in bins[:3]]
      rows.append([f'At R << 1 (R={lo}) the small model with test-time compute ({space}) beats '
                   f'the {exchange["large_model"]} model on the easy and medium bins',
                   ', '.join(f'bin {b}: {_f(cells[b].get("relative_paper_%"), 1)}%' for b in bins),
                   _holds(None if None in easy else all(x > 0 for x in easy))])
      hard = exchange['ratios'][hi]['spaces'][space]['bins']
      last = bins[-1]
      for key, how in (('relative_paper_%', "the paper's accounting"),
                       ('relative_ours_%', 'ours: verifier and contexts charged')):
        above_easiest = [hard[b].get(key) for b in bins[1:]]
        rows.append([f'At R >> 1 (R={hi}) the {exchange["large_model"]} model wins on all but '
                     f'the easiest bin ({space}, {how})',
                     ', '.join(f'bin {b}: {_f(hard[b].get(key), 1)}%' for b in bins),
                     _holds(None if None in above_easiest
                            else all(x <= 0 for x in above_easiest))])
      hard_bin = [exchange['ratios'][r]['spaces'][space]['bins'][last].get('relative_paper_%')
                  for r in ratios]
      rows.append([f'On the hardest bin the {exchange["large_model"]} model wins at every R '
                   f'({space})',
                   f'bin {last}: ' + ', '.join(f'R={r}: {_f(x, 1)}%'
                                               for r, x in zip(ratios, hard_bin)),
                   _holds(None if None in hard_bin else all(x <= 0 for x in hard_bin))])
  else:
    rows.append(['FLOPs-matched exchange against the larger model', exchange['reason'], 'n/a'])
  return rows


def run(config: ml_collections.ConfigDict, workdir: str) -> None:
  out = artifacts.report(config, workdir)
  pol = artifacts.policy(config, workdir)
  policy, flops_t, exchange = (_read(pol, n) for n in ('policy.json', 'flops.json', 'exchange.json'))
  search = _read(artifacts.search_eval(config, workdir), 'search.json')
  revisions = _read(artifacts.revision_eval(config, workdir), 'revisions.json')
  verifiers = _read(artifacts.verifier_eval(config, workdir), 'verifiers.json')
  diff = _read(artifacts.difficulty(config, workdir), 'difficulty.json')
  lines = ['# ttc_jax run report', '',
           f'Model `{config.model_name}` on the `{config.sample.split}` split '
           f'({policy["num_problems"]} problems for search, revisions and the policy). Written by '
           '`--mode=report` from this workdir\'s results; rerun it to regenerate.', '',
           '## Figures', '']
  fig_dir = out.file('figures')
  os.makedirs(fig_dir, exist_ok=True)
  for title, src, name in figures(config, workdir):
    shutil.copyfile(src, os.path.join(fig_dir, name))
    lines += [f'### {title}', '', f'![{title}](figures/{name})', '']
  lines += ["## The paper's findings, as measured", '']
  lines += _table(['claim (Snell et al., 2024)', 'measured here', 'verdict'],
                  findings(search, revisions, verifiers, policy, exchange))
  lines += _policy_section(policy)
  lines += _exchange_section(exchange)
  lines += _flops_section(flops_t, diff, config, workdir)
  lines += _difficulty_section(diff)
  lines += _times_section(config, workdir)
  lines += ['## Config', '', '```json', json.dumps(json.loads(config.to_json_best_effort()),
                                                   indent=1, sort_keys=True), '```', '']
  wd.atomic_write_text(out.file('REPORT.md'), '\n'.join(lines))


def _policy_section(policy: dict) -> list[str]:
  lines = ['## Compute-optimal policy', '',
           f'{policy["folds"]}-fold cross-validation over problems (folds stratified by oracle bin, '
           f'seed {policy["seed"]}, sizes {policy["fold_sizes"]}): each fold is scored by the '
           'strategies chosen on the other. The deployable curve is charged its '
           f'{policy["deploy_k"]} predictor generations (its budgets are shifted by them).', '']
  for space in [s for s in SPACES if s in policy['spaces']]:
    e = policy['spaces'][space]
    lines += [f'### {space}', '']
    curves = e['curves']
    header = ['curve'] + [str(b) for b in e['budgets']]
    rows = []
    for name, c in curves.items():
      rows.append([name] + [_f(a) for a in c['accuracy']])
    lines += ['Accuracy by budget (generations; the deployable row at budget + k):', '']
    lines += _table(header, rows)
    rows = []
    for binning, g in e['efficiency_gain'].items():
      rows.append([binning, g['baseline_budget'], g['baseline_best_accuracy'],
                   _f(g['policy_budget'], 1), _f(g['gain'], 2)])
    lines += _table(['bins', 'best-of-N budget for its best', 'its accuracy',
                     'policy budget to match', 'efficiency gain'], rows)
    rows = []
    for f, fold in enumerate(e['choices']['oracle']):
      for budget, per_bin in sorted(fold.items(), key=lambda x: int(x[0])):
        rows.append([str(f), budget] + [per_bin[b] or 'n/a' for b in sorted(per_bin)])
    bins = sorted(e['choices']['oracle'][0][next(iter(e['choices']['oracle'][0]))])
    lines += ['Chosen strategy (oracle bins) per scored fold and budget:', '']
    lines += _table(['fold', 'budget'] + [f'bin {b}' for b in bins], rows)
  return lines


def _exchange_section(ex: dict) -> list[str]:
  lines = ['## FLOPs-matched exchange (Section 7)', '']
  if not ex.get('available'):
    return lines + [f'Not measured: {ex["reason"]}. To measure it: {ex["how"]}.', '']
  lines += [f'The {ex["large_model"]} model has M = {ex["M"]:.2f} times the parameters '
            f'({_f(ex["large_params"])} vs {_f(ex["small_params"])}), answers {ex["large_decoding"]} '
            f'with {_f(ex["large_tokens_per_answer"], 1)} tokens on average. The paper\'s '
            'accounting matches it with K = M + 3(M-1)/R generations; ours charges every token '
            'either model reads (verifier, prompts, revision contexts) and finds per bin the '
            'largest budget whose measured FLOPs fit.', '']
  for r, row in ex['ratios'].items():
    lines += [f'### R = {r}: K = {row["K"]:.1f} generations, '
              f'{_f(row["flops_allowance_per_question"])} FLOPs per question (ours)', '']
    for space, e in row['spaces'].items():
      lines += [f'{space}: {e["paper"]["note"]}.', '']
      rows = [[b, c['large'], c.get('small_paper'), _f(c.get('relative_paper_%'), 1),
               str(c.get('budget_ours', 'none fits')), c.get('small_ours'),
               _f(c.get('relative_ours_%'), 1)] for b, c in e['bins'].items()]
      lines += _table(['bin', 'large pass@1', 'small at K (paper)', 'relative %',
                       'budget (ours)', 'small (ours)', 'relative % (ours)'], rows)
  return lines


def _flops_section(t: dict, diff: dict, config, workdir: str) -> list[str]:
  lines = ['## FLOPs', '']
  rows = []
  for name in sorted({config.model_name, artifacts.backbone_name(config), config.policy.large}):
    a = artifacts.model(config, workdir, name)
    if manifest.digest(manifest.foreign(a)) is None:
      continue
    info = wd.read_json(a.file('info.json'), stage=a.stage)
    rows.append([name, info['num_params'], info['tokens_seen'], info['pretrain_flops']])
  lines += ['Pretraining X = 6·N·D:', '']
  lines += _table(['model', 'parameters N', 'tokens D', 'X (FLOPs)'], rows)
  lines += ['Mean per problem of every strategy and budget (the paper counts only generated '
            "tokens; ours adds the tokens each model reads and the verifier's; then attention's "
            'context term):', '']
  rows = []
  for label, per_budget in sorted(t['per_problem_mean'].items()):
    for b, c in sorted(per_budget.items(), key=lambda x: int(x[0])):
      rows.append([label, b, c['sampled_tokens'], c['prompt_tokens'], c['verifier_tokens'],
                   c['flops_paper'], c['flops_with_verifier'], c['flops_with_attention']])
  lines += _table(['strategy', 'budget', 'generated tokens', 'prompt/context tokens',
                   'verifier tokens', 'FLOPs (paper)', 'FLOPs (+verifier, context)',
                   '+ attention'], rows)
  rows = [[k, c['generations'], c['sampled_tokens'], c['verifier_tokens'], c['flops_paper'],
           c['flops_with_verifier'], c['flops_with_attention']]
          for k, c in diff['cost_per_problem'].items()]
  lines += ['Difficulty estimation per problem (the paper does not charge it; the deployable '
            'policy is charged its predictor):', '']
  lines += _table(['predictor', 'generations', 'generated tokens', 'verifier tokens',
                   'FLOPs (paper)', 'FLOPs (+verifier)', '+ attention'], rows)
  return lines


def _difficulty_section(diff: dict) -> list[str]:
  rows = [[k, v['same_bin'], v['within_one_bin'], v['spearman']]
          for k, v in diff['agreement'].items()]
  return (['## Difficulty bins', '', f'{diff["num_bins"]} bins (1 = easiest). Predicted: '
           f'{diff["predicted"]}; deployable: {diff["deployable"]}.', '']
          + _table(['bins', 'same bin', 'within one bin', 'Spearman'], rows))


def _times_section(config, workdir: str) -> list[str]:
  from ttc_jax.pipeline import stages  # pylint: disable=g-import-not-at-top (stages imports this)
  rows, total = [], 0.0
  for s in stages.table(config).values():
    if s.name == STAGE:
      continue
    outs = s.outputs(config, workdir)
    secs = [manifest.seconds(a) for a in outs]
    known = [x for x in secs if x is not None]
    t = max(known) if known else None  # one run of the stage finishes all its outputs
    total += t or 0.0
    rows.append([s.name, 'not recorded' if t is None else _duration(t)])
  return (['## Stage times', '', 'The run that finished each stage (as recorded in its '
           "outputs' manifests; stages finished by an older ttc_jax record none).", '']
          + _table(['stage', 'time'], rows) + [f'Recorded total: {_duration(total)}', ''])
