"""The sampling kernel: one jitted prefill + `lax.while_loop` decode over a static KV cache.

The only way tokens are made. A call appends a (bucket-padded) chunk to a new or existing cache,
optionally fans each row out to N samples after one shared prefill, and decodes until every row
has sampled a stop token or `max_new_tokens`. Each row's last sampled token is NOT in the returned
cache: a continuation feeds it first (`SampleOutput.continuation`), so nothing is re-prefilled.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Sequence

import flax
import jax
import jax.numpy as jnp
import numpy as np

from ttc_jax.model.config import TransformerConfig
from ttc_jax.model.transformer import PAD_ID, Cache, Transformer, init_cache

# Decode phases attend to cache prefixes of 128, 256, ... slots (one compiled loop each).
ATTENTION_LADDER_START = 128
DEFAULT_BUCKETS = (16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192, 16384, 32768)


@flax.struct.dataclass(kw_only=True)
class SamplingState:
  step: jax.Array  # [] int32: tokens sampled so far by every live row (column of `tokens`).
  tokens: jax.Array  # [B, max_new] sampled ids, PAD after a row is done.
  num_tokens: jax.Array  # [B] tokens sampled per row.
  last_token: jax.Array  # [B] the newest sampled token (not yet in the cache).
  done: jax.Array  # [B] row sampled a stop token or hit the limit.
  cache: Cache
  key: jax.Array


@flax.struct.dataclass(kw_only=True)
class SampleOutput:
  tokens: jax.Array  # [B, max_new], PAD-filled after each row's end.
  num_tokens: jax.Array  # [B]
  last_token: jax.Array  # [B] last sampled token of each row; not in `cache`.
  cache: Cache

  def sequences(self) -> list[list[int]]:
    tokens, lengths = np.asarray(self.tokens), np.asarray(self.num_tokens)
    return [row[:n].tolist() for row, n in zip(tokens, lengths)]


def bucket_length(n: int, buckets: Sequence[int] = DEFAULT_BUCKETS) -> int:
  for b in buckets:
    if n <= b:
      return b
  raise ValueError(f'prompt of {n} tokens is longer than the largest bucket {buckets[-1]}; '
                   'pass longer buckets')


def _top_p_filter(logits_BxV, top_p):
  sorted_logits = jnp.sort(logits_BxV, axis=-1)[:, ::-1]
  probs = jax.nn.softmax(sorted_logits, axis=-1)
  keep = (jnp.cumsum(probs, axis=-1) - probs) < top_p  # always keeps the top token
  threshold = jnp.min(jnp.where(keep, sorted_logits, jnp.inf), axis=-1, keepdims=True)
  return jnp.where(logits_BxV < threshold, -jnp.inf, logits_BxV)


CATEGORICAL_BLOCK = 256


def _categorical(scaled_BxV, key, block: int = CATEGORICAL_BLOCK):
  """Exact categorical draw by a two-level inverse CDF: one uniform per row, unnormalised
  probabilities summed per block of `block` tokens, a cumulative sum over the block totals picks
  the block, then one over that block's tokens picks the token. A flat cumulative sum over the
  whole vocabulary cost 4x (V=32k, 64 rows) to 8x (V=262k, 16 rows) more per decode step on CPU.
  Masked (-inf) logits get probability 0."""
  b, v = scaled_BxV.shape
  block = min(block, v)
  groups = -(-v // block)
  padded = jnp.pad(scaled_BxV, ((0, 0), (0, groups * block - v)), constant_values=-jnp.inf)
  weights_BxGxK = jnp.exp(padded - jnp.max(scaled_BxV, axis=-1, keepdims=True)).reshape(
      b, groups, block)
  totals_BxG = weights_BxGxK.sum(-1)
  cdf_BxG = jnp.cumsum(totals_BxG, axis=-1)
  u_Bx1 = jax.random.uniform(key, (b, 1), dtype=cdf_BxG.dtype) * cdf_BxG[:, -1:]
  group_B = jnp.minimum(jnp.sum(cdf_BxG < u_Bx1, axis=-1), groups - 1)
  below_Bx1 = (jnp.take_along_axis(cdf_BxG, group_B[:, None], -1)
               - jnp.take_along_axis(totals_BxG, group_B[:, None], -1))
  inner_BxK = below_Bx1 + jnp.cumsum(
      jnp.take_along_axis(weights_BxGxK, group_B[:, None, None], 1)[:, 0], axis=-1)
  index_B = jnp.minimum(jnp.sum(inner_BxK < u_Bx1, axis=-1), block - 1)
  return jnp.minimum(group_B * block + index_B, v - 1)


def sample_logits(logits_BxV, key, temperature, top_p, top_k: int):
  """Greedy when temperature == 0; else temperature, then top-k (static), then top-p."""
  logits_BxV = logits_BxV.astype(jnp.float32)

  def sample(logits):
    scaled = logits / jnp.maximum(temperature, 1e-6)
    if top_k > 0:
      kth = jax.lax.top_k(scaled, top_k)[0][:, -1:]
      scaled = jnp.where(scaled < kth, -jnp.inf, scaled)
    scaled = jax.lax.cond(top_p < 1.0, _top_p_filter, lambda l, p: l, scaled, top_p)
    return _categorical(scaled, key).astype(jnp.int32)

  greedy = lambda logits: jnp.argmax(logits, axis=-1).astype(jnp.int32)
  return jax.lax.cond(temperature > 0, sample, greedy, logits_BxV)


def attention_ladder(cache_size: int, first: int = ATTENTION_LADDER_START) -> tuple[int, ...]:
  """Cache prefixes the decode phases attend to: first, 2*first, ... below a third of the cache,
  then the whole cache.

  XLA:CPU materialises a prefix that a matmul reads (a copy per step), so a prefix of n slots
  costs ~3n slots of memory traffic (read, write, the matmul's read) against cache_size for
  reading the whole cache in place: shorter prefixes are not worth their copy.
  """
  rungs, rung = [], first
  while 3 * rung < cache_size:
    rungs.append(rung)
    rung *= 2
  return (*rungs, cache_size)


def _repeat_rows(tree, n: int):
  """Repeats every batch-leading array n times (row i -> rows i*n .. i*n+n-1)."""
  return jax.tree.map(lambda x: x if x.ndim == 0 else jnp.repeat(x, n, axis=0), tree)


@functools.partial(
    jax.jit,
    static_argnames=('config', 'num_samples', 'max_new_tokens', 'top_k', 'cache_size'),
    donate_argnames=('cache',))
def generate(params, tokens_BxT, lengths_B, stop_BxK, key, temperature, top_p, cache=None,
             active_B=None, *, config: TransformerConfig, num_samples: int, max_new_tokens: int,
             top_k: int, cache_size: int) -> SampleOutput:
  """Prefills the chunk, fans out to num_samples, decodes. See `Sampler.sample`.

  active_B (bool, per input row; default all True): a row that is False is frozen: its chunk is
  not written (no visible slot), it samples nothing (num_tokens 0, tokens PAD) and its
  `last_token` is its chunk's first token unchanged. Search freezes finished beams this way.
  """
  model = Transformer(config)
  b, t = tokens_BxT.shape
  fresh = cache is None
  if fresh:
    cache = init_cache(config, b, cache_size)
  if active_B is None:
    active_B = jnp.ones((b,), bool)
  input_mask = (jnp.arange(t)[None, :] < lengths_B[:, None]) & active_B[:, None]
  # A fresh cache holds nothing to attend to (and reading its zeros made XLA constant-fold them).
  out = model.apply({'params': params}, tokens_BxT, input_mask, cache=cache,
                    logits_at_B=lengths_B - 1, attend_len=0 if fresh else None)
  logits, cache = out.logits, out.cache
  held = tokens_BxT[:, 0]
  if num_samples > 1:
    logits, cache, stop_BxK, active_B, held = _repeat_rows(
        (logits, cache, stop_BxK, active_B, held), num_samples)

  def is_stop(tok_B):
    return jnp.any(tok_B[:, None] == stop_BxK, axis=-1)

  first = sample_logits(logits, jax.random.fold_in(key, 0), temperature, top_p, top_k)
  first = jnp.where(active_B, first, PAD_ID)
  rows = first.shape[0]
  state = SamplingState(
      step=jnp.ones((), jnp.int32),
      tokens=jnp.zeros((rows, max_new_tokens), jnp.int32).at[:, 0].set(first),
      num_tokens=active_B.astype(jnp.int32),
      last_token=jnp.where(active_B, first, held),
      done=~active_B | is_stop(first) | (max_new_tokens <= 1),
      cache=cache, key=key)

  def decode(s: SamplingState, attend_len: int) -> SamplingState:
    """Decode steps while the write slot is below `attend_len`, attending to those slots only."""

    def cond(s: SamplingState):
      return (s.step < max_new_tokens) & ~jnp.all(s.done) & (s.cache.end_index < attend_len)

    def body(s: SamplingState) -> SamplingState:
      live = ~s.done
      o = model.apply({'params': params}, s.last_token[:, None], live[:, None], cache=s.cache,
                      logits_at_B=jnp.zeros((rows,), jnp.int32), attend_len=attend_len)
      nxt = sample_logits(o.logits, jax.random.fold_in(s.key, s.step), temperature, top_p, top_k)
      nxt = jnp.where(live, nxt, PAD_ID)
      num_tokens = s.num_tokens + live
      return SamplingState(
          step=s.step + 1,
          tokens=jax.lax.dynamic_update_slice(s.tokens, nxt[:, None], (0, s.step)),
          num_tokens=num_tokens,
          last_token=jnp.where(live, nxt, s.last_token),
          done=s.done | (live & (is_stop(nxt) | (num_tokens >= max_new_tokens))),
          cache=o.cache, key=s.key)

    return jax.lax.while_loop(cond, body, s)

  # Attention cost grows with the slots it reads, so decoding runs in phases over a static ladder
  # of cache prefixes; a phase whose prefix is already full runs zero iterations.
  s = state
  for attend_len in attention_ladder(cache.size):
    s = decode(s, attend_len)
  return SampleOutput(tokens=s.tokens, num_tokens=s.num_tokens, last_token=s.last_token,
                      cache=s.cache)


@dataclasses.dataclass(frozen=True)
class Sampler:
  """Host-side front end of `generate`: padding to buckets, argument checks."""
  config: TransformerConfig
  eos_id: int = 1
  buckets: tuple[int, ...] = DEFAULT_BUCKETS

  def sample(self, params, prompts: Sequence[Sequence[int]], *, key: jax.Array,
             max_new_tokens: int, num_samples: int = 1, temperature: float = 1.0,
             top_k: int = 0, top_p: float = 1.0,
             stop_tokens: Sequence[int] | Sequence[Sequence[int]] | None = None,
             cache: Cache | None = None, cache_size: int | None = None) -> SampleOutput:
    """Samples continuations of `prompts` (lists of token ids, one per row).

    With `cache`, the prompts are appended to it (the cache is donated: do not reuse it).
    `stop_tokens`: ids shared by all rows, or one list per row (default: EOS). Output rows are
    ordered prompt-major: row i*num_samples + j is sample j of prompt i.
    """
    if max_new_tokens < 1:
      raise ValueError(f'max_new_tokens={max_new_tokens}; expected >= 1')
    if num_samples < 1:
      raise ValueError(f'num_samples={num_samples}; expected >= 1')
    lengths = np.array([len(p) for p in prompts], np.int32)
    if len(lengths) == 0 or lengths.min() < 1:
      raise ValueError('every prompt needs at least one token (got an empty prompt or batch)')
    t = bucket_length(int(lengths.max()), self.buckets)
    tokens = np.zeros((len(prompts), t), np.int32)
    for i, p in enumerate(prompts):
      tokens[i, :len(p)] = p
    if np.any((tokens < 0) | (tokens >= self.config.vocab_size)):
      raise ValueError(f'prompt token ids must be in [0, {self.config.vocab_size})')

    if cache is None:
      size = cache_size or t + max_new_tokens
      used = 0
    else:
      if cache.batch_size != len(prompts):
        raise ValueError(f'cache has {cache.batch_size} rows but {len(prompts)} prompts given')
      size, used = cache.size, int(cache.end_index)
    if used + t + max_new_tokens > size:
      raise ValueError(
          f'prompt of {lengths.max()} tokens (bucket {t}) + max_new_tokens={max_new_tokens}'
          f'{f" after {used} cached slots" if used else ""} does not fit the KV cache of {size}'
          ' slots; pass a larger cache_size')
    stop = self._stop_array(stop_tokens, len(prompts))
    return generate(params, jnp.asarray(tokens), jnp.asarray(lengths), stop, key,
                    jnp.float32(temperature), jnp.float32(top_p), cache, config=self.config,
                    num_samples=num_samples, max_new_tokens=max_new_tokens, top_k=top_k,
                    cache_size=size)

  def _stop_array(self, stop_tokens, rows: int) -> jax.Array:
    if stop_tokens is None:
      stop_tokens = [self.eos_id]
    if len(stop_tokens) and not isinstance(stop_tokens[0], (int, np.integer)):
      per_row = [list(s) for s in stop_tokens]
      if len(per_row) != rows:
        raise ValueError(f'{len(per_row)} per-row stop lists for {rows} prompts')
    else:
      per_row = [list(stop_tokens)] * rows
    width = max(1, max(len(s) for s in per_row))
    arr = np.full((rows, width), -1, np.int32)
    for i, s in enumerate(per_row):
      arr[i, :len(s)] = s
    return jnp.asarray(arr)


def continuation(output: SampleOutput, extra: Sequence[Sequence[int]] | None = None
                 ) -> list[list[int]]:
  """Prompts that continue `output` from its cache: each row's pending last token + extra ids."""
  last = np.asarray(output.last_token).tolist()
  extra = extra or [[] for _ in last]
  return [[tok] + list(e) for tok, e in zip(last, extra)]
