"""Monte-Carlo step labels: rollouts continue each step prefix from the sampled solution's cache.

A sampled solution's cache already holds every token of it but the last (causal attention: a
slot's keys/values depend only on earlier tokens), so the cache of any prefix is the same rows
with the later slots masked out. A prefix ending at completion index e keeps the prompt and
completion[:e] and feeds completion[e] (the step's closing token) as a one-token prompt, fanned
out to M rollouts by the sampler: no token of the prefix is sent again, except that one.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from ttc_jax.model.transformer import Cache
from ttc_jax.sampling import sampler as sampling
from ttc_jax.sampling.sampler import Sampler

# Prompt buckets for samplers whose caches are continued: a 1-token continuation uses 1 slot.
CONTINUATION_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192, 16384,
                        32768)


@jax.jit
def prefix_rows(cache: Cache, rows_R: jax.Array, keep_R: jax.Array) -> Cache:
  """Rows `rows_R` of `cache`, row i keeping only the tokens at positions < keep_R[i]."""
  taken = jax.tree.map(lambda x: x if x.ndim == 0 else jnp.take(x, rows_R, axis=0), cache)
  return dataclasses.replace(
      taken, valid=taken.valid & (taken.positions < keep_R[:, None]), next_position=keep_R)


@dataclasses.dataclass(frozen=True)
class Prefix:
  """Solution `row` of a sampled batch up to and including completion index `end`."""
  row: int
  end: int


@dataclasses.dataclass
class RolloutStats:
  rollouts: int = 0
  tokens: int = 0  # sampled by the rollouts (padding rows not counted)
  seconds: float = 0.0
  calls: int = 0
  # The same over calls that did not compile the sampler: the steady-state throughput.
  warm_tokens: int = 0
  warm_seconds: float = 0.0


def _budget_bucket(n: int, step: int = 64) -> int:
  return max(step, -(-n // step) * step)


def rollout_labels(sampler: Sampler, params, cache: Cache, prompt_lengths: Sequence[int],
                   completions: Sequence[Sequence[int]], prefixes: Sequence[Prefix],
                   grade: Callable[[int, list[int]], bool], *, key: jax.Array,
                   num_rollouts: int, max_new_tokens: int, temperature: float,
                   prefixes_per_call: int) -> tuple[list[float], RolloutStats]:
  """The fraction of `num_rollouts` continuations of each prefix that `grade(row, ids)` accepts.

  `cache` (not donated) is the cache a sampler call returned for the rows of `completions`
  (prompt i of `prompt_lengths` tokens, then completion i, its last token not cached); it needs
  room for 1 + `max_new_tokens` more slots. `grade` gets the whole completion (prefix + rollout).
  A rollout may use what the prefix left of `max_new_tokens` (the budget of the solution itself).
  Calls have static shapes: `prefixes_per_call` prefixes x `num_rollouts` rows, the last call
  padded by repeating its first prefix; the token budget of a call is rounded up to 64.
  """
  stats = RolloutStats()
  labels = [0.0] * len(prefixes)
  # Longest remaining solution first, so each call's rows decode for similar lengths.
  order = sorted(range(len(prefixes)),
                 key=lambda i: -(len(completions[prefixes[i].row]) - prefixes[i].end))
  for call, start in enumerate(range(0, len(order), prefixes_per_call)):
    chunk = order[start:start + prefixes_per_call]
    padded = chunk + [chunk[0]] * (prefixes_per_call - len(chunk))
    batch = [prefixes[i] for i in padded]
    for p in batch:
      if not 0 <= p.end < len(completions[p.row]):
        raise ValueError(f'prefix end {p.end} outside completion {p.row} of '
                         f'{len(completions[p.row])} tokens')
    budget = min(max_new_tokens, _budget_bucket(max(max_new_tokens - p.end - 1 for p in batch)))
    t0, compiled = time.perf_counter(), sampling.generate._cache_size()
    rows = prefix_rows(cache, jnp.asarray([p.row for p in batch], jnp.int32),
                       jnp.asarray([prompt_lengths[p.row] + p.end for p in batch], jnp.int32))
    out = sampler.sample(params, [[completions[p.row][p.end]] for p in batch],
                         key=jax.random.fold_in(key, call), max_new_tokens=max(budget, 1),
                         num_samples=num_rollouts, temperature=temperature, cache=rows)
    seqs = out.sequences()
    seconds = time.perf_counter() - t0
    tokens = 0
    for j, i in enumerate(chunk):
      p = prefixes[i]
      head = list(completions[p.row][:p.end + 1])
      outs = seqs[j * num_rollouts:(j + 1) * num_rollouts]
      labels[i] = float(np.mean([grade(p.row, head + s) for s in outs]))
      stats.rollouts += len(outs)
      tokens += sum(len(s) for s in outs)
    stats.calls += 1
    stats.tokens += tokens
    stats.seconds += seconds
    if sampling.generate._cache_size() == compiled:
      stats.warm_tokens += tokens
      stats.warm_seconds += seconds
  return labels, stats
