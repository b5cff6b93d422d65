"""Where a decode step's time goes: the sampling benchmark's workload (benchmarks/sampling.py)
under jax.profiler, per kind of compiled XLA:CPU op (dot fusions, slice copies, ...).

  python experiments/profile_decode.py [--config bench_gemma3_100m --batch 64 --new_tokens 128]
  python experiments/profile_decode.py --config arith_base --batch 1024 --prompt_len 32

`--by_op` lists compiled ops one by one instead of by kind; with an XLA dump of the run
(`XLA_FLAGS=--xla_dump_to=DIR ... --by_op --hlo_dir DIR`, for diagnosis only) each op gets its
optimized HLO line (output shape, operands).

`arith_base` is the arith `base` model (configs/arith.py, vocab 32 padded to 64, as the pipeline
builds it); its rows are 16 samples of each of batch / 16 prompts, as `benchmarks/sampling.py
--small` runs it.

One warm-up call, then one profiled call of `Sampler.sample`; the trace's per-op durations are
summed by op name with the numeric suffix stripped (`ynn_fusion.137` -> `ynn_fusion`: XLA:CPU's
matmul fusions) and printed as a share of all op time. Writes the raw trace under --trace_dir.
"""

from __future__ import annotations

import argparse
import collections
import glob
import gzip
import json
import os
import re
import sys
import tempfile
import time

import jax
import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(__file__), '..'))

from ttc_jax.model import config as cfg_lib  # noqa: E402
from ttc_jax.model import transformer  # noqa: E402
from ttc_jax.sampling.sampler import Sampler  # noqa: E402

# Trace events that wrap or wait for ops rather than being one.
_WRAPPERS = ('ThunkExecutor', 'SlinkyThreadPool', 'end: ')


def _arith_base():
  import importlib.util  # pylint: disable=g-import-not-at-top
  from ttc_jax.pipeline.common import model_config  # pylint: disable=g-import-not-at-top
  path = os.path.join(os.path.dirname(__file__), '..', 'configs', 'arith.py')
  spec = importlib.util.spec_from_file_location('arith_config', path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return model_config(module.get_config(), 'base', 32)


def _hlo_shapes(hlo_dir: str) -> dict[str, str]:
  """Op name -> its optimized HLO line (shape and operands), from an XLA dump's
  *after_optimizations.txt files (the names the trace uses)."""
  out = {}
  for path in glob.glob(os.path.join(hlo_dir, '*generate*after_optimizations.txt')):
    with open(path) as f:
      for line in f:
        m = re.match(r'\s*(?:ROOT )?%?([\w.-]+) = (.*)$', line)
        if m and m.group(1) not in out:
          out[m.group(1)] = m.group(2)[:150]
  return out


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--config', default='bench_gemma3_100m')
  parser.add_argument('--batch', type=int, default=64)
  parser.add_argument('--prompt_len', type=int, default=64)
  parser.add_argument('--new_tokens', type=int, default=128)
  parser.add_argument('--top', type=int, default=8)
  parser.add_argument('--trace_dir', default=None)
  parser.add_argument('--by_op', action='store_true',
                      help='one line per compiled op (no suffix stripping), with its HLO shape '
                      'when --hlo_dir holds an XLA dump (XLA_FLAGS=--xla_dump_to=DIR)')
  parser.add_argument('--hlo_dir', default=None)
  args = parser.parse_args()
  if args.config == 'arith_base':
    config, samples = _arith_base(), 16
  else:
    config, samples = cfg_lib.get_config(args.config), args.batch
  params = transformer.init_params(config, jax.random.key(0))
  sampler = Sampler(config)
  prompts = [[2 + (i + j) % (config.vocab_size - 2) for j in range(args.prompt_len)]
             for i in range(args.batch // samples)]

  def call():
    out = sampler.sample(params, prompts, key=jax.random.key(0), max_new_tokens=args.new_tokens,
                         num_samples=samples, temperature=1.0, stop_tokens=[])
    return np.asarray(out.tokens)

  call()
  trace_dir = args.trace_dir or tempfile.mkdtemp(prefix='profile_decode_')
  t0 = time.perf_counter()
  with jax.profiler.trace(trace_dir):
    call()
  wall = time.perf_counter() - t0
  files = sorted(glob.glob(os.path.join(trace_dir, '**', '*.trace.json.gz'), recursive=True))
  if not files:
    raise RuntimeError(f'jax.profiler wrote no trace under {trace_dir}')
  with gzip.open(files[-1]) as f:
    events = json.load(f)['traceEvents']
  total, count = collections.Counter(), collections.Counter()
  for e in events:
    name = e.get('name', '')
    if e.get('ph') != 'X' or name.startswith('$') or name.startswith(_WRAPPERS):
      continue
    kind = name if args.by_op else re.sub(r'[.\d]+$', '', name)
    total[kind] += e['dur']
    count[kind] += 1
  all_ops = sum(total.values())
  steps = args.new_tokens - 1
  print(f'{args.config}: {args.batch} x {args.new_tokens} new tokens, profiled call {wall:.2f} s '
        f'(with tracing), op time {all_ops / 1e6:.2f} s, {all_ops / 1e3 / steps:.1f} ms per '
        'decode step (prefill included)')
  shapes = _hlo_shapes(args.hlo_dir) if args.hlo_dir else {}
  print(f'{"op kind":<40} {"ms":>9} {"calls":>7} {"share":>7}')
  for kind, us in total.most_common(args.top):
    print(f'{kind:<40} {us / 1e3:9.1f} {count[kind]:7d} {us / all_ops:7.1%}  {shapes.get(kind, "")}')
  print('trace:', files[-1])


if __name__ == '__main__':
  main()
