"""The real Gemma 3 270M's unembedding alone: [B, 640] x [262144, 640]^T per decode step, fp32 vs
bf16 weights (bf16 x bf16 -> fp32 accumulation; as an einsum and as x @ E.T) vs bf16 weights
upcast before the dot.

  python experiments/unembed.py [--batch 16]

Random weights of the real shape; median of 10 calls after one warm-up. Shows how much of a
batch-16 decode step (benchmarks/real_model.py) is reading the 671 MB fp32 unembedding.
"""

import argparse
import time

import jax
import jax.numpy as jnp
import numpy as np

VOCAB, DIM = 262_144, 640


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--batch', type=int, default=16)
  args = parser.parse_args()
  e32 = jax.random.normal(jax.random.key(0), (VOCAB, DIM), jnp.float32)
  e16 = e32.astype(jnp.bfloat16)
  x = jax.random.normal(jax.random.key(1), (args.batch, DIM), jnp.float32)
  cases = {
      'fp32 weights': (jax.jit(lambda x, e: jnp.einsum('bd,vd->bv', x, e)), e32),
      'bf16 weights, bf16 dot, fp32 accumulate': (jax.jit(lambda x, e: jnp.einsum(
          'bd,vd->bv', x.astype(jnp.bfloat16), e, preferred_element_type=jnp.float32)), e16),
      'bf16 weights, bf16 x @ E.T, fp32 accumulate': (jax.jit(lambda x, e: jnp.dot(
          x.astype(jnp.bfloat16), e.T, preferred_element_type=jnp.float32)), e16),
      'bf16 weights upcast to fp32, then dot': (jax.jit(lambda x, e: jnp.einsum(
          'bd,vd->bv', x, e.astype(jnp.float32))), e16),
  }
  for name, (f, e) in cases.items():
    f(x, e).block_until_ready()
    times = []
    for _ in range(10):
      t0 = time.perf_counter()
      f(x, e).block_until_ready()
      times.append(time.perf_counter() - t0)
    t = float(np.median(times))
    print(f'{name:<46} {t * 1e3:7.1f} ms  {e.nbytes / t / 1e9:5.1f} GB/s of weights')


if __name__ == '__main__':
  main()
