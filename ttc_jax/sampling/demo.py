"""Stage `demo`: sample from a model (random or checkpointed); the tokens go to demo/samples.json."""

from __future__ import annotations

import time

import jax
import ml_collections
from absl import logging

from ttc_jax import artifacts
from ttc_jax import manifest
from ttc_jax import workdir as wd
from ttc_jax.model import checkpoint, config as model_config, transformer
from ttc_jax.sampling.sampler import Sampler


def outputs(config: ml_collections.ConfigDict, workdir: str) -> list[manifest.Artifact]:
  return [artifacts.demo_samples(config, workdir)]


def run(config: ml_collections.ConfigDict, workdir: str) -> str:
  out_path = artifacts.demo_samples(config, workdir).file('samples.json')
  model = model_config.get_config(config.model.name)
  if config.model.checkpoint:
    params = checkpoint.load_params(config.model.checkpoint, model)
  else:
    params = transformer.init_params(model, jax.random.key(config.seed))
  logging.info('demo: model %s, %d parameters', config.model.name,
               transformer.count_params(params))
  s = config.sampling
  sampler = Sampler(model)
  prompt = list(config.demo.prompt_tokens)
  t0 = time.perf_counter()
  out = sampler.sample(params, [prompt], key=jax.random.key(config.seed), num_samples=s.num_samples,
                       max_new_tokens=s.max_new_tokens, temperature=s.temperature,
                       top_k=s.top_k, top_p=s.top_p)
  sequences = out.sequences()
  seconds = time.perf_counter() - t0
  tokens = sum(map(len, sequences))
  logging.info('demo: %d samples, %d tokens in %.2fs (incl. compilation)', len(sequences),
               tokens, seconds)
  wd.atomic_write_json(out_path, {'prompt': prompt, 'samples': sequences,
                                  'model': config.model.name, 'seconds': seconds})
  return out_path
