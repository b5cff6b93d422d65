"""Stage `data`: the arith task's train/validation/test splits as a TFDS array_record dataset."""

from __future__ import annotations

import ml_collections
from absl import logging

from ttc_jax.pipeline import common
from ttc_jax.tasks import arith, records


def run(config: ml_collections.ConfigDict, workdir: str) -> None:
  builder = records.prepare(arith.ArithBuilder, common.data_dir(workdir),
                            config=common.arith_builder_config(config))
  sizes = {name: split.num_examples for name, split in builder.info.splits.items()}
  logging.info('data: %s ready in %s: %s', builder.builder_config.name, builder.data_dir, sizes)
