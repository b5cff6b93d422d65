"""Revision chains: ours (KV caches continued while the window does not slide, finished rows
compacted) vs re-prefilling every attempt's whole context into a fresh cache.

Same model (arith `base` dims; random init, or `--workdir`'s trained `models/revision_base` or
`models/base`), same prompts (arith test problems; char-level ids, or the workdir's tokenizer),
same chains, rows, keys and settings, side by side in one run:
  chains     `revision.chains.run_chains(...)`;
  reprefill  `run_chains(..., reprefill=True)`: attempt j of a chain prefills
             `context_tokens(prompt, attempts[:j], window)` into a fresh cache.
Each system runs once as a warm-up (compiles every shape), then `--repeats` timed runs,
interleaved; best and median wall time. At temperature 0 both give the same tokens
(tests/test_chains.py); at temperature 1 they share keys, so most attempts match too (reported).

  python benchmarks/revision_chains.py   # writes benchmarks/results/revision_chains_cpu.json
"""

from __future__ import annotations

import argparse
import datetime
import hashlib
import os
import platform
import statistics
import sys
import time

import jax

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from configs.arith import get_config  # noqa: E402
from ttc_jax.errors import UserError  # noqa: E402
from ttc_jax.model import transformer  # noqa: E402
from ttc_jax.pipeline import common, train_base  # noqa: E402
from ttc_jax.revision import chains  # noqa: E402
from ttc_jax.tasks import arith  # noqa: E402
from ttc_jax.workdir import atomic_write_json  # noqa: E402

SYSTEMS = ('chains', 'reprefill')
_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SOURCES = {p: hashlib.sha256(open(os.path.join(_ROOT, p), 'rb').read()).hexdigest()[:16]
           for p in ('ttc_jax/revision/chains.py', 'ttc_jax/sampling/sampler.py',
                     'ttc_jax/model/transformer.py')}
# Char-level ids without a workdir: Gemma's special ids, then the task's alphabet (vocab 23).
PAD, EOS, BOS = 0, 1, 2
CHARS = '0123456789+-*Q: \n#'
CHAR_VOCAB = 23


def char_ids(text: str) -> list[int]:
  return [BOS] + [4 + CHARS.index(ch) for ch in text]


def load(args, config):
  """(model config, params, prompts, eos id, what was loaded)."""
  if not args.workdir:
    model = common.model_config(config, 'base', vocab_size=CHAR_VOCAB)
    params = transformer.init_params(model, jax.random.key(args.seed))
    problems = arith.generate(args.problems, args.seed,
                              (config.task.num_ops_min, config.task.num_ops_max),
                              max_operand=config.task.max_operand,
                              max_value=config.task.max_value)
    return model, params, [char_ids(arith.prompt(p)) for p in problems], EOS, 'random base'
  stage = 'benchmark'
  try:
    tok = common.load_tokenizer(config, args.workdir, stage)
    problems = common.load_problems(config, args.workdir, 'test', stage)[:args.problems]
    for name in ('revision_base', 'base'):
      try:
        model, params = train_base.load_model(config, args.workdir, name, stage)
        break
      except UserError:
        if name == 'base':
          raise
  except UserError as e:
    sys.exit(f'error: {e}')
  return (model, params, [common.encode_example(tok, p)[0] for p in problems], tok.eos_id,
          f'models/{name} of {args.workdir}')


def main(argv=None):
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument('--workdir', default=None, help='load its trained models/revision_base (or '
                  'models/base), tokenizer and test problems; default: random init')
  ap.add_argument('--problems', type=int, default=16)
  ap.add_argument('--chains', type=int, nargs='+', default=[8, 4, 2, 2],
                  help='attempts of each chain of a problem')
  ap.add_argument('--window', type=int, default=4)
  ap.add_argument('--max_new_tokens', type=int, default=64)
  ap.add_argument('--temperature', type=float, default=1.0)
  ap.add_argument('--rows_per_batch', type=int, default=1024)
  ap.add_argument('--repeats', type=int, default=5, help='timed runs per system, interleaved')
  ap.add_argument('--seed', type=int, default=0)
  ap.add_argument('--json', default='benchmarks/results/revision_chains_cpu.json',
                  help="write the results here ('' for none)")
  args = ap.parse_args(argv)

  config = get_config(None)
  model, params, prompts, eos_id, source = load(args, config)
  key = jax.random.key(args.seed)
  load_before = os.getloadavg()
  print(f'{len(prompts)} problems x chains {args.chains} (window {args.window}, '
        f'max_new_tokens {args.max_new_tokens}, T={args.temperature}); {source}; '
        f'{jax.default_backend()}, {os.cpu_count()} cpus, load {load_before[0]:.2f}', flush=True)

  def run(name: str) -> chains.ChainResult:
    return chains.run_chains(model, params, prompts, args.chains, key, eos_id=eos_id,
                             max_new_tokens=args.max_new_tokens, temperature=args.temperature,
                             window=args.window, rows_per_batch=args.rows_per_batch,
                             reprefill=name == 'reprefill')

  warmup, results = {}, {}
  for name in SYSTEMS:
    t0 = time.perf_counter()
    results[name] = run(name)
    warmup[name] = time.perf_counter() - t0
    print(f'  {name}: warm-up {warmup[name]:.1f}s', flush=True)
  walls = {name: [] for name in SYSTEMS}
  cpus = {name: [] for name in SYSTEMS}
  for _ in range(args.repeats):
    for name in SYSTEMS:
      t0, c0 = time.perf_counter(), time.process_time()
      r = run(name)
      walls[name].append(time.perf_counter() - t0)
      cpus[name].append(time.process_time() - c0)
      if r.attempts != results[name].attempts:
        sys.exit(f'error: {name} gave other tokens on a rerun with the same key')

  attempts = len(prompts) * sum(args.chains)
  flat = {name: [a for pb in r.attempts for ch in pb for a in ch] for name, r in results.items()}
  same = sum(a == b for a, b in zip(flat['chains'], flat['reprefill'])) / attempts
  out = {}
  for name, r in results.items():
    best, median = min(walls[name]), statistics.median(walls[name])
    out[name] = {
        'warmup_s': warmup[name], 'wall_s': walls[name], 'cpu_s': cpus[name], 'best_s': best,
        'median_s': median, 'compile_s_estimate': max(warmup[name] - best, 0.0),
        'attempts': attempts, 'attempts_per_s': attempts / best,
        'sampled_tokens': r.sampled_tokens, 'sampled_tokens_per_s': r.sampled_tokens / best,
        'prefill_tokens': r.prefill_tokens, 'prefills': r.prefills,
        'mean_attempt_tokens': r.sampled_tokens / attempts}
  ratios = {
      'attempts_per_s_chains_over_reprefill': (out['chains']['attempts_per_s']
                                               / out['reprefill']['attempts_per_s']),
      'median_wall_reprefill_over_chains': (out['reprefill']['median_s']
                                            / out['chains']['median_s']),
      'cpu_reprefill_over_chains': min(cpus['reprefill']) / min(cpus['chains']),
      'prefill_tokens_reprefill_over_chains': (out['reprefill']['prefill_tokens']
                                               / out['chains']['prefill_tokens']),
      'identical_attempts_fraction': same}

  print(f'\n{"system":<10}{"best s":>8}{"median s":>9}{"cpu s":>7}{"compile s":>10}'
        f'{"attempts/s":>11}{"sampled tok/s":>14}{"sampled":>8}{"prefilled":>10}'
        f'{"prefills":>9}')
  for name, r in out.items():
    print(f'{name:<10}{r["best_s"]:>8.2f}{r["median_s"]:>9.2f}{min(cpus[name]):>7.1f}'
          f'{r["compile_s_estimate"]:>10.1f}{r["attempts_per_s"]:>11.1f}'
          f'{r["sampled_tokens_per_s"]:>14.0f}{r["sampled_tokens"]:>8}{r["prefill_tokens"]:>10}'
          f'{r["prefills"]:>9}')
  print(f'\nchains / reprefill: attempts/s {ratios["attempts_per_s_chains_over_reprefill"]:.2f}x'
        f' (best wall time; median {ratios["median_wall_reprefill_over_chains"]:.2f}x, CPU time '
        f'{ratios["cpu_reprefill_over_chains"]:.2f}x); prefilled tokens reprefill / chains '
        f'{ratios["prefill_tokens_reprefill_over_chains"]:.2f}x; identical attempts (same keys) '
        f'{same:.3f}')
  load_after = os.getloadavg()
  print(f'load average before/after: {load_before[0]:.2f} / {load_after[0]:.2f}')

  if args.json:
    atomic_write_json(args.json, {
        'date': datetime.datetime.now().isoformat(timespec='seconds'),
        'command': ' '.join(['python', 'benchmarks/revision_chains.py'] + list(
            sys.argv[1:] if argv is None else argv)),
        'machine': {'platform': platform.platform(), 'cpus': os.cpu_count(),
                    'device': str(jax.devices()[0]), 'jax': jax.__version__,
                    'loadavg_before': load_before, 'loadavg_after': load_after},
        'sources_sha256': SOURCES,
        'model': {'source': source, 'embed_dim': model.embed_dim, 'layers': model.num_layers,
                  'vocab_size': model.vocab_size,
                  'params': transformer.count_params(params)},
        'workload': {'problems': len(prompts), 'chains': args.chains, 'window': args.window,
                     'max_new_tokens': args.max_new_tokens, 'temperature': args.temperature,
                     'rows_per_batch': args.rows_per_batch, 'seed': args.seed,
                     'prompt_tokens': [len(p) for p in prompts],
                     'tokens': ('prefill_tokens: real tokens fed outside decode (chains: each '
                                'prompt once, pending token + EOS per continued attempt, slid '
                                'contexts; reprefill: every attempt`s context); padding not '
                                'counted')},
        'results': out, 'ratios': ratios,
    })
    print(f'wrote {args.json}')


if __name__ == '__main__':
  main()
