"""Where steps end in a completion: the positions a PRM is trained and read at.

One definition for labelling (stage `prm_data`), training (`train_prm`) and scoring: step i ends at
the token that closes it, the step delimiter for every step but the last, and the EOS token (or
the last token of an unfinished completion) for the last one.
"""

from __future__ import annotations

from typing import Sequence


def step_ends(completion: Sequence[int], delimiter_id: int, eos_id: int) -> list[int]:
  """Indices into `completion` of each step's closing token (empty for an empty completion)."""
  ends = [i for i, t in enumerate(completion) if t == delimiter_id]
  if completion:
    last = len(completion) - 1
    if not ends or ends[-1] != last:
      ends.append(last)
  # An EOS right after a delimiter closes no new step: the delimiter already ended it.
  if len(ends) >= 2 and completion[ends[-1]] == eos_id and ends[-2] == ends[-1] - 1:
    ends.pop()
  return ends
