"""Stage `sample`: N samples per problem of a split from a trained model, graded, in shards.

Shards (samples/<model>/<split>/shard_00000.jsonl, ...) are written atomically; a rerun skips the
shards that exist, so a killed run loses at most one shard. Read them with `load_samples`.
"""

from __future__ import annotations

import json
import os
import time

import jax
import ml_collections
from absl import logging

from ttc_jax import artifacts
from ttc_jax import manifest
from ttc_jax import workdir as wd
from ttc_jax.parallel import hosts
from ttc_jax.pipeline import common, sample_shards, train_base
from ttc_jax.sampling.sampler import Sampler
from ttc_jax.tasks import arith


def outputs(config: ml_collections.ConfigDict, workdir: str) -> list[manifest.Artifact]:
  return [artifacts.samples(config, workdir)]


def _problems(config: ml_collections.ConfigDict, workdir: str, stage: str) -> list[arith.Problem]:
  s = config.sample
  problems = common.load_problems(config, workdir, s.split, stage)[:s.max_problems or None]
  # Similar lengths in one batch: the decode loop runs until its longest row ends.
  return sorted(problems, key=lambda p: (p.num_ops, p.id))


def run(config: ml_collections.ConfigDict, workdir: str) -> None:
  s, name = config.sample, config.model_name
  directory = artifacts.samples(config, workdir).path
  problems = _problems(config, workdir, 'sample')
  total = sample_shards.num_shards(len(problems), s.problems_per_batch)
  todo = [i for i in range(total) if not os.path.exists(sample_shards.shard_path(directory, i))]
  if not todo:  # killed after its last shard: nothing to sample, no model to load
    return
  model, params = train_base.load_model(config, workdir, name, 'sample')
  tok = common.load_tokenizer(config, workdir, 'sample')
  sampler = Sampler(model, eos_id=tok.eos_id)

  def sample_shard(shard: int) -> tuple[str, int]:
    """(the shard file's text, tokens sampled) of one shard."""
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
    return '\n'.join(lines) + '\n', sum(len(r) for r in seqs)

  # Several processes: each round, process i samples the round's i-th shard; process 0 writes
  # them all. A shard's key depends on its index only, so the files equal one process's.
  t0, done_tokens, n, finished = time.perf_counter(), 0, len(hosts.active()), total - len(todo)
  for start in range(0, len(todo), n):
    mine = todo[start + hosts.index()] if start + hosts.index() < len(todo) else None
    done = [d for d in hosts.gather(None if mine is None else (mine, *sample_shard(mine))) if d]
    for shard, text, tokens in done:
      wd.atomic_write_text(sample_shards.shard_path(directory, shard), text)
      done_tokens += tokens
    finished += len(done)
    rate = done_tokens / (time.perf_counter() - t0)
    logging.info('sample[%s]: %d/%d shards (num_ops %d) %.0f tokens/s', name, finished, total,
                 problems[done[-1][0] * s.problems_per_batch].num_ops, rate)
  logging.info('sample[%s]: %d problems x %d samples in %s', name, len(problems), s.num_samples,
               directory)


def load_samples(config: ml_collections.ConfigDict, workdir: str, stage: str,
                 model_name: str = '') -> list[dict]:
  """Every sample record of `model_name` (default config.model_name) on config.sample.split,
  in shard order; a one-line error if the samples are not finished or a shard is damaged."""
  a = artifacts.samples(config, workdir, model_name)
  if model_name and model_name != config.model_name:
    a = manifest.foreign(a)
  n = len(_problems(config, workdir, stage))
  return sample_shards.read(a, n, config.sample.problems_per_batch, stage,
                            (*sample_shards.FIELDS, 'num_ops'))
