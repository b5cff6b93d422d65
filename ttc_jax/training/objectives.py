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
from ttc_jax.tokenizer import EOS_ID
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
    segments = None if batch.segment_ids is None else batch.segment_ids[:, :-1]
    out = Transformer(config).apply({'params': params}, batch.tokens[:, :-1],
                                    segment_ids_BxT=segments)
    targets, weights = batch.tokens[:, 1:], batch.loss_mask[:, 1:]
    if batch.segment_ids is not None:
      # A target in another segment than its input is not predictable from it. `pack_segments`
      # never marks such a target; this keeps hand-made packed batches from training on one.
      weights = weights * (batch.segment_ids[:, 1:] == segments)
    nll = optax.softmax_cross_entropy_with_integer_labels(out.logits.astype(jnp.float32), targets)
    total = jnp.maximum(weights.sum(), 1.0)
    loss = (nll * weights).sum() / total
    accuracy = ((jnp.argmax(out.logits, -1) == targets) * weights).sum() / total
    return loss, {'loss': loss, 'token_accuracy': accuracy}


NUM_LIKELIHOOD_FEATURES = 2


def likelihood_features(logits_BxTxV: jax.Array, tokens_BxT: jax.Array,
                        completion_BxT: jax.Array) -> jax.Array:
  """[B, T, 2] per position t: the backbone's probability of the least likely completion token
  up to t, and of the whole completion up to t (both 1 before the completion starts).

  Token t's probability is read from the logits at t-1, so position t sees tokens <= t only: the
  features are causal, like the activation beside them. Probabilities, not log-probabilities: a
  logit linear in them can be a step (a sample with one unlikely token is about as bad as one
  with many), which a logit linear in log-probabilities cannot (docs/verifier.md, section 5).
  """
  logp = jax.nn.log_softmax(logits_BxTxV[:, :-1].astype(jnp.float32), axis=-1)
  token_lp = jnp.take_along_axis(logp, tokens_BxT[:, 1:, None], axis=-1)[..., 0]
  token_lp = jnp.pad(token_lp, ((0, 0), (1, 0)))
  token_lp = jnp.where(completion_BxT > 0, token_lp, 0.0)
  return jnp.exp(jnp.stack([jax.lax.cummin(token_lp, axis=1), jnp.cumsum(token_lp, axis=1)],
                           axis=-1))


def head_inputs(config: TransformerConfig, backbone, tokens_BxT: jax.Array,
                completion_BxT: jax.Array, eos_id: int) -> jax.Array:
  """One forward pass of the backbone -> what the value head reads at every position:
  [B, T, embed_dim + 3] = [final-norm activation ; `likelihood_features` ; 1 at the
  completion's EOS (the end of the answer step) else 0].

  completion_BxT: 1 on completion tokens (after the prompt), 0 on the prompt and padding.
  """
  out = Transformer(config).apply({'params': backbone}, tokens_BxT, return_hidden=True)
  final = ((tokens_BxT == eos_id) & (completion_BxT > 0)).astype(jnp.float32)
  return jnp.concatenate([out.hidden.astype(jnp.float32),
                          likelihood_features(out.logits, tokens_BxT, completion_BxT),
                          final[..., None]], axis=-1)


def head_input_size(config: TransformerConfig) -> int:
  return config.embed_dim + NUM_LIKELIHOOD_FEATURES + 1


class ValueHead(nn.Module):
  """Scalar logit per position from `head_inputs` x = [activation ; likelihood ; final]:
  proj(x) at every step end, plus final_proj(x) at the answer step's end. Both start at 0.

  The head reads the likelihood because on the activation alone it learns how hard the problem
  is, not whether the steps are right; the answer step has weights of its own because its label
  is the outcome itself, while a step's is a Monte-Carlo estimate of it: one set of weights
  fit to both is softest where selection reads it (docs/verifier.md, sections 5-6).
  """

  @nn.compact
  def __call__(self, inputs_BxTxF):
    x, final = inputs_BxTxF[..., :-1], inputs_BxTxF[..., -1]
    dense = lambda name: nn.Dense(1, kernel_init=nn.initializers.zeros, name=name)(x)[..., 0]
    return dense('proj') + final * dense('final_proj')


def init_head(config: TransformerConfig, key: jax.Array):
  return ValueHead().init(key, jnp.zeros((1, 1, head_input_size(config))))['params']


def value_logits(config: TransformerConfig, params, tokens_BxT: jax.Array,
                 completion_BxT: jax.Array, eos_id: int) -> jax.Array:
  """One forward pass -> a value logit at every position ([B, T]); params {'transformer',
  'value_head'}. completion_BxT and eos_id as in `head_inputs`."""
  return ValueHead().apply({'params': params['value_head']}, head_inputs(
      config, params['transformer'], tokens_BxT, completion_BxT, eos_id))


def _bce(logits_BxT: jax.Array, batch: Batch) -> tuple[jax.Array, dict[str, jax.Array]]:
  bce = optax.sigmoid_binary_cross_entropy(logits_BxT, batch.value_targets)
  total = jnp.maximum(batch.value_mask.sum(), 1.0)
  loss = (bce * batch.value_mask).sum() / total
  brier = ((jax.nn.sigmoid(logits_BxT) - batch.value_targets) ** 2 * batch.value_mask).sum() / total
  return loss, {'loss': loss, 'brier': brier}


@dataclasses.dataclass(frozen=True)
class ValueRegression:
  """Backbone and head trained together: BCE of sigmoid(value logit) against per-position soft
  labels where value_mask is 1; the batch's loss_mask marks the completion (`value_logits`)."""
  config: TransformerConfig
  eos_id: int = EOS_ID

  def init(self, key: jax.Array, backbone=None):
    k1, k2 = jax.random.split(key)
    backbone = init_params(self.config, k1) if backbone is None else backbone
    return {'transformer': backbone, 'value_head': init_head(self.config, k2)}

  def loss(self, params, batch: Batch) -> tuple[jax.Array, dict[str, jax.Array]]:
    return _bce(value_logits(self.config, params, batch.tokens, batch.loss_mask, self.eos_id),
                batch)


@dataclasses.dataclass(frozen=True)
class HeadRegression:
  """The head alone on a frozen backbone: the same BCE, on `head_inputs` computed once per
  example (batch.features [B, T, F]) instead of a backbone pass per step. Params {'value_head'}.

  Freezing keeps the likelihood the head reads the trained LM's (fine-tuning the backbone on the
  value labels loses what it knows; docs/verifier.md, section 5).
  """
  config: TransformerConfig

  def init(self, key: jax.Array):
    return {'value_head': init_head(self.config, key)}

  def loss(self, params, batch: Batch) -> tuple[jax.Array, dict[str, jax.Array]]:
    return _bce(ValueHead().apply({'params': params['value_head']}, batch.features), batch)
