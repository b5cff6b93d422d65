"""Training objectives for the one trainer: next-token LM / SFT (masked) and a value head (BCE).

An objective owns its parameter tree (`init`) and its loss; the trainer owns everything else.
"""

from __future__ import annotations

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from ttc_jax.model.config import TransformerConfig
from ttc_jax.model.transformer import Transformer, init_params
from ttc_jax.training.data import Batch


@dataclasses.dataclass(frozen=True)
class LanguageModeling:
  """Cross-entropy on tokens whose loss_mask is 1 (the completion for SFT, all text for LM).

  With `compute_dtype` (e.g. 'bfloat16') the forward and backward run in that precision on a
  cast of the params, whose master copy (and the optimizer state) keeps the config's dtype.
  """
  config: TransformerConfig
  compute_dtype: str | None = None

  def init(self, key: jax.Array):
    return init_params(self.config, key)

  def loss(self, params, batch: Batch) -> tuple[jax.Array, dict[str, jax.Array]]:
    config = self.config
    if self.compute_dtype:
      config = dataclasses.replace(config, dtype=self.compute_dtype)
      params = jax.tree.map(lambda x: x.astype(self.compute_dtype), params)
    out = Transformer(config).apply({'params': params}, batch.tokens[:, :-1])
    targets, weights = batch.tokens[:, 1:], batch.loss_mask[:, 1:]
    nll = optax.softmax_cross_entropy_with_integer_labels(out.logits.astype(jnp.float32), targets)
    total = jnp.maximum(weights.sum(), 1.0)
    loss = (nll * weights).sum() / total
    accuracy = ((jnp.argmax(out.logits, -1) == targets) * weights).sum() / total
    return loss, {'loss': loss, 'token_accuracy': accuracy}


class ValueHead(nn.Module):
  """Scalar logit per position on top of the backbone's final-norm activations."""

  @nn.compact
  def __call__(self, hidden_BxTxD):
    return nn.Dense(1, name='proj')(hidden_BxTxD.astype(jnp.float32))[..., 0]


def value_logits(config: TransformerConfig, params, tokens_BxT: jax.Array) -> jax.Array:
  """One forward pass -> a value logit at every position ([B, T])."""
  out = Transformer(config).apply({'params': params['transformer']}, tokens_BxT,
                                  return_hidden=True)
  return ValueHead().apply({'params': params['value_head']}, out.hidden)


@dataclasses.dataclass(frozen=True)
class ValueRegression:
  """BCE of sigmoid(value logit) against per-position soft labels where value_mask is 1."""
  config: TransformerConfig

  def init(self, key: jax.Array, backbone=None):
    k1, k2 = jax.random.split(key)
    backbone = init_params(self.config, k1) if backbone is None else backbone
    head = ValueHead().init(k2, jnp.zeros((1, 1, self.config.embed_dim)))['params']
    return {'transformer': backbone, 'value_head': head}

  def loss(self, params, batch: Batch) -> tuple[jax.Array, dict[str, jax.Array]]:
    logits = value_logits(self.config, params, batch.tokens)
    bce = optax.sigmoid_binary_cross_entropy(logits, batch.value_targets)
    total = jnp.maximum(batch.value_mask.sum(), 1.0)
    loss = (bce * batch.value_mask).sum() / total
    brier = ((jax.nn.sigmoid(logits) - batch.value_targets) ** 2 * batch.value_mask).sum() / total
    return loss, {'loss': loss, 'brier': brier}
