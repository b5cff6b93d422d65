"""Stage `sample`: N samples per problem of a split from a trained model, graded, in shards.

Shards (samples/<model>/<split>/shard_00000.jsonl, ...) are written atomically; a rerun skips the
shards that exist, so a killed run loses at most one shard.
"""

from __future__ import annotations

import json
import os
import time

import jax
import ml_collections
from absl import logging

from ttc_jax import workdir as wd
from ttc_jax.pipeline import common, real_tasks, train_base
from ttc_jax.sampling.sampler import Sampler
from ttc_jax.tasks import arith


def shard_path(directory: str, index: int) -> str:
  return os.path.join(directory, f'shard_{index:05d}.jsonl')


def num_shards(num_problems: int, per_shard: int) -> int:
  return -(-num_problems // per_shard)


def run(config: ml_collections.ConfigDict, workdir: str) -> None:
  if real_tasks.is_real(config):  # GSM8K / MATH500 with a real model
    from ttc_jax.pipeline import real_eval  # pylint: disable=g-import-not-at-top (cycle)
    return real_eval.sample(config, workdir)
  s, name = config.sample, config.model_name
  model, params = train_base.load_model(config, workdir, name, 'sample')
  tok = common.load_tokenizer(workdir, 'sample')
  problems = common.load_problems(config, workdir, s.split, 'sample')[:s.max_problems or None]
  # Similar lengths in one batch: the decode loop runs until its longest row ends.
  problems.sort(key=lambda p: (p.num_ops, p.id))
  directory = common.samples_dir(workdir, name, s.split)
  os.makedirs(directory, exist_ok=True)
  sampler = Sampler(model, eos_id=tok.eos_id)
  total = num_shards(len(problems), s.problems_per_batch)
  t0, done_tokens = time.perf_counter(), 0
  for shard in range(total):
    path = shard_path(directory, shard)
    if os.path.exists(path):
      continue
    batch = problems[shard * s.problems_per_batch:(shard + 1) * s.problems_per_batch]
    prompts = [common.encode_example(tok, p)[0] for p in batch]
    key = jax.random.fold_in(jax.random.key(config.seed), shard)
    out = sampler.sample(params, prompts, key=key, max_new_tokens=s.max_new_tokens,
                         num_samples=s.num_samples, temperature=s.temperature, top_k=s.top_k,
                         top_p=s.top_p)
    seqs = out.sequences()
    lines = []
    for i, p in enumerate(batch):
      rows = seqs[i * s.num_samples:(i + 1) * s.num_samples]
      texts = [tok.decode(r) for r in rows]
      lines.append(json.dumps({
          'id': p.id, 'num_ops': p.num_ops, 'answer': p.answer, 'completions': texts,
          'correct': [arith.grade(t, p.answer) for t in texts],
          'num_tokens': [len(r) for r in rows]}))
      done_tokens += sum(len(r) for r in rows)
    wd.atomic_write_text(path, '\n'.join(lines) + '\n')
    rate = done_tokens / (time.perf_counter() - t0)
    logging.info('sample[%s]: shard %d/%d (num_ops %d) %.0f tokens/s', name, shard + 1, total,
                 batch[0].num_ops, rate)
  logging.info('sample[%s]: %d problems x %d samples in %s', name, len(problems), s.num_samples,
               directory)


def load_samples(config: ml_collections.ConfigDict, workdir: str, stage: str) -> list[dict]:
  """All sample records of config.model_name on config.sample.split; error if incomplete."""
  s, name = config.sample, config.model_name
  directory = common.samples_dir(workdir, name, s.split)
  needs = 'sample' + ('' if name == 'base' else f' with --config.model_name={name}')
  common.require(directory, stage, needs)
  n = len(common.load_problems(config, workdir, s.split, stage)[:s.max_problems or None])
  out = []
  for shard in range(num_shards(n, s.problems_per_batch)):
    path = shard_path(directory, shard)
    common.require(path, stage, needs)
    with open(path) as f:
      out.extend(json.loads(line) for line in f if line.strip())
  return out
