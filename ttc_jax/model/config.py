"""Gemma 1/2/3 transformer configs: one dataclass, generation presets, named official sizes."""

from __future__ import annotations

import dataclasses
import enum
from typing import Callable


class AttentionType(enum.Enum):
  GLOBAL = 'global'
  LOCAL_SLIDING = 'local_sliding'


@dataclasses.dataclass(frozen=True, kw_only=True)
class TransformerConfig:
  """Architecture of a Gemma-family decoder. Hashable, so it can be a static jit argument."""

  vocab_size: int
  embed_dim: int
  hidden_dim: int
  num_heads: int
  head_dim: int
  num_kv_heads: int
  attention_types: tuple[AttentionType, ...]
  query_pre_attn_scalar: float
  final_logit_softcap: float | None = None
  attn_logits_soft_cap: float | None = None
  use_post_attn_norm: bool = False
  use_post_ffw_norm: bool = False
  use_qk_norm: bool = False
  sliding_window_size: int | None = None
  # Gemma 2 9B/27B and Gemma 3 store gating_einsum as [2, hidden, embed]; Gemma 1 as [2, embed, hidden].
  transpose_gating_einsum: bool = False
  local_base_frequency: int = 10_000
  global_base_frequency: int = 10_000
  local_scale_factor: float = 1.0
  global_scale_factor: float = 1.0
  dtype: str = 'float32'  # activations, norms, KV cache, logits
  # Storage dtype of the matmul weights (embedding and every projection); None: `dtype`. With
  # 'bfloat16' under an fp32 `dtype`, each matmul reads bf16 weights (half the bytes: CPU decode
  # is bound by reading them) with its input rounded to bf16, and accumulates in fp32.
  weight_dtype: str | None = None

  def __post_init__(self):
    if self.num_heads % self.num_kv_heads:
      raise ValueError(
          f'num_heads={self.num_heads} is not a multiple of num_kv_heads={self.num_kv_heads}.')
    if AttentionType.LOCAL_SLIDING in self.attention_types and not self.sliding_window_size:
      raise ValueError('local sliding layers need sliding_window_size > 0.')

  @property
  def param_dtype(self) -> str:
    return self.weight_dtype or self.dtype

  @property
  def num_layers(self) -> int:
    return len(self.attention_types)


def _pattern(pattern: tuple[AttentionType, ...], num_layers: int) -> tuple[AttentionType, ...]:
  return tuple(pattern[i % len(pattern)] for i in range(num_layers))


_L, _G = AttentionType.LOCAL_SLIDING, AttentionType.GLOBAL
GEMMA2_PATTERN = (_L, _G)
GEMMA3_PATTERN = (_L, _L, _L, _L, _L, _G)


def gemma1(*, vocab_size: int, embed_dim: int, hidden_dim: int, num_heads: int, head_dim: int,
           num_kv_heads: int, num_layers: int, **kw) -> TransformerConfig:
  """Gemma 1: MQA/GQA, RMSNorm, RoPE, gated GELU, tied embeddings."""
  return TransformerConfig(
      vocab_size=vocab_size, embed_dim=embed_dim, hidden_dim=hidden_dim, num_heads=num_heads,
      head_dim=head_dim, num_kv_heads=num_kv_heads,
      attention_types=(_G,) * num_layers, query_pre_attn_scalar=head_dim**-0.5, **kw)


def gemma2(*, vocab_size: int, embed_dim: int, hidden_dim: int, num_heads: int, head_dim: int,
           num_kv_heads: int, num_layers: int, sliding_window_size: int = 4096,
           **kw) -> TransformerConfig:
  """Gemma 2: adds post-norms, logit soft-capping, alternating local/global layers."""
  kw.setdefault('query_pre_attn_scalar', head_dim**-0.5)
  kw.setdefault('transpose_gating_einsum', False)
  return TransformerConfig(
      vocab_size=vocab_size, embed_dim=embed_dim, hidden_dim=hidden_dim, num_heads=num_heads,
      head_dim=head_dim, num_kv_heads=num_kv_heads,
      attention_types=_pattern(GEMMA2_PATTERN, num_layers), final_logit_softcap=30.0,
      attn_logits_soft_cap=50.0, use_post_attn_norm=True, use_post_ffw_norm=True,
      sliding_window_size=sliding_window_size, **kw)


def gemma3(*, vocab_size: int, embed_dim: int, hidden_dim: int, num_heads: int, head_dim: int,
           num_kv_heads: int, num_layers: int, sliding_window_size: int = 512,
           **kw) -> TransformerConfig:
  """Gemma 3: QK-norm instead of soft-capping, 5 local : 1 global, separate RoPE bases."""
  kw.setdefault('global_base_frequency', 1_000_000)
  return TransformerConfig(
      vocab_size=vocab_size, embed_dim=embed_dim, hidden_dim=hidden_dim, num_heads=num_heads,
      head_dim=head_dim, num_kv_heads=num_kv_heads,
      attention_types=_pattern(GEMMA3_PATTERN, num_layers), query_pre_attn_scalar=head_dim**-0.5,
      use_post_attn_norm=True, use_post_ffw_norm=True, use_qk_norm=True,
      sliding_window_size=sliding_window_size, transpose_gating_einsum=True,
      local_base_frequency=10_000, **kw)


GEMMA_VOCAB = 256_128
GEMMA3_VOCAB = 262_144

# Official sizes (numbers as in google-deepmind/gemma `gm.nn`).
NAMED: dict[str, Callable[[], TransformerConfig]] = {
    'gemma1_2b': lambda: gemma1(vocab_size=GEMMA_VOCAB, embed_dim=2048, hidden_dim=16384,
                                num_heads=8, head_dim=256, num_kv_heads=1, num_layers=18),
    'gemma1_7b': lambda: gemma1(vocab_size=GEMMA_VOCAB, embed_dim=3072, hidden_dim=24576,
                                num_heads=16, head_dim=256, num_kv_heads=16, num_layers=28),
    'gemma2_2b': lambda: gemma2(vocab_size=GEMMA_VOCAB, embed_dim=2304, hidden_dim=9216,
                                num_heads=8, head_dim=256, num_kv_heads=4, num_layers=26),
    'gemma2_9b': lambda: gemma2(vocab_size=GEMMA_VOCAB, embed_dim=3584, hidden_dim=14336,
                                num_heads=16, head_dim=256, num_kv_heads=8, num_layers=42,
                                transpose_gating_einsum=True),
    'gemma3_270m': lambda: gemma3(vocab_size=GEMMA3_VOCAB, embed_dim=640, hidden_dim=2048,
                                  num_heads=4, head_dim=256, num_kv_heads=1, num_layers=18),
    'gemma3_1b': lambda: gemma3(vocab_size=GEMMA3_VOCAB, embed_dim=1152, hidden_dim=6 * 1152,
                                num_heads=4, head_dim=256, num_kv_heads=1, num_layers=26),
    'gemma3_4b': lambda: gemma3(vocab_size=GEMMA3_VOCAB, embed_dim=2560, hidden_dim=10240,
                                num_heads=8, head_dim=256, num_kv_heads=4, num_layers=34,
                                sliding_window_size=1024, global_scale_factor=8.0),
    # Test toys, one per generation (vocab 256 so they run in milliseconds).
    'tiny_gemma1': lambda: gemma1(vocab_size=256, embed_dim=64, hidden_dim=128, num_heads=4,
                                  head_dim=16, num_kv_heads=2, num_layers=2),
    'tiny_gemma2': lambda: gemma2(vocab_size=256, embed_dim=64, hidden_dim=128, num_heads=4,
                                  head_dim=16, num_kv_heads=2, num_layers=2,
                                  sliding_window_size=8),
    'tiny_gemma3': lambda: gemma3(vocab_size=256, embed_dim=64, hidden_dim=128, num_heads=4,
                                  head_dim=16, num_kv_heads=1, num_layers=6,
                                  sliding_window_size=8),
    # ~100M-parameter Gemma 3 architecture used by benchmarks/sampling.py.
    'bench_gemma3_100m': lambda: gemma3(vocab_size=32_768, embed_dim=768, hidden_dim=3072,
                                        num_heads=4, head_dim=192, num_kv_heads=1,
                                        num_layers=8, sliding_window_size=512),
}

# Official parameter counts, checked in tests. Gemma 1/2: embedding + non-embedding parameters
# of the technical reports (vocab 256,128 as in the official checkpoints; HF exports drop 128
# rows). Gemma 3: the text model's count on the official model cards.
OFFICIAL_PARAM_COUNTS = {
    'gemma1_2b': 524_550_144 + 1_981_884_416,
    'gemma2_2b': 590_118_912 + 2_024_517_888,
    'gemma3_270m': 268_098_176,
    'gemma3_1b': 999_885_952,
}


def get_config(name: str, **overrides) -> TransformerConfig:
  """Returns the named config, with dataclass fields overridden by keyword."""
  if name not in NAMED:
    raise ValueError(f'unknown model config {name!r}; expected one of {sorted(NAMED)}')
  cfg = NAMED[name]()
  return dataclasses.replace(cfg, **overrides) if overrides else cfg
