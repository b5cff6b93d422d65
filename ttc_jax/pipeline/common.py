"""What the arith stages share: the task's problems, the tokenizer, model configs, the example split.

Every path comes from `ttc_jax.artifacts`; each loader checks its artifact is done first.
"""

from __future__ import annotations

import jax
import ml_collections

from ttc_jax import artifacts
from ttc_jax import manifest
from ttc_jax import workdir as wd
from ttc_jax.errors import UserError
from ttc_jax.parallel import hosts
from ttc_jax.model.config import TransformerConfig, gemma1, gemma2, gemma3
from ttc_jax.tasks import arith, records
from ttc_jax.tokenizer import Tokenizer

PRESETS = {'gemma1': gemma1, 'gemma2': gemma2, 'gemma3': gemma3}


def arith_builder_config(config: ml_collections.ConfigDict) -> arith.ArithConfig:
  t = config.task
  return arith.ArithConfig.make(
      seed=t.seed, sizes=(('train', t.train_size), ('validation', t.validation_size),
                          ('test', t.test_size)),
      num_ops_range=(t.num_ops_min, t.num_ops_max), max_operand=t.max_operand,
      max_value=t.max_value)


def load_problems(config: ml_collections.ConfigDict, workdir: str, split: str,
                  stage: str) -> list[arith.Problem]:
  data = artifacts.data(config, workdir)
  manifest.require(data, stage)
  recs = records.load_split(arith.ArithBuilder, split, data.path,
                            config=arith_builder_config(config), stage='data')
  return [arith.Problem.from_record(r) for r in recs]


def load_tokenizer(config: ml_collections.ConfigDict, workdir: str, stage: str) -> Tokenizer:
  manifest.require(artifacts.tokenizer(config, workdir), stage)
  return Tokenizer.load(artifacts.tokenizer_file(config, workdir), stage='tokenizer')


def model_config(config: ml_collections.ConfigDict, model: str, vocab_size: int
                 ) -> TransformerConfig:
  if model not in config.models:
    raise UserError(f'unknown model {model!r}; expected one of {sorted(config.models)}')
  m = dict(config.models[model])
  preset = m.pop('generation')
  if preset not in PRESETS:
    raise UserError(f'unknown generation {preset!r}; expected one of {sorted(PRESETS)}')
  # Embedding rows padded to a multiple of 64: faster matmuls, and XLA:CPU was seen to hang
  # compiling the sampler for a 23-row table. The padding ids are never targets, so the model
  # learns to give them ~0 probability; decode drops them.
  return PRESETS[preset](vocab_size=-(-vocab_size // 64) * 64, **m)


def encode_example(tok: Tokenizer, problem: arith.Problem) -> tuple[list[int], list[int]]:
  """(prompt ids with BOS, completion ids with EOS): the exact split the sampler continues."""
  prompt = tok.encode(arith.prompt(problem), add_bos=True)
  completion = tok.encode(arith.format_solution(problem.steps), add_eos=True)
  return prompt, completion


def train_sharding(config: ml_collections.ConfigDict) -> dict:
  """`trainer.train`'s mesh and rules from `config.mesh` (data x fsdp x tensor devices, a rules
  preset of `ttc_jax.parallel.sharding.RULES`): {} (one device) when every axis is 1, except in
  a job of several processes: there, data-parallel over every device of the job."""
  m = config.get('mesh', ml_collections.ConfigDict(dict(data=1, fsdp=1, tensor=1, rules='data')))
  shape = {'data': int(m.data), 'fsdp': int(m.fsdp), 'tensor': int(m.tensor)}
  if shape == {'data': 1, 'fsdp': 1, 'tensor': 1}:
    if not hosts.shared():
      return {}
    shape['data'] = jax.device_count()
  return {'mesh': shape, 'rules': m.rules}


def load_difficulty(config: ml_collections.ConfigDict, workdir: str, stage: str) -> dict[str, int]:
  """{problem id: oracle difficulty bin (1 = easiest)} of the sample split, from calibrate."""
  a = artifacts.calibration(config, workdir)
  manifest.require(a, stage)
  bins = wd.read_json(a.file('difficulty.json'), stage=a.stage)['bins']
  return {k: int(v) for k, v in bins.items()}


def attempt_tokens(config: ml_collections.ConfigDict, problems: list[arith.Problem],
                   limit: int) -> int:
  """The sampling length for these problems' attempts: the longest correct solution any of
  them allows (`arith.solution_length_bound`, plus EOS), rounded up to 32 (few compiled shapes),
  at most `limit`. Sampling stops when every row has ended, so a single runaway attempt would
  otherwise make every row of a batch decode to `limit`."""
  bound = max(arith.solution_length_bound(p.question, config.task.max_value) for p in problems)
  return min(limit, -(-(bound + 1) // 32) * 32)
