"""Training examples as fixed-shape arrays; the batch of step s is a pure function of (seed, s).

Because a batch depends only on the step, a resumed run sees exactly the batches an
uninterrupted run would have seen.
"""

from __future__ import annotations

from typing import Sequence

import flax
import jax
import numpy as np

from ttc_jax.model.transformer import PAD_ID


@flax.struct.dataclass
class Batch:
  tokens: jax.Array  # [B, T] int32, PAD-filled.
  loss_mask: jax.Array  # [B, T] float32: 1 where the token is a training target.
  # Value-head objectives: a soft label per position, trained where value_mask is 1.
  value_targets: jax.Array | None = None  # [B, T] float32
  value_mask: jax.Array | None = None  # [B, T] float32


@flax.struct.dataclass
class Examples:
  """N examples padded to one length; rows are shuffled per epoch by `batch_at`."""
  tokens: np.ndarray  # [N, T]
  loss_mask: np.ndarray  # [N, T]
  value_targets: np.ndarray | None = None
  value_mask: np.ndarray | None = None

  @property
  def size(self) -> int:
    return self.tokens.shape[0]


def pack(prompts: Sequence[Sequence[int]], completions: Sequence[Sequence[int]],
         max_len: int, train_prompt: bool = False) -> Examples:
  """Concatenates prompt + completion per row. The loss covers the completion (and prompt if
  train_prompt); rows longer than max_len are an error, not silently truncated."""
  n = len(prompts)
  tokens = np.full((n, max_len), PAD_ID, np.int32)
  mask = np.zeros((n, max_len), np.float32)
  for i, (p, c) in enumerate(zip(prompts, completions)):
    seq = list(p) + list(c)
    if len(seq) > max_len:
      raise ValueError(f'example {i} has {len(seq)} tokens; max_len={max_len}: raise '
                       'config.data.max_len')
    tokens[i, :len(seq)] = seq
    start = 1 if train_prompt else len(p)
    mask[i, start:len(seq)] = 1.0
  return Examples(tokens=tokens, loss_mask=mask)


def batch_at(examples: Examples, step: int, batch_size: int, seed: int) -> Batch:
  """Batch of `step`: epoch-wise permutations seeded by (seed, epoch), no example dropped."""
  n = examples.size
  if batch_size > n:
    raise ValueError(f'batch_size={batch_size} exceeds the {n} training examples')
  per_epoch = n // batch_size
  epoch, offset = divmod(step, per_epoch)
  order = np.random.default_rng([seed, epoch]).permutation(n)
  idx = order[offset * batch_size:(offset + 1) * batch_size]
  take = lambda a: None if a is None else a[idx]
  return Batch(tokens=examples.tokens[idx], loss_mask=examples.loss_mask[idx],
               value_targets=take(examples.value_targets), value_mask=take(examples.value_mask))
