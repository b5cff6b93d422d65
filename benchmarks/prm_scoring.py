"""PRM scoring throughput: one pass per candidate vs re-scoring every step prefix separately.

Same model (the arith `base` config dims; random value head, backbone random or from a workdir),
same candidates (real samples of the workdir's sample stage, or gold multi-step solutions of
generated problems), same batching and length buckets; the only difference is that the
re-scoring baseline runs one forward pass per step prefix (what the open reproductions do) while
ours reads every step end from one pass. Both must give the same scores (checked).

  python benchmarks/prm_scoring.py --workdir=WORKDIR   # a workdir where the sample stage ran
"""

from __future__ import annotations

import datetime
import json
import os
import platform
import statistics
import sys
import time

import jax
import numpy as np
from absl import app, flags

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from configs.arith import get_config  # noqa: E402
from ttc_jax.pipeline import common, sample, train_base  # noqa: E402
from ttc_jax.tasks import arith  # noqa: E402
from ttc_jax.training.objectives import ValueRegression  # noqa: E402
from ttc_jax.verifiers.scoring import Scorer  # noqa: E402
from ttc_jax.verifiers.steps import step_ends  # noqa: E402

_WORKDIR = flags.DEFINE_string('workdir', 'workdir', 'Workdir with a tokenizer (and samples).')
_CANDIDATES = flags.DEFINE_enum('candidates', 'samples', ['samples', 'gold'],
                                'Real samples of the sample stage, or gold solutions.')
_NUM = flags.DEFINE_integer('num_candidates', 512, 'Candidates scored per timed call.')
_BACKBONE = flags.DEFINE_enum('backbone', 'random', ['random', 'base'],
                              'Random backbone, or the workdir`s trained base model.')
_BATCH = flags.DEFINE_integer('batch_tokens', 8192, 'Padded tokens per forward pass (both).')
_REPEATS = flags.DEFINE_integer('repeats', 3, 'Timed repeats per method, interleaved.')
_SEED = flags.DEFINE_integer('seed', 0, 'Picks the candidates and the random parameters.')
_JSON = flags.DEFINE_string('json', 'benchmarks/results/prm_scoring_cpu.json', 'Output JSON.')


def candidates(config, workdir: str, tok, num: int, seed: int
               ) -> tuple[list[list[int]], list[list[int]]]:
  rng = np.random.default_rng(seed)
  problems = {p.id: p for p in common.load_problems(config, workdir, config.sample.split,
                                                    'benchmark')}
  if _CANDIDATES.value == 'samples':
    recs = sample.load_samples(config, workdir, 'benchmark')
    pairs = [(r['id'], t) for r in recs for t in r['completions']]
  else:
    pairs = [(p.id, arith.format_solution(p.steps)) for p in problems.values()]
  picked = [pairs[i] for i in rng.choice(len(pairs), size=min(num, len(pairs)), replace=False)]
  prompts = [common.encode_example(tok, problems[i])[0] for i, _ in picked]
  return prompts, [tok.encode(t, add_eos=True) for _, t in picked]


def main(argv):
  del argv
  config = get_config()
  workdir = _WORKDIR.value
  tok = common.load_tokenizer(config, workdir, 'benchmark')
  model = common.model_config(config, 'base', tok.vocab_size)
  backbone = None
  if _BACKBONE.value == 'base':
    backbone = train_base.load_model(config, workdir, 'base', 'benchmark')[1]
  params = ValueRegression(model).init(jax.random.key(_SEED.value), backbone)
  # A random head (it starts at 0), so the warm-up equality check compares non-trivial logits.
  head = jax.tree.leaves(params['value_head'])
  keys = jax.random.split(jax.random.key(_SEED.value + 1), len(head))
  params['value_head'] = jax.tree.unflatten(jax.tree.structure(params['value_head']), [
      jax.random.normal(k, x.shape) for k, x in zip(keys, head)])
  prompts, comps = candidates(config, workdir, tok, _NUM.value, _SEED.value)
  delim = tok.id_of(arith.STEP_DELIMITER)
  scorer = Scorer(model, delimiter_id=delim, eos_id=tok.eos_id, batch_tokens=_BATCH.value)
  steps = [len(step_ends(c, delim, tok.eos_id)) for c in comps]
  tokens = [len(p) + len(c) for p, c in zip(prompts, comps)]
  prefix_tokens = sum(len(p) + e + 1 for p, c in zip(prompts, comps)
                      for e in step_ends(c, delim, tok.eos_id))
  systems = {'one_pass': scorer.step_logits, 'per_prefix': scorer.step_logits_per_prefix}

  # Warm-up compiles every (batch, length) bucket either method uses and checks equality.
  outs = {name: fn(params, prompts, comps) for name, fn in systems.items()}
  max_diff = max(float(np.abs(a - b).max()) for a, b in zip(outs['one_pass'], outs['per_prefix']))
  times = {name: [] for name in systems}
  for _ in range(_REPEATS.value):
    for name, fn in systems.items():
      t0 = time.perf_counter()
      fn(params, prompts, comps)
      times[name].append(time.perf_counter() - t0)
  n = len(comps)
  rate = {name: n / min(ts) for name, ts in times.items()}
  ratio = rate['one_pass'] / rate['per_prefix']
  result = {
      'date': datetime.datetime.now().isoformat(timespec='seconds'),
      'machine': {'platform': platform.platform(), 'cpus': os.cpu_count(),
                  'device': str(jax.devices()[0]), 'jax': jax.__version__,
                  'loadavg_after': os.getloadavg()},
      'model': {'config': 'arith base', 'embed_dim': model.embed_dim,
                'num_layers': model.num_layers, 'backbone': _BACKBONE.value},
      'workload': {'candidates': _CANDIDATES.value, 'num_candidates': n,
                   'mean_steps': float(np.mean(steps)), 'max_steps': int(max(steps)),
                   'tokens_one_pass': int(sum(tokens)), 'tokens_per_prefix': int(prefix_tokens),
                   'batch_tokens': _BATCH.value, 'buckets': list(scorer.buckets)},
      'seconds': times,
      'candidates_per_s': {k: {'best': v, 'median': n / statistics.median(times[k])}
                           for k, v in rate.items()},
      'ratio_one_pass_over_per_prefix': ratio,
      'max_abs_logit_diff': max_diff,
  }
  print(f'{n} candidates, {np.mean(steps):.2f} steps each, '
        f'{sum(tokens)} vs {prefix_tokens} real tokens; max |logit diff| {max_diff:.2e}')
  for name in systems:
    print(f'{name:>10}: {rate[name]:8.1f} candidates/s (best of {_REPEATS.value}; median '
          f'{n / statistics.median(times[name]):.1f})')
  print(f'ratio one_pass / per_prefix: {ratio:.2f}x (load average {os.getloadavg()[0]:.2f})')
  if _JSON.value:
    os.makedirs(os.path.dirname(os.path.abspath(_JSON.value)), exist_ok=True)
    with open(_JSON.value, 'w') as f:
      json.dump(result, f, indent=1)


if __name__ == '__main__':
  app.run(main)
