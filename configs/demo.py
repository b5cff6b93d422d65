"""Sampling demo: a randomly initialised (or checkpointed) Gemma-family model.

Variants: `--config=configs/demo.py` (tiny Gemma 3), `:gemma3_1b` (any named model config).
"""

import ml_collections


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.seed = 0
  c.model = ml_collections.ConfigDict(dict(name=arg or 'tiny_gemma3', checkpoint=''))
  c.sampling = ml_collections.ConfigDict(
      dict(num_samples=4, max_new_tokens=16, temperature=1.0, top_k=0, top_p=1.0))
  c.demo = ml_collections.ConfigDict(dict(prompt_tokens=(2, 17, 42, 99, 7)))
  c.lock()
  return c
