"""Revision training trajectories: incorrect attempts, then a correct one (the paper's Section 6).

For each distinct correct sample of a problem, k ~ U{0..max_incorrect} incorrect samples go
before it: the k closest to it by character edit distance (Levenshtein, `rapidfuzz`), ordered
farthest first, so the closest attempt sits right before the correct answer, where the model
learns to fix it. The training row is `chains.context_tokens(prompt, incorrect)` then the correct
attempt: the exact context a chain shows the revision model at test time.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Sequence

import numpy as np
from rapidfuzz.distance import Levenshtein

from ttc_jax.revision import chains


@dataclasses.dataclass(frozen=True)
class Sample:
  ids: list[int]  # sampled completion ids (EOS included when sampled)
  text: str
  correct: bool


@dataclasses.dataclass(frozen=True)
class Trajectory:
  problem_id: str
  num_ops: int
  answer: int
  prompt_ids: list[int]  # BOS + prompt
  incorrect: list[list[int]]  # the attempts before the correct one, closest last
  correct: list[int]  # the correct attempt's ids
  distances: list[int]  # edit distance of each incorrect attempt's text to the correct one's

  def to_record(self) -> dict[str, str | int]:
    return {'problem_id': self.problem_id, 'num_ops': self.num_ops, 'answer': self.answer,
            'prompt_ids': json.dumps(self.prompt_ids), 'incorrect': json.dumps(self.incorrect),
            'correct': json.dumps(self.correct), 'distances': json.dumps(self.distances),
            'num_incorrect': len(self.incorrect)}

  @classmethod
  def from_record(cls, r) -> Trajectory:
    return cls(problem_id=str(r['problem_id']), num_ops=int(r['num_ops']),
               answer=int(r['answer']), prompt_ids=json.loads(r['prompt_ids']),
               incorrect=json.loads(r['incorrect']), correct=json.loads(r['correct']),
               distances=json.loads(r['distances']))

  def example(self, eos_id: int, window: int) -> tuple[list[int], list[int]]:
    """(context ids, target ids): the chain's context before the correct attempt, and that
    attempt closed by EOS (the only tokens the SFT loss covers)."""
    context = chains.context_tokens(self.prompt_ids, self.incorrect, eos_id=eos_id, window=window)
    correct = self.correct[:-1] if self.correct and self.correct[-1] == eos_id else self.correct
    return context, list(correct) + [eos_id]


def build(problem_id: str, num_ops: int, answer: int, prompt_ids: Sequence[int],
          samples: Sequence[Sample], rng: np.random.Generator, *, max_incorrect: int,
          max_per_problem: int, gold: Sample | None = None) -> list[Trajectory]:
  """The trajectories of one problem: one per distinct correct sample text (the first
  `max_per_problem`, in sample order); when no sample is correct, one ending in `gold` (the
  reference solution) if given, else none."""
  correct, seen = [], set()
  for s in samples:
    if s.correct and s.text not in seen:
      seen.add(s.text)
      correct.append(s)
  if not correct and gold is not None:
    correct = [gold]
  wrong, seen = [], set()
  for s in samples:
    if not s.correct and s.text not in seen:
      seen.add(s.text)
      wrong.append(s)
  out = []
  for c in correct[:max_per_problem]:
    k = int(rng.integers(0, max_incorrect + 1))
    dist = [Levenshtein.distance(w.text, c.text) for w in wrong]
    # The k closest (ties: sample order), then farthest first so the closest is last.
    chosen = sorted(sorted(range(len(wrong)), key=lambda i: (dist[i], i))[:k],
                    key=lambda i: (-dist[i], i))
    out.append(Trajectory(problem_id=problem_id, num_ops=num_ops, answer=answer,
                          prompt_ids=list(prompt_ids), incorrect=[wrong[i].ids for i in chosen],
                          correct=c.ids, distances=[dist[i] for i in chosen]))
  return out


def statistics(trajs: Sequence[Trajectory], num_problems: int, eos_id: int,
               window: int) -> dict:
  """What the info file reports: counts, attempts per trajectory, edit distances, lengths."""
  counts = np.array([len(t.incorrect) for t in trajs], int)
  dists = [d for t in trajs for d in t.distances]
  lengths = [sum(map(len, t.example(eos_id, window))) for t in trajs]
  return {
      'problems': num_problems,
      'problems_with_a_trajectory': len({t.problem_id for t in trajs}),
      'trajectories': len(trajs),
      'incorrect_attempts_per_trajectory': {
          'mean': float(counts.mean()) if len(trajs) else 0.0,
          'histogram': {str(k): int((counts == k).sum()) for k in range(int(counts.max(initial=0)) + 1)}},
      'mean_edit_distance': float(np.mean(dists)) if dists else None,
      'tokens_per_trajectory': {'mean': float(np.mean(lengths)) if lengths else 0.0,
                                'max': int(max(lengths, default=0))},
  }
