"""Share of device time in collectives, per stage, on 8 simulated CPU devices (a profile).

    python experiments/collectives_profile.py --source=WORKDIR [--out=collectives.json]

(A rerun skips the stages --out already holds: each is written as it finishes.)

WORKDIR: a finished workdir of the default arith config (the README's main job). Each stage
runs in a scratch copy of the inputs it needs, shortened (train_base 8 steps, train_prm 8
steps, eval_search best-of-N and beam M=4 at budget 16 on 10 problems), under `jax.profiler`:

* train_base on `data=8` (params replicated, the gradient all-reduced) and on `data=2 x fsdp=4`
  (rules `fsdp`: params all-gathered, gradients reduce-scattered);
* train_prm (the value head on the frozen backbone) on `data=8`;
* eval_search on its 8-device `data` mesh (whole problems per device, params replicated).

Per stage: the time the devices spent in collective ops (all-reduce, all-gather, reduce-scatter,
collective-permute, all-to-all; their rendezvous waits included) over the time they spent
executing compiled programs, summed over the 8 devices. Simulated devices share the host's cores,
so this is no speed claim: it says where the compiler put communication and how much of each
step it is, on this machine.
"""

import os

os.environ.setdefault('JAX_PLATFORMS', 'cpu')
os.environ['XLA_FLAGS'] = (os.environ.get('XLA_FLAGS', '')
                           + ' --xla_force_host_platform_device_count=8')

import argparse  # noqa: E402
import collections  # noqa: E402
import glob  # noqa: E402
import json  # noqa: E402
import shutil  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402

import jax  # noqa: E402

from configs.arith import get_config  # noqa: E402
from ttc_jax.pipeline import stages  # noqa: E402

COLLECTIVES = ('all-reduce', 'all-gather', 'reduce-scatter', 'collective-permute', 'all-to-all')
EXECUTE = 'ThunkExecutor::Execute'
# (name, stage, config changes, workdir entries copied from the source)
RUNS = (
    ('train_base data=8', 'train_base', {'train.steps': 8, 'mesh.data': 8},
     ('data', 'tokenizer')),
    ('train_base data=2 x fsdp=4', 'train_base',
     {'train.steps': 8, 'mesh.data': 2, 'mesh.fsdp': 4, 'mesh.rules': 'fsdp'},
     ('data', 'tokenizer')),
    ('train_prm data=8', 'train_prm', {'train_prm.steps': 8, 'mesh.data': 8},
     ('data', 'tokenizer', 'models', 'samples', 'calibration', 'prm_data')),
    ('eval_search data=8', 'eval_search',
     {'search.methods': ('best_of_n', 'beam_m4'), 'search.budgets': (16,),
      'search.max_problems': 10},
     ('data', 'tokenizer', 'models', 'samples', 'calibration', 'prm_data')),
)


def _config(changes: dict):
  config = get_config('default')
  for key, value in changes.items():
    block, name = key.split('.')
    config[block][name] = value
  return config


def _shares(trace_dir: str) -> dict:
  """Device time in collectives / in compiled programs, from the trace's host plane."""
  path = sorted(glob.glob(os.path.join(trace_dir, '**', '*.xplane.pb'), recursive=True))[-1]
  totals = collections.Counter()
  for plane in jax.profiler.ProfileData.from_file(path).planes:
    for line in plane.lines:
      for ev in line.events:
        if ev.name.startswith(EXECUTE):
          totals['execute'] += ev.duration_ns
        elif ev.name.startswith(COLLECTIVES):
          totals[ev.name.split('.')[0]] += ev.duration_ns
  collective = sum(v for k, v in totals.items() if k != 'execute')
  return {'device_seconds': totals['execute'] / 1e9, 'collective_seconds': collective / 1e9,
          'collective_share': collective / max(totals['execute'], 1),
          'by_op_seconds': {k: v / 1e9 for k, v in sorted(totals.items()) if k != 'execute'}}


def main() -> None:
  parser = argparse.ArgumentParser()
  parser.add_argument('--source', required=True, help='a finished default arith workdir')
  parser.add_argument('--out', default='collectives.json')
  args = parser.parse_args()
  assert jax.device_count() == 8, jax.devices()
  # A rerun keeps the stages --out already holds.
  results = json.load(open(args.out)) if os.path.exists(args.out) else {}
  for name, stage, changes, inputs in RUNS:
    if name in results:
      continue
    with tempfile.TemporaryDirectory() as scratch:
      for entry in inputs:
        shutil.copytree(os.path.join(args.source, entry), os.path.join(scratch, entry),
                        ignore=shutil.ignore_patterns('large', 'revision_*', 'orm_*'))
      # The shortened stage's own output is stale against the copy: rebuild_stale remakes it.
      config = _config(changes)
      t0 = time.perf_counter()
      with jax.profiler.trace(os.path.join(scratch, 'trace')):
        stages.execute(stages.table(config)[stage], config, scratch, rebuild_stale=True)
      seconds = time.perf_counter() - t0
      results[name] = dict(_shares(os.path.join(scratch, 'trace')), wall_seconds=seconds)
    with open(args.out, 'w') as f:
      json.dump(results, f, indent=1)
    r = results[name]
    print(f'{name:28s} collectives {100 * r["collective_share"]:5.1f}% of '
          f'{r["device_seconds"]:8.1f} device-s ({r["wall_seconds"]:.0f} s wall); '
          + ', '.join(f'{k} {v:.2f} s' for k, v in r['by_op_seconds'].items()), flush=True)
  print(f'wrote {args.out}')


if __name__ == '__main__':
  main()
