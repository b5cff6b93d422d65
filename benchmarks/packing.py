"""LM train-step throughput on long multi-attempt rows: one sequence per row vs packed rows.

Same model (the arith `base` config), same examples, same jitted `trainer.train_step` with the
trainer's AdamW, side by side in one run:
  unpacked  `data.pack` + `batch_at`: one trajectory per row, the batch trimmed to its longest row
            (rounded up to 32; `batch_at` groups rows of similar length into a batch);
  packed    `data.pack_segments` + `batch_at`: trajectories packed into rows of --max_len, each
            attending only to itself;
  packed_short  the same, rows filled to --row_len only (a longer trajectory has its own row):
            what train_revision does (train_revision.pack_len).
Each packed system's batch has as many rows as give about the unpacked batch's real tokens per
step, and each system runs one pass over its rows (one epoch), so every system trains on every
trajectory once and the unpacked batch widths are all represented.
The examples are synthetic revision trajectories (only their lengths matter): an arith prompt,
then k ~ U{0..4} perturbed copies of the solution and the solution, EOS after each, char-level
ids. Every batch shape of the timed steps is compiled (and run) once before timing.

  python benchmarks/packing.py                 # ~4 minutes on 2 CPU cores
  python benchmarks/packing.py --problems 48   # smoke test
"""

from __future__ import annotations

import argparse
import datetime
import functools
import os
import platform
import random
import sys
import time

import jax
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from configs import arith as arith_config  # noqa: E402
from ttc_jax.model.transformer import PAD_ID  # noqa: E402
from ttc_jax.pipeline import common  # noqa: E402
from ttc_jax.tasks import arith  # noqa: E402
from ttc_jax.tokenizer import BOS_ID, EOS_ID, UNK_ID  # noqa: E402
from ttc_jax.training import data, objectives, trainer  # noqa: E402
from ttc_jax.workdir import atomic_write_json  # noqa: E402

VOCAB_SIZE = 23
SYSTEMS = ('unpacked', 'packed', 'packed_short')


def trajectories(num: int, seed: int) -> tuple[list[list[int]], list[list[int]]]:
  """(prompts, completions) of `num` synthetic revision trajectories, char-level ids."""
  rng = random.Random(seed)
  problems = arith.generate(num, seed=seed, num_ops_range=(1, 12))
  chars = sorted({ch for p in problems for ch in arith.prompt(p) + arith.format_solution(p.steps)})
  ids = {ch: UNK_ID + 1 + i for i, ch in enumerate(chars)}
  if len(ids) + UNK_ID + 1 > VOCAB_SIZE:
    raise ValueError(f'{len(ids)} distinct characters do not fit vocab {VOCAB_SIZE}')
  encode = lambda text: [ids[ch] for ch in text]
  prompts, completions = [], []
  for p in problems:
    solution = arith.format_solution(p.steps)
    attempts = []
    for _ in range(rng.randint(0, 4)):
      wrong = list(solution)
      at = rng.choice([i for i, ch in enumerate(wrong) if ch.isdigit()])
      wrong[at] = rng.choice('0123456789'.replace(wrong[at], ''))
      attempts.append(''.join(wrong))
    completion = []
    for text in attempts + [solution]:
      completion += encode(text) + [EOS_ID]
    prompts.append([BOS_ID] + encode(arith.prompt(p)))
    completions.append(completion)
  return prompts, completions


def main(argv: list[str] | None = None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--max_len', type=int, default=1536, help='Row length of the packings.')
  parser.add_argument('--row_len', type=int, default=512, help='How full packed_short fills a row.')
  parser.add_argument('--batch', type=int, default=16, help='Unpacked rows per step.')
  parser.add_argument('--problems', type=int, default=192)
  parser.add_argument('--seed', type=int, default=0)
  parser.add_argument('--json', default='benchmarks/results/packing_cpu.json')
  args = parser.parse_args(argv)

  prompts, completions = trajectories(args.problems, args.seed)
  lengths = np.array([len(p) + len(c) for p, c in zip(prompts, completions)])
  examples = {'unpacked': data.pack(prompts, completions, args.max_len),
              'packed': data.pack_segments(prompts, completions, args.max_len),
              'packed_short': data.pack_segments(prompts, completions, args.max_len,
                                                 row_len=args.row_len)}
  per_row = {name: (ex.tokens != PAD_ID).sum() / ex.size for name, ex in examples.items()}
  batch = {name: max(1, int(round(args.batch * per_row['unpacked'] / per_row[name])))
           for name in SYSTEMS}
  steps = {name: examples[name].size // batch[name] for name in SYSTEMS}

  config = arith_config.get_config()
  model = common.model_config(config, 'base', vocab_size=VOCAB_SIZE)
  cfg = config.train
  objective = objectives.LanguageModeling(model)
  optimizer = trainer.make_optimizer(cfg)
  step_fn = jax.jit(functools.partial(trainer.train_step, objective=objective,
                                      optimizer=optimizer), donate_argnames=('state',))
  params = objective.init(jax.random.key(args.seed))
  batches = {name: [data.batch_at(examples[name], s, batch[name], cfg.seed)
                    for s in range(steps[name])] for name in SYSTEMS}

  load_before = os.getloadavg()
  out = {}
  for name in SYSTEMS:
    state = trainer.TrainState(step=np.zeros((), np.int32), params=params,
                               opt_state=optimizer.init(params))
    state = jax.tree.map(np.array, state)  # a fresh copy: the step donates its input
    t0 = time.perf_counter()
    shapes = {}
    for b in batches[name]:
      shapes.setdefault(b.tokens.shape, b)
    for b in shapes.values():
      state, metrics = step_fn(state, b)
    jax.block_until_ready(metrics)
    warmup_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    for b in batches[name]:
      state, metrics = step_fn(state, b)
    jax.block_until_ready(metrics)
    wall = time.perf_counter() - t0
    real = sum(int((b.tokens != PAD_ID).sum()) for b in batches[name])
    slots = sum(b.tokens.size for b in batches[name])
    out[name] = {'rows_per_step': batch[name], 'rows_total': examples[name].size,
                 'shapes': sorted(shapes), 'warmup_s': warmup_s, 'wall_s': wall,
                 'steps': steps[name], 'real_tokens': real, 'slots': slots,
                 'steps_per_s': steps[name] / wall, 'real_tokens_per_s': real / wall,
                 'real_tokens_per_step': real / steps[name],
                 'padding_fraction': 1 - real / slots}
  load_after = os.getloadavg()
  ratios = {name: {k: out[name][k] / out['unpacked'][k]
                   for k in ('real_tokens_per_s', 'steps_per_s', 'real_tokens_per_step')}
            for name in SYSTEMS[1:]}

  print(f'{args.problems} trajectories, {lengths.mean():.0f} tokens mean, {lengths.max()} max; '
        f'max_len {args.max_len}, row_len {args.row_len}; one epoch each; model arith base '
        f'(d={model.embed_dim}, {model.num_layers} layers, window {model.sliding_window_size})')
  print(f'\n{"system":<13}{"rows":>7}{"widths":>12}{"real tok/step":>14}{"pad frac":>9}'
        f'{"steps/s":>9}{"real tok/s":>11}{"compile s":>10}')
  for name in SYSTEMS:
    r = out[name]
    widths = sorted({s[1] for s in r['shapes']})
    span = f'{widths[0]}' if len(widths) == 1 else f'{widths[0]}-{widths[-1]}'
    print(f'{name:<13}{r["rows_per_step"]:>7}{span:>12}{r["real_tokens_per_step"]:>14.0f}'
          f'{r["padding_fraction"]:>9.3f}{r["steps_per_s"]:>9.3f}{r["real_tokens_per_s"]:>11.0f}'
          f'{r["warmup_s"]:>10.1f}')
  for name, r in ratios.items():
    print(f'{name + "/unpacked":<32}{r["real_tokens_per_step"]:>14.2f}{"":>9}'
          f'{r["steps_per_s"]:>9.2f}{r["real_tokens_per_s"]:>11.2f}')
  print(f'load average before/after: {load_before[0]:.2f} / {load_after[0]:.2f}')

  if args.json:
    atomic_write_json(args.json, {
        'date': datetime.datetime.now().isoformat(timespec='seconds'),
        'command': ' '.join(['python', 'benchmarks/packing.py'] + list(
            sys.argv[1:] if argv is None else argv)),
        'machine': {'platform': platform.platform(), 'cpus': os.cpu_count(),
                    'device': str(jax.devices()[0]), 'jax': jax.__version__,
                    'loadavg_before': load_before, 'loadavg_after': load_after},
        'model': {'config': 'arith base', 'embed_dim': model.embed_dim,
                  'num_layers': model.num_layers, 'vocab_size': model.vocab_size,
                  'sliding_window_size': model.sliding_window_size},
        'workload': {'problems': args.problems, 'seed': args.seed, 'max_len': args.max_len,
                     'row_len': args.row_len, 'mean_tokens': float(lengths.mean()),
                     'max_tokens': int(lengths.max()),
                     'real_tokens_per_row': {k: float(v) for k, v in per_row.items()}},
        'results': out,
        'ratios_over_unpacked': ratios,
    })
    print(f'wrote {args.json}')


if __name__ == '__main__':
  main()
