"""Pure-functional Gemma 1/2/3 decoder in Flax, with an explicit static-shape KV cache.

Parameter names and shapes follow the official Gemma checkpoints, so they load unchanged.
"""

from __future__ import annotations

import functools
import math

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp

from ttc_jax.model.config import AttentionType, TransformerConfig
from ttc_jax.parallel.sharding import constrain

K_MASK = -2.3819763e38  # Large negative logit for masked keys (the value Gemma uses).
PAD_ID = 0


@flax.struct.dataclass
class LayerCache:
  # Laid out as the attention matmuls consume them (q @ k and probs @ v, batched over B and K):
  # any other layout made XLA:CPU copy the whole cache transposed on every decode step.
  k: jax.Array  # [B, K, H, S]
  v: jax.Array  # [B, K, S, H]


@flax.struct.dataclass
class Cache:
  """KV cache shared by all layers. Every row writes at the same slot; padding slots are invalid.

  A chunk of T tokens is written at slots [end_index, end_index + T). Rows whose chunk is shorter
  leave invalid slots behind, so rows of different lengths share one write index (no scatter).
  """
  layers: tuple[LayerCache, ...]
  valid: jax.Array  # [B, S] bool: slot holds a real token.
  positions: jax.Array  # [B, S] int32: RoPE position of the token in each slot.
  next_position: jax.Array  # [B] int32: position the next real token will get.
  end_index: jax.Array  # [] int32: next slot to write.

  @property
  def size(self) -> int:
    return self.valid.shape[1]

  @property
  def batch_size(self) -> int:
    return self.valid.shape[0]


def init_cache(config: TransformerConfig, batch_size: int, cache_size: int) -> Cache:
  dtype = jnp.dtype(config.dtype)
  k_shape = (batch_size, config.num_kv_heads, config.head_dim, cache_size)
  v_shape = (batch_size, config.num_kv_heads, cache_size, config.head_dim)
  layer = lambda: LayerCache(k=jnp.zeros(k_shape, dtype), v=jnp.zeros(v_shape, dtype))
  return constrain_cache(Cache(
      layers=tuple(layer() for _ in range(config.num_layers)),
      valid=jnp.zeros((batch_size, cache_size), bool),
      positions=jnp.zeros((batch_size, cache_size), jnp.int32),
      next_position=jnp.zeros((batch_size,), jnp.int32),
      end_index=jnp.zeros((), jnp.int32)))


def constrain_cache(cache: Cache) -> Cache:
  """The cache laid out by its logical axes under the active sharding rules (parallel/sharding.py
  `axis_rules`): batch, kv_heads, kv (head_dim) and cache_sequence."""
  return Cache(
      layers=tuple(LayerCache(k=constrain(l.k, 'cache_k'), v=constrain(l.v, 'cache_v'))
                   for l in cache.layers),
      valid=constrain(cache.valid, 'cache_slots'),
      positions=constrain(cache.positions, 'cache_slots'),
      next_position=constrain(cache.next_position, 'rows'),
      end_index=cache.end_index)


@flax.struct.dataclass
class Output:
  logits: jax.Array  # [B, T, V], or [B, V] when `logits_at` is given.
  hidden: jax.Array | None  # final-norm activations, same leading shape as logits.
  cache: Cache | None


def apply_rope(x_BxTxNxH: jax.Array, positions_BxT: jax.Array, base: int,
               scale: float) -> jax.Array:
  head_dim = x_BxTxNxH.shape[-1]
  timescale = base ** ((2.0 / head_dim) * jnp.arange(head_dim // 2, dtype=jnp.float32))
  angles = positions_BxT[..., None] / timescale[None, None, :] / scale
  sin, cos = jnp.sin(angles)[..., None, :], jnp.cos(angles)[..., None, :]
  first, second = jnp.split(x_BxTxNxH, 2, axis=-1)
  out = jnp.concatenate([first * cos - second * sin, second * cos + first * sin], axis=-1)
  return out.astype(x_BxTxNxH.dtype)


def _mm(x: jax.Array, w: jax.Array, spec: str | None = None) -> jax.Array:
  """x @ w, or einsum(spec, x, w), with x rounded to w's dtype and the result in x's dtype."""
  xw = x.astype(w.dtype)
  if spec is None:
    return jnp.dot(xw, w, preferred_element_type=x.dtype)
  return jnp.einsum(spec, xw, w, preferred_element_type=x.dtype)


class RMSNorm(nn.Module):

  @nn.compact
  def __call__(self, x):
    scale = self.param('scale', nn.initializers.zeros_init(), (x.shape[-1],), x.dtype)
    var = jnp.mean(jnp.square(x), axis=-1, keepdims=True)
    normed = x * jax.lax.rsqrt(var + 1e-6)
    return normed * (1 + scale.reshape((1,) * (x.ndim - 1) + scale.shape))


class HeadsIn(nn.Module):
  """x [B, T, D] times w [*lead, D, H] -> [*lead, B, T, H] (q, kv or fused qkv projections).

  One matmul batched over the flattened leading axes of w: an einsum contracting D out of the
  middle of w made XLA:CPU copy w transposed on every decode step.
  """
  shape: tuple[int, ...]
  dtype: str = 'float32'

  @nn.compact
  def __call__(self, x_BxTxD: jax.Array) -> jax.Array:
    w = self.param('w', nn.initializers.normal(), self.shape, jnp.dtype(self.dtype))
    lead, (d, h) = self.shape[:-2], self.shape[-2:]
    m = math.prod(lead)
    x_MxBxTxD = jnp.broadcast_to(x_BxTxD, (m, *x_BxTxD.shape))
    out = _mm(x_MxBxTxD, w.reshape(m, d, h), 'MBTD,MDH->MBTH')
    return out.reshape(*lead, *out.shape[1:])


class HeadsOut(nn.Module):
  """x [B, T, N, H] times w [N, H, D] -> [B, T, D], as one [B*T, N*H] @ [N*H, D] matmul."""
  shape: tuple[int, int, int]
  dtype: str = 'float32'

  @nn.compact
  def __call__(self, x_BxTxNxH: jax.Array) -> jax.Array:
    w = self.param('w', nn.initializers.normal(), self.shape, jnp.dtype(self.dtype))
    n, h, d = self.shape
    return _mm(x_BxTxNxH.reshape(*x_BxTxNxH.shape[:-2], n * h), w.reshape(n * h, d))


class Attention(nn.Module):
  config: TransformerConfig
  attn_type: AttentionType

  @nn.compact
  def __call__(self, x_BxTxD, positions_BxT, mask, layer_cache: LayerCache | None,
               end_index: jax.Array | None):
    """mask: [B, T, S] without a cache; with one, ([B, T, S'] over the cache's first S' slots,
    [B, T, T] within the chunk), as `_cache_masks` builds them."""
    c = self.config
    n, k, h, d = c.num_heads, c.num_kv_heads, c.head_dim, c.embed_dim
    if n == k:  # Official checkpoints fuse q, k and v when there is one kv head per query head.
      q, key, value = HeadsIn((3, n, d, h), c.param_dtype, name='qkv_einsum')(x_BxTxD)
    else:
      q = HeadsIn((n, d, h), c.param_dtype, name='q_einsum')(x_BxTxD)
      key, value = HeadsIn((2, k, d, h), c.param_dtype, name='kv_einsum')(x_BxTxD)
    # [N or K, B, T, H] -> [B, T, N or K, H]
    q, key, value = (a.transpose(1, 2, 0, 3) for a in (q, key, value))
    q = constrain(q, 'query')
    key, value = constrain(key, 'key_value'), constrain(value, 'key_value')
    if c.use_qk_norm:
      q = RMSNorm(name='_query_norm')(q)
      key = RMSNorm(name='_key_norm')(key)
    local = self.attn_type == AttentionType.LOCAL_SLIDING
    base = c.local_base_frequency if local else c.global_base_frequency
    scale = c.local_scale_factor if local else c.global_scale_factor
    q = apply_rope(q, positions_BxT, base, scale) * c.query_pre_attn_scalar
    key = apply_rope(key, positions_BxT, base, scale)

    key, value = key.transpose(0, 2, 3, 1), value.transpose(0, 2, 1, 3)  # [B,K,H,T], [B,K,T,H]
    b, t = q.shape[:2]
    q_BxKxGxTxH = q.reshape(b, t, k, n // k, h).transpose(0, 2, 3, 1, 4)

    def scores(keys_BxKxHxS):
      logits = jnp.einsum('BKGTH,BKHS->BKGTS', q_BxKxGxTxH, keys_BxKxHxS)
      if c.attn_logits_soft_cap is not None:
        logits = jnp.tanh(logits / c.attn_logits_soft_cap) * c.attn_logits_soft_cap
      return logits

    if layer_cache is None:
      logits = jnp.where(mask[:, None, None], scores(key), K_MASK)
      probs = jax.nn.softmax(logits, axis=-1).astype(value.dtype)
      encoded = jnp.einsum('BKGTS,BKSH->BKGTH', probs, value)
      new_cache = None
    else:
      # The chunk attends to the cache as it was (slots below end_index) and to itself, one
      # softmax over both; only then is the chunk written. Reading the cache after the write
      # made XLA:CPU copy every cache array (or the prefix read) on every decode step.
      cache_mask, chunk_mask = mask
      seen = cache_mask.shape[-1]
      old_k, old_v = layer_cache.k, layer_cache.v
      if seen < old_k.shape[-1]:
        old_k, old_v = old_k[..., :seen], old_v[:, :, :seen]
      # One softmax over [cache slots, chunk], in two parts: a concatenation of the two cost a
      # copy and a slow odd-length reduction per layer and step.
      logits_cache = jnp.where(cache_mask[:, None, None], scores(old_k.astype(key.dtype)), K_MASK)
      logits_chunk = jnp.where(chunk_mask[:, None, None], scores(key), K_MASK)
      top = jax.lax.stop_gradient(jnp.maximum(
          jnp.max(logits_cache, axis=-1, keepdims=True, initial=K_MASK),
          jnp.max(logits_chunk, axis=-1, keepdims=True)))
      exp_cache, exp_chunk = jnp.exp(logits_cache - top), jnp.exp(logits_chunk - top)
      total = (jnp.sum(exp_cache, axis=-1, keepdims=True)
               + jnp.sum(exp_chunk, axis=-1, keepdims=True))
      probs_cache = (exp_cache / total).astype(old_v.dtype)
      probs_chunk = (exp_chunk / total).astype(value.dtype)
      encoded = (jnp.einsum('BKGTS,BKSH->BKGTH', probs_cache, old_v).astype(value.dtype)
                 + jnp.einsum('BKGTS,BKSH->BKGTH', probs_chunk, value))
      # XLA:CPU writes a cache array in place only if the write depends on the reads' result
      # (copy insertion orders ops by data dependence; optimization barriers are gone by then):
      # without this index dependence it copied every cache array twice per decode step.
      # `x > inf` is False for every x, NaN included.
      end_index = end_index + (encoded[(0,) * encoded.ndim] > jnp.inf).astype(end_index.dtype)
      new_cache = LayerCache(
          k=jax.lax.dynamic_update_slice(layer_cache.k, key.astype(layer_cache.k.dtype),
                                         (0, 0, 0, end_index)),
          v=jax.lax.dynamic_update_slice(layer_cache.v, value.astype(layer_cache.v.dtype),
                                         (0, 0, end_index, 0)))
    encoded = encoded.transpose(0, 3, 1, 2, 4).reshape(b, t, n, h)
    out = HeadsOut((n, h, d), c.param_dtype, name='attn_vec_einsum')(encoded)
    return out, new_cache


class FeedForward(nn.Module):
  config: TransformerConfig

  @nn.compact
  def __call__(self, x_BxTxD):
    c = self.config
    init, dtype = nn.initializers.normal(), jnp.dtype(c.param_dtype)
    if c.transpose_gating_einsum:
      w = self.param('gating_einsum', init, (2, c.hidden_dim, c.embed_dim), dtype)
      # x @ W^T with W viewed as [2*hidden, D]: XLA:CPU uses this layout as is, while the einsum
      # made it copy the weight transposed inside the decode loop on every step (37% of time).
      gate = _mm(x_BxTxD, w.reshape(2 * c.hidden_dim, c.embed_dim).T)
      gate = gate.reshape(*x_BxTxD.shape[:-1], 2, c.hidden_dim)
    else:
      w = self.param('gating_einsum', init, (2, c.embed_dim, c.hidden_dim), dtype)
      gate = _mm(x_BxTxD, w, '...F,NFH->...NH')
    act = constrain(nn.gelu(gate[..., 0, :]) * gate[..., 1, :], 'mlp_hidden')
    linear = self.param('linear', init, (c.hidden_dim, c.embed_dim), dtype)
    return _mm(act, linear, '...H,HF->...F')


class Block(nn.Module):
  config: TransformerConfig
  attn_type: AttentionType

  @nn.compact
  def __call__(self, x, positions, mask, layer_cache, end_index):
    c = self.config
    attn, layer_cache = Attention(c, self.attn_type, name='attn')(
        RMSNorm(name='pre_attention_norm')(x), positions, mask, layer_cache, end_index)
    if c.use_post_attn_norm:
      attn = RMSNorm(name='post_attention_norm')(attn)
    x = x + attn
    ffw = FeedForward(c, name='mlp')(RMSNorm(name='pre_ffw_norm')(x))
    if c.use_post_ffw_norm:
      ffw = RMSNorm(name='post_ffw_norm')(ffw)
    return x + ffw, layer_cache


class Embedder(nn.Module):
  config: TransformerConfig

  def setup(self):
    c = self.config
    self.input_embedding = self.param('input_embedding', nn.initializers.normal(),
                                      (c.vocab_size, c.embed_dim), jnp.dtype(c.param_dtype))

  def encode(self, tokens):
    x = self.input_embedding[(tokens,)].astype(self.config.dtype)
    return x * jnp.sqrt(self.config.embed_dim).astype(x.dtype)

  def decode(self, x):
    # As an einsum, not x @ E.T: with bf16 weights the latter ran 1.45x slower at batch 16
    # (XLA:CPU); in fp32 both forms measured the same.
    return _mm(x, self.input_embedding, '...D,VD->...V')


def _masks(valid_BxS, slot_pos_BxS, positions_BxT, start, t, window):
  """Causal-by-slot global mask and the sliding-window mask, each [B, T, S]."""
  slots = jnp.arange(valid_BxS.shape[1])
  query_slot = start + jnp.arange(t)
  causal = slots[None, :] <= query_slot[:, None]  # [T, S]
  global_mask = valid_BxS[:, None, :] & causal[None]
  if window is None:
    return global_mask, None
  near = slot_pos_BxS[:, None, :] > positions_BxT[:, :, None] - window
  return global_mask, global_mask & near


def _cache_masks(valid_BxS, slot_pos_BxS, input_mask_BxT, positions_BxT, start, window):
  """The masks of a chunk appended at slot `start`: over the cache's slots below `start` and
  causal within the chunk, each (global, sliding-window) as (cache [B, T, S], chunk [B, T, T])."""
  t = input_mask_BxT.shape[1]
  before = valid_BxS & (jnp.arange(valid_BxS.shape[1]) < start)[None, :]  # [B, S]
  causal = jnp.tril(jnp.ones((t, t), bool))
  chunk = input_mask_BxT[:, None, :] & causal[None]  # [B, T, T]
  global_mask = (before[:, None, :], chunk)
  if window is None:
    return global_mask, None
  near_cache = slot_pos_BxS[:, None, :] > positions_BxT[:, :, None] - window
  near_chunk = positions_BxT[:, None, :] > positions_BxT[:, :, None] - window
  return global_mask, (before[:, None, :] & near_cache, chunk & near_chunk)


def segment_positions(input_mask_BxT: jax.Array, segment_ids_BxT: jax.Array) -> jax.Array:
  """[B, T] int32 RoPE positions counting real tokens from 0 at each segment's first token."""
  mask = input_mask_BxT.astype(jnp.int32)
  count = jnp.cumsum(mask, axis=-1, dtype=jnp.int32)
  prev = jnp.pad(segment_ids_BxT[:, :-1], ((0, 0), (1, 0)), constant_values=-1)
  # Real tokens before each segment's first token, carried forward; `count` never decreases, so
  # the running max is the value at the latest segment start.
  before = jax.lax.cummax(jnp.where(segment_ids_BxT != prev, count - mask, 0), axis=1)
  return jnp.maximum(count - before - 1, 0)


class Transformer(nn.Module):
  """Gemma decoder. `apply(params, tokens, input_mask=..., cache=...)` -> Output."""
  config: TransformerConfig

  @nn.compact
  def __call__(self, tokens_BxT: jax.Array, input_mask_BxT: jax.Array | None = None,
               cache: Cache | None = None, logits_at_B: jax.Array | None = None,
               return_hidden: bool = False, attend_len: int | None = None,
               segment_ids_BxT: jax.Array | None = None) -> Output:
    """Runs the decoder on a chunk of tokens.

    Args:
      tokens_BxT: token ids.
      input_mask_BxT: True for real tokens (default: tokens != 0). Padding gets no slot
        visibility and does not advance positions.
      cache: when given, the chunk is appended at `cache.end_index` and attends to the cache.
      logits_at_B: when given, only the logits at this chunk index per row are computed.
      return_hidden: also return the final-norm activations (for value heads).
      attend_len: with a cache, attend only to its first `attend_len` slots (static; the caller
        guarantees `cache.end_index <= attend_len`: the chunk itself is attended to apart, as it
        is written after the reads). Default: the whole cache.
      segment_ids_BxT: packed rows, without a cache: int32, 0 for padding, 1, 2, ... for the
        contiguous sequences of a row. Each attends only within itself and has positions from 0
        (as if run alone). input_mask_BxT then defaults to segment_ids_BxT > 0.
    """
    c = self.config
    if segment_ids_BxT is not None:
      if cache is not None:
        raise ValueError('segment_ids_BxT is for packed training rows, not with a cache')
      if input_mask_BxT is None:
        input_mask_BxT = segment_ids_BxT > 0
    if input_mask_BxT is None:
      input_mask_BxT = tokens_BxT != PAD_ID
    b, t = tokens_BxT.shape
    offset = jnp.cumsum(input_mask_BxT, axis=-1, dtype=jnp.int32) - 1
    if cache is None:
      positions = jnp.maximum(offset, 0)
      if segment_ids_BxT is not None:
        positions = segment_positions(input_mask_BxT, segment_ids_BxT)
      start = None
      global_mask, local_mask = _masks(input_mask_BxT, positions, positions, 0, t,
                                       c.sliding_window_size)
      if segment_ids_BxT is not None:
        same = segment_ids_BxT[:, :, None] == segment_ids_BxT[:, None, :]  # [B, T, S]
        global_mask = global_mask & same
        local_mask = None if local_mask is None else local_mask & same
    else:
      positions = cache.next_position[:, None] + jnp.maximum(offset, 0)
      start = cache.end_index
      seen = slice(None) if attend_len is None else slice(0, attend_len)
      global_mask, local_mask = _cache_masks(cache.valid[:, seen], cache.positions[:, seen],
                                             input_mask_BxT, positions, start,
                                             c.sliding_window_size)

    embedder = Embedder(c, name='embedder')
    x = constrain(embedder.encode(tokens_BxT), 'residual')
    new_layers = []
    for i, attn_type in enumerate(c.attention_types):
      mask = local_mask if attn_type == AttentionType.LOCAL_SLIDING else global_mask
      layer_cache = None if cache is None else cache.layers[i]
      x, layer_cache = Block(c, attn_type, name=f'layer_{i}')(
          x, positions, mask, layer_cache, start)
      x = constrain(x, 'residual')
      new_layers.append(layer_cache)
    x = RMSNorm(name='final_norm')(x)

    if logits_at_B is not None:
      x = jnp.take_along_axis(x, logits_at_B[:, None, None], axis=1)[:, 0]
    logits = embedder.decode(x)
    if c.final_logit_softcap is not None:
      logits = jnp.tanh(logits / c.final_logit_softcap) * c.final_logit_softcap
    logits = constrain(logits, 'last_logits' if logits_at_B is not None else 'logits')

    new_cache = None
    if cache is not None:
      new_cache = constrain_cache(Cache(
          layers=tuple(new_layers),
          valid=jax.lax.dynamic_update_slice(cache.valid, input_mask_BxT, (0, start)),
          positions=jax.lax.dynamic_update_slice(cache.positions, positions, (0, start)),
          next_position=cache.next_position + jnp.sum(input_mask_BxT, axis=-1, dtype=jnp.int32),
          end_index=cache.end_index + t))
    return Output(logits=logits, hidden=x if return_hidden else None, cache=new_cache)


def init_params(config: TransformerConfig, key: jax.Array) -> dict:
  """Random parameters (normal(1) einsums, zero norm scales), as Gemma's own initializers."""
  return _init(key, config=config)


@functools.partial(jax.jit, static_argnames=('config',))
def _init(key: jax.Array, *, config: TransformerConfig) -> dict:
  # One compilation per config instead of one eager op per parameter shape.
  return Transformer(config).init(key, jnp.ones((1, 1), jnp.int32))['params']


def param_shapes(config: TransformerConfig) -> dict:
  """Parameter tree of ShapeDtypeStructs, computed without allocating memory."""
  return jax.eval_shape(lambda k: Transformer(config).init(k, jnp.ones((1, 1), jnp.int32))[
      'params'], jax.random.key(0))


def cast_params(params: dict, config: TransformerConfig) -> dict:
  """Each parameter in the dtype `config` declares for it (weight_dtype for matmul weights)."""
  return jax.tree.map(lambda x, s: jnp.asarray(x, s.dtype), params, param_shapes(config))


def count_params(tree) -> int:
  return sum(int(x.size) for x in jax.tree.leaves(tree))
