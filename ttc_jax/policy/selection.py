"""The compute-optimal policy: per difficulty bin and budget, the strategy with the best accuracy,
chosen on one fold of the problems and scored on the other (the paper's Section 3, Eq. 1).

Inputs are per-problem accuracy tables: {strategy: [problems, budgets]} (NaN where the strategy
cannot spend that budget), a bin per problem, and a fold per problem. A fold's choices see only
the other fold's rows; a bin with no problems in the choosing fold falls back to the best strategy
over all of that fold's problems. Ties go to the strategy listed first.
"""

from __future__ import annotations

import dataclasses

import numpy as np


def quantile_edges(values: np.ndarray, num_bins: int) -> np.ndarray:
  """num_bins - 1 descending cut points of `values` (higher = easier) into equal-count bins."""
  ordered = np.sort(np.asarray(values, np.float64))[::-1]
  idx = [int(round(len(ordered) * b / num_bins)) for b in range(1, num_bins)]
  return np.array([ordered[min(i, len(ordered) - 1)] for i in idx])


def assign_bins(values: np.ndarray, edges: np.ndarray) -> np.ndarray:
  """Bin per value, 1 = easiest: bin b holds values in (edges[b-1], edges[b-2]] (descending edges);
  a value above every edge is bin 1."""
  values = np.asarray(values, np.float64)
  return 1 + (values[:, None] <= np.asarray(edges)[None, :]).sum(axis=1)


def folds(strata: np.ndarray, num_folds: int, seed: int) -> np.ndarray:
  """Fold per problem: within each stratum (oracle bin) a seeded permutation dealt round-robin, so
  every fold holds each stratum's problems in near-equal numbers."""
  rng = np.random.default_rng(seed)
  out = np.empty(len(strata), np.int64)
  for s in sorted(set(np.asarray(strata).tolist())):
    members = np.flatnonzero(strata == s)
    out[rng.permutation(members)] = np.arange(len(members)) % num_folds
  return out


def _best(table: dict[str, np.ndarray], rows: np.ndarray, j: int) -> str | None:
  """The strategy with the best mean accuracy over `rows` at budget column j (None: none runs)."""
  best, best_acc = None, -1.0
  for name, acc in table.items():
    col = acc[rows, j]
    if len(col) == 0 or np.isnan(col).any():
      continue
    if col.mean() > best_acc + 1e-12:
      best, best_acc = name, float(col.mean())
  return best


@dataclasses.dataclass(frozen=True)
class Policy:
  """choices[fold][budget index][bin] = strategy chosen on the other folds, for that fold's rows;
  accuracy[fold, budget index] = its accuracy on that fold (NaN: no strategy runs there)."""
  budgets: tuple[int, ...]
  bins: tuple[int, ...]
  choices: list[list[dict[int, str | None]]]
  accuracy: np.ndarray  # [folds, budgets]
  per_problem: np.ndarray  # [problems, budgets]: each problem scored by its fold's choice
  strategy: np.ndarray  # [problems, budgets] (object): the strategy each problem was scored by

  @property
  def mean(self) -> np.ndarray:
    """Accuracy per budget averaged over the folds."""
    return self.accuracy.mean(axis=0)


def cross_validate(table: dict[str, np.ndarray], budgets: tuple[int, ...], bin_of: np.ndarray,
                   fold_of: np.ndarray) -> Policy:
  num_folds = int(fold_of.max()) + 1
  bins = tuple(sorted(set(bin_of.tolist())))
  per_problem = np.full((len(bin_of), len(budgets)), np.nan)
  strategy = np.full((len(bin_of), len(budgets)), None, dtype=object)
  choices = []
  for f in range(num_folds):
    train, test = fold_of != f, fold_of == f
    per_budget = []
    for j in range(len(budgets)):
      fallback = _best(table, np.flatnonzero(train), j)
      chosen = {}
      for b in bins:
        rows = np.flatnonzero(train & (bin_of == b))
        chosen[b] = (_best(table, rows, j) if len(rows) else None) or fallback
        eval_rows = np.flatnonzero(test & (bin_of == b))
        if chosen[b] is not None:
          per_problem[eval_rows, j] = table[chosen[b]][eval_rows, j]
          strategy[eval_rows, j] = chosen[b]
      per_budget.append(chosen)
    choices.append(per_budget)
  accuracy = np.array([[np.nanmean(per_problem[fold_of == f, j])
                        if not np.isnan(per_problem[fold_of == f, j]).all() else np.nan
                        for j in range(len(budgets))] for f in range(num_folds)])
  return Policy(tuple(budgets), bins, choices, accuracy, per_problem, strategy)


def fit(table: dict[str, np.ndarray], budgets: tuple[int, ...], bin_of: np.ndarray
        ) -> dict[int, dict[int, str | None]]:
  """{budget: {bin: strategy}} chosen on every problem (the policy to deploy; its accuracy is
  the cross-validated one)."""
  everyone = np.ones(len(bin_of), bool)
  out = {}
  for j, budget in enumerate(budgets):
    fallback = _best(table, np.flatnonzero(everyone), j)
    out[int(budget)] = {int(b): _best(table, np.flatnonzero(bin_of == b), j) or fallback
                        for b in sorted(set(bin_of.tolist()))}
  return out


def matching_budget(budgets: np.ndarray, accuracy: np.ndarray, target: float) -> float | None:
  """The smallest budget at which a curve reaches `target`, linear in log2(budget) between
  measured points (the first measured budget when it already does; None when it never does)."""
  budgets, accuracy = np.asarray(budgets, np.float64), np.asarray(accuracy, np.float64)
  keep = ~np.isnan(accuracy)
  budgets, accuracy = budgets[keep], accuracy[keep]
  for i, a in enumerate(accuracy):
    if a >= target - 1e-12:
      if i == 0:
        return float(budgets[0])
      a0, x0, x1 = accuracy[i - 1], np.log2(budgets[i - 1]), np.log2(budgets[i])
      t = (target - a0) / (a - a0)
      return float(2.0 ** (x0 + t * (x1 - x0)))
  return None


def efficiency_gain(budgets, baseline, policy_budgets, policy) -> dict:
  """The paper's "4x fewer generations": the budget the baseline needs for its best accuracy,
  over the (interpolated) budget at which the policy curve first matches that accuracy."""
  baseline = np.asarray(baseline, np.float64)
  best = int(np.nanargmax(baseline))  # the first (smallest) budget at the maximum
  target = float(baseline[best])
  needed = matching_budget(policy_budgets, policy, target)
  return {'baseline_best_accuracy': target, 'baseline_budget': int(budgets[best]),
          'policy_budget': needed,
          'gain': None if needed is None else float(budgets[best]) / needed}
