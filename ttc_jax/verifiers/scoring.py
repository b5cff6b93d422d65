"""PRM/ORM scoring: one forward pass per candidate gives the score at every step end.

With causal attention and right padding, the value at a step's closing token sees exactly the
prefix up to it, so one pass over prompt+completion equals scoring each step prefix separately
(`Scorer.score_per_prefix`, the reference and what re-scoring implementations do) at a fraction
of the cost. Rows are sorted by length, batched, and padded to static (batch, length) buckets so
the jitted forward compiles once per bucket pair.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Sequence

import jax
import numpy as np

from ttc_jax.model.config import TransformerConfig
from ttc_jax.model.transformer import PAD_ID
from ttc_jax.sampling.sampler import bucket_length
from ttc_jax.training.objectives import value_logits
from ttc_jax.verifiers.steps import step_ends

# Finer than the sampler's powers of two: scored rows are whole solutions, and a 260-token row
# padded to 512 would double the work.
SCORE_BUCKETS = (32, 64, 96, 128, 192, 256, 320, 384, 512, 768, 1024, 1536, 2048, 4096, 8192,
                 16384, 32768)


@functools.partial(jax.jit, static_argnames=('config',))
def _logits(params, tokens_BxT: jax.Array, *, config: TransformerConfig) -> jax.Array:
  return value_logits(config, params, tokens_BxT)


def sigmoid(x: np.ndarray) -> np.ndarray:
  return 0.5 * (1.0 + np.tanh(0.5 * np.asarray(x, np.float64)))  # exact, no overflow warning


@dataclasses.dataclass(frozen=True)
class Scorer:
  """Host-side front end: candidates (prompt ids, completion ids) -> per-step value logits/scores.

  params: {'transformer': backbone, 'value_head': head} (a PRM or an ORM; see `ValueRegression`).
  Step ends come from `steps.step_ends(completion, delimiter_id, eos_id)`.
  """
  config: TransformerConfig
  delimiter_id: int
  eos_id: int = 1
  batch_size: int = 64
  buckets: tuple[int, ...] = SCORE_BUCKETS

  def __post_init__(self):
    if self.batch_size < 1:
      raise ValueError(f'batch_size={self.batch_size}; expected >= 1')

  def step_logits(self, params, prompts: Sequence[Sequence[int]],
                  completions: Sequence[Sequence[int]]) -> list[np.ndarray]:
    """One pass per candidate: the value logit at each step end ([num_steps] per candidate)."""
    self._check(params, prompts, completions)
    rows = [list(p) + list(c) for p, c in zip(prompts, completions)]
    reads = [[len(p) + e for e in step_ends(c, self.delimiter_id, self.eos_id)]
             for p, c in zip(prompts, completions)]
    return self._run(params, rows, reads)

  def score(self, params, prompts: Sequence[Sequence[int]],
            completions: Sequence[Sequence[int]]) -> list[np.ndarray]:
    """sigmoid(step_logits): the verifier's probability of success after each step."""
    return [sigmoid(x) for x in self.step_logits(params, prompts, completions)]

  def step_logits_per_prefix(self, params, prompts: Sequence[Sequence[int]],
                             completions: Sequence[Sequence[int]]) -> list[np.ndarray]:
    """Reference: every step prefix in its own forward pass (batched, same buckets)."""
    self._check(params, prompts, completions)
    rows, owner = [], []
    for i, (p, c) in enumerate(zip(prompts, completions)):
      for e in step_ends(c, self.delimiter_id, self.eos_id):
        rows.append(list(p) + list(c[:e + 1]))
        owner.append(i)
    flat = self._run(params, rows, [[len(r) - 1] for r in rows])
    out: list[list[float]] = [[] for _ in prompts]
    for i, x in zip(owner, flat):
      out[i].append(float(x[0]))
    return [np.asarray(x, np.float32) for x in out]

  def score_per_prefix(self, params, prompts: Sequence[Sequence[int]],
                       completions: Sequence[Sequence[int]]) -> list[np.ndarray]:
    return [sigmoid(x) for x in self.step_logits_per_prefix(params, prompts, completions)]

  def _check(self, params, prompts, completions) -> None:
    if not isinstance(params, dict) or set(params) != {'transformer', 'value_head'}:
      got = sorted(params) if isinstance(params, dict) else type(params).__name__
      raise ValueError(f'verifier params have keys {got}; expected [transformer, value_head]')
    if len(prompts) != len(completions):
      raise ValueError(f'{len(prompts)} prompts but {len(completions)} completions; expected '
                       'one prompt per candidate')
    for p, c in zip(prompts, completions):
      if not p:
        raise ValueError('every candidate needs a non-empty prompt (got an empty one)')
      bad = [t for t in (*p, *c) if not 0 <= t < self.config.vocab_size]
      if bad:
        raise ValueError(f'token id {bad[0]} out of range; expected [0, {self.config.vocab_size})')

  def _run(self, params, rows: list[list[int]], reads: list[list[int]]) -> list[np.ndarray]:
    """Value logits of `rows` at positions `reads`, batched by similar length."""
    out: list[np.ndarray] = [np.zeros((0,), np.float32)] * len(rows)
    order = sorted(range(len(rows)), key=lambda i: len(rows[i]))
    batch_buckets = tuple(2 ** k for k in range(self.batch_size.bit_length())) + (
        self.batch_size,)
    for start in range(0, len(order), self.batch_size):
      chunk = order[start:start + self.batch_size]
      t = bucket_length(max(len(rows[i]) for i in chunk), self.buckets)
      tokens = np.full((bucket_length(len(chunk), batch_buckets), t), PAD_ID, np.int32)
      for j, i in enumerate(chunk):
        tokens[j, :len(rows[i])] = rows[i]
      logits = np.asarray(_logits(params, tokens, config=self.config))
      for j, i in enumerate(chunk):
        out[i] = logits[j, reads[i]].astype(np.float32)
    return out
