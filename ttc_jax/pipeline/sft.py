"""Stage `sft`: fine-tune an imported real model on GSM8K train solutions (our trainer, LM loss
on the completion only), from config.sft.base's imported params into models/<model_name>/.

Master weights stay fp32; `config.sft.compute_dtype` (bfloat16 on accelerators) is the forward /
backward precision. The SFT example is the evaluation prompt format: `Question: ...\\nAnswer:\\n` + the solution in
the few-shot format + the end-of-solution blank line; no few-shot exemplars in the prompt.
"""

from __future__ import annotations

import shutil

import ml_collections
from absl import logging

from ttc_jax import artifacts
from ttc_jax import manifest
from ttc_jax import workdir as wd
from ttc_jax.errors import UserError
from ttc_jax.model import transformer
from ttc_jax.model.config import TransformerConfig, get_config
from ttc_jax.pipeline import import_model
from ttc_jax.tasks import gsm8k
from ttc_jax.tokenizer import Tokenizer
from ttc_jax.training import data, objectives, trainer


def outputs(config: ml_collections.ConfigDict, workdir: str) -> list[manifest.Artifact]:
  """The fine-tuned model; nothing when config.model_name is the imported base itself."""
  if config.model_name == config.sft.base:
    return []
  return [artifacts.model(config, workdir)]


def run(config: ml_collections.ConfigDict, workdir: str) -> None:
  name, base = config.model_name, config.sft.base
  if name == base:
    logging.info('sft: --config.model_name=%s is the imported base model; nothing to fine-tune '
                 '(the sft variant fine-tunes it into gemma3_270m_sft)', name)
    return
  if config.task.name != 'gsm8k':
    raise UserError(f'sft trains on GSM8K train; task is {config.task.name!r}')
  target = artifacts.model(config, workdir)
  base_config = ml_collections.ConfigDict(dict(config.to_dict(), model_name=base))
  model, params, tok = import_model.load_model(base_config, workdir, 'sft')
  recs = gsm8k.load('train', config.task.data_dir or None, artifacts.real_data_dir(workdir, 'gsm8k'))
  prompts = [tok.encode(gsm8k.format_question(r.question), add_bos=True) for r in recs]
  completions = [tok.encode(r.solution + gsm8k.END_OF_SOLUTION) + [tok.eos_id] for r in recs]
  examples = data.pack(prompts, completions, config.sft.max_len, max_len_key='sft.max_len')
  logging.info('sft: %s from %s, %d examples, %d steps of %d (%s)', name, base, examples.size,
               config.sft.train.steps, config.sft.train.batch_size, config.sft.dtype)
  objective = objectives.LanguageModeling(model, compute_dtype=config.sft.compute_dtype)
  trainer.train(objective, examples, config.sft.train, target.path,
                f'sft[{name}]', init_params=params)
  shutil.copy(import_model.tokenizer_path(workdir, base), import_model.tokenizer_path(workdir, name))
  wd.atomic_write_json(target.file('info.json'), {'model': name, 'kind': 'sft', 'base': base, 'config':
                                   config.model.name, 'steps': config.sft.train.steps,
                                   'num_params': transformer.count_params(params)})


def load_model(config: ml_collections.ConfigDict, workdir: str, stage: str
               ) -> tuple[TransformerConfig, dict, Tokenizer]:
  """The model config.model_name names: an import, or an SFT run (in config.model.dtype)."""
  name = config.model_name
  a = artifacts.model(config, workdir, name)
  manifest.require(a, stage)
  info = wd.read_json(a.file('info.json'), stage=a.stage)
  if info.get('kind') != 'sft':
    return import_model.load_model(config, workdir, stage)
  model = get_config(config.model.name)  # fp32 master weights
  params = trainer.load_params(a.path, objectives.LanguageModeling(model), config.sft.train,
                               step=info['steps'], stage='sft')
  model = import_model.model_config_for(config)
  params = transformer.cast_params(params, model)
  return model, params, Tokenizer.load(import_model.tokenizer_path(workdir, name), stage='sft')
