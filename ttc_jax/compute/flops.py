"""FLOPs: the paper's accounting (Section 7), ours with the verifier charged, and attention's term.

The paper counts pretraining X = 6·N·D_pretrain and inference Y = 2·N·D_inference, D the tokens
(Kaplan et al., 2020). That ignores attention's context term: every token's query meets the
key and value of every position it attends to, 4·d_attn FLOPs per (query, key) pair per layer
(2 for q·k, 2 for the weighted sum of v; Hoffmann et al., 2022, Appendix F), which for a long
context outweighs 2·N. `attention` counts it (a sliding-window layer reads at most its window).

The exchange: a model M times larger, run greedily, costs M·(X + Y). The small model matches it
with K = M + 3(M - 1) / R generations per question, R = D_inference / D_pretrain.
"""

from __future__ import annotations

import dataclasses

from ttc_jax.model.config import AttentionType, TransformerConfig


def training(num_params: float, tokens: float) -> float:
  """6·N·D: forward and backward over D training tokens."""
  return 6.0 * num_params * tokens


def forward(num_params: float, tokens: float) -> float:
  """2·N·D: the parameters' FLOPs of reading or generating D tokens."""
  return 2.0 * num_params * tokens


def _pairs(start: int, new: int, window: int | None) -> int:
  """(query, key) pairs of queries at positions start .. start+new-1, each attending to itself
  and the positions before it (at most `window` positions in all)."""
  if new <= 0:
    return 0
  lo, hi = start + 1, start + new  # the number of positions each query sees, unwindowed
  if window is None or hi <= window:
    return (lo + hi) * new // 2
  if lo >= window:
    return window * new
  below = (lo + window) * (window - lo + 1) // 2  # queries seeing lo .. window positions
  return below + window * (hi - window)


def attention(config: TransformerConfig, start: int, new: int) -> float:
  """Attention's context FLOPs of `new` tokens at positions start.. (after `start` tokens of
  context in the KV cache): 4·num_heads·head_dim per pair per layer."""
  d_attn = config.num_heads * config.head_dim
  total = 0
  for kind in config.attention_types:
    window = config.sliding_window_size if kind is AttentionType.LOCAL_SLIDING else None
    total += _pairs(int(start), int(new), window)
  return 4.0 * d_attn * total


def exchange_generations(m: float, r: float) -> float:
  """K: generations per question at which the small model spends the FLOPs of an M-times-larger
  model's one greedy answer (both pretrained on the same tokens), at R = D_inference/D_pretrain."""
  if m < 1 or r <= 0:
    raise ValueError(f'exchange needs M >= 1 and R > 0; got M={m}, R={r}')
  return m + 3.0 * (m - 1.0) / r


def exchange_allowance(n_small: float, n_large: float, large_tokens: float, r: float) -> float:
  """FLOPs per question the small model may spend so that small pretraining plus inference
  equals the large model's: (6·N_L·D_p + 2·N_L·D_i - 6·N_S·D_p) / Q, with D_i = R·D_p = Q·t,
  t = `large_tokens`, the large model's tokens per greedy answer."""
  if r <= 0:
    raise ValueError(f'exchange needs R > 0; got R={r}')
  return 2.0 * n_large * large_tokens + 6.0 * (n_large - n_small) * large_tokens / r


@dataclasses.dataclass(frozen=True)
class Cost:
  """One strategy's mean compute per question: the tokens, and the FLOPs three ways."""
  generations: float
  sampled_tokens: float  # the proposer's generated tokens (the paper's D_inference)
  prompt_tokens: float  # tokens the proposer read without generating them (prompts, contexts)
  verifier_tokens: float  # tokens the verifier read
  attention_pairs_flops: float  # attention's context FLOPs of proposer and verifier

  def paper(self, n_proposer: float) -> float:
    """The paper's Y per question: 2·N·(generated tokens)."""
    return forward(n_proposer, self.sampled_tokens)

  def with_verifier(self, n_proposer: float, n_verifier: float) -> float:
    """Ours: every token each model reads or writes, the verifier's included."""
    return (forward(n_proposer, self.sampled_tokens + self.prompt_tokens)
            + forward(n_verifier, self.verifier_tokens))

  def with_attention(self, n_proposer: float, n_verifier: float) -> float:
    return self.with_verifier(n_proposer, n_verifier) + self.attention_pairs_flops

  def plus(self, other: Cost) -> Cost:
    return Cost(*(a + b for a, b in zip(dataclasses.astuple(self), dataclasses.astuple(other))))

  def scaled(self, factor: float) -> Cost:
    return Cost(*(x * factor for x in dataclasses.astuple(self)))

  @staticmethod
  def sum(costs) -> Cost:
    total = Cost(0, 0, 0, 0, 0)
    for c in costs:
      total = total.plus(c)
    return total

  def as_dict(self, n_proposer: float, n_verifier: float) -> dict:
    return {**dataclasses.asdict(self), 'flops_paper': self.paper(n_proposer),
            'flops_with_verifier': self.with_verifier(n_proposer, n_verifier),
            'flops_with_attention': self.with_attention(n_proposer, n_verifier)}


# --- the measured cost of a strategy ----------------------------------------------------------
# `shapes`: {"proposer": TransformerConfig, "verifier": TransformerConfig}.

def search_cost(row: dict, shapes: dict) -> Cost:
  """One problem's search run: its measured tokens; attention estimated with every generation a
  sequence of the run's mean generation length after the prompt (prefixes shared by beams are
  counted once in the tokens, not in this estimate)."""
  g, p = row['generations'], row['prompt_tokens']
  gen = round(row['proposer_tokens'] / max(g, 1))
  ver = round(row['verifier_tokens'] / max(g, 1))
  attn = g * (attention(shapes['proposer'], p, gen) + attention(shapes['verifier'], p, ver))
  return Cost(g, row['proposer_tokens'], p, row['verifier_tokens'], attn)


def revision_cost(chains: list[list[dict]], num_chains: int, length: int, prompt_len: int,
                  window: int, shapes: dict) -> Cost:
  """The first `num_chains` chains' first `length` attempts: exact contexts. Attempt j sees the
  prompt and its `window` latest earlier attempts, each followed by the question again; attempts
  up to the window continue the chain's KV cache (a prompt-length chunk is read), later ones
  prefill their window afresh; round 1's prompt is read once for all chains."""
  sampled = prompt = verifier = attn = 0.0
  for i, chain in enumerate(chains[:num_chains]):
    lengths = [a['tokens'] for a in chain[:length]]
    for j, t in enumerate(lengths):
      context = prompt_len + sum(x + prompt_len for x in lengths[max(0, j - window):j])
      read = (prompt_len if i == 0 else 0) if j == 0 else (prompt_len if j <= window else context)
      sampled, prompt, verifier = sampled + t, prompt + read, verifier + prompt_len + t
      attn += (attention(shapes['proposer'], context - read, read)
               + attention(shapes['proposer'], context, t)
               + attention(shapes['verifier'], 0, prompt_len + t))
  return Cost(num_chains * length, sampled, prompt, verifier, attn)
