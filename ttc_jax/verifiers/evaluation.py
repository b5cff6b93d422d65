"""Accuracy of selection methods at budget N by subsampling from a pool; PRM calibration.

Each problem has a pool of K graded samples. For a budget N <= K, a draw is a random ordered subset
of N samples (the first N of a random permutation); a method's accuracy on the problem is the
fraction of draws whose selected answer is correct. All methods see the same draws.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np

from ttc_jax.verifiers import selection

# Rows of draws x N x N booleans held at once by select_index (bounds memory, ~32 MB of floats).
_MAX_ELEMENTS = 1 << 22


@dataclasses.dataclass(frozen=True)
class Method:
  """A selection method: which score it reads (None for majority) and how it selects."""
  name: str
  selection: str  # one of selection.METHODS
  score: str | None = None  # key into the per-candidate score arrays, e.g. 'prm/last'


def pass_at_k(n: int, c: int, k: int) -> float:
  """Unbiased pass@k of Chen et al. (2021) from c correct out of n samples."""
  if n - c < k:
    return 1.0
  return 1.0 - math.comb(n - c, k) / math.comb(n, k)


def difficulty_bins(pass1: np.ndarray, num_bins: int) -> np.ndarray:
  """Bin per problem, 1 = easiest: equal-size quantiles of pass@1 (ties broken by index)."""
  order = np.lexsort((np.arange(len(pass1)), -pass1))
  bins = np.empty(len(pass1), np.int64)
  for b, chunk in enumerate(np.array_split(order, num_bins)):
    bins[chunk] = b + 1
  return bins


def draw_subsets(rng: np.random.Generator, num_problems: int, pool: int, n: int, draws: int
                 ) -> np.ndarray:
  """[P, D, n] sample indices: per problem and draw, the first n of a random permutation."""
  if not 1 <= n <= pool:
    raise ValueError(f'budget N={n} with a pool of {pool} samples; expected 1 <= N <= pool')
  if draws < 1:
    raise ValueError(f'draws={draws}; expected >= 1')
  keys = rng.random((num_problems, draws, pool))
  return np.argsort(keys, axis=-1)[..., :n]


def method_accuracy(method: Method, answer_ids_PxK: np.ndarray, correct_PxK: np.ndarray,
                    scores: dict[str, np.ndarray], subsets_PxDxN: np.ndarray) -> np.ndarray:
  """[P] accuracy of `method` per problem, averaged over the draws in subsets."""
  p, d, n = subsets_PxDxN.shape
  ids = np.take_along_axis(answer_ids_PxK[:, None, :], subsets_PxDxN, axis=-1)
  sc = None
  if method.score is not None:
    sc = np.take_along_axis(scores[method.score][:, None, :], subsets_PxDxN, axis=-1)
  correct = np.take_along_axis(correct_PxK[:, None, :], subsets_PxDxN, axis=-1)
  ids, correct = ids.reshape(p * d, n), correct.reshape(p * d, n)
  sc = None if sc is None else sc.reshape(p * d, n)
  picked = np.empty(p * d, np.int64)
  rows = max(1, _MAX_ELEMENTS // (n * n))
  for start in range(0, p * d, rows):
    part = slice(start, start + rows)
    picked[part] = selection.select_index(ids[part], None if sc is None else sc[part],
                                          method.selection)
  hit = np.where(picked >= 0, correct[np.arange(p * d), np.maximum(picked, 0)], False)
  return hit.reshape(p, d).mean(-1)


def oracle_accuracy(correct_PxK: np.ndarray, subsets_PxDxN: np.ndarray) -> np.ndarray:
  """[P] fraction of draws with at least one correct sample (subsampled pass@N)."""
  picked = np.take_along_axis(correct_PxK[:, None, :], subsets_PxDxN, axis=-1)
  return picked.any(-1).mean(-1)


def reliability(predicted: np.ndarray, labels: np.ndarray, num_bins: int) -> dict:
  """Brier score and a binned reliability table of probabilities against (soft) labels."""
  pred, lab = np.asarray(predicted, np.float64).ravel(), np.asarray(labels, np.float64).ravel()
  if pred.shape != lab.shape or pred.size == 0:
    raise ValueError(f'{pred.size} predictions and {lab.size} labels; expected equal, non-zero')
  which = np.minimum((pred * num_bins).astype(np.int64), num_bins - 1)
  bins = []
  for b in range(num_bins):
    m = which == b
    bins.append({'lo': b / num_bins, 'hi': (b + 1) / num_bins, 'count': int(m.sum()),
                 'mean_predicted': float(pred[m].mean()) if m.any() else None,
                 'mean_label': float(lab[m].mean()) if m.any() else None})
  counts = np.array([x['count'] for x in bins], np.float64)
  gaps = np.array([abs(x['mean_predicted'] - x['mean_label']) if x['count'] else 0.0
                   for x in bins])
  return {'num_steps': int(pred.size), 'brier': float(np.mean((pred - lab) ** 2)),
          'brier_constant': float(np.mean((lab.mean() - lab) ** 2)),
          'ece': float((counts * gaps).sum() / counts.sum()), 'bins': bins}
