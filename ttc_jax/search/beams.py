"""The row state of a step search and what moves it between rounds: a step recorded, survivors
chosen per group (`plan_sources`), rows regathered in one jitted take, a rollout rewound.

Every leaf of `Beams` is batch-leading (one row per beam, a problem's rows contiguous) except the
caches' scalar write index; see `engine` for the round these serve.
"""

from __future__ import annotations

import functools

import flax
import jax
import jax.numpy as jnp
from jax.sharding import Mesh, PartitionSpec

from ttc_jax.model.transformer import Cache
from ttc_jax.search import incremental


@flax.struct.dataclass(kw_only=True)
class Beams:
  """Every row's state; all leaves batch-leading except the caches' scalar end_index."""
  proposer: Cache
  pending: jax.Array  # [R] the last sampled token (not yet in the proposer cache)
  verifier: incremental.VerifierState
  tokens: jax.Array  # [R, L] completion so far
  length: jax.Array  # [R]
  step_scores: jax.Array  # [R, max_new_tokens] f32 sigmoid values at each step end
  num_steps: jax.Array  # [R]
  done: jax.Array  # [R] completed candidate (frozen)


@functools.partial(jax.jit, static_argnames=('max_step_tokens', 'max_new_tokens', 'eos_id',
                                             'delimiter_id'), donate_argnames=('rest',))
def record_step(rest: Beams, step_RxS: jax.Array, n_R: jax.Array, value_R: jax.Array,
                 pending: jax.Array, *, max_step_tokens: int, max_new_tokens: int, eos_id: int,
                 delimiter_id: int) -> Beams:
  """Appends each live row's new step (n_R tokens) and its score; marks ended rows completed.
  `rest` holds no caches (they stay out of this call: passed through, they would be copied)."""
  put = jax.vmap(lambda row, chunk, at: jax.lax.dynamic_update_slice(row, chunk, (at,)))
  tokens = put(rest.tokens, step_RxS.astype(rest.tokens.dtype), rest.length)
  took = n_R > 0
  last = jnp.take_along_axis(step_RxS, jnp.maximum(n_R - 1, 0)[:, None], axis=1)[:, 0]
  length = rest.length + n_R
  cut = (n_R >= max_step_tokens) & (last != delimiter_id)
  ended = took & ((last == eos_id) | (length >= max_new_tokens) | cut)
  scores = jax.vmap(lambda row, v, at: row.at[at].set(v))(
      rest.step_scores, jax.nn.sigmoid(value_R), jnp.minimum(rest.num_steps,
                                                             rest.step_scores.shape[1] - 1))
  return Beams(proposer=None, pending=pending, verifier=None, tokens=tokens, length=length,
               step_scores=jnp.where(took[:, None], scores, rest.step_scores),
               num_steps=rest.num_steps + took, done=rest.done | ended)


def plan_sources(value_R: jax.Array, done_R: jax.Array, group: int, width: int) -> jax.Array:
  """Row sources of the next round (indices into the same rows, within each group of `group`
  rows): completed rows keep themselves; the group's live rows are ranked by value (ties: lower
  row first), the top ceil(live / width) survive, and live slot f (in row order) is refilled by
  survivor (f // width) mod survivors (survivors in row order). width 1 keeps every row."""
  rows = value_R.shape[0]
  v = value_R.reshape(-1, group)
  live = ~done_R.reshape(-1, group)
  num_live = live.sum(-1, keepdims=True)
  keep = -(-num_live // width)
  order = jnp.argsort(jnp.where(live, -v, jnp.inf), axis=-1, stable=True)
  rank = jnp.argsort(order, axis=-1, stable=True)
  survivor = live & (rank < keep)
  # Survivors' row indices in row order, first.
  survivors = jnp.argsort(~survivor, axis=-1, stable=True)
  slot = jnp.cumsum(live, axis=-1) - 1
  pick = (slot // width) % jnp.maximum(keep, 1)
  local = jnp.where(live, jnp.take_along_axis(survivors, pick, axis=-1),
                    jnp.arange(group)[None, :])
  return (local + jnp.arange(rows // group)[:, None] * group).reshape(rows)


def _gather(beams: Beams, source_R: jax.Array, used: int) -> Beams:
  """Rows regathered from source_R; of the caches only the first `used` slots move (the rest
  hold nothing valid yet), written back in place."""
  take = lambda x: jnp.take(x, source_R, axis=0)

  def slots(x, axis):
    part = take(jax.lax.slice_in_dim(x, 0, used, axis=axis))
    return jax.lax.dynamic_update_slice_in_dim(x, part, 0, axis=axis)

  def cache(c: Cache) -> Cache:
    return Cache(layers=tuple(type(l)(k=slots(l.k, 3), v=slots(l.v, 2)) for l in c.layers),
                 valid=slots(c.valid, 1), positions=slots(c.positions, 1),
                 next_position=take(c.next_position), end_index=c.end_index)

  v = beams.verifier
  rest = beams.replace(proposer=None, verifier=None)
  return jax.tree.map(take, rest).replace(
      proposer=cache(beams.proposer),
      verifier=incremental.VerifierState(cache=cache(v.cache), next_logp=take(v.next_logp),
                                         min_lp=take(v.min_lp), sum_lp=take(v.sum_lp)))


def _select_local(value_R, beams: Beams, *, group: int, width: int, used: int) -> Beams:
  return _gather(beams, plan_sources(value_R, beams.done, group, width), used)


# Caches are regathered up to the next multiple of this many slots past the written ones.
GATHER_QUANTUM = 64


@functools.lru_cache(maxsize=None)
def selector(group: int, width: int, used: int, mesh: Mesh | None):
  """select(value [R], beams) -> beams regathered; with a mesh, per device (whole groups on each
  device, so ranking and take never leave it)."""
  fn = functools.partial(_select_local, group=group, width=width, used=used)
  if mesh is not None:
    rows, scalar = PartitionSpec('data'), PartitionSpec()
    spec = lambda tree: jax.tree.map(lambda x: scalar if x.ndim == 0 else rows, tree)

    def sharded(value, beams):
      return jax.shard_map(fn, mesh=mesh, in_specs=(rows, spec(beams)), out_specs=spec(beams),
                           check_vma=False)(value, beams)
    return jax.jit(sharded, donate_argnames=('beams',))
  return jax.jit(fn, donate_argnames=('beams',))


@functools.partial(jax.jit, donate_argnums=0)
def rewind(cache: Cache, end_index: jax.Array, next_position: jax.Array) -> Cache:
  """The cache as it was at end_index: later slots invalid (their contents are overwritten)."""
  return cache.replace(valid=cache.valid & (jnp.arange(cache.size)[None, :] < end_index),
                       end_index=end_index, next_position=next_position)
