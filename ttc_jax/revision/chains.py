"""Revision chains (Snell et al. 2024, Sec. 6), batched: every chain of every problem is a row of
one sampler call per round; a chain's next attempt is conditioned on its most recent attempts.

Context format (the revision model's training rows use the same, `context_tokens`):

  prompt (BOS first, e.g. `<bos>Q: 3+4*2\n`), then each of the last <= `window` earlier attempts'
  tokens followed by ONE EOS and the prompt again without its BOS, then the new attempt:

  <bos>Q: 3+4*2\n attempt_1 <eos>Q: 3+4*2\n attempt_2 <eos>Q: 3+4*2\n new attempt

So every attempt, the new one included, starts right after the question, as a first attempt
does: the separator is EOS + the question line. An attempt's sampled EOS is its separator's
first token; one cut at max_new_tokens gets an EOS appended.

Round j samples attempt j of every chain still running (`run_chains`): round 1 prefills each
prompt once, fanned out to its chains; rounds 2..window+1 continue each row's own KV cache (the
chunk is the pending last token, an EOS when the attempt did not end with one, and the question
line); from round window+2 on the window slides, so each live row's context is prefilled into a
fresh cache.
"""

from __future__ import annotations

import dataclasses
import functools
import time
from typing import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from ttc_jax.errors import ConfigError
from ttc_jax.model.config import TransformerConfig
from ttc_jax.model.transformer import Cache
from ttc_jax.sampling import sampler
from ttc_jax.search.beams import GATHER_QUANTUM


def context_tokens(prompt: Sequence[int], attempts: Sequence[Sequence[int]], *, eos_id: int,
                   window: int = 4) -> list[int]:
  """prompt + each of the last `window` attempts closed by exactly one EOS and followed by the
  prompt again without its first (BOS) token."""
  if window < 1:
    raise ConfigError(f'revision window={window}; expected >= 1')
  out = list(prompt)
  for a in list(attempts)[-window:]:
    out += list(a[:-1] if len(a) and a[-1] == eos_id else a) + [eos_id] + list(prompt[1:])
  return out


@dataclasses.dataclass(frozen=True)
class ChainResult:
  """What `run_chains` sampled and spent. prefill_tokens: real (not padding) tokens of every chunk
  fed outside decode: prompts, each continued attempt's pending token and separator, re-prefilled
  contexts. prefills: attempts whose context was rebuilt in a fresh cache (attempt 1 is not)."""
  attempts: list[list[list[list[int]]]]  # [problem][chain][attempt] ids, EOS included if sampled
  sampled_tokens: int
  prefill_tokens: int
  prefills: int
  seconds: float


def _check(model: TransformerConfig, prompts, lengths, eos_id, max_new_tokens, window,
           rows_per_batch, temperature) -> None:
  if len(lengths) == 0:
    raise ConfigError('chain lengths are empty; expected at least one chain length >= 1')
  for c, n in enumerate(lengths):
    if n < 1:
      raise ConfigError(f'chain length {n} (chain {c}); expected every chain length >= 1')
  for name, value in (('max_new_tokens', max_new_tokens), ('window', window),
                      ('rows_per_batch', rows_per_batch)):
    if value < 1:
      raise ConfigError(f'revision chains {name}={value}; expected >= 1')
  if temperature < 0:
    raise ConfigError(f'temperature={temperature}; expected >= 0')
  if not 0 <= eos_id < model.vocab_size:
    raise ConfigError(f'eos_id={eos_id} is outside the vocabulary [0, {model.vocab_size})')
  if len(prompts) == 0:
    raise ConfigError('revision chains need at least one prompt')
  for i, p in enumerate(prompts):
    if len(p) == 0:
      raise ConfigError(f'prompt {i} is empty; expected token ids starting with BOS')
    if min(p) < 0 or max(p) >= model.vocab_size:
      raise ConfigError(f'prompt {i} has token ids outside [0, {model.vocab_size})')


def _pow2(n: int, cap: int) -> int:
  return min(cap, 1 << max(n - 1, 0).bit_length())


@functools.partial(jax.jit, static_argnames=('used',))
def _take_rows(cache: Cache, source_R: jax.Array, *, used: int) -> Cache:
  """Rows `source_R` of the cache (a new, usually smaller batch); of the slots only the first
  `used` move (the rest hold nothing valid yet) and the others are zeros (invalid)."""
  take = lambda x: jnp.take(x, source_R, axis=0)

  def slots(x, axis):
    part = take(jax.lax.slice_in_dim(x, 0, used, axis=axis))
    pad = [(0, 0)] * x.ndim
    pad[axis] = (0, x.shape[axis] - used)
    return jnp.pad(part, pad)

  return Cache(layers=tuple(type(l)(k=slots(l.k, 3), v=slots(l.v, 2)) for l in cache.layers),
               valid=slots(cache.valid, 1), positions=slots(cache.positions, 1),
               next_position=take(cache.next_position), end_index=cache.end_index)


@dataclasses.dataclass
class _Run:
  """Settings and counters of one `run_chains` call (host side)."""
  model: TransformerConfig
  params: dict
  lengths: np.ndarray  # [C]
  eos_id: int
  max_new_tokens: int
  temperature: float
  top_k: int
  top_p: float
  window: int
  reprefill: bool
  sampled: int = 0
  prefill_tokens: int = 0
  prefills: int = 0

  def generate(self, tokens: np.ndarray, lens: np.ndarray, active: np.ndarray, key: jax.Array,
               cache: Cache | None, *, num_samples: int, cache_size: int) -> sampler.SampleOutput:
    rows = tokens.shape[0]
    self.prefill_tokens += int(lens[active].sum())
    return sampler.generate(
        self.params, jnp.asarray(tokens), jnp.asarray(lens), jnp.full((rows, 1), self.eos_id,
                                                                        jnp.int32),
        key, jnp.float32(self.temperature), jnp.float32(self.top_p), cache, jnp.asarray(active),
        config=self.model, num_samples=num_samples, max_new_tokens=self.max_new_tokens,
        top_k=self.top_k, cache_size=cache_size)

  def fresh(self, contexts: list[list[int] | None], key: jax.Array, cap: int
            ) -> sampler.SampleOutput:
    """Each live row's context (None: a frozen row) prefilled into a fresh cache."""
    active = np.array([c is not None for c in contexts])
    lens = np.array([len(c) if c is not None else 1 for c in contexts], np.int32)
    buckets = tuple(b for b in sampler.DEFAULT_BUCKETS if b < cap) + (cap,)
    t = sampler.bucket_length(int(lens.max()), buckets)
    tokens = np.full((len(contexts), t), self.eos_id, np.int32)
    for r, c in enumerate(contexts):
      if c is not None:
        tokens[r, :len(c)] = c
    return self.generate(tokens, lens, active, key, None, num_samples=1,
                         cache_size=t + self.max_new_tokens)

  def batch(self, prompts: Sequence[Sequence[int]], history: list[list[list[list[int]]]],
            key: jax.Array, problems_cap: int, on_round: Callable[[int], None]) -> None:
    """All chains of these problems; attempts appended to history[problem][chain]."""
    c_count, m, window = len(self.lengths), self.max_new_tokens, self.window
    longest = int(self.lengths.max())
    n_real = len(prompts)
    n_pad = _pow2(n_real, problems_cap)
    plens = np.array([len(p) for p in prompts] + [1] * (n_pad - n_real), np.int32)
    t_p = sampler.bucket_length(int(plens.max()))
    # Rows share one write index: round 1 takes the prompt bucket and up to m - 1 decode slots,
    # each continued round a chunk (pending token, EOS, the question line) and m - 1 decode slots.
    t_c = sampler.bucket_length(1 + int(plens.max()))
    cache_size = t_p + m + min(window, longest - 1) * (t_c + m - 1)
    context_cap = t_p + window * (m + int(plens.max()))
    # rows[r]: the chain (problem * C + chain) in row r, -1 for padding.
    rows = np.array([p * c_count + c if p < n_real else -1 for p in range(n_pad)
                     for c in range(c_count)])

    def record(out: sampler.SampleOutput, active: np.ndarray) -> np.ndarray:
      tokens, num = np.asarray(out.tokens), np.asarray(out.num_tokens)
      for r in np.flatnonzero(active):
        history[rows[r] // c_count][rows[r] % c_count].append(tokens[r, :num[r]].tolist())
      self.sampled += int(num[active].sum())
      on_round(int(active.sum()))
      return np.asarray(out.last_token)

    active = rows >= 0
    key_1 = jax.random.fold_in(key, 1)
    if self.reprefill:
      out = self.fresh([list(prompts[cid // c_count]) if cid >= 0 else None for cid in rows],
                       key_1, context_cap)
    else:
      tokens = np.full((n_pad, t_p), self.eos_id, np.int32)
      for p, prompt in enumerate(prompts):
        tokens[p, :len(prompt)] = prompt
      out = self.generate(tokens, plens, np.arange(n_pad) < n_real, key_1, None,
                          num_samples=c_count, cache_size=cache_size)
    pending = record(out, active)

    for j in range(2, longest + 1):
      live = [cid for cid in rows if cid >= 0 and self.lengths[cid % c_count] >= j]
      source = None
      if _pow2(len(live), len(rows)) < len(rows):  # compact: finished rows leave the batch
        where = {cid: r for r, cid in enumerate(rows)}
        keep = _pow2(len(live), len(rows))
        source = np.array([where[cid] for cid in live] + [where[live[0]]] * (keep - len(live)))
        rows = np.array(live + [-1] * (keep - len(live)))
        pending = pending[source]
      active = (rows >= 0) & (self.lengths[rows % c_count] >= j)
      key_j = jax.random.fold_in(key, j)
      if self.reprefill or j >= window + 2:
        contexts = [context_tokens(prompts[cid // c_count], history[cid // c_count][cid % c_count],
                                   eos_id=self.eos_id, window=window) if a else None
                    for cid, a in zip(rows, active)]
        self.prefills += int(active.sum())
        out = self.fresh(contexts, key_j, context_cap)
      else:
        cache = out.cache
        if source is not None:
          used = min(cache.size, -(-int(cache.end_index) // GATHER_QUANTUM) * GATHER_QUANTUM)
          cache = _take_rows(cache, jnp.asarray(source, jnp.int32), used=used)
        # The separator: EOS (the attempt's own, when it sampled one) and the question line.
        chunk = np.full((len(rows), t_c), self.eos_id, np.int32)
        lens = np.ones(len(rows), np.int32)
        for r, cid in enumerate(rows):
          prompt = prompts[cid // c_count] if cid >= 0 else prompts[0]
          head = [int(pending[r])] + ([] if pending[r] == self.eos_id else [self.eos_id])
          seq = head + list(prompt[1:])
          chunk[r, :len(seq)], lens[r] = seq, len(seq)
        out = self.generate(chunk, lens, active, key_j, cache, num_samples=1,
                            cache_size=cache_size)
      pending = record(out, active)


def run_chains(model: TransformerConfig, params, prompts: Sequence[Sequence[int]],
               lengths: Sequence[int], key: jax.Array, *, eos_id: int, max_new_tokens: int,
               temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0, window: int = 4,
               rows_per_batch: int = 1024, reprefill: bool = False,
               progress: Callable[[int, int], None] | None = None) -> ChainResult:
  """Every problem runs len(lengths) chains; chain c makes lengths[c] attempts, each attempt
  conditioned on `context_tokens(prompt, earlier attempts, window)`.

  Problems are batched so a batch's chains (problems x chains rows) fit rows_per_batch (at least
  one problem). Finished chains' rows leave the batch when the row count's power-of-two bucket
  shrinks (their cache rows gathered; the rest padded with frozen rows). `reprefill=True`, the
  baseline, prefills every attempt's whole context into a fresh cache (same rows, same keys).
  Keys: round j of batch b uses fold_in(fold_in(key, b), j). progress(done, total) in attempts.
  """
  _check(model, prompts, lengths, eos_id, max_new_tokens, window, rows_per_batch, temperature)
  start_time = time.perf_counter()
  run = _Run(model=model, params=params, lengths=np.array(lengths, np.int64), eos_id=eos_id,
             max_new_tokens=max_new_tokens, temperature=temperature, top_k=top_k, top_p=top_p,
             window=window, reprefill=reprefill)
  problems_cap = max(1, rows_per_batch // len(lengths))
  history = [[[] for _ in lengths] for _ in prompts]
  total, done = len(prompts) * int(sum(lengths)), 0

  def on_round(n: int) -> None:
    nonlocal done
    done += n
    if progress is not None:
      progress(done, total)

  for b, start in enumerate(range(0, len(prompts), problems_cap)):
    stop = start + problems_cap
    run.batch(prompts[start:stop], history[start:stop], jax.random.fold_in(key, b), problems_cap,
              on_round)
  return ChainResult(attempts=history, sampled_tokens=run.sampled,
                     prefill_tokens=run.prefill_tokens, prefills=run.prefills,
                     seconds=time.perf_counter() - start_time)
