"""Writes tests/fixtures/tiny_gemma3_hf/: a small random Gemma3ForCausalLM that transformers saves
(config.json + bf16 model.safetensors) and its fp32 logits, for tests/test_safetensors_import.py.

  python benchmarks/parity_safetensors.py --out tests/fixtures/tiny_gemma3_hf   # bench extra
Weights are drawn at std 1/sqrt(fan_in) and norm weights at std 0.5 (HF's init, std 0.02 and zero
norms, would make the logits insensitive to the layout of most tensors).
"""

from __future__ import annotations

import argparse
import pathlib

import numpy as np

SEQ_LEN = 24  # 3x the sliding window
WINDOW = 8


def main():
  import torch  # pylint: disable=g-import-not-at-top
  import transformers  # pylint: disable=g-import-not-at-top
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--out', required=True)
  args = parser.parse_args()
  out = pathlib.Path(args.out)
  torch.manual_seed(0)
  config = transformers.Gemma3TextConfig(
      vocab_size=128, hidden_size=32, intermediate_size=64, num_hidden_layers=3,
      num_attention_heads=4, num_key_value_heads=2, head_dim=16, sliding_window=WINDOW,
      layer_types=['sliding_attention', 'full_attention', 'sliding_attention'],
      query_pre_attn_scalar=24, rope_parameters={
          'sliding_attention': {'rope_type': 'default', 'rope_theta': 10_000.0},
          'full_attention': {'rope_type': 'linear', 'rope_theta': 1_000_000.0, 'factor': 8.0}})
  model = transformers.Gemma3ForCausalLM(config).eval()
  with torch.no_grad():
    for name, p in model.named_parameters():
      if name.endswith('norm.weight'):
        p.copy_(0.5 * torch.randn_like(p))
      else:
        p.copy_(torch.randn_like(p) / p.shape[-1] ** 0.5)
  model.to(torch.bfloat16).save_pretrained(out)
  reloaded = transformers.Gemma3ForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
  tokens = torch.randint(1, config.vocab_size, (2, SEQ_LEN), generator=torch.Generator().manual_seed(1))
  with torch.no_grad():
    logits = reloaded(input_ids=tokens).logits.numpy()
  np.savez_compressed(out / 'reference.npz', tokens=tokens.numpy().astype(np.int32),
                      logits=logits.astype(np.float32))
  print('wrote', sorted(p.name for p in out.iterdir()))


if __name__ == '__main__':
  main()
