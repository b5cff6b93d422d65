"""Stage `data`: the arith task's train/validation/test splits as a TFDS array_record dataset."""

from __future__ import annotations

import ml_collections
from absl import logging

from ttc_jax import artifacts
from ttc_jax import manifest
from ttc_jax.pipeline import common
from ttc_jax.tasks import arith, records


def outputs(config: ml_collections.ConfigDict, workdir: str) -> list[manifest.Artifact]:
  return [artifacts.data(config, workdir)]


def run(config: ml_collections.ConfigDict, workdir: str) -> None:
  builder = records.prepare(arith.ArithBuilder, artifacts.data(config, workdir).path,
                            config=common.arith_builder_config(config))
  sizes = {name: split.num_examples for name, split in builder.info.splits.items()}
  logging.info('data: %s ready in %s: %s', builder.builder_config.name, builder.data_dir, sizes)
