"""Stage `tokenizer`: a sentencepiece model trained on the task's training texts."""

from __future__ import annotations

import ml_collections
from absl import logging

from ttc_jax import artifacts
from ttc_jax import manifest
from ttc_jax.pipeline import common
from ttc_jax.tasks import arith
from ttc_jax.tokenizer import Tokenizer


def outputs(config: ml_collections.ConfigDict, workdir: str) -> list[manifest.Artifact]:
  return [artifacts.tokenizer(config, workdir)]


def run(config: ml_collections.ConfigDict, workdir: str) -> None:
  path = artifacts.tokenizer_file(config, workdir)
  problems = common.load_problems(config, workdir, 'train', 'tokenizer')
  tok = Tokenizer.train(arith.iter_texts(problems), path, config.tokenizer.vocab_size,
                        user_defined_symbols=arith.SPECIAL_SYMBOLS)
  logging.info('tokenizer: %d pieces -> %s', tok.vocab_size, path)
