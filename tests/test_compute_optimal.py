"""The difficulty, policy and report stages on the tiny run; the exchange with a (tiny) larger model;
`infer` on a new question."""

import json
import shutil

import numpy as np
import pytest

from conftest import launch

POLICY = ('policy', 'base', 'test', 'on_base_long')
DIFFICULTY = ('difficulty', 'base', 'test', 'prm_on_base_long')
REPORT = ('report', 'base', 'test', 'on_base_long')


def _config():
  from configs.arith import get_config
  return get_config('tiny')


def test_difficulty_bins_and_cost(full_run):
  config = _config()
  with np.load(full_run.joinpath(*DIFFICULTY, 'per_problem.npz')) as z:
    arrays = {k: z[k] for k in z.files}
  n = config.task.test_size
  for kind in ('oracle', 'predicted', 'deployable'):
    bins = arrays[f'{kind}_bin']
    assert bins.shape == (n,) and set(bins.tolist()) <= set(range(1, 6))
  # Predicted bins are equal-count quantiles of the mean PRM score (higher = easier).
  order = np.argsort(-arrays['predicted_score'], kind='stable')
  assert (np.diff(arrays['predicted_bin'][order]) >= 0).all()
  calib = json.loads((full_run / 'calibration' / 'base' / 'test' / 'difficulty.json').read_text())
  assert {i: int(b) for i, b in zip(arrays['ids'].tolist(), arrays['oracle_bin'])} == calib['bins']
  info = json.loads((full_run.joinpath(*DIFFICULTY, 'difficulty.json')).read_text())
  k = config.difficulty.deploy_k
  assert info['deploy_k'] == k
  full, deploy = info['cost_per_problem']['predicted'], info['cost_per_problem']['deployable']
  assert full['generations'] == config.sample.num_samples and deploy['generations'] == k
  assert 0 < deploy['flops_paper'] < full['flops_paper']
  assert full['flops_paper'] < full['flops_with_verifier'] < full['flops_with_attention']


def test_policy_outputs(full_run):
  config = _config()
  out = full_run.joinpath(*POLICY)
  policy = json.loads((out / 'policy.json').read_text())
  assert set(policy['spaces']) == {'search', 'revisions', 'combined'}
  assert sum(policy['fold_sizes']) == policy['num_problems'] == config.search.max_problems
  k = config.difficulty.deploy_k
  for space, e in policy['spaces'].items():
    oracle = e['curves']['compute_optimal_oracle']
    assert oracle['budgets'] == [float(b) for b in e['budgets']]
    # The deployable policy is charged its predictor's generations.
    assert e['curves']['compute_optimal_deployable']['budgets'] == [b + k for b in oracle['budgets']]
    assert len(e['choices']['oracle']) == config.policy.folds
    for fold in e['choices']['oracle']:
      assert all(name in e['strategies'] for per_bin in fold.values() for name in per_bin.values())
  assert policy['spaces']['combined']['budgets'] == [4]  # both spaces measured only 4
  flops = json.loads((out / 'flops.json').read_text())
  for label, per_budget in flops['per_problem_mean'].items():
    for c in per_budget.values():
      assert 0 < c['flops_paper'] <= c['flops_with_verifier'] <= c['flops_with_attention']
  # Revisions: a split (c chains x l) of budget b spends b generations.
  assert flops['per_problem_mean']['revisions_l2']['4']['generations'] == 4
  exchange = json.loads((out / 'exchange.json').read_text())
  assert exchange['available'] is False and '--mode=calibrate' in exchange['how']
  for name in ('policy_fig4.png', 'policy_fig8.png', 'policy_fig9.png'):
    assert (out / name).stat().st_size > 1000


def test_report_opens_with_figures_and_is_reproducible(full_run, tmp_path):
  report = full_run.joinpath(*REPORT, 'REPORT.md').read_text()
  assert report.startswith('# ttc_jax run report')
  assert report.index('## Figures') < report.index("## The paper's findings")
  figures = sorted(p.name for p in full_run.joinpath(*REPORT, 'figures').iterdir())
  assert 'fig4_compute_optimal_search.png' in figures and 'fig9_exchange.png' in figures
  for name in figures:
    assert f'(figures/{name})' in report
  for section in ('## Compute-optimal policy', '## FLOPs-matched exchange', '## FLOPs',
                  '## Stage times', '## Config'):
    assert section in report
  assert 'not recorded' not in report.split('## Stage times')[1].split('## Config')[0]
  # Rerunning the stage on the same workdir writes the same file.
  workdir = tmp_path / 'wd'
  shutil.copytree(full_run, workdir)
  shutil.rmtree(workdir / 'report')
  result = launch(workdir, mode='report')
  assert result.returncode == 0, result.stderr[-2000:]
  assert workdir.joinpath(*REPORT, 'REPORT.md').read_text() == report


@pytest.mark.slow
def test_exchange_with_a_larger_model(full_run, tmp_path):
  """A (tiny) larger model trained, sampled greedily and calibrated in the workdir makes the
  policy stale; rebuilt, it compares per bin at K = M + 3(M - 1)/R."""
  from ttc_jax import manifest
  from ttc_jax.compute import flops
  from ttc_jax.pipeline import stages
  workdir = tmp_path / 'wd'
  shutil.copytree(full_run, workdir)
  large = _config()
  large.model_name = 'large'
  large.models.large = dict(large.models.base, embed_dim=64, hidden_dim=128)
  large.sample.update(dict(num_samples=1, temperature=0.0))
  for name in ('train_base', 'sample', 'calibrate'):
    stages.execute(stages.table(large)[name], large, str(workdir), rebuild_stale=False)
  config = _config()
  status = manifest.status(stages.table(config)['policy'].outputs(config, str(workdir))[0])
  assert status.state is manifest.State.STALE and 'large' in status.detail
  result = launch(workdir, '--rebuild_stale', mode='policy')
  assert result.returncode == 0, result.stderr[-2000:]
  ex = json.loads(workdir.joinpath(*POLICY, 'exchange.json').read_text())
  assert ex['available'] and ex['large_decoding'] == 'greedy'
  large_info = json.loads((workdir / 'models' / 'large' / 'info.json').read_text())
  base_info = json.loads((workdir / 'models' / 'base' / 'info.json').read_text())
  m = large_info['num_params'] / base_info['num_params']
  assert ex['M'] == pytest.approx(m) and m > 1
  per = json.loads((workdir / 'calibration' / 'large' / 'test' / 'per_problem.json').read_text())
  for r, row in ex['ratios'].items():
    assert row['K'] == pytest.approx(flops.exchange_generations(m, float(r)))
    for space in ('search', 'revisions'):
      cells = row['spaces'][space]['bins']
      assert 0 <= cells['all']['large'] <= 1
      for cell in cells.values():
        if cell['large'] > 0 and 'small_paper' in cell:
          assert cell['relative_paper_%'] == pytest.approx(
              100 * (cell['small_paper'] - cell['large']) / cell['large'])
  assert len(per['problems']) == large.task.test_size
  assert workdir.joinpath(*POLICY, 'policy_fig9.png').stat().st_size > 1000


@pytest.mark.slow
def test_infer_answers_a_new_question(full_run):
  from ttc_jax import infer
  from ttc_jax.errors import UserError
  policy = infer.LearnedPolicy.load(_config(), str(full_run), space='combined')
  k = policy.deploy_k
  result = infer.infer('3+4*2', budget=4 + k, policy=policy)
  assert result.strategy in policy.choices[4].values()
  assert 1 <= result.difficulty_bin <= 5
  assert result.generations == 4 + k and result.strategy_budget == 4
  assert result.cost['flops_paper'] > 0
  assert result.answer is None or isinstance(result.answer, str)
  with pytest.raises(UserError, match='budget=3: expected at least'):
    infer.infer('3+4*2', budget=3, policy=policy)
  with pytest.raises(UserError, match='is not an expression like'):
    infer.infer('three plus four', budget=8, policy=policy)
