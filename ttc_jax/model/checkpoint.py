"""Load and save model parameters as orbax checkpoints (official Gemma checkpoints included).

Official Gemma orbax checkpoints nest the tree under `transformer` and sometimes use flat keys
('transformer/layer_0/attn/q_einsum'); both load into our tree unchanged (same names).
"""

from __future__ import annotations

import os

import jax
import numpy as np
import orbax.checkpoint as ocp

from ttc_jax.errors import BadInputError, MissingInputError
from ttc_jax.model import transformer
from ttc_jax.model.config import TransformerConfig


class CheckpointMismatchError(ValueError):
  pass


def _nest(tree) -> dict:
  """Splits '/'-joined keys into nested dicts and drops a leading 'transformer' level."""
  if not isinstance(tree, dict):
    return tree
  out: dict = {}
  for key, value in tree.items():
    parts = str(key).split('/')
    node = out
    for p in parts[:-1]:
      node = node.setdefault(p, {})
    node[parts[-1]] = _nest(value)
  if set(out) == {'transformer'}:
    return out['transformer']
  return out


def _leaves(tree) -> dict[str, tuple[int, ...]]:
  flat = jax.tree_util.tree_flatten_with_path(tree)[0]
  return {'/'.join(str(getattr(k, 'key', k)) for k in path): tuple(leaf.shape)
          for path, leaf in flat}


def check_tree(tree, config: TransformerConfig, where: str) -> None:
  """Raises CheckpointMismatchError naming the first path whose presence or shape differs."""
  got, want = _leaves(tree), _leaves(transformer.param_shapes(config))
  for path in sorted(set(got) | set(want)):
    if path not in got:
      raise CheckpointMismatchError(
          f'{where} does not match the model config: {path!r} is missing (config shape '
          f'{want[path]}); pick the config this checkpoint was trained with')
    if path not in want:
      raise CheckpointMismatchError(
          f'{where} does not match the model config: unexpected {path!r} with shape '
          f'{got[path]}; pick the config this checkpoint was trained with')
    if got[path] != want[path]:
      raise CheckpointMismatchError(
          f'{where} does not match the model config: {path!r} has checkpoint shape '
          f'{got[path]} but the config expects {want[path]}; pick the config this checkpoint '
          'was trained with')


def save_params(path: str, params) -> None:
  """Writes params as an orbax checkpoint (orbax writes to a temporary dir, then renames)."""
  path = os.path.abspath(path)
  with ocp.StandardCheckpointer() as ckptr:
    ckptr.save(path, params)


def load_params(path: str, config: TransformerConfig):
  """Restores params saved by `save_params` or an official Gemma orbax checkpoint."""
  path = os.path.abspath(path)
  if not os.path.isdir(path):
    raise MissingInputError(f'checkpoint directory {path} does not exist; expected an orbax '
                            'checkpoint directory')
  try:
    with ocp.PyTreeCheckpointer() as ckptr:
      metadata = ckptr.metadata(path)
      tree = metadata.item_metadata.tree if hasattr(metadata, 'item_metadata') else metadata
      check_tree(_nest(_as_dict(tree)), config, f'checkpoint {path}')
      # Restore as host numpy arrays: independent of the device topology it was saved on.
      as_numpy = jax.tree.map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), tree)
      restored = ckptr.restore(path, args=ocp.args.PyTreeRestore(restore_args=as_numpy))
  except CheckpointMismatchError:
    raise
  except Exception as e:  # orbax raises many types for truncated or foreign directories.
    raise BadInputError(f'checkpoint {path} could not be read ({type(e).__name__}: '
                     f'{str(e).splitlines()[0][:200]}); expected a complete orbax checkpoint '
                     '(re-save it, or point to another step)') from None
  return transformer.cast_params(_nest(_as_dict(restored)), config)


def _as_dict(tree):
  if hasattr(tree, 'items'):
    return {k: _as_dict(v) for k, v in tree.items()}
  return tree
