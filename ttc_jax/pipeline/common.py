"""What the stages share: workdir paths, input checks, the task, tokenizer and model configs."""

from __future__ import annotations

import os

import ml_collections

from ttc_jax.model.config import TransformerConfig, gemma1, gemma2, gemma3
from ttc_jax.tasks import arith, records
from ttc_jax.tokenizer import Tokenizer

PRESETS = {'gemma1': gemma1, 'gemma2': gemma2, 'gemma3': gemma3}


def data_dir(workdir: str) -> str:
  return os.path.join(workdir, 'data')


def tokenizer_path(workdir: str) -> str:
  return os.path.join(workdir, 'tokenizer', 'arith.model')


def model_dir(workdir: str, model: str) -> str:
  return os.path.join(workdir, 'models', model)


def model_info_path(workdir: str, model: str) -> str:
  return os.path.join(model_dir(workdir, model), 'info.json')


def samples_dir(workdir: str, model: str, split: str) -> str:
  return os.path.join(workdir, 'samples', model, split)


def calibration_path(workdir: str, model: str) -> str:
  name = 'calibration.json' if model == 'base' else f'calibration_{model}.json'
  return os.path.join(workdir, name)


def require(path: str, stage: str, needs: str) -> None:
  """One-line error when a stage's input is missing, naming the stage that makes it."""
  if not os.path.exists(path):
    raise FileNotFoundError(f'stage {stage} needs {path}, which does not exist; run '
                            f'--mode={needs} first (or --mode=all)')


def arith_builder_config(config: ml_collections.ConfigDict) -> arith.ArithConfig:
  t = config.task
  return arith.ArithConfig.make(
      seed=t.seed, sizes=(('train', t.train_size), ('validation', t.validation_size),
                          ('test', t.test_size)),
      num_ops_range=(t.num_ops_min, t.num_ops_max), max_operand=t.max_operand,
      max_value=t.max_value)


def load_problems(config: ml_collections.ConfigDict, workdir: str, split: str,
                  stage: str) -> list[arith.Problem]:
  builder = arith.ArithBuilder(data_dir=data_dir(workdir), config=arith_builder_config(config),
                               file_format=records.FILE_FORMAT)
  if not builder.is_prepared():
    raise FileNotFoundError(f'stage {stage} needs the arith dataset in {data_dir(workdir)}, '
                            'which is not built for this config; run --mode=data first')
  recs = records.load_split(arith.ArithBuilder, split, data_dir(workdir),
                            config=arith_builder_config(config))
  return [arith.Problem.from_record(r) for r in recs]


def load_tokenizer(workdir: str, stage: str) -> Tokenizer:
  require(tokenizer_path(workdir), stage, 'tokenizer')
  return Tokenizer.load(tokenizer_path(workdir))


def model_config(config: ml_collections.ConfigDict, model: str, vocab_size: int
                 ) -> TransformerConfig:
  if model not in config.models:
    raise ValueError(f'unknown model {model!r}; expected one of {sorted(config.models)}')
  m = dict(config.models[model])
  preset = m.pop('generation')
  if preset not in PRESETS:
    raise ValueError(f'unknown generation {preset!r}; expected one of {sorted(PRESETS)}')
  # Embedding rows padded to a multiple of 64: faster matmuls, and XLA:CPU was seen to hang
  # compiling the sampler for a 23-row table. The padding ids are never targets, so the model
  # learns to give them ~0 probability; decode drops them.
  return PRESETS[preset](vocab_size=-(-vocab_size // 64) * 64, **m)


def encode_example(tok: Tokenizer, problem: arith.Problem) -> tuple[list[int], list[int]]:
  """(prompt ids with BOS, completion ids with EOS): the exact split the sampler continues."""
  prompt = tok.encode(arith.prompt(problem), add_bos=True)
  completion = tok.encode(arith.format_solution(problem.steps), add_eos=True)
  return prompt, completion
