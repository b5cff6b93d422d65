"""Sharding of the Transformer's params and of training batches over a named device mesh.

Three layers, each a plain value a config can hold:

* Logical axes: every parameter dimension has a name ('vocab', 'embed', 'heads', 'kv_heads',
  'kv' (head_dim), 'mlp', 'stack', value-head 'head_in' / 'head_out'), looked up by the
  parameter's path (`PARAM_AXES`). `logical_axes` raises on a path with no entry, so a new
  parameter cannot be silently replicated.
* Rules: an ordered tuple of (logical axis, mesh axis | tuple of mesh axes | None) pairs;
  'batch' is the batch dimension of every training array. A logical axis without a rule is
  replicated. Presets in `RULES`.
* A mesh (`make_mesh`, Auto axis types: the compiler places the collectives; gradients are
  averaged over the data axes by XLA, with no pmap or hand-written psum).
* Activations and the KV cache name their dimensions too (`ACTIVATION_AXES`), through
  `constrain(x, axes)` calls in model/transformer.py. Inside `axis_rules(mesh, rules)` each call
  pins that array's layout by the same rules (a sharding constraint); outside one, and inside a
  shard_map, it is the identity. The mesh is part of every jit's cache key (`jax.set_mesh`),
  the rules are not: a process uses one rule set per mesh shape for a module-level jit (the
  trainer makes its step's jit afresh on every run). A constraint never changes a value.

Resolving a param's PartitionSpec walks the rules in order (earlier rules have priority) and
gives each matching dimension its mesh axes unless one of them is already used by another
dimension of that param, or the dimension's size is not divisible by the mesh axes' total size:
such a dimension is replicated instead (e.g. a single kv head under 'kv_heads' -> 'tensor', or a
tiny test model's odd vocab), and its mesh axes stay free for a later rule.
"""

from __future__ import annotations

import contextlib
import contextvars
import math
from typing import Any, Callable, Mapping, Sequence

import jax
import numpy as np
import optax
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec as P

from ttc_jax.errors import ConfigError

# Parameter path suffix -> logical axes of its dimensions (shapes as model/transformer.py makes
# them). The longest matching suffix wins.
_NORM = ('embed',)
PARAM_AXES: dict[tuple[str, ...], tuple[str | None, ...]] = {
    ('embedder', 'input_embedding'): ('vocab', 'embed'),  # [V, D]
    ('attn', 'qkv_einsum', 'w'): ('stack', 'heads', 'embed', 'kv'),  # [3, N, D, H]
    ('attn', 'q_einsum', 'w'): ('heads', 'embed', 'kv'),  # [N, D, H]
    ('attn', 'kv_einsum', 'w'): ('stack', 'kv_heads', 'embed', 'kv'),  # [2, K, D, H]
    ('attn', 'attn_vec_einsum', 'w'): ('heads', 'kv', 'embed'),  # [N, H, D]
    ('attn', '_query_norm', 'scale'): ('kv',),  # [H]
    ('attn', '_key_norm', 'scale'): ('kv',),  # [H]
    # mlp/gating_einsum: [2, F, D] or [2, D, F], see `_gating_axes`.
    ('mlp', 'linear'): ('mlp', 'embed'),  # [F, D]
    ('pre_attention_norm', 'scale'): _NORM,
    ('post_attention_norm', 'scale'): _NORM,
    ('pre_ffw_norm', 'scale'): _NORM,
    ('post_ffw_norm', 'scale'): _NORM,
    ('final_norm', 'scale'): _NORM,
    # training/objectives.py ValueHead: two Dense(1) layers over [embed_dim + 3] inputs.
    ('value_head', 'proj', 'kernel'): ('head_in', 'head_out'),
    ('value_head', 'proj', 'bias'): ('head_out',),
    ('value_head', 'final_proj', 'kernel'): ('head_in', 'head_out'),
    ('value_head', 'final_proj', 'bias'): ('head_out',),
}
_GATING = ('mlp', 'gating_einsum')
_GATING_AXES = {True: ('stack', 'mlp', 'embed'),  # transpose_gating_einsum: [2, F, D]
                False: ('stack', 'embed', 'mlp')}  # [2, D, F]

Rules = tuple[tuple[str, tuple[str, ...] | None], ...]

# The logical axes of the model's activations and KV cache (the names `constrain` is given in
# model/transformer.py), besides the parameter axes above.
ACTIVATION_AXES: dict[str, tuple[str, ...]] = {
    'residual': ('batch', 'length', 'embed'),  # [B, T, D] between blocks
    'query': ('batch', 'length', 'heads', 'kv'),  # [B, T, N, H]
    'key_value': ('batch', 'length', 'kv_heads', 'kv'),  # [B, T, K, H]
    'mlp_hidden': ('batch', 'length', 'mlp'),  # [B, T, F]
    'logits': ('batch', 'length', 'vocab'),  # [B, T, V]
    'last_logits': ('batch', 'vocab'),  # [B, V] (`logits_at_B`)
    'cache_k': ('batch', 'kv_heads', 'kv', 'cache_sequence'),  # [B, K, H, S]
    'cache_v': ('batch', 'kv_heads', 'cache_sequence', 'kv'),  # [B, K, S, H]
    'cache_slots': ('batch', 'cache_sequence'),  # [B, S] valid, positions
    'rows': ('batch',),  # [B] next_position
}

RULES: dict[str, tuple] = {
    # Everything on every device; the batch too (a mesh of one device is today's trainer).
    'replicated': (),
    # Data parallel: params replicated, the batch split over 'data'.
    'data': (('batch', 'data'),),
    # FSDP (ZeRO-3): each param's largest axis split over 'fsdp' (the embedding by vocab, the
    # MLP by hidden, attention by embed), the batch over both 'data' and 'fsdp'.
    'fsdp': (('batch', ('data', 'fsdp')), ('vocab', 'fsdp'), ('mlp', 'fsdp'), ('embed', 'fsdp')),
    # FSDP x tensor parallel: heads, kv heads, MLP hidden and vocab on 'tensor', embed on 'fsdp'.
    'fsdp_tensor': (('batch', ('data', 'fsdp')), ('vocab', 'tensor'), ('heads', 'tensor'),
                    ('kv_heads', 'tensor'), ('mlp', 'tensor'), ('embed', 'fsdp')),
}


def _path_names(path) -> tuple[str, ...]:
  names = []
  for k in path:
    for attr in ('key', 'name', 'idx'):
      if hasattr(k, attr):
        names.append(str(getattr(k, attr)))
        break
    else:
      names.append(str(k))
  return tuple(names)


def _embed_dim(params) -> int | None:
  for path, leaf in jax.tree_util.tree_leaves_with_path(params):
    if _path_names(path)[-2:] == ('embedder', 'input_embedding'):
      return leaf.shape[1]
  return None


def _gating_axes(shape, embed_dim: int | None, transposed: bool | None):
  if transposed is None:  # From the shapes: the dimension of embed_dim's size is 'embed'.
    transposed = embed_dim is not None and shape[2] == embed_dim and shape[1] != embed_dim
  return _GATING_AXES[bool(transposed)]


def logical_axes(params, config=None) -> Any:
  """The tree of `params` with each leaf replaced by its tuple of logical axis names.

  `config` (a TransformerConfig) settles gating_einsum's layout; without it, the layout is read
  from the shapes (the dimension as long as the embedding's is 'embed'). Raises ValueError on a
  param path with no entry in PARAM_AXES, or whose rank does not match its entry.
  """
  transposed = None if config is None else config.transpose_gating_einsum
  embed_dim = _embed_dim(params)

  def axes(path, leaf):
    names = _path_names(path)
    shape = tuple(leaf.shape)
    if names[-2:] == _GATING:
      out = _gating_axes(shape, embed_dim, transposed)
    else:
      matches = [k for k in PARAM_AXES if names[-len(k):] == k]
      if not matches:
        raise ValueError(
            f'no logical axes for param {"/".join(names)} {shape}: add its path to '
            'ttc_jax/parallel/sharding.py PARAM_AXES so it is sharded (not silently replicated)')
      out = PARAM_AXES[max(matches, key=len)]
    if len(out) != len(shape):
      raise ValueError(f'param {"/".join(names)} has shape {shape} but PARAM_AXES gives it '
                       f'{len(out)} axes {out}: update PARAM_AXES')
    return out

  return jax.tree_util.tree_map_with_path(axes, params)


def normalize_rules(rules) -> Rules:
  """A rules preset name, dict or sequence of pairs -> a tuple of (logical, tuple of mesh axes
  or None) pairs, in priority order."""
  if isinstance(rules, str):
    if rules not in RULES:
      raise ConfigError(f'unknown sharding rules {rules!r}; expected one of {sorted(RULES)}')
    rules = RULES[rules]
  items = rules.items() if isinstance(rules, Mapping) else rules
  out = []
  for logical, axes in items:
    if axes is None or axes == ():
      axes = None
    elif isinstance(axes, str):
      axes = (axes,)
    else:
      axes = tuple(axes)
    out.append((str(logical), axes))
  return tuple(out)


def _check_axes(mesh, rules: Rules) -> None:
  for logical, axes in rules:
    for a in axes or ():
      if a not in mesh.axis_names:
        raise ConfigError(
            f'sharding rule {logical!r} -> {a!r} names mesh axis {a!r}, but the mesh has axes '
            f'{tuple(mesh.axis_names)}: add {a!r} to the mesh shape (size 1 is fine) or use '
            'rules naming only its axes')


def make_mesh(shape: Mapping[str, int]) -> Mesh:
  """A device mesh of {axis name: size} (in that order) over all devices, Auto axis types."""
  shape = dict(shape)
  n, total = jax.device_count(), math.prod(shape.values())
  if not shape or any(int(s) < 1 for s in shape.values()) or total != n:
    raise ConfigError(
        f'mesh shape {shape} covers {total} devices but jax.device_count() is {n}: set axis '
        f'sizes whose product is {n} (e.g. {{"data": {n}}})')
  return jax.make_mesh(tuple(int(s) for s in shape.values()), tuple(shape),
                       axis_types=(AxisType.Auto,) * len(shape))


def abstract_mesh(shape: Mapping[str, int]) -> jax.sharding.AbstractMesh:
  """A mesh of that shape without devices, for planning (`param_shardings`, `per_device_bytes`)."""
  return jax.sharding.AbstractMesh(tuple(int(s) for s in shape.values()), tuple(shape),
                                   axis_types=(AxisType.Auto,) * len(shape))


def spec_for(axes: Sequence[str | None], shape: Sequence[int], mesh, rules) -> P:
  """PartitionSpec of one array with these logical axes (see the module docstring)."""
  rules = normalize_rules(rules)
  spec: list = [None] * len(shape)
  used: set[str] = set()
  for logical, mesh_axes in rules:
    if not mesh_axes or used & set(mesh_axes):
      continue
    size = math.prod(mesh.shape[a] for a in mesh_axes)
    for i, name in enumerate(axes):
      if name == logical and spec[i] is None and shape[i] % size == 0:
        spec[i] = mesh_axes[0] if len(mesh_axes) == 1 else mesh_axes
        used |= set(mesh_axes)
        break
  return P(*spec)


_ACTIVE_RULES: contextvars.ContextVar[Rules | None] = contextvars.ContextVar(
    'ttc_jax_axis_rules', default=None)


@contextlib.contextmanager
def axis_rules(mesh, rules):
  """Within this block, functions traced (jitted) lay out activations and the KV cache over
  `mesh` by `rules` (see `constrain`). The mesh becomes JAX's context mesh (`jax.set_mesh`).
  With no mesh (one device), nothing changes."""
  if mesh is None:
    yield
    return
  rules = normalize_rules(rules)
  _check_axes(mesh, rules)
  token = _ACTIVE_RULES.set(rules)
  try:
    with jax.set_mesh(mesh):
      yield
  finally:
    _ACTIVE_RULES.reset(token)


def constrain(x: jax.Array, kind: str) -> jax.Array:
  """x pinned to the layout its logical axes (`ACTIVATION_AXES[kind]`) get under the active
  `axis_rules`; x itself outside them or inside a shard_map (whose axes are manual)."""
  axes = ACTIVATION_AXES[kind]
  if len(axes) != x.ndim:
    raise ValueError(f'activation {kind!r} has shape {x.shape} but ACTIVATION_AXES gives it '
                     f'{len(axes)} axes {axes}')
  rules = _ACTIVE_RULES.get()
  mesh = jax.sharding.get_abstract_mesh()
  if rules is None or mesh.empty or mesh.manual_axes:
    return x
  return jax.lax.with_sharding_constraint(x, spec_for(axes, x.shape, mesh, rules))


def param_shardings(mesh, rules, abstract_params, config=None) -> Any:
  """Tree of NamedSharding for params (arrays or ShapeDtypeStructs) under `rules` on `mesh`."""
  rules = normalize_rules(rules)
  _check_axes(mesh, rules)
  names = logical_axes(abstract_params, config)
  return jax.tree.map(lambda x, a: NamedSharding(mesh, spec_for(a, x.shape, mesh, rules)),
                      abstract_params, names, is_leaf=lambda x: isinstance(x, tuple))


def data_axes(mesh, rules) -> tuple[str, ...]:
  """The mesh axes the batch dimension is split over (() when the batch is replicated)."""
  rules = normalize_rules(rules)
  _check_axes(mesh, rules)
  return next((axes or () for logical, axes in rules if logical == 'batch'), ())


def replicated(mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def batch_sharding(mesh, rules) -> NamedSharding:
  """Sharding of every batch array: dimension 0 over the data axes, the rest replicated."""
  axes = data_axes(mesh, rules)
  return NamedSharding(mesh, P(axes if axes else None))


def check_batch_size(mesh, rules, batch_size: int, key: str = 'train.batch_size') -> None:
  axes = data_axes(mesh, rules)
  n = math.prod(mesh.shape[a] for a in axes)
  if batch_size % n:
    sizes = ', '.join(f'{a}={mesh.shape[a]}' for a in axes)
    raise ConfigError(
        f'{key}={batch_size} is not divisible by the data axes of the mesh ({sizes}: {n} '
        f'devices): set {key} to a multiple of {n} or shrink those mesh axes')


def sharded_init(init_fn: Callable, key: jax.Array, mesh, rules, config=None) -> Any:
  """init_fn(key) created directly in its sharded layout: the shapes come from `jax.eval_shape`,
  then one jit with out_shardings builds each device's shards only (no full copy on one device).
  The values equal init_fn(key)'s: sharding never changes what a jitted function computes."""
  abstract = jax.eval_shape(init_fn, key)
  shardings = param_shardings(mesh, rules, abstract, config)
  return jax.jit(init_fn, out_shardings=shardings)(key)


def opt_state_shardings(optimizer, abstract_opt_state, params_shardings, mesh) -> Any:
  """Each copy of the param tree inside an optax state (Adam's mu, nu, ...) sharded like the
  params; everything else (step counts) replicated."""
  return optax.tree_map_params(
      optimizer, lambda _, s: s, abstract_opt_state, params_shardings,
      transform_non_params=lambda _: replicated(mesh))


def per_device_bytes(abstract_params, shardings) -> int:
  """Bytes one device holds of these arrays: the largest over devices of its shards' total.

  NamedShardings split each dimension evenly (`spec_for` only shards divisible dimensions), so
  every device holds the same shard shapes; this works on an `abstract_mesh` too.
  """
  total = 0
  for x, s in zip(jax.tree.leaves(abstract_params), jax.tree.leaves(
      shardings, is_leaf=lambda v: isinstance(v, jax.sharding.Sharding))):
    total += math.prod(s.shard_shape(tuple(x.shape))) * np.dtype(x.dtype).itemsize
  return total


def train_state_shardings(mesh, rules, optimizer, abstract_state, config=None) -> Any:
  """Shardings of a trainer TrainState (step, params, opt_state): params by `rules`, the
  optimizer's copies of them alike, the step and optimizer counters replicated."""
  params = param_shardings(mesh, rules, abstract_state.params, config)
  return abstract_state.replace(
      step=replicated(mesh), params=params,
      opt_state=opt_state_shardings(optimizer, abstract_state.opt_state, params, mesh))
