"""What a set of revision chains is worth at a budget: nested chains, splits, selections.

One problem's chains are arrays [C, L] (chain, attempt; `valid` False past a chain's length).
Chain i of a run has `chain_lengths(budget)[i]` attempts, so every split of the budget into
(chains x length) with both powers of two is a sub-array: its first `chains` chains, their first
`length` attempts (a chain's first l attempts ARE a chain of length l). Sequential at budget N is
the split (1, N), parallel is (N, 1).

Selections of one split: `verifier` = hierarchical best-of-N weighted (per chain: the answer with
the largest summed verifier score among its attempts; across chains: the answer with the largest
sum of those chain winners' scores), `majority` = the most frequent answer over all attempts.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np

SELECTIONS = ('verifier', 'majority')


def chain_lengths(budget: int) -> list[int]:
  """Chain i runs budget / 2**ceil(log2(i + 1)) attempts: enough for every power-of-two split
  (chains c run budget / c each) and for parallel (budget chains of 1)."""
  if budget < 1 or budget & (budget - 1):
    raise ValueError(f'budget={budget}; expected a power of two')
  return [budget >> math.ceil(math.log2(i + 1)) for i in range(budget)]


def splits(budget: int) -> list[tuple[int, int]]:
  """(chains, length) with chains * length = budget, both powers of two, most parallel first."""
  return [(budget >> k, 1 << k) for k in range(int(math.log2(budget)) + 1)]


@dataclasses.dataclass(frozen=True)
class Chains:
  """One problem's chains: [C, L] arrays, attempt j of chain i at [i, j]."""
  answers: np.ndarray  # int answer ids (equal ids = equal answers), -1 = no parseable answer
  correct: np.ndarray  # bool
  scores: dict[str, np.ndarray]  # verifier name -> score in [0, 1]
  valid: np.ndarray  # bool: the chain has an attempt j

  def sub(self, chains: int, length: int) -> Chains:
    s = (slice(0, chains), slice(0, length))
    if not self.valid[s].all():
      raise ValueError(f'split {chains} x {length} is not covered by these chains')
    return Chains(self.answers[s], self.correct[s], {k: v[s] for k, v in self.scores.items()},
                  self.valid[s])


def _weighted(answers: np.ndarray, weights: np.ndarray) -> tuple[int, float]:
  """(answer id with the largest summed weight, that sum); ties go to the first seen; (-1, 0)
  when no attempt has an answer."""
  best, best_w = -1, -1.0
  for a in dict.fromkeys(answers.tolist()):
    if a < 0:
      continue
    w = float(weights[answers == a].sum())
    if w > best_w:
      best, best_w = a, w
  return best, max(best_w, 0.0)


def pick(ch: Chains, selection: str, verifier: str = '') -> int:
  """The answer id a selection picks from all of `ch` (-1: none)."""
  if selection == 'majority':
    return _weighted(ch.answers.reshape(-1), np.ones(ch.answers.size))[0]
  if selection != 'verifier':
    raise ValueError(f'unknown selection {selection!r}; expected one of {SELECTIONS}')
  winners = [_weighted(a, s) for a, s in zip(ch.answers, ch.scores[verifier])]
  return _weighted(np.array([a for a, _ in winners]), np.array([w for _, w in winners]))[0]


def is_correct(ch: Chains, answer: int) -> bool:
  return answer >= 0 and bool(ch.correct[ch.answers == answer].any())


def split_correct(ch: Chains, chains: int, length: int, selection: str, verifier: str = '') -> bool:
  sub = ch.sub(chains, length)
  return is_correct(sub, pick(sub, selection, verifier))


def pass_at_1(problems: list[Chains]) -> tuple[np.ndarray, np.ndarray]:
  """(pass@1 at each revision step 1..L over every chain that reaches it, chains counted)."""
  width = max(p.correct.shape[1] for p in problems)
  right, count = np.zeros(width), np.zeros(width)
  for p in problems:
    n = p.correct.shape[1]
    right[:n] += (p.correct & p.valid).sum(0)
    count[:n] += p.valid.sum(0)
  return right / np.maximum(count, 1), count


def transitions(problems: list[Chains], step: int, verifier: str) -> dict:
  """Over chains reaching `step`: how often a wrong first attempt is right at `step`, a right
  one wrong, and for right-first chains how often the verifier's pick over attempts 1..step is
  still right (what protects a right answer from a bad revision)."""
  wrong_first = wrong_to_right = right_first = right_to_wrong = kept = 0
  for p in problems:
    for i in range(p.correct.shape[0]):
      if not p.valid[i, step - 1]:
        continue
      first, last = bool(p.correct[i, 0]), bool(p.correct[i, step - 1])
      if first:
        right_first += 1
        right_to_wrong += not last
        chain = Chains(p.answers[i:i + 1, :step], p.correct[i:i + 1, :step],
                       {verifier: p.scores[verifier][i:i + 1, :step]}, p.valid[i:i + 1, :step])
        kept += is_correct(chain, pick(chain, 'verifier', verifier))
      else:
        wrong_first += 1
        wrong_to_right += last
  frac = lambda a, b: a / b if b else None
  return {'step': step, 'chains': wrong_first + right_first,
          'wrong_first': wrong_first, 'wrong_first_right_at_step': frac(wrong_to_right, wrong_first),
          'right_first': right_first, 'right_first_wrong_at_step': frac(right_to_wrong, right_first),
          'right_first_verifier_pick_right': frac(kept, right_first)}
