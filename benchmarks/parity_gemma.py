"""Logit parity of ttc_jax's Gemma 1/2/3 model with Google's `gemma` package (`gm.nn`), in fp32.

Needs gemma==3.3.0, so run it with the python of a venv with the bench extra:
  python benchmarks/parity_gemma.py --out tests/fixtures/gemma_parity.npz
It writes the fixture that tests/test_parity.py checks without gemma. The top half of this file
(configs, params, prompts) imports no gemma: the test loads it to rebuild the same inputs.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
from importlib import metadata
import json
import math

import jax
import jax.numpy as jnp
import numpy as np

from ttc_jax.model import config as cfg_lib
from ttc_jax.model import transformer as tr

SEED = 0
TOP_K = 8
NUM_POSITIONS = 6  # positions per row kept in the fixture
PROMPT_LENGTHS = (40, 29, 17)  # real tokens per row; shorter rows are right-padded with 0
INIT_STD = 0.01  # std of flax's nn.initializers.normal(), which init_params uses
NORM_SCALE_STD = 0.5
NORM_SCALE_POOL = 8192


def parity_configs() -> dict[str, cfg_lib.TransformerConfig]:
  """Fused-qkv MHA, MQA and GQA configs over the three generations; windows < prompt length.

  They share shapes where they can: eager JAX compiles each new op shape, which dominates the
  test's run time.
  """
  small = dict(vocab_size=512, embed_dim=128, hidden_dim=256, num_heads=4, head_dim=16)
  return {
      'gemma1_mha': cfg_lib.gemma1(**small, num_kv_heads=4, num_layers=2),
      'gemma1_mqa': cfg_lib.gemma1(**small, num_kv_heads=1, num_layers=2),
      # As Gemma 2 27B: query scaled by (embed_dim / num_heads)**-0.5, here != head_dim**-0.5.
      'gemma2_gqa': cfg_lib.gemma2(**small, num_kv_heads=2, num_layers=2, sliding_window_size=16,
                                   query_pre_attn_scalar=(128 // 4)**-0.5),
      # As Gemma 2 9B/27B: gating_einsum stored transposed.
      'gemma2_mha': cfg_lib.gemma2(**small, num_kv_heads=4, num_layers=2, sliding_window_size=16,
                                   transpose_gating_einsum=True),
      # As Gemma 3 4B: RoPE scale factor 8 on global layers.
      'gemma3_gqa': cfg_lib.gemma3(**small, num_kv_heads=2, num_layers=6, sliding_window_size=16,
                                   global_scale_factor=8.0),
      'gemma3_mqa': cfg_lib.gemma3(**small, num_kv_heads=1, num_layers=6, sliding_window_size=8),
  }


def config_fields(config: cfg_lib.TransformerConfig) -> dict:
  fields = dataclasses.asdict(config)
  fields['attention_types'] = [t.value for t in config.attention_types]
  return fields


def config_from_fields(fields: dict) -> cfg_lib.TransformerConfig:
  types = tuple(cfg_lib.AttentionType(t) for t in fields['attention_types'])
  return cfg_lib.TransformerConfig(**{**fields, 'attention_types': types})


def make_params(config: cfg_lib.TransformerConfig, seed: int) -> dict:
  """`init_params`, rescaled so that the logits are sensitive to every part of the model.

  Gemma's own init (normal(0.01) weights, zero norm scales) gives near-uniform attention and unit
  norm gains, under which a wrong RoPE or a norm without its `1 +` barely moves the logits. So all
  weights (embedding included) are rescaled to std 1/sqrt(embed_dim), and norm scales are drawn
  from normal(NORM_SCALE_STD), consecutive slices of one fixed-size draw (eager JAX compiles the
  sampler once per shape, at about a second each).
  """
  params = tr.init_params(config, jax.random.key(seed))
  flat, treedef = jax.tree_util.tree_flatten_with_path(params)
  pool = NORM_SCALE_STD * jax.random.normal(jax.random.fold_in(jax.random.key(seed), 1),
                                            (NORM_SCALE_POOL,), jnp.float32)
  gain = 1 / (INIT_STD * math.sqrt(config.embed_dim))
  leaves, used = [], 0
  for path, x in flat:
    if path[-1].key == 'scale':
      x, used = pool[used:used + x.size].reshape(x.shape).astype(x.dtype), used + x.size
    else:
      x = x * gain
    leaves.append(x)
  if used > NORM_SCALE_POOL:
    raise ValueError(f'{used} norm scales, more than NORM_SCALE_POOL={NORM_SCALE_POOL}')
  return jax.tree.unflatten(treedef, leaves)


def param_fingerprint(params: dict) -> tuple[list[float], str]:
  """(sum, sum of squares) in float64, tolerant to ulp changes; and a bitwise sha256."""
  leaves = [np.asarray(x) for x in jax.tree.leaves(params)]
  sums = [float(sum(x.astype(np.float64).sum() for x in leaves)),
          float(sum(np.square(x.astype(np.float64)).sum() for x in leaves))]
  sha = hashlib.sha256(b''.join(x.tobytes() for x in leaves)).hexdigest()
  return sums, sha


def make_prompts(vocab_size: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
  """Token ids in [1, vocab) (gemma treats 0 as padding), right-padded; and the [B, T] mask."""
  t = max(PROMPT_LENGTHS)
  tokens = np.asarray(jax.random.randint(jax.random.key(seed + 2), (len(PROMPT_LENGTHS), t), 1,
                                         vocab_size))
  mask = np.arange(t)[None, :] < np.asarray(PROMPT_LENGTHS)[:, None]
  return np.where(mask, tokens, 0).astype(np.int32), mask


def fixture_positions() -> np.ndarray:
  """[B, NUM_POSITIONS] positions spread over each row's real tokens, first and last included."""
  return np.stack([np.linspace(0, n - 1, NUM_POSITIONS).round().astype(np.int32)
                   for n in PROMPT_LENGTHS])


def our_logits(config: cfg_lib.TransformerConfig, params: dict, tokens: np.ndarray) -> np.ndarray:
  return np.asarray(tr.Transformer(config).apply({'params': params}, jnp.asarray(tokens)).logits)


def topk(logits_BxPxV: np.ndarray, k: int) -> np.ndarray:
  """Indices of the k largest logits, largest first."""
  return np.argsort(-logits_BxPxV, axis=-1, kind='stable')[..., :k]


# ----------------------------------------------------------------------------------------------
# The gemma side. Everything below needs the bench venv.


def _import_gm():
  import kauldron.checkpoints as kd_ckpts  # pylint: disable=g-import-not-at-top
  # gemma 3.3.0 imports a name that kauldron 1.4.2 renamed.
  if not hasattr(kd_ckpts, 'AbstractPartialLoader'):
    kd_ckpts.AbstractPartialLoader = kd_ckpts.InitTransform
  from gemma import gm  # pylint: disable=g-import-not-at-top
  return gm


def gemma_config(gm, c: cfg_lib.TransformerConfig):
  """The gm.nn config with the same architecture as ours."""
  norms = gm.nn.config.QueryPreAttentionNormalisation
  by_scalar = {
      c.head_dim**-0.5: norms.BY_ONE_OVER_SQRT_HEAD_DIM,
      (c.embed_dim // c.num_heads)**-0.5: norms.BY_ONE_OVER_SQRT_EMBED_DIM_DIV_NUM_HEADS,
      c.embed_dim // c.num_heads: norms.BY_EMBED_DIM_DIV_NUM_HEADS,
  }
  if c.query_pre_attn_scalar not in by_scalar:
    raise ValueError(f'gm.nn has no query normalisation for scalar {c.query_pre_attn_scalar}')
  types = {cfg_lib.AttentionType.GLOBAL: gm.nn.AttentionType.GLOBAL,
           cfg_lib.AttentionType.LOCAL_SLIDING: gm.nn.AttentionType.LOCAL_SLIDING}
  return gm.nn.config.TransformerConfig(
      num_embed=c.vocab_size, embed_dim=c.embed_dim, hidden_dim=c.hidden_dim,
      num_heads=c.num_heads, head_dim=c.head_dim, num_kv_heads=c.num_kv_heads,
      final_logit_softcap=c.final_logit_softcap, use_post_attn_norm=c.use_post_attn_norm,
      use_post_ffw_norm=c.use_post_ffw_norm,
      attention_types=tuple(types[t] for t in c.attention_types),
      query_pre_attn_norm=by_scalar[c.query_pre_attn_scalar],
      attn_logits_soft_cap=c.attn_logits_soft_cap, sliding_window_size=c.sliding_window_size,
      transpose_gating_einsum=c.transpose_gating_einsum, use_qk_norm=c.use_qk_norm,
      local_base_frequency=c.local_base_frequency, global_base_frequency=c.global_base_frequency,
      local_scale_factor=c.local_scale_factor, global_scale_factor=c.global_scale_factor)


def gemma_logits(gm, config, params, tokens, seed):
  """Their logits for all positions, as gm.nn runs (jitted) and op by op as we run.

  Checks that their parameter tree is ours (names, shapes, dtypes), and also returns whether
  their own init from the same key gives bitwise our `init_params`.
  """
  model = gm.nn.Transformer(config=gemma_config(gm, config), dtype=jnp.float32,
                            return_last_only=False)
  tokens = jnp.asarray(tokens)
  theirs = model.init(jax.random.key(seed), tokens)['params']
  ours = tr.init_params(config, jax.random.key(seed))
  struct = lambda tree: jax.tree.map(lambda x: (x.shape, x.dtype), tree)
  if struct(theirs) != struct(ours):
    raise AssertionError(f'parameter trees differ:\n{struct(theirs)}\n{struct(ours)}')
  same_init = all(jax.tree.leaves(jax.tree.map(lambda a, b: bool(jnp.array_equal(a, b)),
                                               theirs, ours)))
  logits = np.asarray(model.apply({'params': params}, tokens).logits)
  with jax.disable_jit():
    eager = np.asarray(model.apply({'params': params}, tokens).logits)
  return logits, eager, same_init


def compare(ours: np.ndarray, theirs: np.ndarray, mask: np.ndarray) -> dict:
  """Errors over the real (unpadded) positions."""
  o, t = ours[mask].astype(np.float64), theirs[mask].astype(np.float64)
  idx = topk(t, TOP_K)
  o_top, t_top = np.take_along_axis(o, idx, -1), np.take_along_axis(t, idx, -1)
  sorted_t = -np.sort(-t, axis=-1)[:, :TOP_K + 1]
  return {
      'max_abs_err': float(np.abs(o - t).max()),
      'max_rel_err': float(np.abs(o - t).max() / np.abs(t).max()),
      'topk_max_elementwise_rel_err': float((np.abs(o_top - t_top) / np.abs(t_top)).max()),
      'topk_indices_match': float(np.mean(np.all(topk(o, TOP_K) == idx, axis=-1))),
      'topk_min_gap': float(np.diff(-sorted_t, axis=-1).min()),  # ties would make order fragile
      'max_abs_logit': float(np.abs(t).max()),
  }


def measure(gm) -> tuple[dict, dict, dict[str, np.ndarray]]:
  """Runs both models on every config: (errors by config, fixture spec, fixture arrays)."""
  configs = parity_configs()
  vocab_size, = {c.vocab_size for c in configs.values()}  # one set of prompts for all
  tokens, mask = make_prompts(vocab_size, SEED)
  positions = fixture_positions()
  rows = np.arange(len(PROMPT_LENGTHS))[:, None]
  spec = {'seed': SEED, 'top_k': TOP_K, 'prompt_lengths': PROMPT_LENGTHS, 'configs': {},
          'param_fingerprint': {}, 'param_sha256': {}, 'jax_version': jax.__version__,
          'gemma_version': metadata.version('gemma')}
  arrays = {'tokens': tokens.astype(np.int16), 'positions': positions.astype(np.int8)}
  results = {}
  for name, config in configs.items():
    params = make_params(config, SEED)
    theirs, theirs_eager, same_init = gemma_logits(gm, config, params, tokens, SEED)
    ours = our_logits(config, params, tokens)
    at = theirs[rows, positions]  # [B, P, V]
    idx = topk(at, TOP_K)
    top = -np.sort(-at, axis=-1)[..., :TOP_K + 1]
    results[name] = {**compare(ours, theirs, mask),
                     'eager_max_abs_err': float(np.abs(ours - theirs_eager)[mask].max()),
                     'fixture_min_gap': float(np.diff(-top, axis=-1).min()),
                     'same_init_as_gemma': same_init}
    arrays[f'{name}.topk_idx'] = idx.astype(np.int16)
    arrays[f'{name}.topk_logits'] = np.take_along_axis(at, idx, -1).astype(np.float32)
    spec['configs'][name] = config_fields(config)
    spec['param_fingerprint'][name], spec['param_sha256'][name] = param_fingerprint(params)
  return results, spec, arrays


def print_table(results: dict):
  print(f'{"generation":<11}{"config":<12}{"max abs err":>12}{"max rel err":>12}'
        f'{"top-k rel":>11}{"top-k idx":>10}{"|logit|max":>11}{"eager abs":>11}')
  for name, r in results.items():
    print(f'{name.split("_")[0]:<11}{name:<12}{r["max_abs_err"]:>12.2e}{r["max_rel_err"]:>12.2e}'
          f'{r["topk_max_elementwise_rel_err"]:>11.2e}{r["topk_indices_match"]:>10.0%}'
          f'{r["max_abs_logit"]:>11.2f}{r["eager_max_abs_err"]:>11.2e}')
  print('eager abs: both models run op by op (jax.disable_jit); the other columns compare our '
        'eager run with gm.nn as shipped (jitted).')
  print('gemma init from the same key == our init_params:',
        {n: r['same_init_as_gemma'] for n, r in results.items()})
  print('min gap between consecutive top-k logits: all positions %.1e, fixture positions %.1e' % (
      min(r['topk_min_gap'] for r in results.values()),
      min(r['fixture_min_gap'] for r in results.values())))


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--out', default=None, help='fixture .npz to write (default: none)')
  parser.add_argument('--json', default=None, help='write the measured errors here')
  args = parser.parse_args()
  # CPU: fp32 matmuls there are full precision (GPUs default to TF32, TPUs to bf16 passes).
  jax.config.update('jax_platforms', 'cpu')

  results, spec, arrays = measure(_import_gm())
  print_table(results)
  if args.out:
    np.savez_compressed(args.out, spec=np.array(json.dumps(spec)), **arrays)
    print('wrote', args.out)
  if args.json:
    with open(args.json, 'w') as f:
      json.dump({'results': results, 'jax_version': spec['jax_version'],
                 'gemma_version': spec['gemma_version']}, f, indent=2)
    print('wrote', args.json)
  worst = max(r['max_rel_err'] for r in results.values())
  if worst >= 1e-4:
    raise SystemExit(f'parity FAILED: max relative error {worst:.2e} >= 1e-4')


if __name__ == '__main__':
  main()
