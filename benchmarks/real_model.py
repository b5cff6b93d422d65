"""Decode throughput of the real Gemma 3 270M (PyPI GGUF): our sampler vs transformers generate()
vs llama.cpp (llama-cpp-python), same file, batch 1 and 16, in one run.

  python benchmarks/real_model.py --json benchmarks/results/real_model_cpu.json   # bench extra

Workload: one GSM8K prompt (BOS + question, ~60 tokens); B samples of it, `--new_tokens` each at
temperature 1 over the full vocabulary, no early stop; tokens/s = B * new_tokens / wall time of
the whole call (prefill included), best of `--repeats` after a warm-up call. Ours and
transformers run the GGUF dequantized to fp32 (bitwise the same tensors); `ttc_jax-bf16w` is ours
with the matmul weights rounded to bf16 (config `weight_dtype='bfloat16'`: activations, norms,
cache and accumulation stay fp32; its prompt logits' max error vs fp32 is reported beside it);
llama.cpp runs its own
Q4_K/Q5_0/Q6_K/Q8_0 kernels on the quantized file (what it is for). Batch 16 in llama.cpp: one
llama_decode of the prompt shared by 16 sequences, then one 16-token llama_decode per step.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import time

import jax
import jax.numpy as jnp
import numpy as np

from ttc_jax.model import gguf_import
from ttc_jax.model.transformer import Transformer, cast_params
from ttc_jax.sampling.sampler import Sampler

SYSTEMS = ('ttc_jax', 'ttc_jax-bf16w', 'transformers', 'llama.cpp')


def prompt_text() -> str:
  path = os.path.join(os.path.dirname(__file__), '..', '..', 'shared', 'data', 'gsm8k',
                      'test.jsonl')
  with open(path, encoding='utf-8') as f:
    return json.loads(f.readline())['question']


class Ours:
  """Our sampler on the dequantized weights: fp32, or with the matmul weights rounded to bf16
  (`weight_dtype`; a decode step is bound by reading the weights, and bf16 halves the bytes)."""

  def __init__(self, path: str, weight_dtype: str | None = None):
    self.source = gguf_import.load(path)  # the fp32 dequantized tensors, as read
    self.config = dataclasses.replace(self.source.config, weight_dtype=weight_dtype)
    self.params = cast_params(self.source.params, self.config)
    self.sampler = Sampler(self.config)

  def generate(self, prompt: list[int], batch: int, new_tokens: int, seed: int) -> np.ndarray:
    out = self.sampler.sample(self.params, [prompt], key=jax.random.key(seed),
                              max_new_tokens=new_tokens, num_samples=batch, temperature=1.0,
                              stop_tokens=[])
    return np.asarray(out.tokens)


def bf16_error(bf16: Ours, prompt: list[int]) -> float:
  """max |logits_bf16w - logits_fp32| / max |logits_fp32| over the prompt's positions, the fp32
  reference computed from the same dequantized tensors (no second read of the GGUF)."""
  tokens = jnp.asarray([prompt], jnp.int32)
  ref = Transformer(bf16.source.config).apply({'params': bf16.source.params}, tokens).logits
  got = Transformer(bf16.config).apply({'params': bf16.params}, tokens).logits
  ref, got = np.asarray(ref, np.float32), np.asarray(got, np.float32)
  return float(np.abs(got - ref).max() / np.abs(ref).max())


class Transformers:
  def __init__(self, path: str):
    import torch  # pylint: disable=g-import-not-at-top
    import transformers  # pylint: disable=g-import-not-at-top
    torch.set_num_threads(os.cpu_count())
    self.torch = torch
    directory, name = os.path.split(path)
    self.model = transformers.AutoModelForCausalLM.from_pretrained(
        directory, gguf_file=name, dtype=torch.float32).eval()

  def generate(self, prompt: list[int], batch: int, new_tokens: int, seed: int) -> np.ndarray:
    torch = self.torch
    torch.manual_seed(seed)
    ids = torch.tensor([prompt])
    with torch.no_grad():
      out = self.model.generate(
          input_ids=ids, attention_mask=torch.ones_like(ids), do_sample=True, temperature=1.0,
          top_k=0, top_p=1.0, max_new_tokens=new_tokens, min_new_tokens=new_tokens,
          num_return_sequences=batch, pad_token_id=0)
    return out[:, len(prompt):].numpy()


class LlamaCpp:
  """llama.cpp through llama-cpp-python's low-level API (its high-level one is batch 1)."""

  def __init__(self, path: str, max_batch: int, n_ctx: int):
    import llama_cpp as ll  # pylint: disable=g-import-not-at-top
    self.ll = ll
    # llama_cpp.Llama() opens its context with one sequence; batched decoding needs our own.
    self.model = ll.llama_model_load_from_file(path.encode(), ll.llama_model_default_params())
    params = ll.llama_context_default_params()
    params.n_ctx, params.n_batch, params.n_ubatch = n_ctx, 512, 512
    params.n_seq_max, params.kv_unified = max_batch, True  # the prompt's cells shared by all
    params.n_threads = params.n_threads_batch = os.cpu_count()
    self.ctx = ll.llama_init_from_model(self.model, params)
    self.vocab = ll.llama_vocab_n_tokens(ll.llama_model_get_vocab(self.model))

  def __del__(self):
    self.ll.llama_free(self.ctx)
    self.ll.llama_model_free(self.model)

  def _decode(self, tokens, positions, seq_ids, want_logits) -> None:
    ll, n = self.ll, len(tokens)
    batch = ll.llama_batch_init(n, 0, max(len(s) for s in seq_ids))
    try:
      batch.n_tokens = n
      for i, (t, p, seqs, w) in enumerate(zip(tokens, positions, seq_ids, want_logits)):
        batch.token[i], batch.pos[i], batch.n_seq_id[i], batch.logits[i] = t, p, len(seqs), w
        for j, s in enumerate(seqs):
          batch.seq_id[i][j] = s
      if ll.llama_decode(self.ctx, batch) != 0:
        raise RuntimeError('llama_decode failed')
    finally:
      ll.llama_batch_free(batch)

  def _logits(self, row: int) -> np.ndarray:
    ptr = self.ll.llama_get_logits_ith(self.ctx, row)
    return np.ctypeslib.as_array(ptr, shape=(self.vocab,))

  def generate(self, prompt: list[int], batch: int, new_tokens: int, seed: int) -> np.ndarray:
    ll, rng = self.ll, np.random.default_rng(seed)
    ll.llama_memory_clear(ll.llama_get_memory(self.ctx), True)
    seqs = list(range(batch))
    n = len(prompt)
    self._decode(prompt, range(n), [seqs] * n, [False] * (n - 1) + [True])
    out = np.zeros((batch, new_tokens), np.int64)
    logits = np.repeat(self._logits(n - 1)[None], batch, axis=0)
    for step in range(new_tokens):
      probs = np.exp(logits - logits.max(-1, keepdims=True))
      cdf = np.cumsum(probs, -1)
      u = rng.random((batch, 1)) * cdf[:, -1:]
      tok = np.minimum((cdf < u).sum(-1), self.vocab - 1)
      out[:, step] = tok
      if step + 1 == new_tokens:
        break
      self._decode(tok.tolist(), [n + step] * batch, [[s] for s in seqs], [True] * batch)
      logits = np.stack([self._logits(i) for i in range(batch)])
    return out


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--gguf', default='')
  parser.add_argument('--batches', default='1,16')
  parser.add_argument('--new_tokens', type=int, default=64)
  parser.add_argument('--repeats', type=int, default=2)
  parser.add_argument('--systems', default=','.join(SYSTEMS))
  parser.add_argument('--json', default=None)
  args = parser.parse_args()
  path = args.gguf or str(gguf_import.default_gguf_path())
  batches = [int(b) for b in args.batches.split(',')]
  systems = args.systems.split(',')
  tok = gguf_import.load_tokenizer(path)
  prompt = [tok.bos_id] + tok.encode(prompt_text())
  makers = {'ttc_jax': lambda: Ours(path), 'ttc_jax-bf16w': lambda: Ours(path, 'bfloat16'),
            'transformers': lambda: Transformers(path),
            'llama.cpp': lambda: LlamaCpp(path, max(batches),
                                         len(prompt) + max(batches) * args.new_tokens + 64)}
  results: dict = {}
  for name in systems:  # one system in memory at a time
    t0 = time.perf_counter()
    system = makers[name]()
    results[name] = {'load_s': time.perf_counter() - t0}
    if name == 'ttc_jax-bf16w':
      results[name]['prompt_logits_max_rel_err_vs_fp32'] = bf16_error(system, prompt)
      print(f'{name}: prompt logits max error vs fp32 '
            f'{results[name]["prompt_logits_max_rel_err_vs_fp32"]:.2e} of the largest logit')
    for b in batches:
      out = system.generate(prompt, b, args.new_tokens, seed=0)  # warm-up / compile
      if out.shape != (b, args.new_tokens):
        raise RuntimeError(f'{name} generated {out.shape}, expected {(b, args.new_tokens)}')
      times = []
      for r in range(args.repeats):
        t0 = time.perf_counter()
        system.generate(prompt, b, args.new_tokens, seed=r + 1)
        times.append(time.perf_counter() - t0)
      results[name][f'batch{b}'] = {'tokens_per_s': b * args.new_tokens / min(times),
                                    'times_s': times}
      print(f'{name:<13} batch {b:>2}: {b * args.new_tokens / min(times):8.1f} tokens/s '
            f'(times {", ".join(f"{t:.2f}" for t in times)} s)', flush=True)
    del system
  print(f'\n{"system":<13}' + ''.join(f'{f"B={b} tok/s":>13}{"ours/x":>8}' for b in batches))
  for name in systems:
    row = f'{name:<13}'
    for b in batches:
      r = results[name][f'batch{b}']['tokens_per_s']
      ours = results.get('ttc_jax', {}).get(f'batch{b}', {}).get('tokens_per_s', float('nan'))
      row += f'{r:>13.1f}{ours / r:>8.2f}'
    print(row)
  bf16 = results.get('ttc_jax-bf16w', {})
  for b in batches:
    for peer in ('transformers', 'llama.cpp'):
      if f'batch{b}' in bf16 and peer in results:
        ratio = bf16[f'batch{b}']['tokens_per_s'] / results[peer][f'batch{b}']['tokens_per_s']
        bf16[f'batch{b}'][f'ratio_vs_{peer}'] = ratio
        print(f'ttc_jax-bf16w / {peer} at B={b}: {ratio:.2f}')
  if args.json:
    os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
    with open(args.json, 'w') as f:
      json.dump({'results': results, 'prompt_tokens': len(prompt), 'new_tokens': args.new_tokens,
                 'repeats': args.repeats, 'cpu_count': os.cpu_count(),
                 'loadavg_end': os.getloadavg(), 'machine': platform.platform()}, f, indent=1)
    print('wrote', args.json)


if __name__ == '__main__':
  main()
