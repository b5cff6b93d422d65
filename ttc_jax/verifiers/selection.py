"""Step-score aggregation and answer selection across N candidates (Snell et al. 2024, Sec. 5.1).

Aggregation turns a candidate's step scores into one score: `last` (the paper's default), `min`,
`prod`. Selection picks a final answer from N candidates:
  majority   the most frequent answer;
  best_of_n  the answer of the candidate with the highest score;
  weighted   the answer with the largest sum of its candidates' scores (best-of-N weighted).

Invalid answers (None) never win unless every answer is invalid (then the result is None).
Ties are broken by position: between answers, the one whose first candidate comes earliest wins;
in best_of_n, the earliest candidate among those with the top score. Random candidate order
(as in subsampling) therefore breaks ties uniformly at random.

`select` is the library call on one set of candidates; `select_index` is the same rule
vectorized over rows of candidates (numpy) for evaluation. For `weighted`, sums that differ only
by floating-point rounding are not ties; exact ties (e.g. equal scores) are.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

AGGREGATIONS = ('last', 'min', 'prod')
METHODS = ('majority', 'best_of_n', 'weighted')


def _check_aggregation(how: str) -> None:
  if how not in AGGREGATIONS:
    raise ValueError(f'unknown aggregation {how!r}; expected one of {AGGREGATIONS}')


def aggregate(step_scores: Sequence[float] | np.ndarray, how: str = 'last') -> float:
  """One candidate's score from its per-step scores."""
  _check_aggregation(how)
  s = np.asarray(step_scores, np.float64)
  if s.ndim != 1 or s.size == 0:
    raise ValueError(f'step scores of shape {s.shape}; expected a non-empty 1-D sequence')
  return float({'last': s[-1], 'min': s.min(), 'prod': s.prod()}[how])


def pad_steps(step_scores: Sequence[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
  """Ragged per-candidate step scores -> (scores [N, S], mask [N, S]), S = the most steps."""
  width = max([len(s) for s in step_scores], default=0)
  scores = np.zeros((len(step_scores), width), np.float64)
  mask = np.zeros((len(step_scores), width), bool)
  for i, s in enumerate(step_scores):
    scores[i, :len(s)], mask[i, :len(s)] = s, True
  return scores, mask


def aggregate_padded(scores_NxS: np.ndarray, mask_NxS: np.ndarray, how: str = 'last'
                     ) -> np.ndarray:
  """`aggregate` over padded rows ([N]); a row without steps gets NaN."""
  _check_aggregation(how)
  scores, mask = np.asarray(scores_NxS, np.float64), np.asarray(mask_NxS, bool)
  if scores.shape != mask.shape or scores.ndim != 2:
    raise ValueError(f'scores {scores.shape} and mask {mask.shape}; expected equal 2-D shapes')
  count = mask.sum(-1)
  if how == 'last':
    out = scores[np.arange(len(scores)), np.maximum(count - 1, 0)]
  elif how == 'min':
    out = np.where(mask, scores, np.inf).min(-1, initial=np.inf)
  else:
    out = np.where(mask, scores, 1.0).prod(-1)
  return np.where(count > 0, out, np.nan)


def select(answers: Sequence[str | None], scores: Sequence[float] | None = None,
           method: str = 'weighted') -> str | None:
  """The selected final answer among candidates (see the module docstring for the rules)."""
  ids, table = _answer_ids(answers)
  if scores is not None:
    scores = np.asarray(scores, np.float64)
  index = select_index(ids[None], None if scores is None else scores[None], method)[0]
  return None if index < 0 else table[ids[index]]


def select_index(answer_ids_RxN: np.ndarray, scores_RxN: np.ndarray | None,
                 method: str) -> np.ndarray:
  """Vectorized selection: per row, the index of a candidate carrying the selected answer.

  answer_ids: [R, N] ints, equal ids = equal answers, negative = invalid. scores: [R, N] floats
  (required for best_of_n and weighted). Returns [R] indices; -1 where every answer is invalid.
  The index is the earliest candidate with the selected answer (the top-scored one for best_of_n).
  """
  if method not in METHODS:
    raise ValueError(f'unknown selection method {method!r}; expected one of {METHODS}')
  ids = np.asarray(answer_ids_RxN)
  if ids.ndim != 2:
    raise ValueError(f'answer ids of shape {ids.shape}; expected [rows, candidates]')
  if scores_RxN is None:
    if method != 'majority':
      raise ValueError(f'method {method!r} needs scores; got None')
    scores = np.ones(ids.shape)
  else:
    scores = np.asarray(scores_RxN, np.float64)
    if scores.shape != ids.shape:
      raise ValueError(f'{scores.shape} scores for {ids.shape} answers; expected one per answer')
    if not np.all(np.isfinite(scores)):
      raise ValueError('scores must be finite; got NaN or inf')
  valid = ids >= 0
  if method == 'best_of_n':
    total = scores
  else:
    same = ids[:, :, None] == ids[:, None, :]  # [R, N, N]
    weight = np.ones_like(scores) if method == 'majority' else scores
    # Every candidate of one answer gets the same sum (same terms, same order), so argmax below
    # lands on the answer's earliest candidate.
    total = np.where(same, weight[:, None, :], 0.0).sum(-1)
  best = np.argmax(np.where(valid, total, -np.inf), axis=-1)
  return np.where(valid.any(-1), best, -1)


def _answer_ids(answers: Sequence[str | None]) -> tuple[np.ndarray, list[str]]:
  if len(answers) == 0:
    raise ValueError('no candidates to select from; expected at least one answer')
  table: dict[str, int] = {}
  ids = np.array([-1 if a is None else table.setdefault(a, len(table)) for a in answers],
                 np.int64)
  return ids, list(table)


def answer_ids(answers: Sequence[str | None]) -> np.ndarray:
  """Integer ids for `select_index`: equal answers share an id, None is -1."""
  return _answer_ids(answers)[0]
