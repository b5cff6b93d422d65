"""Stage `sft`: fine-tune an imported real model on GSM8K train solutions (our trainer, LM loss
on the completion only), from config.sft.base's imported params into models/<model_name>/.

Master weights stay fp32; `config.sft.compute_dtype` (bfloat16 on accelerators) is the forward /
backward precision. The SFT example is the evaluation prompt format: `Question: ...\\nAnswer:\\n` + the solution in
the few-shot format + the end-of-solution blank line; no few-shot exemplars in the prompt.
"""

from __future__ import annotations

import os
import shutil

import ml_collections
from absl import logging

from ttc_jax import workdir as wd
from ttc_jax.model import transformer
from ttc_jax.model.config import TransformerConfig, get_config
from ttc_jax.pipeline import common, import_model
from ttc_jax.tasks import gsm8k
from ttc_jax.tokenizer import Tokenizer
from ttc_jax.training import data, objectives, trainer


def run(config: ml_collections.ConfigDict, workdir: str) -> None:
  name, base = config.model_name, config.sft.base
  if name == base:
    raise ValueError(f'--config.model_name={name!r} is the imported base model; the SFT model '
                     'needs its own name (the sft variant uses gemma3_270m_sft)')
  info_path = common.model_info_path(workdir, name)
  if os.path.exists(info_path):
    logging.info('sft: %s exists, skipping', info_path)
    return
  if config.task.name != 'gsm8k':
    raise ValueError(f'sft trains on GSM8K train; task is {config.task.name!r}')
  base_config = ml_collections.ConfigDict(dict(config.to_dict(), model_name=base))
  model, params, tok = import_model.load_model(base_config, workdir, 'sft')
  recs = gsm8k.load('train', config.task.data_dir or None, os.path.join(workdir, 'data', 'gsm8k'))
  prompts = [tok.encode(gsm8k.format_question(r.question), add_bos=True) for r in recs]
  completions = [tok.encode(r.solution + gsm8k.END_OF_SOLUTION) + [tok.eos_id] for r in recs]
  examples = data.pack(prompts, completions, config.sft.max_len)
  logging.info('sft: %s from %s, %d examples, %d steps of %d (%s)', name, base, examples.size,
               config.sft.train.steps, config.sft.train.batch_size, config.sft.dtype)
  objective = objectives.LanguageModeling(model, compute_dtype=config.sft.compute_dtype)
  trainer.train(objective, examples, config.sft.train, common.model_dir(workdir, name),
                f'sft[{name}]', init_params=params)
  shutil.copy(import_model.tokenizer_path(workdir, base), import_model.tokenizer_path(workdir, name))
  wd.atomic_write_json(info_path, {'model': name, 'kind': 'sft', 'base': base, 'config':
                                   config.model.name, 'steps': config.sft.train.steps,
                                   'num_params': transformer.count_params(params)})


def load_model(config: ml_collections.ConfigDict, workdir: str, stage: str
               ) -> tuple[TransformerConfig, dict, Tokenizer]:
  """The model config.model_name names: an import, or an SFT run (in config.model.dtype)."""
  name = config.model_name
  info_path = common.model_info_path(workdir, name)
  if not os.path.exists(info_path):
    needs = 'sft' if name != config.get('sft', {}).get('base', name) else 'import_model'
    common.require(info_path, stage, needs)
  if wd.read_json(info_path).get('kind') != 'sft':
    return import_model.load_model(config, workdir, stage)
  model = get_config(config.model.name)  # fp32 master weights
  params = trainer.load_params(common.model_dir(workdir, name),
                               objectives.LanguageModeling(model), config.sft.train)
  model = import_model.model_config_for(config)
  params = transformer.cast_params(params, model)
  return model, params, Tokenizer.load(
      import_model.tokenizer_path(workdir, name))
