"""PRM/ORM scoring: one forward pass per candidate gives the score at every step end.

With causal attention and right padding, the value at a step's closing token sees exactly the
prefix up to it, so one pass over prompt+completion equals scoring each step prefix separately
(`Scorer.step_logits_per_prefix`, the reference and what re-scoring implementations do) at a fraction
of the cost. Rows are sorted by length, batched, and padded to static (batch, length) buckets so
the jitted forward compiles once per bucket pair; short rows go in bigger batches (a token budget
per pass), so padding stays small whatever the length mix.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Mapping, Sequence

import jax
import numpy as np
import scipy.special
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from ttc_jax.model.config import TransformerConfig
from ttc_jax.model.transformer import PAD_ID
from ttc_jax.sampling.sampler import bucket_length
from ttc_jax.training.objectives import ValueHead, head_inputs, value_logits
from ttc_jax.verifiers.steps import step_ends

# Finer than the sampler's powers of two: scored rows are whole solutions, and a 260-token row
# padded to 512 would double the work.
SCORE_BUCKETS = (32, 64, 96, 128, 192, 256, 320, 384, 512, 768, 1024, 1536, 2048, 4096, 8192,
                 16384, 32768)


@functools.partial(jax.jit, static_argnames=('config', 'eos_id'))
def _logits(params, tokens_BxT: jax.Array, completion_BxT: jax.Array, *,
            config: TransformerConfig, eos_id: int) -> jax.Array:
  return value_logits(config, params, tokens_BxT, completion_BxT, eos_id)


@functools.partial(jax.jit, static_argnames=('config', 'eos_id'))
def _head_inputs(backbone, tokens_BxT: jax.Array, completion_BxT: jax.Array, *,
                 config: TransformerConfig, eos_id: int) -> jax.Array:
  return head_inputs(config, backbone, tokens_BxT, completion_BxT, eos_id)


def sigmoid(x: np.ndarray) -> np.ndarray:
  return scipy.special.expit(np.asarray(x, np.float64))


@dataclasses.dataclass(frozen=True)
class Scorer:
  """Host-side front end: candidates (prompt ids, completion ids) -> per-step value logits/scores.

  params: {'transformer': backbone, 'value_head': head} (a PRM or an ORM; see `ValueRegression`).
  Step ends come from `steps.step_ends(completion, delimiter_id, eos_id)`.
  """
  config: TransformerConfig
  delimiter_id: int
  eos_id: int = 1
  batch_tokens: int = 8192  # padded rows x length per forward pass (rows: a power of two)
  buckets: tuple[int, ...] = SCORE_BUCKETS
  # With a mesh (axis 'data'), each pass's rows are split over its devices (params replicated)
  # when the padded row count divides; else the pass runs on one device.
  mesh: Mesh | None = None

  def __post_init__(self):
    if self.batch_tokens < 1:
      raise ValueError(f'batch_tokens={self.batch_tokens}; expected >= 1')

  def step_logits(self, params, prompts: Sequence[Sequence[int]],
                  completions: Sequence[Sequence[int]]) -> list[np.ndarray]:
    """One pass per candidate: the value logit at each step end ([num_steps] per candidate)."""
    self._check_params(params)
    return self._one_pass(_logits, params, prompts, completions)

  def score_verifiers(self, verifiers: Mapping[str, Any], prompts: Sequence[Sequence[int]],
                      completions: Sequence[Sequence[int]]) -> dict[str, list[np.ndarray]]:
    """`score` for several verifiers ({name: params}). Heads on one backbone (the PRM and ORM on
    a frozen one: equal `transformer` params) share its pass: `step_inputs` once, then each head."""
    if not prompts:
      return {name: [] for name in verifiers}
    groups: list[tuple[Any, list[str]]] = []
    for name, params in verifiers.items():
      self._check_params(params)
      for backbone, names in groups:
        if _equal_trees(backbone, params['transformer']):
          names.append(name)
          break
      else:
        groups.append((params['transformer'], [name]))
    out = {}
    for backbone, names in groups:
      if len(names) == 1:
        out[names[0]] = self.score(verifiers[names[0]], prompts, completions)
        continue
      inputs = self.step_inputs(backbone, prompts, completions)
      flat = np.concatenate(inputs)
      splits = np.cumsum([len(x) for x in inputs])[:-1]
      for name in names:
        logits = ValueHead().apply({'params': verifiers[name]['value_head']}, flat)
        out[name] = [sigmoid(x) for x in np.split(np.asarray(logits, np.float32), splits)]
    return {name: out[name] for name in verifiers}

  def step_inputs(self, backbone, prompts: Sequence[Sequence[int]],
                  completions: Sequence[Sequence[int]]) -> list[np.ndarray]:
    """One backbone pass per candidate: what a value head reads at each step end
    ([num_steps, embed_dim + 3] per candidate; `objectives.head_inputs`). Heads on the same
    frozen backbone (the PRM and the ORM) share it; training a head reads it once."""
    return self._one_pass(_head_inputs, backbone, prompts, completions)

  def _one_pass(self, fn, params, prompts, completions) -> list[np.ndarray]:
    self._check(prompts, completions)
    rows = [list(p) + list(c) for p, c in zip(prompts, completions)]
    reads = [[len(p) + e for e in step_ends(c, self.delimiter_id, self.eos_id)]
             for p, c in zip(prompts, completions)]
    return self._run(fn, params, rows, [len(p) for p in prompts], reads)

  def score(self, params, prompts: Sequence[Sequence[int]],
            completions: Sequence[Sequence[int]]) -> list[np.ndarray]:
    """sigmoid(step_logits): the verifier's probability of success after each step."""
    return [sigmoid(x) for x in self.step_logits(params, prompts, completions)]

  def step_logits_per_prefix(self, params, prompts: Sequence[Sequence[int]],
                             completions: Sequence[Sequence[int]]) -> list[np.ndarray]:
    """Reference: every step prefix in its own forward pass (batched, same buckets)."""
    self._check_params(params)
    self._check(prompts, completions)
    rows, starts, owner = [], [], []
    for i, (p, c) in enumerate(zip(prompts, completions)):
      for e in step_ends(c, self.delimiter_id, self.eos_id):
        rows.append(list(p) + list(c[:e + 1]))
        starts.append(len(p))
        owner.append(i)
    flat = self._run(_logits, params, rows, starts, [[len(r) - 1] for r in rows])
    out: list[list[float]] = [[] for _ in prompts]
    for i, x in zip(owner, flat):
      out[i].append(float(x[0]))
    return [np.asarray(x, np.float32) for x in out]

  def _check_params(self, params) -> None:
    if not isinstance(params, dict) or set(params) != {'transformer', 'value_head'}:
      got = sorted(params) if isinstance(params, dict) else type(params).__name__
      raise ValueError(f'verifier params have keys {got}; expected [transformer, value_head]')

  def _check(self, prompts, completions) -> None:
    if len(prompts) != len(completions):
      raise ValueError(f'{len(prompts)} prompts but {len(completions)} completions; expected '
                       'one prompt per candidate')
    for p, c in zip(prompts, completions):
      if not p:
        raise ValueError('every candidate needs a non-empty prompt (got an empty one)')
      bad = [t for t in (*p, *c) if not 0 <= t < self.config.vocab_size]
      if bad:
        raise ValueError(f'token id {bad[0]} out of range; expected [0, {self.config.vocab_size})')

  def _run(self, fn, params, rows: list[list[int]], starts: list[int],
           reads: list[list[int]]) -> list[np.ndarray]:
    """fn(params, tokens, completion mask) ([B, T, ...]) of `rows` (completions from `starts`)
    at positions `reads`, batched by similar length."""
    out: list[np.ndarray] = [np.zeros((0,), np.float32)] * len(rows)
    if self.mesh is not None:
      params = jax.device_put(params, NamedSharding(self.mesh, PartitionSpec()))
    order = sorted(range(len(rows)), key=lambda i: len(rows[i]))
    for chunk in self._batches([len(rows[i]) for i in order]):
      chunk = [order[k] for k in chunk]
      t = bucket_length(len(rows[chunk[-1]]), self.buckets)
      tokens = np.full((_pow2_at_least(len(chunk)), t), PAD_ID, np.int32)
      completion = np.zeros(tokens.shape, np.float32)
      for j, i in enumerate(chunk):
        tokens[j, :len(rows[i])] = rows[i]
        completion[j, starts[i]:len(rows[i])] = 1.0
      args = (tokens, completion)
      if self.mesh is not None and len(tokens) % self.mesh.devices.size == 0:
        args = jax.device_put(args, NamedSharding(self.mesh, PartitionSpec('data')))
      values = np.asarray(fn(params, *args, config=self.config, eos_id=self.eos_id))
      for j, i in enumerate(chunk):
        out[i] = values[j, reads[i]].astype(np.float32)
    return out

  def _batches(self, sorted_lengths: list[int]) -> list[range]:
    """Consecutive runs of rows whose padded [rows, length] block fits batch_tokens."""
    out, start = [], 0
    while start < len(sorted_lengths):
      end = start + 1
      while end < len(sorted_lengths):
        t = bucket_length(sorted_lengths[end], self.buckets)
        if _pow2_at_least(end + 1 - start) * t > max(self.batch_tokens, t):
          break
        end += 1
      out.append(range(start, end))
      start = end
    return out


def _equal_trees(a, b) -> bool:
  return (jax.tree.structure(a) == jax.tree.structure(b)
          and all(x is y or np.array_equal(x, y) for x, y in zip(jax.tree.leaves(a),
                                                                jax.tree.leaves(b))))


def _pow2_at_least(n: int) -> int:
  return 1 << (n - 1).bit_length()
