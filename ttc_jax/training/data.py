"""Training examples as fixed-shape arrays; the batch of step s is a pure function of (seed, s).

Because a batch depends only on the step, a resumed run sees exactly the batches an
uninterrupted run would have seen.
"""

from __future__ import annotations

from typing import Mapping, Sequence

import flax
import jax
import numpy as np

from ttc_jax.errors import ConfigError
from ttc_jax.model.transformer import PAD_ID


@flax.struct.dataclass
class Batch:
  tokens: jax.Array  # [B, T] int32, PAD-filled.
  loss_mask: jax.Array  # [B, T] float32: 1 where the token is a training target.
  # Value-head objectives: a soft label per position, trained where value_mask is 1.
  value_targets: jax.Array | None = None  # [B, T] float32
  value_mask: jax.Array | None = None  # [B, T] float32
  # Precomputed per-position inputs (a frozen backbone's, for `objectives.HeadRegression`).
  features: jax.Array | None = None  # [B, T, F] float32
  # Packed rows (`pack_segments`): 0 on padding, 1, 2, ... per sequence; None: one per row.
  segment_ids: jax.Array | None = None  # [B, T] int32


@flax.struct.dataclass
class Examples:
  """N examples padded to one length; rows are shuffled per epoch by `batch_at`."""
  tokens: np.ndarray  # [N, T]
  loss_mask: np.ndarray  # [N, T]
  value_targets: np.ndarray | None = None
  value_mask: np.ndarray | None = None
  features: np.ndarray | None = None  # [N, T, F]
  segment_ids: np.ndarray | None = None  # [N, T] int32

  @property
  def size(self) -> int:
    return self.tokens.shape[0]


def pack(prompts: Sequence[Sequence[int]], completions: Sequence[Sequence[int]],
         max_len: int, train_prompt: bool = False,
         values: Sequence[Mapping[int, float]] | None = None,
         max_len_key: str = 'train.max_len') -> Examples:
  """Concatenates prompt + completion per row. The loss covers the completion (and prompt if
  train_prompt); rows longer than max_len are an error naming the config key `max_len_key`, not
  silently truncated. `values` (one {completion index: soft label} per row) sets value targets
  for value-head objectives."""
  n = len(prompts)
  tokens = np.full((n, max_len), PAD_ID, np.int32)
  mask = np.zeros((n, max_len), np.float32)
  value_targets = None if values is None else np.zeros((n, max_len), np.float32)
  value_mask = None if values is None else np.zeros((n, max_len), np.float32)
  for i, (p, c) in enumerate(zip(prompts, completions)):
    seq = list(p) + list(c)
    if len(seq) > max_len:
      raise ConfigError(f'example {i} has {len(seq)} tokens; --config.{max_len_key}={max_len}: '
                        'raise it')
    tokens[i, :len(seq)] = seq
    start = 1 if train_prompt else len(p)
    mask[i, start:len(seq)] = 1.0
    for index, target in (values[i] if values is not None else {}).items():
      if not 0 <= index < len(c):
        raise ValueError(f'example {i}: value target at completion index {index} outside its '
                         f'{len(c)} tokens')
      value_targets[i, len(p) + index] = target
      value_mask[i, len(p) + index] = 1.0
  return Examples(tokens=tokens, loss_mask=mask, value_targets=value_targets,
                  value_mask=value_mask)


def pack_segments(prompts: Sequence[Sequence[int]], completions: Sequence[Sequence[int]],
                  max_len: int, *, row_len: int | None = None,
                  max_len_key: str = 'train.max_len') -> Examples:
  """Several prompt + completion sequences per row of max_len, each one segment (`Batch`), so
  long and short sequences share rows instead of padding to the longest. Rows are filled
  first-fit-decreasing by length (ties by input index: deterministic). The loss covers the
  completions only, never a segment's first token (its target would come from the segment
  before). Too-long sequences are an error naming `max_len_key`, as in `pack`; empty ones are
  dropped (they have no targets).

  `row_len` (default max_len) is how full a row is packed: a sequence longer than it gets a row
  of its own. Attention costs a row's length squared, so short rows (with `batch_at` batching
  rows of similar length) make packing pay where a few long sequences set max_len."""
  row_len = max_len if row_len is None else min(row_len, max_len)
  seqs = [list(p) + list(c) for p, c in zip(prompts, completions)]
  lengths = np.array([len(s) for s in seqs], np.int64)
  for i, n in enumerate(lengths):
    if n > max_len:
      raise ConfigError(f'example {i} has {n} tokens; --config.{max_len_key}={max_len}: '
                        'raise it')
  order = [i for i in np.argsort(-lengths, kind='stable') if lengths[i] > 0]
  free = np.full(len(order), row_len, np.int64)  # at most one row per sequence
  rows: list[list[int]] = []
  for i in order:
    r = int(np.argmax(free >= min(lengths[i], row_len)))  # the first row it fits, else a new one
    if r == len(rows):
      rows.append([])
    rows[r].append(i)
    free[r] = max(free[r] - lengths[i], 0)
  tokens = np.full((len(rows), max_len), PAD_ID, np.int32)
  mask = np.zeros((len(rows), max_len), np.float32)
  segments = np.zeros((len(rows), max_len), np.int32)
  for r, row in enumerate(rows):
    at = 0
    for s, i in enumerate(row, start=1):
      n = len(seqs[i])
      tokens[r, at:at + n] = seqs[i]
      segments[r, at:at + n] = s
      mask[r, at + max(len(prompts[i]), 1):at + n] = 1.0
      at += n
  return Examples(tokens=tokens, loss_mask=mask, segment_ids=segments)


def _epoch_batches(lengths: np.ndarray, batch_size: int, seed: int, epoch: int) -> np.ndarray:
  """[batches, batch_size] indices: shuffled, then grouped by length inside windows of 32
  batches (so padding is small), then the batches shuffled again."""
  rng = np.random.default_rng([seed, epoch])
  order = rng.permutation(len(lengths))
  per_epoch = len(lengths) // batch_size
  order = order[:per_epoch * batch_size]
  window = 32 * batch_size
  for start in range(0, len(order), window):
    chunk = order[start:start + window]
    order[start:start + window] = chunk[np.argsort(lengths[chunk], kind='stable')]
  batches = order.reshape(per_epoch, batch_size)
  return batches[rng.permutation(per_epoch)]


def batch_at(examples: Examples, step: int, batch_size: int, seed: int,
             length_bucket: int = 32) -> Batch:
  """Batch of `step`, a pure function of (examples, step, seed). Examples are visited once per
  epoch; the batch is trimmed to its longest row rounded up to `length_bucket` (few shapes)."""
  n = examples.size
  if batch_size > n:
    raise ConfigError(f'batch_size={batch_size} exceeds the {n} training examples')
  per_epoch = n // batch_size
  epoch, offset = divmod(step, per_epoch)
  lengths = (examples.tokens != PAD_ID).sum(axis=1)
  idx = _epoch_batches(lengths, batch_size, seed, epoch)[offset]
  width = min(examples.tokens.shape[1],
              -(-int(lengths[idx].max()) // length_bucket) * length_bucket)
  take = lambda a: None if a is None else a[idx, :width]
  return Batch(tokens=take(examples.tokens), loss_mask=take(examples.loss_mask),
               value_targets=take(examples.value_targets), value_mask=take(examples.value_mask),
               features=take(examples.features), segment_ids=take(examples.segment_ids))
