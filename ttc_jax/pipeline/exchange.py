"""The FLOPs-matched exchange of stage `policy` (the paper's Section 7): the small model with
test-time compute against `policy.large`, trained, sampled greedily and calibrated in the workdir.
"""

from __future__ import annotations

import numpy as np

from ttc_jax import artifacts
from ttc_jax import manifest
from ttc_jax import workdir as wd
from ttc_jax.compute import flops
from ttc_jax.pipeline import common, sample
from ttc_jax.policy import selection

STAGE = 'policy'


def compare(config, workdir, ids, budgets, oracle_bin, policies, cost, sizes, found) -> dict:
  """exchange.json: per R of `policy.ratios` and oracle bin, the small model's compute-optimal
  accuracy (`policies[(space, 'oracle')]`) at K generations and at our FLOPs-matched budget, against
  the larger model's pass@1; `available: False` with the commands to run when it is missing."""
  large = artifacts.large_results(config, workdir)
  ratios = [float(r) for r in config.policy.ratios]
  if not large:
    lc = artifacts.large_config(config)
    return {'available': False, 'ratios': ratios,
            'reason': f'the larger model ({config.policy.large}) has no finished calibration in '
                      'this workdir',
            'how': f'python -m launch.main --config=configs/arith.py:{lc.model_name} --workdir=WORKDIR '
                   '--mode=train_base, then --mode=sample and --mode=calibrate; then rerun '
                   '--mode=policy --rebuild_stale'}
  model_a, samples_a, calib_a = large
  info = wd.read_json(model_a.file('info.json'), stage=model_a.stage)
  base_info = wd.read_json(artifacts.model(config, workdir).file('info.json'), stage='train_base')
  per = {r['id']: r for r in wd.read_json(calib_a.file('per_problem.json'),
                                          stage=calib_a.stage)['problems']}
  missing = [i for i in ids if i not in per]
  if missing:
    raise wd.damaged(calib_a.path, f'has no result for {missing[0]} (of {len(missing)} policy '
                     'problems); calibrate the larger model on the whole split', STAGE)
  large_acc = np.array([per[i]['pass@1'] for i in ids])
  made = wd.read_json(samples_a.file(manifest.MANIFEST), stage=samples_a.stage)['values']
  num_samples, temperature = made['sample.num_samples'], made['sample.temperature']
  recs = {r['id']: r for r in sample.load_samples(config, workdir, STAGE, config.policy.large)}
  large_tokens = float(np.mean([np.mean(recs[i]['num_tokens']) for i in ids]))
  tok = common.load_tokenizer(config, workdir, STAGE)
  problems = {p.id: p for p in common.load_problems(config, workdir, config.sample.split, STAGE)}
  prompt_mean = float(np.mean([len(common.encode_example(tok, problems[i])[0]) for i in ids]))
  n_s, n_l = sizes['proposer'], float(info['num_params'])
  m = n_l / n_s
  bins_list = sorted(set(oracle_bin.tolist()))
  out = {'available': True, 'large_model': config.policy.large, 'M': m,
         'large_params': n_l, 'small_params': n_s,
         'pretrain_tokens': {'small': base_info['tokens_seen'], 'large': info['tokens_seen']},
         'large_decoding': 'greedy' if temperature == 0 and num_samples == 1 else
                           f'pass@1 over {num_samples} samples at T={temperature}',
         'large_tokens_per_answer': large_tokens, 'prompt_tokens_per_question': prompt_mean,
         'large_pass1': {'all': float(large_acc.mean()),
                         **{str(b): float(large_acc[oracle_bin == b].mean()) for b in bins_list}},
         'measured_budgets': list(budgets), 'ratios': {}}
  for r in ratios:
    K = flops.exchange_generations(m, r)
    allowance = flops.exchange_allowance(n_s, n_l, large_tokens, r) + flops.forward(n_l, prompt_mean)
    row = {'K': K, 'flops_allowance_per_question': allowance, 'spaces': {}}
    for space in ('search', 'revisions'):
      pol, cols = policies[(space, 'oracle')]
      sb = [budgets[j] for j in cols]
      under = [b for b in sb if b <= K + 1e-9]
      paper_budget = under[-1] if under else None
      entry = {'paper': {'budget': paper_budget, 'K_exceeds_measured': K > sb[-1],
                         'note': (f'K = {K:.1f} exceeds the largest measured budget {sb[-1]}: '
                                  f'the small model is shown at {sb[-1]} (an underestimate)')
                         if K > sb[-1] else f'the largest measured budget <= K = {K:.1f}'},
               'bins': {}}
      # Ours: per bin, the largest budget whose chosen strategies' measured FLOPs (verifier and
      # context tokens charged) fit the allowance.
      for b in ['all', *bins_list]:
        mask = np.ones(len(ids), bool) if b == 'all' else oracle_bin == b
        small = lambda j: float(np.nanmean(pol.per_problem[mask, j]))
        cell = {'large': float(large_acc[mask].mean())}
        if paper_budget is not None:
          cell['small_paper'] = small(sb.index(paper_budget))
        fit = None
        for j, budget in enumerate(sb):
          spent = _policy_flops(pol, j, mask, cost, budget, sizes)
          if spent is not None and spent <= allowance:
            fit = (budget, spent, small(j))
        if fit:
          cell.update(budget_ours=fit[0], flops_ours=fit[1], small_ours=fit[2])
        for acc_key, rel_key in (('small_paper', 'relative_paper_%'),
                                 ('small_ours', 'relative_ours_%')):
          if acc_key in cell:
            cell[rel_key] = (None if cell['large'] == 0 else
                             100.0 * (cell[acc_key] - cell['large']) / cell['large'])
        entry['bins'][str(b)] = cell
      row['spaces'][space] = entry
    out['ratios'][f'{r:g}'] = row
  return out


def _policy_flops(pol: selection.Policy, j: int, mask: np.ndarray, cost: dict, budget: int,
                  sizes: dict) -> float | None:
  """Mean FLOPs (ours: verifier and context tokens charged) per problem of `mask` of the
  strategies the policy ran on them at budget column j (None: a strategy's cost is unknown)."""
  spent = []
  for i in np.flatnonzero(mask):
    name = pol.strategy[i, j]
    per = cost.get(name, {}).get(budget)
    if name is None or per is None:
      return None
    spent.append(per[i].with_verifier(sizes['proposer'], sizes['verifier']))
  return float(np.mean(spent)) if spent else None
