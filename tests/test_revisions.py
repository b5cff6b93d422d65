"""Revisions: trajectory building (edit distance, closest last), nested chains, selections, and
the four revision stages of the tiny pipeline (outputs, resume, bad input)."""

import json
import shutil

import numpy as np
import pytest

from configs.arith import get_config
from conftest import launch
from ttc_jax import artifacts, config_checks
from ttc_jax.errors import ConfigError
from ttc_jax.revision import analysis, trajectories
from ttc_jax.revision.trajectories import Sample

EOS = 1


def _sample(text: str, correct: bool) -> Sample:
  return Sample(ids=[ord(c) for c in text] + [EOS], text=text, correct=correct)


def test_trajectory_takes_the_k_closest_incorrect_attempts_closest_last():
  right = _sample('7*2-5\n14-5\n#### 9', True)
  wrong = [_sample('7*2-5\n14-5\n#### 8', False),  # distance 1
           _sample('7*2-5\n13-5\n#### 8', False),  # 2
           _sample('8*2-5\n16-5\n#### 11', False),  # 4
           _sample('#### 0', False),  # 12
           _sample('7*2-5\n14-5\n#### 8', False)]  # a duplicate text counts once
  samples = [wrong[0], right, *wrong[1:], right]
  by_k = {}
  for seed in range(40):
    (t,) = trajectories.build('p', 3, 9, [2, 5], samples, np.random.default_rng(seed),
                              max_incorrect=4, max_per_problem=2)  # one distinct correct text
    by_k[len(t.incorrect)] = t
  assert sorted(by_k) == [0, 1, 2, 3, 4]  # k drawn from 0..4
  four = by_k[4]
  assert four.distances == sorted(four.distances, reverse=True) == [12, 4, 2, 1]
  assert four.incorrect[-1] == wrong[0].ids and four.correct == right.ids
  assert by_k[2].incorrect == [wrong[1].ids, wrong[0].ids]  # the 2 closest, closest last
  # The training row is the chain context (problem; attempts, each closed by one EOS and the
  # problem again without BOS) + target.
  context, target = by_k[1].example(EOS, window=4)
  assert context == [2, 5] + wrong[0].ids + [5] and target == right.ids
  assert trajectories.build('p', 3, 9, [2], wrong, np.random.default_rng(0), max_incorrect=4,
                            max_per_problem=2) == []  # nothing correct: no trajectory
  stats = trajectories.statistics(list(by_k.values()), 1, EOS, 4)
  assert stats['trajectories'] == 5 and stats['incorrect_attempts_per_trajectory']['mean'] == 2.0


def test_nested_chains_cover_every_split():
  assert analysis.chain_lengths(8) == [8, 4, 2, 2, 1, 1, 1, 1]
  assert analysis.splits(8) == [(8, 1), (4, 2), (2, 4), (1, 8)]
  lengths = analysis.chain_lengths(64)
  for c, l in analysis.splits(64):
    assert all(lengths[i] >= l for i in range(c))
  assert sum(lengths) == 256
  with pytest.raises(ValueError, match='power of two'):
    analysis.chain_lengths(12)


def _chains(answers, correct_answer, scores):
  answers = np.array(answers)
  valid = answers > -2
  return analysis.Chains(answers=np.where(valid, answers, -1), correct=answers == correct_answer,
                         scores={'v': np.array(scores, float)}, valid=valid)


def test_hierarchical_selection_weighs_within_then_across_chains():
  # Chain 0 votes 5 (0.3 + 0.3 = 0.6 beats 7's 0.5); chain 1 votes 7 (0.9). Across chains
  # 7 wins (0.9 > 0.6). Flat weighted voting would also pick 7 here (1.4 vs 0.6): so chain 2
  # makes them differ: its 5s sum to 0.8 and win, and 5 then wins across (0.6 + 0.8 > 0.9 + ...).
  ch = _chains([[5, 5, 7], [7, 3, 3], [5, 5, 7]], 5,
               [[0.3, 0.3, 0.5], [0.9, 0.2, 0.2], [0.4, 0.4, 0.7]])
  assert analysis.pick(ch, 'verifier', 'v') == 5  # 0.6 + 0.8 (chains 0, 2) vs 0.9 (chain 1)
  flat = {a: ch.scores['v'][ch.answers == a].sum() for a in (3, 5, 7)}
  assert max(flat, key=flat.get) == 7  # flat weighted best-of-N would pick the wrong answer
  assert analysis.pick(ch, 'majority') == 5
  assert analysis.split_correct(ch, 2, 3, 'verifier', 'v') is False  # chains 0-1: 7 (0.9 > 0.6)
  assert analysis.split_correct(ch, 1, 1, 'majority') is True
  with pytest.raises(ValueError, match='not covered'):
    _chains([[5, -2]], 5, [[0.1, 0.0]]).sub(1, 2)


def test_pass_at_1_and_transitions():
  # Chain 0: wrong, right, right, right (fixed); chain 1: right then wrong at 4 (broken);
  # chain 2 has one attempt.
  ch = _chains([[1, 5, 5, 5], [5, 5, 5, 2], [5, -2, -2, -2]], 5,
               [[0.1, 0.8, 0.8, 0.8], [0.9, 0.9, 0.9, 0.2], [0.5, 0, 0, 0]])
  p1, count = analysis.pass_at_1([ch])
  assert count.tolist() == [3, 2, 2, 2] and p1.tolist() == [2 / 3, 1, 1, 0.5]
  t = analysis.transitions([ch], 4, 'v')
  assert t['chains'] == 2 and t['wrong_first_right_at_step'] == 1.0
  assert t['right_first_wrong_at_step'] == 1.0
  assert t['right_first_verifier_pick_right'] == 1.0  # the verifier keeps the right answer


def test_revision_config_errors_name_the_key():
  c = get_config('tiny')
  c.eval_revisions.ratio_budgets = (6,)
  with pytest.raises(ConfigError, match=r'eval_revisions.ratio_budgets has 6: expected powers '
                     'of two'):
    config_checks.check(c)
  c = get_config('tiny')
  c.eval_revisions.budget = 12
  with pytest.raises(ConfigError, match=r'eval_revisions.budget=12: expected a power of two'):
    config_checks.check(c)
  c = get_config('tiny')
  c.revision.window = 0
  with pytest.raises(ConfigError, match=r'revision.window=0: expected an integer >= 1'):
    config_checks.check(c)


def test_revision_stages_in_the_tiny_pipeline(full_run, tmp_path):
  config = get_config('tiny')
  info = json.loads((full_run / 'revision_data/base/info.json').read_text())
  assert info['trajectories'] > 0 and info['problems'] == config.revision_data.problems
  model_info = json.loads((full_run / 'models/revision_base/info.json').read_text())
  assert model_info['packing'] and model_info['steps'] == config.train_revision.steps
  orm_info = json.loads((full_run / 'models/orm_revision_base_on_base_long/info.json').read_text())
  assert orm_info['train_attempts'] > 0
  res = json.loads((full_run / 'eval_revisions/base/test/on_base_long/revisions.json').read_text())
  budget = config.eval_revisions.budget
  assert len(res['pass_at_1']['all']['by_step']) == budget
  assert set(res['ratios']) == {str(b) for b in config.eval_revisions.ratio_budgets}
  assert set(res['sequential_vs_parallel']) == {str(b) for b in config.eval_revisions.budgets}
  npz = np.load(full_run / 'eval_revisions/base/test/on_base_long/per_problem.npz')
  assert npz['accuracy:revisions_l1:verifier'].shape == (res['num_problems'], len(npz['budgets']))
  for fig in ('revisions_fig6.png', 'revisions_fig7.png'):
    assert (full_run / 'eval_revisions/base/test/on_base_long' / fig).stat().st_size > 1000
  # A lost batch file is the only work a rerun does (the first is redone, the rest reused).
  workdir = tmp_path / 'wd'
  shutil.copytree(full_run, workdir)
  chains_dir = workdir / artifacts.revision_chains(config, str(workdir)).name
  batches = sorted(chains_dir.glob('batch_*.json'))
  kept = {p: p.read_bytes() for p in batches[1:]}
  batches[0].unlink()
  result = launch(workdir, mode='eval_revisions')
  assert result.returncode == 0, result.stderr[-2000:]
  assert batches[0].exists() and {p: p.read_bytes() for p in kept} == kept
  assert 'eval_revisions: batch 1/' in result.stderr and 'batch 2/' not in result.stderr


def test_attempt_length_bound_holds_for_every_solution():
  """Attempts are sampled only as long as the longest correct solution the question allows:
  the bound must never cut a correct one (and is tight for one-operation questions)."""
  from ttc_jax.tasks import arith
  problems = arith.generate(3000, seed=3, num_ops_range=(1, 12))
  for p in problems:
    assert len(arith.format_solution(p.steps)) <= arith.solution_length_bound(p.question)
  assert arith.solution_length_bound('7+9') == len('#### -99')
  with pytest.raises(ValueError, match='not an arith expression'):
    arith.solution_length_bound('7+')
