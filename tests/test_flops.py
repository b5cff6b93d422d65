"""The FLOPs formulas on hand-computed cases: 6ND, 2ND, attention's context term, the exchange."""

import dataclasses

import pytest

from ttc_jax.compute import flops
from ttc_jax.model.config import AttentionType, gemma3


def _config(types):
  c = gemma3(vocab_size=64, embed_dim=16, hidden_dim=32, num_heads=2, head_dim=4, num_kv_heads=1,
             num_layers=len(types), sliding_window_size=3)
  return dataclasses.replace(c, attention_types=tuple(types))


def test_training_and_forward():
  assert flops.training(10, 100) == 6000
  assert flops.forward(10, 100) == 2000


@pytest.mark.parametrize('start,new,window,pairs', [
    (0, 4, None, 1 + 2 + 3 + 4),
    (2, 3, None, 3 + 4 + 5),
    (0, 5, 3, 1 + 2 + 3 + 3 + 3),
    (4, 2, 3, 3 + 3),
    (1, 4, 3, 2 + 3 + 3 + 3),
    (0, 3, 3, 1 + 2 + 3),
    (5, 0, None, 0),
])
def test_attention_pairs(start, new, window, pairs):
  assert flops._pairs(start, new, window) == pairs


def test_attention_counts_every_layer_and_its_window():
  g, l = AttentionType.GLOBAL, AttentionType.LOCAL_SLIDING
  d_attn = 2 * 4
  # 5 queries from position 0: a global layer sees 1..5 keys (15 pairs), a window-3 one 12.
  assert flops.attention(_config([g, l]), 0, 5) == 4 * d_attn * (15 + 12)
  assert flops.attention(_config([g]), 2, 3) == 4 * d_attn * 12
  # After a long context the windowed layer reads the window only.
  assert flops.attention(_config([l]), 100, 10) == 4 * d_attn * 30


def test_exchange_generations():
  # The paper's three regimes for M = 14.7: K = M + 3 (M - 1) / R.
  assert flops.exchange_generations(14.7, 0.16) == pytest.approx(14.7 + 3 * 13.7 / 0.16)
  assert flops.exchange_generations(14.7, 22) == pytest.approx(16.568, abs=1e-3)
  assert flops.exchange_generations(1, 0.5) == 1  # same size: one generation each
  with pytest.raises(ValueError, match='R > 0'):
    flops.exchange_generations(14.7, 0)


def test_exchange_allowance_matches_k():
  # N_S = 1, N_L = 10, 5 tokens per answer, R = 1: 2*10*5 + 6*9*5 = 370 FLOPs per question,
  # K = 10 + 27 = 37 generations of 2*1*5 FLOPs.
  assert flops.exchange_allowance(1, 10, 5, 1.0) == 370
  assert flops.exchange_allowance(1, 10, 5, 1.0) == pytest.approx(
      flops.exchange_generations(10, 1.0) * flops.forward(1, 5))


def test_cost_columns():
  c = flops.Cost(generations=4, sampled_tokens=100, prompt_tokens=10, verifier_tokens=150,
                 attention_pairs_flops=7)
  assert c.paper(2) == 400
  assert c.with_verifier(2, 3) == 2 * 2 * 110 + 2 * 3 * 150
  assert c.with_attention(2, 3) == c.with_verifier(2, 3) + 7
  assert c.plus(c).sampled_tokens == 200
  d = c.as_dict(2, 3)
  assert d['flops_paper'] == 400 and d['generations'] == 4
