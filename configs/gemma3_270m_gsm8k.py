"""The real Gemma 3 270M base model (PyPI GGUF) on GSM8K / MATH500: greedy, pass@k, majority@k.

  python -m launch.main --config=configs/gemma3_270m_gsm8k.py --workdir=wd_real --mode=import_model
  python -m launch.main --config=configs/gemma3_270m_gsm8k.py --workdir=wd_real --mode=sample
  python -m launch.main --config=configs/gemma3_270m_gsm8k.py --workdir=wd_real --mode=calibrate

Variants (`--config=configs/gemma3_270m_gsm8k.py:VARIANT`):
  (none)   GSM8K test, the first 50 problems, greedy + 16 samples each (a CPU-sized subset).
  math500  MATH500, the first 50 problems, per-level results.
  full     GSM8K test, all 1,319 problems (an accelerator's job).
  sft      GSM8K train SFT of the imported model (bf16 compute, fp32 master weights), then
           all of GSM8K test with 64 samples: --mode=import_model, sft, sample, calibrate.
  tiny     seconds-long runs for tests (2 problems, 2 samples, 8 new tokens).
`--config.model.gguf=FILE` imports another Gemma 3 GGUF; `--config.model.hf_dir=DIR` a HF
safetensors checkpoint (config.json, model.safetensors, tokenizer.model).
`--config.model.weight_dtype=bfloat16` keeps the matmul weights in bf16 (activations, cache and
accumulation stay fp32): half the bytes per decode step, 1.7x the tokens/s at batch 16 on a 2-core
CPU (BUILD.md, "Benchmark"), logits within 6.5e-3 of the largest fp32 logit.
"""

import ml_collections

from ttc_jax.training import trainer

VARIANTS = ('default', 'math500', 'full', 'sft', 'tiny')


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  variant = arg or 'default'
  if variant not in VARIANTS:
    raise ValueError(f'unknown gemma3_270m_gsm8k variant {variant!r}; expected one of {VARIANTS}')
  c = ml_collections.ConfigDict()
  c.seed = 0
  c.model_name = 'gemma3_270m'
  c.model = ml_collections.ConfigDict(dict(name='gemma3_270m', gguf='', hf_dir='',
                                           dtype='float32', weight_dtype=''))
  c.task = ml_collections.ConfigDict(dict(name='gsm8k', data_dir='', num_shots=4))
  c.sample = ml_collections.ConfigDict(dict(
      split='test', num_samples=16, temperature=0.7, top_k=0, top_p=1.0, max_new_tokens=256,
      problems_per_batch=2, max_problems=50))
  c.calibrate = ml_collections.ConfigDict(dict(ks=(1, 2, 4, 8, 16, 32, 64), majority_draws=64))
  c.sft = ml_collections.ConfigDict(dict(base='gemma3_270m', max_len=512,
                                         compute_dtype='bfloat16'))
  c.sft.train = trainer.default_config()
  c.sft.train.update(dict(steps=2000, batch_size=32, learning_rate=1e-5, warmup_steps=100,
                          weight_decay=0.0, log_every=20, checkpoint_every=250))

  if variant == 'math500':
    c.task.name = 'math500'
  elif variant == 'full':
    c.sample.update(dict(max_problems=0, problems_per_batch=16))
  elif variant == 'sft':
    c.model_name = 'gemma3_270m_sft'
    c.task.num_shots = 0  # the SFT model answers in the format it was trained on
    c.sample.update(dict(num_samples=64, max_problems=0, problems_per_batch=16))
  elif variant == 'tiny':
    c.task.num_shots = 1
    c.sample.update(dict(num_samples=2, max_new_tokens=8, max_problems=2))
    c.calibrate.update(dict(ks=(1, 2), majority_draws=4))
    c.sft.train.update(dict(steps=2, batch_size=2, warmup_steps=1, log_every=1,
                            checkpoint_every=1))
  return c
