"""PRM-guided search (Snell et al. 2024, Sec. 5): best-of-N weighted, step-level beam search,
lookahead search and diverse verifier tree search (DVTS), for many problems at once.

A beam is a batch row; the N rows of every problem are one row axis ([P*N], a problem's rows
contiguous). A round of step search:
  (a) the sampler (`sampling.sampler.generate`, the only way tokens are made) samples one step for
      every live row, continuing from the proposer's KV cache (stop on the step delimiter / EOS);
  (b) the verifier appends only that step to its own cache and reads its value at the step end
      (`search.incremental`): a round costs the new tokens, never the prefix;
  (c) per group (a problem for beam / lookahead; a subtree of M rows for DVTS) the live rows are
      ranked by value (ties: the lower row first), the top ceil(live / M) survive, and each
      survivor refills M of the group's live slots (the budget refills from survivors, as in the
      paper); both caches and every row array are gathered by one jitted take (donated);
  (d) a row whose step ends with EOS, or that reaches max_new_tokens, or whose step reaches
      max_step_tokens without a delimiter, is a completed candidate: frozen in its slot (an
      active mask; it samples nothing and is never overwritten).
After max_rounds (or when every row is completed, or the caches are full) the rows still live are
completed as they are, and each problem's pick is the selection rule (best-of-N weighted by
default) over its N candidates. `lookahead` values each candidate step by the verifier at the
end of a k-step greedy rollout from it (the rollout is scored, then rewound: the candidate
continues from its own step). Rows of frozen and live beams alike sit in static shapes: the
round's jitted calls compile once per shape (and per chunk-width bucket of the verifier).
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from ttc_jax.errors import ConfigError
from ttc_jax.model.config import TransformerConfig
from ttc_jax.parallel import sharding
from ttc_jax.sampling import sampler
from ttc_jax.search import beams as beams_lib
from ttc_jax.search import incremental
from ttc_jax.verifiers import scoring, selection

METHODS = ('best_of_n', 'beam', 'lookahead', 'dvts')
# The verifier appends a round's step as a chunk of the round's longest step, rounded up to this.
CHUNK_QUANTUM = 4


@dataclasses.dataclass(frozen=True)
class SearchConfig:
  """One search method and its settings. `n` is the budget in the paper's unit (generations per
  problem; lookahead spends n * (lookahead + 1))."""
  method: str
  n: int
  beam_width: int = 4  # M: expansions per survivor (beam, lookahead), subtree size (dvts)
  lookahead: int = 0  # k: rollout steps (lookahead only)
  max_rounds: int = 40
  max_step_tokens: int = 48
  max_new_tokens: int = 256
  temperature: float = 1.0
  top_k: int = 0
  top_p: float = 1.0
  aggregation: str = 'last'  # candidate score from its step scores (selection.AGGREGATIONS)
  selection: str = 'weighted'  # final pick (selection.METHODS)

  def __post_init__(self):
    check(self)

  @property
  def name(self) -> str:
    """A file-name-safe label: best_of_n, beam_m4, lookahead_k1_m4, dvts_m4."""
    if self.method == 'best_of_n':
      return 'best_of_n'
    k = f'_k{self.lookahead}' if self.method == 'lookahead' else ''
    return f'{self.method}{k}_m{self.beam_width}'

  @property
  def generations(self) -> int:
    return self.n * (self.lookahead + 1 if self.method == 'lookahead' else 1)


def check(c: SearchConfig) -> None:
  """One-line errors for settings no search can run."""
  if c.method not in METHODS:
    raise ConfigError(f'unknown search method {c.method!r}; expected one of {METHODS}')
  if c.n < 1:
    raise ConfigError(f'search budget n={c.n}; expected >= 1')
  if c.method != 'best_of_n':
    if not 1 <= c.beam_width <= c.n:
      raise ConfigError(f'beam_width M={c.beam_width} with n={c.n}; expected 1 <= M <= n')
    if c.n % c.beam_width:
      raise ConfigError(f'n={c.n} is not divisible by beam_width M={c.beam_width}; pick M '
                        'dividing n (e.g. 4, or sqrt(n) for square n)')
  if c.method == 'lookahead' and c.lookahead < 1:
    raise ConfigError(f'lookahead k={c.lookahead}; expected >= 1 for method lookahead')
  for name in ('max_rounds', 'max_step_tokens', 'max_new_tokens'):
    if getattr(c, name) < 1:
      raise ConfigError(f'search {name}={getattr(c, name)}; expected >= 1')
  if c.aggregation not in selection.AGGREGATIONS:
    raise ConfigError(f'unknown aggregation {c.aggregation!r}; expected one of '
                      f'{selection.AGGREGATIONS}')
  if c.selection not in selection.METHODS:
    raise ConfigError(f'unknown selection {c.selection!r}; expected one of {selection.METHODS}')


@dataclasses.dataclass(frozen=True)
class Models:
  """The proposer LM and the verifier (a PRM: {'transformer', 'value_head'} params), sharing a
  tokenizer; `delimiter_id` closes a step, `eos_id` the answer."""
  proposer: TransformerConfig
  proposer_params: dict
  verifier: TransformerConfig
  verifier_params: dict
  delimiter_id: int
  eos_id: int

  def __post_init__(self):
    if self.proposer.vocab_size != self.verifier.vocab_size:
      raise ConfigError(
          f'verifier vocabulary {self.verifier.vocab_size} != proposer vocabulary '
          f'{self.proposer.vocab_size}; the verifier must read the proposer\'s tokens: train it '
          'with the same tokenizer')


@dataclasses.dataclass
class Result:
  """One problem's search: its N candidates, their scores and the pick."""
  completions: list[list[int]]  # token ids of each candidate (EOS included when sampled)
  step_scores: list[np.ndarray]  # the verifier's score at each step end of each candidate
  scores: np.ndarray  # [N] candidate scores (config.aggregation of step_scores)
  answers: list[str | None]
  pick: int  # index of the selected candidate; -1 if no candidate has an answer
  generations: int  # the paper's unit
  proposer_tokens: int  # tokens sampled (rollouts included)
  verifier_tokens: int  # tokens the verifier read (prompt included)
  prompt_tokens: int  # prompt tokens prefilled by the proposer
  rounds: int

  @property
  def answer(self) -> str | None:
    return None if self.pick < 0 else self.answers[self.pick]


def search(config: SearchConfig, models: Models, prompts: Sequence[Sequence[int]], key: jax.Array,
           answer_of: Callable[[list[int]], str | None], mesh: Mesh | None = None,
           batch_tokens: int = 8192, progress: Callable[[str], None] | None = None
           ) -> list[Result]:
  """Runs `config` on every prompt (token ids, BOS first) at once; one Result per prompt.

  answer_of(completion ids) -> the candidate's final answer (None if it has none); equal strings
  are equal answers. With `mesh` (a 1-D mesh, axis 'data'), rows are sharded over problems: the
  problem count is padded to a multiple of the device count, each device holds whole problems.
  """
  check(config)
  if not prompts or min(len(p) for p in prompts) < 1:
    raise ConfigError('search needs at least one prompt, each with at least one token')
  lay = _Layout(len(prompts), mesh)
  padded = list(prompts) + [prompts[-1]] * (lay.problems - len(prompts))
  # On a mesh, the KV caches and activations are laid out by their logical axes (rows on 'data').
  with sharding.axis_rules(mesh, 'data'):
    if config.method == 'best_of_n':
      results = _best_of_n(config, models, padded, key, answer_of, lay, batch_tokens)
    else:
      results = _step_search(config, models, padded, key, answer_of, lay, progress)
  return results[:len(prompts)]


@dataclasses.dataclass(frozen=True)
class _Layout:
  """Problem padding and the row sharding of a mesh (or none)."""
  real: int
  mesh: Mesh | None

  @property
  def devices(self) -> int:
    return 1 if self.mesh is None else self.mesh.devices.size

  @property
  def problems(self) -> int:
    return -(-self.real // self.devices) * self.devices

  def rows(self, tree):
    """Places batch-leading arrays sharded over the data axis (scalars replicated)."""
    if self.mesh is None:
      return tree
    rows = NamedSharding(self.mesh, PartitionSpec('data'))
    scalar = NamedSharding(self.mesh, PartitionSpec())
    return jax.tree.map(lambda x: jax.device_put(x, scalar if np.ndim(x) == 0 else rows), tree)

  def replicated(self, tree):
    if self.mesh is None:
      return tree
    return jax.device_put(tree, NamedSharding(self.mesh, PartitionSpec()))


def _stop(models: Models, rows: int) -> jax.Array:
  return jnp.tile(jnp.array([[models.delimiter_id, models.eos_id]], jnp.int32), (rows, 1))


def _prompt_array(prompts: Sequence[Sequence[int]]) -> tuple[np.ndarray, np.ndarray]:
  lengths = np.array([len(p) for p in prompts], np.int32)
  t = sampler.bucket_length(int(lengths.max()))
  tokens = np.zeros((len(prompts), t), np.int32)
  for i, p in enumerate(prompts):
    tokens[i, :len(p)] = p
  return tokens, lengths


def _best_of_n(config: SearchConfig, models: Models, prompts, key, answer_of, lay: _Layout,
               batch_tokens: int) -> list[Result]:
  """N full samples per problem in one sampler call, each scored in one pass."""
  n = config.n
  tokens, lengths = _prompt_array(prompts)
  out = sampler.generate(
      lay.replicated(models.proposer_params), *lay.rows((jnp.asarray(tokens),
                                                         jnp.asarray(lengths))),
      lay.rows(jnp.full((len(prompts), 1), models.eos_id, jnp.int32)), key,
      jnp.float32(config.temperature), jnp.float32(config.top_p), config=models.proposer,
      num_samples=n, max_new_tokens=config.max_new_tokens, top_k=config.top_k,
      cache_size=tokens.shape[1] + config.max_new_tokens)
  seqs = out.sequences()
  scorer = scoring.Scorer(models.verifier, delimiter_id=models.delimiter_id,
                          eos_id=models.eos_id, batch_tokens=batch_tokens, mesh=lay.mesh)
  flat_prompts = [list(prompts[i // n]) for i in range(len(seqs))]
  step_scores = scorer.score(models.verifier_params, flat_prompts, seqs)
  results = []
  for p, prompt in enumerate(prompts):
    rows = range(p * n, (p + 1) * n)
    results.append(_result(
        config, [seqs[r] for r in rows], [step_scores[r] for r in rows], answer_of,
        generations=n, proposer_tokens=sum(len(seqs[r]) for r in rows),
        verifier_tokens=sum(len(prompt) + len(seqs[r]) for r in rows),
        prompt_tokens=len(prompt), rounds=1))
  return results


def _result(config: SearchConfig, completions, step_scores, answer_of, **counts) -> Result:
  answers = [answer_of(c) for c in completions]
  scores = np.array([selection.aggregate(s, config.aggregation) if len(s) else 0.0
                     for s in step_scores], np.float64)
  ids = selection.answer_ids(answers)
  pick = int(selection.select_index(ids[None], scores[None], config.selection)[0])
  return Result(completions=completions, step_scores=[np.asarray(s, np.float32)
                                                      for s in step_scores],
                scores=scores, answers=answers, pick=pick, **counts)


# --- step search ------------------------------------------------------------------------------


def _append(vparams, state: incremental.VerifierState, out: sampler.SampleOutput, n_r: np.ndarray,
            config: SearchConfig, models: Models, cache_size: int):
  """The verifier reads the round's new tokens: a chunk as wide as the longest (rounded up to
  CHUNK_QUANTUM), attending to the smallest ladder rung of its cache that holds it."""
  width = _chunk_width(int(n_r.max()), config.max_step_tokens)
  rung = incremental.attend_rung(int(state.cache.end_index), width, cache_size)
  return incremental.append(vparams, state, _take_chunk(out.tokens, width=width), out.num_tokens,
                            config=models.verifier, eos_id=models.eos_id, attend_len=rung)


def _chunk_width(n_max: int, limit: int) -> int:
  return min(limit, max(CHUNK_QUANTUM, -(-n_max // CHUNK_QUANTUM) * CHUNK_QUANTUM))


@functools.partial(jax.jit, static_argnames=('width',))
def _take_chunk(tokens_RxS: jax.Array, *, width: int) -> jax.Array:
  return tokens_RxS[:, :width]


def _copy(tree):
  return jax.tree.map(jnp.copy, tree)


@dataclasses.dataclass
class _Counts:
  """Per-problem token accounting (host side)."""
  problems: int
  rows_per_problem: int

  def __post_init__(self):
    self.proposer = np.zeros(self.problems, np.int64)
    self.verifier = np.zeros(self.problems, np.int64)

  def add(self, which: str, per_row: np.ndarray) -> None:
    getattr(self, which)[:] += per_row.reshape(self.problems, -1).sum(-1)


def _step_search(config: SearchConfig, models: Models, prompts, key, answer_of, lay: _Layout,
                 progress) -> list[Result]:
  n, m = config.n, config.beam_width
  group = m if config.method == 'dvts' else n
  p_count = len(prompts)
  rows = p_count * n
  tokens, lengths = _prompt_array(prompts)
  rollout_slots = config.lookahead * config.max_step_tokens if config.method == 'lookahead' else 0
  # Rows share one write index, so a round advances both caches by its longest step; twice the
  # completion limit leaves room for the shorter steps' unused slots.
  cache_size = tokens.shape[1] + 2 * config.max_new_tokens + rollout_slots + 4 * CHUNK_QUANTUM
  pparams = lay.replicated(models.proposer_params)
  vparams = lay.replicated(models.verifier_params)
  stop = lay.rows(_stop(models, rows))
  temperature, top_p = jnp.float32(config.temperature), jnp.float32(config.top_p)
  gen = functools.partial(sampler.generate, config=models.proposer, num_samples=1,
                          max_new_tokens=config.max_step_tokens, top_k=config.top_k,
                          cache_size=cache_size)
  counts = _Counts(p_count, n)
  record = functools.partial(beams_lib.record_step, max_step_tokens=config.max_step_tokens,
                             max_new_tokens=config.max_new_tokens, eos_id=models.eos_id,
                             delimiter_id=models.delimiter_id)

  ptok, plen = lay.rows((jnp.asarray(tokens), jnp.asarray(lengths)))
  verifier = incremental.prefill(vparams['transformer'], ptok, plen, config=models.verifier,
                                 num_samples=n, cache_size=cache_size)
  # The proposer prefills each prompt but its last token, which the first round feeds like any
  # round's pending token: one compiled round serves all rounds (and the same prefill serves
  # both models when they share an architecture).
  last = tokens[np.arange(p_count), lengths - 1]
  head = np.where(np.arange(tokens.shape[1])[None, :] < (lengths - 1)[:, None], tokens, 0)
  pcache = incremental.prefill(pparams, *lay.rows((jnp.asarray(head), jnp.asarray(lengths - 1))),
                               config=models.proposer, num_samples=n, cache_size=cache_size).cache
  pending = lay.rows(jnp.asarray(np.repeat(last, n)))
  active = lay.rows(jnp.ones((rows,), bool))
  out = gen(pparams, pending[:, None], jnp.ones_like(pending), stop, jax.random.fold_in(key, 0),
            temperature, top_p, pcache, active)
  # The caches travel apart from the rest of the row state while a call that donates them runs.
  rest = beams_lib.Beams(
      proposer=None, pending=out.last_token, verifier=None,
      tokens=lay.rows(jnp.zeros((rows, config.max_new_tokens + config.max_step_tokens),
                                jnp.int32)),
      length=lay.rows(jnp.zeros((rows,), jnp.int32)),
      step_scores=lay.rows(jnp.zeros((rows, config.max_new_tokens), jnp.float32)),
      num_steps=lay.rows(jnp.zeros((rows,), jnp.int32)),
      done=lay.rows(jnp.zeros((rows,), bool)))
  counts.verifier += np.asarray(lengths, np.int64)
  rounds = 0
  for r in range(config.max_rounds):
    rounds = r + 1
    n_r = np.asarray(out.num_tokens)
    counts.add('proposer', n_r)
    counts.add('verifier', n_r)
    verifier, value = _append(vparams, verifier, out, n_r, config, models, cache_size)
    beams = record(rest, out.tokens, out.num_tokens, value, out.last_token).replace(
        proposer=out.cache, verifier=verifier)
    if config.method == 'lookahead':
      value, beams = _lookahead(config, models, beams, value, gen, pparams, vparams, stop,
                                jax.random.fold_in(key, 10_000 + r), counts)
    done = np.asarray(beams.done)
    if progress:
      progress(f'round {rounds}: {int((~done).sum())} of {rows} rows live, caches at '
               f'{int(beams.proposer.end_index)} / {int(beams.verifier.cache.end_index)} of {cache_size} slots')
    end = max(int(beams.proposer.end_index), int(beams.verifier.cache.end_index))
    if done.all() or r + 1 == config.max_rounds or (
        end + 1 + config.max_step_tokens + rollout_slots + CHUNK_QUANTUM > cache_size):
      break
    used = min(cache_size, -(-end // beams_lib.GATHER_QUANTUM) * beams_lib.GATHER_QUANTUM)
    beams = beams_lib.selector(group, m, used, lay.mesh)(value, beams)
    verifier, pcache = beams.verifier, beams.proposer
    rest = beams.replace(proposer=None, verifier=None)
    out = gen(pparams, rest.pending[:, None], jnp.ones_like(rest.length), stop,
              jax.random.fold_in(key, r + 1), temperature, top_p, pcache, ~rest.done)

  seq = np.asarray(beams.tokens)
  length = np.asarray(beams.length)
  step_scores = np.asarray(beams.step_scores)
  num_steps = np.asarray(beams.num_steps)
  results = []
  for p in range(p_count):
    idx = range(p * n, (p + 1) * n)
    results.append(_result(
        config, [seq[i, :length[i]].tolist() for i in idx],
        [step_scores[i, :num_steps[i]] for i in idx], answer_of,
        generations=config.generations, proposer_tokens=int(counts.proposer[p]),
        verifier_tokens=int(counts.verifier[p]), prompt_tokens=int(lengths[p]), rounds=rounds))
  return results


def _lookahead(config: SearchConfig, models: Models, beams: beams_lib.Beams, value, gen, pparams,
               vparams, stop, key, counts: _Counts):
  """Values each live row's new step by the verifier at the end of a k-step greedy rollout from
  it; the rollout is then rewound (caches and running state as they were after the step)."""
  live = ~beams.done
  if not bool(jnp.any(live)):
    return value, beams
  p_end, p_pos = _copy((beams.proposer.end_index, beams.proposer.next_position))
  v_end, v_pos = _copy((beams.verifier.cache.end_index, beams.verifier.cache.next_position))
  saved = (_copy(beams.pending), _copy(beams.verifier.next_logp), _copy(beams.verifier.min_lp),
           _copy(beams.verifier.sum_lp))
  cache, pending, vstate = beams.proposer, beams.pending, beams.verifier
  active = live
  for j in range(config.lookahead):
    out = gen(pparams, pending[:, None], jnp.ones_like(beams.length), stop,
              jax.random.fold_in(key, j), jnp.float32(0.0), jnp.float32(1.0), cache, active)
    n_r = np.asarray(out.num_tokens)
    counts.add('proposer', n_r)
    counts.add('verifier', n_r)
    vstate, v = _append(vparams, vstate, out, n_r, config, models, vstate.cache.size)
    value = jnp.where(out.num_tokens > 0, v, value)
    cache, pending = out.cache, out.last_token
    last = jnp.take_along_axis(out.tokens, jnp.maximum(out.num_tokens - 1, 0)[:, None], 1)[:, 0]
    active = active & (out.num_tokens > 0) & (last == models.delimiter_id)
  cache = beams_lib.rewind(cache, p_end, p_pos)
  vcache = beams_lib.rewind(vstate.cache, v_end, v_pos)
  pending, next_logp, min_lp, sum_lp = saved
  beams = beams.replace(proposer=cache, pending=pending, verifier=incremental.VerifierState(
      cache=vcache, next_logp=next_logp, min_lp=min_lp, sum_lp=sum_lp))
  return value, beams
