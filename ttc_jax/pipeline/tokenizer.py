"""Stage `tokenizer`: a sentencepiece model trained on the task's training texts."""

from __future__ import annotations

import os

import ml_collections
from absl import logging

from ttc_jax.pipeline import common
from ttc_jax.tasks import arith
from ttc_jax.tokenizer import Tokenizer


def run(config: ml_collections.ConfigDict, workdir: str) -> None:
  path = common.tokenizer_path(workdir)
  if os.path.exists(path):
    logging.info('tokenizer: %s exists, skipping', path)
    return
  problems = common.load_problems(config, workdir, 'train', 'tokenizer')
  os.makedirs(os.path.dirname(path), exist_ok=True)
  tok = Tokenizer.train(arith.iter_texts(problems), path, config.tokenizer.vocab_size,
                        user_defined_symbols=arith.SPECIAL_SYMBOLS)
  logging.info('tokenizer: %d pieces -> %s', tok.vocab_size, path)
