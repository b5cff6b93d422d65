"""The compute-optimal policy's selection on hand-made tables: 2-fold cross-validation never lets
a fold's choice see that fold, bins from cut points, the matching budget and the efficiency gain."""

import numpy as np
import pytest

from ttc_jax.policy import selection

# 8 problems: bins 1 and 2, folds 0 and 1 (two problems of each bin in each fold).
BINS = np.array([1, 1, 1, 1, 2, 2, 2, 2])
FOLDS = np.array([0, 0, 1, 1, 0, 0, 1, 1])


def _table():
  # One budget. Bin 1: A wins on fold 0's rows, B on fold 1's. Bin 2: C everywhere.
  a = np.array([[1], [1], [0], [0], [0], [0], [0], [0]], float)
  b = np.array([[0], [0], [1], [1], [0], [0], [0], [0]], float)
  c = np.array([[0], [0], [0], [0], [1], [1], [1], [0]], float)
  return {'A': a, 'B': b, 'C': c}


def test_each_fold_is_scored_by_choices_made_on_the_other():
  pol = selection.cross_validate(_table(), (4,), BINS, FOLDS)
  # Fold 0's bin-1 rows are scored by the choice made on fold 1 (B), which is wrong on them.
  assert pol.choices[0][0] == {1: 'B', 2: 'C'}
  assert pol.choices[1][0] == {1: 'A', 2: 'C'}
  assert pol.per_problem[:4, 0].tolist() == [0, 0, 0, 0]
  assert pol.per_problem[4:, 0].tolist() == [1, 1, 1, 0]
  assert pol.accuracy[:, 0].tolist() == [0.5, 0.25]
  assert pol.mean.tolist() == [0.375]
  assert pol.strategy[0, 0] == 'B' and pol.strategy[2, 0] == 'A'


def test_a_folds_own_rows_never_change_its_choices():
  table = _table()
  before = selection.cross_validate(table, (4,), BINS, FOLDS).choices[0]
  # Make every strategy perfect or useless on fold 0's own rows: its choices stay.
  for name, value in (('A', 0.0), ('B', 1.0), ('C', 0.0)):
    table[name][FOLDS == 0] = value
  assert selection.cross_validate(table, (4,), BINS, FOLDS).choices[0] == before


def test_missing_budgets_and_empty_bins():
  table = {'A': np.array([[0.5, np.nan]] * 4), 'B': np.array([[0.25, 1.0]] * 4)}
  bins, folds = np.array([1, 1, 2, 1]), np.array([0, 1, 0, 1])
  pol = selection.cross_validate(table, (4, 16), bins, folds)
  assert pol.choices[0][1] == {1: 'B', 2: 'B'}  # A cannot spend 16
  # Fold 0 has a bin-2 problem but fold 1 (its chooser) has none: the fold-wide best.
  assert pol.choices[0][0][2] == 'A'


def test_ties_go_to_the_first_listed():
  table = {'A': np.ones((4, 1)), 'B': np.ones((4, 1))}
  pol = selection.cross_validate(table, (4,), np.ones(4, int), np.array([0, 1, 0, 1]))
  assert pol.choices[0][0] == {1: 'A'}


def test_fit_chooses_on_every_problem():
  assert selection.fit(_table(), (4,), BINS) == {4: {1: 'A', 2: 'C'}}


def test_folds_are_stratified_and_seeded():
  strata = np.repeat([1, 2, 3], 10)
  f = selection.folds(strata, 2, seed=0)
  for s in (1, 2, 3):
    assert (f[strata == s] == 0).sum() == 5
  assert (selection.folds(strata, 2, seed=0) == f).all()
  assert not (selection.folds(strata, 2, seed=1) == f).all()


def test_bins_from_cut_points():
  values = np.arange(10, dtype=float)[::-1]  # 9 (easiest) .. 0
  edges = selection.quantile_edges(values, 5)
  bins = selection.assign_bins(values, edges)
  assert bins.tolist() == [1, 1, 2, 2, 3, 3, 4, 4, 5, 5]
  # A new value is binned by the same cut points.
  assert selection.assign_bins(np.array([100.0, -1.0]), edges).tolist() == [1, 5]


@pytest.mark.parametrize('target,budget', [(0.75, 32.0), (0.4, 4.0), (0.7, 16.0), (0.9, None)])
def test_matching_budget(target, budget):
  got = selection.matching_budget([4, 16, 64], [0.5, 0.7, 0.8], target)
  assert got == (None if budget is None else pytest.approx(budget))


def test_efficiency_gain():
  g = selection.efficiency_gain([4, 16, 64], [0.5, 0.6, 0.7], [4, 16, 64], [0.6, 0.7, 0.8])
  assert g == {'baseline_best_accuracy': 0.7, 'baseline_budget': 64, 'policy_budget': 16.0,
               'gain': 4.0}
  # The baseline peaks early: its best accuracy's smallest budget is the reference.
  g = selection.efficiency_gain([4, 16, 64], [0.5, 0.7, 0.7], [4, 16, 64], [0.7, 0.7, 0.7])
  assert g['baseline_budget'] == 16 and g['gain'] == 4.0
  assert selection.efficiency_gain([4], [0.9], [4], [0.1])['gain'] is None
