"""Sampling throughput of our sampler vs the `gemma` package's and HF `generate()`, same weights.

Workload: `--batch` samples of one `--prompt_len`-token prompt, `--new_tokens` each (no early
stop), temperature 1, fp32, random `bench_gemma3_100m` params. Peers that are not installed are
skipped. Full CPU run (the peers need a venv with the bench extra):
  python benchmarks/sampling.py --json benchmarks/results/sampling_cpu.json
GPU, ours only:  python benchmarks/sampling.py --batch 256 --systems ttc_jax

`--small`: the arith `base` model (configs/arith.py, vocab padded to 64) at 64 .. 2,048 rows, 16
samples per 32-token prompt, 128 new tokens, ours only; `--baseline_rev REV` times REV's sampler
(a git worktree, in a subprocess) interleaved with this tree's and checks both draw the same tokens:
  python benchmarks/sampling.py --small --baseline_rev HEAD \
      --json benchmarks/results/sampling_small_cpu.json
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
if '--small_worker' not in sys.argv:  # a worker imports the ttc_jax its PYTHONPATH names
  sys.path.insert(1, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import _peers  # noqa: E402  pylint: disable=g-import-not-at-top

from ttc_jax.model.config import TransformerConfig, get_config  # noqa: E402
from ttc_jax.model.transformer import Transformer, count_params, init_params, param_shapes  # noqa: E402
from ttc_jax.sampling.sampler import Sampler  # noqa: E402
from ttc_jax.workdir import atomic_write_json  # noqa: E402

SYSTEMS = ('ttc_jax', 'gemma', 'transformers')
LOGIT_TOL = 1e-4  # max |logit diff| / max |logit| for a conversion to count as verified


def bench_params(config: TransformerConfig, seed: int = 0) -> dict:
  """Our init (normal(1) weights), rescaled by 1/sqrt(fan_in) so logits have std ~1 and samples
  do not collapse; norm scales set to small random values so the parity check covers them."""
  params = init_params(config, jax.random.key(seed))
  c = config
  fan_in = {'input_embedding': c.embed_dim, 'q_einsum': c.embed_dim, 'kv_einsum': c.embed_dim,
            'qkv_einsum': c.embed_dim, 'gating_einsum': c.embed_dim, 'linear': c.hidden_dim,
            'attn_vec_einsum': c.num_heads * c.head_dim}
  leaves, treedef = jax.tree.flatten_with_path(params)
  keys = jax.random.split(jax.random.key(seed + 1), len(leaves))
  out = []
  for (path, x), key in zip(leaves, keys):
    names = [p.key for p in path if p.key != 'w']
    if names[-1] == 'scale':
      out.append(0.1 * jax.random.normal(key, x.shape, x.dtype))
    else:
      out.append(x / np.sqrt(fan_in[names[-1]]).astype(x.dtype))
  return jax.tree.unflatten(treedef, out)


def flops_per_token(config: TransformerConfig, context: float) -> float:
  """2 * (non-embedding params + unembedding) + attention (QK^T and PV over `context` keys)."""
  c = config
  per_layer = (c.embed_dim * c.num_heads * c.head_dim * 2  # q, attn_vec
               + 2 * c.embed_dim * c.num_kv_heads * c.head_dim  # k, v
               + 3 * c.embed_dim * c.hidden_dim)  # gate, up, down
  matmul_params = c.num_layers * per_layer + c.vocab_size * c.embed_dim
  attention = c.num_layers * 2 * 2 * c.num_heads * c.head_dim * context
  return 2 * matmul_params + attention


def matmul_gflops(config: TransformerConfig, batch: int, repeats: int = 5) -> dict[str, float]:
  """Best-of-`repeats` fp32 jnp.dot GFLOP/s: decode-step shapes (MLP, unembedding) and square."""
  d, f, v = config.embed_dim, config.hidden_dim, config.vocab_size
  shapes = {f'{batch}x{d}x{f}': (batch, d, f), f'{batch}x{d}x{v}': (batch, d, v),
            '2048^3': (2048, 2048, 2048)}
  dot = jax.jit(jnp.dot)
  result = {}
  for name, (m, k, n) in shapes.items():
    a = jax.random.normal(jax.random.key(0), (m, k), jnp.float32)
    b = jax.random.normal(jax.random.key(1), (k, n), jnp.float32)
    dot(a, b).block_until_ready()
    inner = max(1, int(2e9 // (2 * m * k * n)))  # ~2 GFLOP per timed sample
    best = float('inf')
    for _ in range(repeats):
      t0 = time.perf_counter()
      for _ in range(inner):
        out = dot(a, b)
      out.block_until_ready()
      best = min(best, (time.perf_counter() - t0) / inner)
    result[name] = 2 * m * k * n / best / 1e9
  return result


def time_interleaved(runners: dict, repeats: int) -> dict[str, list[float]]:
  """Wall seconds of `repeats` calls of each runner(seed), after one untimed warm-up call each
  (compilation). Repeats are round-robin across systems, so load from other processes on a
  shared machine hits every system alike."""
  for name, fn in runners.items():
    print(f'  warm-up {name} ...', flush=True)
    fn(10_000)
  times = {name: [] for name in runners}
  for i in range(repeats):
    for name, fn in runners.items():
      t0 = time.perf_counter()
      fn(i)
      times[name].append(time.perf_counter() - t0)
      print(f'  repeat {i} {name}: {times[name][-1]:.2f} s', flush=True)
  return times


def check_logits(name: str, ours: np.ndarray, theirs: np.ndarray) -> float:
  rel = float(np.max(np.abs(ours - theirs)) / np.max(np.abs(ours)))
  print(f'  logits parity vs {name}: max|diff|/max|logit| = {rel:.2e}')
  if not rel < LOGIT_TOL:
    raise RuntimeError(f'{name} logits differ from ours ({rel:.2e} > {LOGIT_TOL}); '
                       'the weight conversion is wrong, not timing it')
  return rel


def machine_info() -> dict:
  cpu = platform.processor()
  try:
    with open('/proc/cpuinfo') as f:
      cpu = next((l.split(':', 1)[1].strip() for l in f if l.startswith('model name')), cpu)
  except OSError:
    pass
  return {'platform': platform.platform(), 'cpu': cpu, 'cpu_count': os.cpu_count(),
          'jax_backend': jax.default_backend(), 'jax_devices': [str(d) for d in jax.devices()],
          'jax': jax.__version__, 'python': platform.python_version()}


def build_runners(systems, config, params, prompt, *, batch, new_tokens, temperature):
  """{system: fn(seed) -> tokens [batch, new_tokens]} and each peer's logits parity with ours.

  Raises if a peer's logits differ from ours: a wrong conversion must not be timed."""
  ours_logits = np.asarray(
      Transformer(config).apply({'params': params}, jnp.asarray([prompt])).logits)
  sampler = Sampler(config)

  def run_ours(seed):
    # stop_tokens=[]: no EOS, every row samples new_tokens.
    out = sampler.sample(params, [prompt], key=jax.random.key(seed), max_new_tokens=new_tokens,
                         num_samples=batch, temperature=temperature, stop_tokens=[])
    if not np.all(np.asarray(out.num_tokens) == new_tokens):
      raise RuntimeError('ttc_jax stopped early')
    return np.asarray(out.tokens)

  runners, parity = {}, {}
  for name in systems:
    if name == 'ttc_jax':
      runners[name] = run_ours
      continue
    if why := _peers.missing_reason(name):
      print(f'  skipping {name}: {why}')
      continue
    if name == 'gemma':
      peer = _peers.GemmaSampler(config, params, batch=batch, prompt_len=len(prompt),
                                 new_tokens=new_tokens, temperature=temperature)
      theirs = _peers.gemma_logits(peer.model, params, np.asarray([prompt]))
    else:
      model = _peers.hf_model(config, params)
      theirs = _peers.hf_logits(model, np.asarray([prompt]))
      peer = _peers.HFSampler(model, batch=batch, new_tokens=new_tokens, temperature=temperature)
    parity[name] = check_logits(name, ours_logits, theirs)
    runners[name] = lambda seed, peer=peer: peer.sample(prompt, seed)
  return runners, parity


# --small: the arith `base` model (configs/arith.py `models.base`; vocab 32 padded to 64).
SMALL_ROWS = (64, 256, 1024, 2048)
SMALL_SAMPLES, SMALL_PROMPT, SMALL_NEW, SMALL_VOCAB = 16, 32, 128, 32
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def small_config() -> TransformerConfig:
  import importlib.util  # pylint: disable=g-import-not-at-top
  from ttc_jax.pipeline.common import model_config  # pylint: disable=g-import-not-at-top
  spec = importlib.util.spec_from_file_location('arith_config',
                                                os.path.join(REPO, 'configs', 'arith.py'))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return model_config(module.get_config(), 'base', SMALL_VOCAB)


def small_worker():
  """Serves timing requests on stdin ('ROWS SEED' -> JSON line) for the ttc_jax on sys.path."""
  import hashlib  # pylint: disable=g-import-not-at-top
  import ttc_jax  # pylint: disable=g-import-not-at-top
  config = small_config()
  params = bench_params(config)
  sampler = Sampler(config)
  rng = np.random.default_rng(0)
  prompts = rng.integers(3, SMALL_VOCAB, (max(SMALL_ROWS) // SMALL_SAMPLES, SMALL_PROMPT)).tolist()
  print(json.dumps({'ttc_jax': os.path.dirname(os.path.dirname(ttc_jax.__file__))}), flush=True)
  for line in sys.stdin:
    rows, seed = map(int, line.split())
    t0 = time.perf_counter()
    out = sampler.sample(params, prompts[:rows // SMALL_SAMPLES], key=jax.random.key(seed),
                         max_new_tokens=SMALL_NEW, num_samples=SMALL_SAMPLES, stop_tokens=[])
    tokens = np.asarray(out.tokens)
    seconds = time.perf_counter() - t0
    if not np.all(np.asarray(out.num_tokens) == SMALL_NEW):
      raise RuntimeError('stopped early')
    print(json.dumps({'seconds': seconds, 'tokens_sha1': hashlib.sha1(tokens.tobytes()).hexdigest()}),
          flush=True)


class _Worker:
  """A `small_worker` subprocess importing ttc_jax from `root`."""

  def __init__(self, root: str):
    env = {**os.environ, 'PYTHONPATH': root}
    self.proc = subprocess.Popen([sys.executable, os.path.abspath(__file__), '--small_worker'],
                                 cwd=root, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                 text=True)
    got = json.loads(self.proc.stdout.readline())['ttc_jax']
    if os.path.realpath(got) != os.path.realpath(root):
      raise RuntimeError(f'worker for {root} imported ttc_jax from {got}')

  def call(self, rows: int, seed: int) -> dict:
    self.proc.stdin.write(f'{rows} {seed}\n')
    self.proc.stdin.flush()
    line = self.proc.stdout.readline()
    if not line:
      raise RuntimeError(f'worker exited with {self.proc.wait()}')
    return json.loads(line)

  def close(self):
    self.proc.stdin.close()
    self.proc.wait()


def run_small(args) -> dict:
  rows_list = [int(r) for r in args.rows.split(',')]
  if bad := [r for r in rows_list if r % SMALL_SAMPLES or r > max(SMALL_ROWS)]:
    raise SystemExit(f'--rows {bad}: each must be a multiple of {SMALL_SAMPLES}, <= {max(SMALL_ROWS)}')
  config = small_config()
  load_before = os.getloadavg()
  print(f'arith base: {count_params(param_shapes(config)) / 1e6:.2f}M params, vocab '
        f'{config.vocab_size}; rows {rows_list} ({SMALL_SAMPLES} samples per {SMALL_PROMPT}-token '
        f'prompt), {SMALL_NEW} new tokens, T=1, fp32; {os.cpu_count()} cpus, load '
        f'{load_before[0]:.2f}', flush=True)
  tmp = None
  roots = {'ours': REPO}
  baseline_commit = None
  if args.baseline_rev:
    baseline_commit = subprocess.check_output(
        ['git', '-C', REPO, 'rev-parse', '--short', args.baseline_rev], text=True).strip()
    tmp = tempfile.mkdtemp(prefix='sampling_baseline_')
    subprocess.check_call(['git', '-C', REPO, 'worktree', 'add', '--detach', '-q',
                           os.path.join(tmp, 'tree'), baseline_commit])
    roots['baseline'] = os.path.join(tmp, 'tree')
  try:
    workers = {name: _Worker(root) for name, root in roots.items()}
    sha = {name: {} for name in workers}
    for rows in rows_list:  # compile every shape, untimed
      for name, w in workers.items():
        print(f'  warm-up {name} {rows} rows ...', flush=True)
        sha[name][rows] = w.call(rows, 10_000)['tokens_sha1']
    times = {name: {r: [] for r in rows_list} for name in workers}
    for i in range(args.repeats):  # round-robin: load from other processes hits both alike
      for rows in rows_list:
        for name, w in workers.items():
          times[name][rows].append(w.call(rows, i)['seconds'])
        print(f'  repeat {i} {rows} rows: ' + ', '.join(
            f'{name} {times[name][rows][-1]:.2f} s' for name in workers), flush=True)
    for w in workers.values():
      w.close()
  finally:
    if tmp:
      subprocess.call(['git', '-C', REPO, 'worktree', 'remove', '--force',
                       os.path.join(tmp, 'tree')])
      shutil.rmtree(tmp, ignore_errors=True)
  load_after = os.getloadavg()

  tps = {n: {r: r * SMALL_NEW / min(ts) for r, ts in by_rows.items()} for n, by_rows in times.items()}
  same = {r: len({sha[n][r] for n in workers}) == 1 for r in rows_list}
  print(f'\n{"rows":>6}{"ours tokens/s":>15}' + (f'{"baseline":>10}{"ratio":>8}{"same tokens":>13}'
                                                  if 'baseline' in tps else ''))
  for r in rows_list:
    line = f'{r:>6}{tps["ours"][r]:>15.0f}'
    if 'baseline' in tps:
      line += f'{tps["baseline"][r]:>10.0f}{tps["ours"][r] / tps["baseline"][r]:>8.2f}{str(same[r]):>13}'
    print(line)
  print(f'load average before/after: {load_before[0]:.2f} / {load_after[0]:.2f}')
  result = {
      'tokens_per_s': tps,
      'ratio_vs_baseline': ({r: tps['ours'][r] / tps['baseline'][r] for r in rows_list}
                            if 'baseline' in tps else None),
      'same_tokens_as_baseline': same if 'baseline' in tps else None,
      'seconds': times,
      'baseline_commit': baseline_commit,
      'config': {'name': 'arith base', **dataclasses.asdict(config),
                 'attention_types': [a.value for a in config.attention_types],
                 'num_params': count_params(param_shapes(config))},
      'workload': {'rows': rows_list, 'samples_per_prompt': SMALL_SAMPLES,
                   'prompt_len': SMALL_PROMPT, 'new_tokens': SMALL_NEW, 'temperature': 1.0,
                   'dtype': 'float32', 'repeats': args.repeats, 'tokens_per_s': 'best of repeats'},
      'machine': {**machine_info(), 'loadavg_before': load_before, 'loadavg_after': load_after},
  }
  _write(result, args.json)
  return result


def _write(result: dict, path: str | None) -> None:
  if path:
    atomic_write_json(path, result)
    print(f'wrote {path}')


def main(argv=None):
  ap = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  ap.add_argument('--config', default='bench_gemma3_100m')
  ap.add_argument('--batch', type=int, default=64)
  ap.add_argument('--prompt_len', type=int, default=64)
  ap.add_argument('--new_tokens', type=int, default=128)
  ap.add_argument('--repeats', type=int, default=3)
  ap.add_argument('--systems', default=','.join(SYSTEMS))
  ap.add_argument('--temperature', type=float, default=1.0)
  ap.add_argument('--seed', type=int, default=0)
  ap.add_argument('--json', default=None, help='write the results here')
  ap.add_argument('--small', action='store_true',
                  help='the arith base model at --rows rows (ours, and --baseline_rev)')
  ap.add_argument('--rows', default=','.join(map(str, SMALL_ROWS)))
  ap.add_argument('--baseline_rev', default=None,
                  help='with --small: also time this git revision, interleaved')
  ap.add_argument('--small_worker', action='store_true', help=argparse.SUPPRESS)
  args = ap.parse_args(argv)
  if args.small_worker:
    return small_worker()
  if args.small:
    return run_small(args)

  systems = [s for s in args.systems.split(',') if s]
  if unknown := set(systems) - set(SYSTEMS):
    ap.error(f'unknown systems {sorted(unknown)}; expected some of {SYSTEMS}')
  config = get_config(args.config)
  b, t, new = args.batch, args.prompt_len, args.new_tokens
  load_before = os.getloadavg()
  print(f'{args.config}: {count_params(param_shapes(config)) / 1e6:.1f}M params; '
        f'{b} samples x {new} new tokens of one {t}-token prompt, T={args.temperature}, fp32, '
        f'{jax.default_backend()}; {os.cpu_count()} cpus, load {load_before[0]:.2f}')

  matmul = matmul_gflops(config, b)  # before the peers load their thread pools
  params = bench_params(config, args.seed)
  prompt = np.random.default_rng(args.seed).integers(3, config.vocab_size, t).tolist()
  runners, parity = build_runners(systems, config, params, prompt, batch=b, new_tokens=new,
                                  temperature=args.temperature)
  times = time_interleaved(runners, args.repeats)
  # The machine may be shared: keep each shape's best of before and after the runs.
  after = matmul_gflops(config, b)
  matmul = {k: max(v, after[k]) for k, v in matmul.items()}
  peak = max(matmul.values())

  tokens = b * new
  tps = {name: tokens / min(ts) for name, ts in times.items()}  # best of repeats
  tps_median = {name: tokens / statistics.median(ts) for name, ts in times.items()}
  sampler_gflops = None
  if 'ttc_jax' in tps:
    sampler_gflops = tps['ttc_jax'] * flops_per_token(config, t + new / 2) / 1e9

  print(f'\n{"system":<14}{"tokens/s (best)":>17}{"median":>10}{"ours / system":>15}')
  for name in runners:
    ratio = tps['ttc_jax'] / tps[name] if 'ttc_jax' in tps else float('nan')
    print(f'{name:<14}{tps[name]:>17.1f}{tps_median[name]:>10.1f}{ratio:>15.2f}')
  print('matmul GFLOP/s (best of 5, before and after): '
        + ', '.join(f'{k} {v:.1f}' for k, v in matmul.items()))
  if sampler_gflops is not None:
    print(f'ttc_jax sampler: {sampler_gflops:.1f} GFLOP/s = {sampler_gflops / peak:.1%} of the '
          f'{peak:.1f} GFLOP/s matmul peak')
  load_after = os.getloadavg()
  print(f'load average before/after: {load_before[0]:.2f} / {load_after[0]:.2f}')

  def ratio_vs(peer):
    return tps['ttc_jax'] / tps[peer] if 'ttc_jax' in tps and peer in tps else None

  result = {
      'tokens_per_s': {name: tps.get(name) for name in SYSTEMS},
      'tokens_per_s_median': {name: tps_median.get(name) for name in SYSTEMS},
      'seconds': times,
      'ratio_vs_gemma': ratio_vs('gemma'),
      'ratio_vs_transformers': ratio_vs('transformers'),
      'matmul_gflops': peak,
      'matmul_gflops_by_shape': matmul,
      'sampler_gflops': sampler_gflops,
      'fraction_of_matmul_peak': None if sampler_gflops is None else sampler_gflops / peak,
      'flops_formula': ('tokens/s * [2*(L*(2*D*N*H + 2*D*K*H + 3*D*F) + V*D) '
                        '+ 4*L*N*H*(prompt_len + new_tokens/2)]; prefill excluded'),
      'logits_parity_rel': parity,
      'config': {'name': args.config, **dataclasses.asdict(config),
                 'attention_types': [a.value for a in config.attention_types],
                 'num_params': count_params(param_shapes(config))},
      'workload': {'batch': b, 'prompt_len': t, 'new_tokens': new, 'temperature': args.temperature,
                   'dtype': 'float32', 'repeats': args.repeats, 'tokens_per_s': 'best of repeats',
                   'seed': args.seed},
      'machine': {**machine_info(), 'loadavg_before': load_before, 'loadavg_after': load_after},
  }
  _write(result, args.json)
  return result


if __name__ == '__main__':
  main()
