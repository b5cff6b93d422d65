"""Peer samplers for benchmarks/sampling.py: our params in the `gemma` package and in HF transformers.

Both peers are optional (they live in the `bench` extra); `missing_reason` says why one cannot run.
"""

from __future__ import annotations

import importlib.util
import os

import jax
import jax.numpy as jnp
import numpy as np

from ttc_jax.model.config import AttentionType, TransformerConfig


def missing_reason(system: str) -> str | None:
  """None when `system`'s package is importable, else why it is not."""
  needs = {'gemma': ('gemma', 'kauldron'), 'transformers': ('torch', 'transformers')}[system]
  absent = [m for m in needs if importlib.util.find_spec(m) is None]
  return f'not installed: {", ".join(absent)}' if absent else None


# --------------------------------------------------------------------------- gemma (gm.text)

def _import_gm():
  import kauldron.checkpoints as ckpts  # pylint: disable=g-import-not-at-top
  # gemma 3.3.0 refers to a name that kauldron 1.4 renamed.
  if not hasattr(ckpts, 'AbstractPartialLoader'):
    ckpts.AbstractPartialLoader = ckpts.InitTransform
  from gemma import gm  # pylint: disable=g-import-not-at-top
  return gm


def gemma_model(config: TransformerConfig):
  """`gm.nn.Transformer` with the same architecture as `config`, in fp32."""
  gm = _import_gm()
  if abs(config.query_pre_attn_scalar - config.head_dim**-0.5) > 1e-12:
    raise NotImplementedError('only query_pre_attn_scalar = head_dim**-0.5 is mapped')
  types = {AttentionType.GLOBAL: gm.nn.AttentionType.GLOBAL,
           AttentionType.LOCAL_SLIDING: gm.nn.AttentionType.LOCAL_SLIDING}
  cfg = gm.nn.config.TransformerConfig(
      num_embed=config.vocab_size, embed_dim=config.embed_dim, hidden_dim=config.hidden_dim,
      num_heads=config.num_heads, head_dim=config.head_dim, num_kv_heads=config.num_kv_heads,
      final_logit_softcap=config.final_logit_softcap,
      use_post_attn_norm=config.use_post_attn_norm, use_post_ffw_norm=config.use_post_ffw_norm,
      attention_types=tuple(types[t] for t in config.attention_types),
      query_pre_attn_norm=gm.nn.config.QueryPreAttentionNormalisation.BY_ONE_OVER_SQRT_HEAD_DIM,
      attn_logits_soft_cap=config.attn_logits_soft_cap,
      sliding_window_size=config.sliding_window_size,
      transpose_gating_einsum=config.transpose_gating_einsum, use_qk_norm=config.use_qk_norm,
      local_base_frequency=config.local_base_frequency,
      global_base_frequency=config.global_base_frequency,
      local_scale_factor=config.local_scale_factor,
      global_scale_factor=config.global_scale_factor)
  return gm.nn.Transformer(config=cfg, dtype=jnp.float32)


def gemma_logits(model, params, tokens_BxT: np.ndarray) -> np.ndarray:
  """Full-sequence logits [B, T, V] of the gemma model (no cache)."""
  return np.asarray(model.apply({'params': params}, tokens=jnp.asarray(tokens_BxT)).logits)


class GemmaSampler:
  """The two jitted stages of `gm.text.Sampler.sample` (prefill, then `SamplerLoop`), on token ids.

  `gm.text.Sampler.sample` adds only tokenization (a SentencePiece model we do not have offline)
  around these calls. Its defaults (pad prompts to 256, cache of 4096 slots) would cost gemma
  4x the prefill and 20x the attention, so we give it the same sizes as ours: no prompt padding
  and a cache of prompt + new tokens. No end tokens, so all rows run `new_tokens` steps.
  Rows are `batch` copies of the prompt (gemma has no shared-prefill fan-out).
  """

  def __init__(self, config: TransformerConfig, params, *, batch: int, prompt_len: int,
               new_tokens: int, temperature: float):
    gm = _import_gm()
    from gemma.gm.text import _sampler_loop  # pylint: disable=g-import-not-at-top
    self.model = gemma_model(config)
    self.params = params
    self.batch, self.new_tokens = batch, new_tokens
    self.cache_length = prompt_len + new_tokens
    self.loop = _sampler_loop.SamplerLoop(
        model=self.model, end_tokens=(), forbidden_tokens=None,
        sampling=gm.text.RandomSampling(temperature=temperature),
        cache_length=self.cache_length,
        special_tokens=self.model.config.input_config.special_tokens)

  def sample(self, prompt: list[int], seed: int) -> np.ndarray:
    from gemma.gm.text import _prefill  # pylint: disable=g-import-not-at-top
    from gemma.gm.utils import _types  # pylint: disable=g-import-not-at-top
    tokens = jnp.asarray(np.tile(np.asarray(prompt, np.int32), (self.batch, 1)))
    inputs = _types.Input(text=tokens, images=None, config=self.model.config.input_config)
    state = _prefill.prefill(
        model=self.model, params=self.params, input=inputs, last_state=None,
        cache_length=self.cache_length, max_out_length=self.new_tokens, pad_length=None,
        rng=jax.random.key(seed), sharding=None)
    state = self.loop.sample(params=self.params, init_state=state,
                             max_new_tokens=jnp.asarray(self.new_tokens))
    out = np.asarray(state.predicted_tokens)
    if int(state.step) != self.new_tokens:
      raise RuntimeError(f'gemma stopped after {int(state.step)} of {self.new_tokens} steps')
    return out


# --------------------------------------------------------------------------- HF transformers

def hf_model(config: TransformerConfig, params):
  """`Gemma3ForCausalLM` (fp32, CPU) holding our Gemma 3 params."""
  import torch  # pylint: disable=g-import-not-at-top
  import transformers  # pylint: disable=g-import-not-at-top

  c = config
  if not (c.use_qk_norm and c.transpose_gating_einsum and c.num_heads != c.num_kv_heads):
    raise NotImplementedError('HF conversion is written for Gemma 3 configs (q/kv einsums)')
  if c.final_logit_softcap is not None or c.attn_logits_soft_cap is not None:
    raise NotImplementedError('soft-capping is not mapped')

  def rope(base, scale):
    if scale == 1.0:
      return {'rope_type': 'default', 'rope_theta': float(base)}
    return {'rope_type': 'linear', 'rope_theta': float(base), 'factor': float(scale)}

  layer_types = ['sliding_attention' if t == AttentionType.LOCAL_SLIDING else 'full_attention'
                 for t in c.attention_types]
  hf_config = transformers.Gemma3TextConfig(
      vocab_size=c.vocab_size, hidden_size=c.embed_dim, intermediate_size=c.hidden_dim,
      num_hidden_layers=c.num_layers, num_attention_heads=c.num_heads,
      num_key_value_heads=c.num_kv_heads, head_dim=c.head_dim,
      hidden_activation='gelu_pytorch_tanh',  # flax nn.gelu defaults to the tanh approximation
      rms_norm_eps=1e-6, tie_word_embeddings=True, query_pre_attn_scalar=c.head_dim,
      sliding_window=c.sliding_window_size or 4096, layer_types=layer_types,
      rope_parameters={'full_attention': rope(c.global_base_frequency, c.global_scale_factor),
                       'sliding_attention': rope(c.local_base_frequency, c.local_scale_factor)},
      final_logit_softcapping=None, attn_logit_softcapping=None,
      pad_token_id=0, bos_token_id=2, eos_token_id=1)
  with torch.device('cpu'):
    model = transformers.Gemma3ForCausalLM(hf_config).to(torch.float32).eval()

  p = jax.tree.map(lambda x: np.asarray(x, np.float32), params)
  n, k, h, d = c.num_heads, c.num_kv_heads, c.head_dim, c.embed_dim
  sd = {'model.embed_tokens.weight': p['embedder']['input_embedding'],
        'lm_head.weight': p['embedder']['input_embedding'],
        'model.norm.weight': p['final_norm']['scale']}
  for i in range(c.num_layers):
    lp, pre = p[f'layer_{i}'], f'model.layers.{i}.'
    attn, mlp = lp['attn'], lp['mlp']
    kv = attn['kv_einsum']['w']  # [2, K, D, H]
    sd.update({
        # torch Linear weights are [out, in].
        pre + 'self_attn.q_proj.weight': attn['q_einsum']['w'].transpose(0, 2, 1).reshape(n * h, d),
        pre + 'self_attn.k_proj.weight': kv[0].transpose(0, 2, 1).reshape(k * h, d),
        pre + 'self_attn.v_proj.weight': kv[1].transpose(0, 2, 1).reshape(k * h, d),
        pre + 'self_attn.o_proj.weight': attn['attn_vec_einsum']['w'].reshape(n * h, d).T,
        pre + 'self_attn.q_norm.weight': attn['_query_norm']['scale'],
        pre + 'self_attn.k_norm.weight': attn['_key_norm']['scale'],
        pre + 'mlp.gate_proj.weight': mlp['gating_einsum'][0],  # [hidden, D]
        pre + 'mlp.up_proj.weight': mlp['gating_einsum'][1],
        pre + 'mlp.down_proj.weight': mlp['linear'].T,
        pre + 'input_layernorm.weight': lp['pre_attention_norm']['scale'],
        pre + 'post_attention_layernorm.weight': lp['post_attention_norm']['scale'],
        pre + 'pre_feedforward_layernorm.weight': lp['pre_ffw_norm']['scale'],
        pre + 'post_feedforward_layernorm.weight': lp['post_ffw_norm']['scale'],
    })
  sd = {name: torch.from_numpy(np.array(w, np.float32, order='C')) for name, w in sd.items()}
  model.load_state_dict(sd, strict=True)
  return model


def hf_logits(model, tokens_BxT: np.ndarray) -> np.ndarray:
  import torch  # pylint: disable=g-import-not-at-top
  with torch.no_grad():
    return model(input_ids=torch.from_numpy(np.asarray(tokens_BxT, np.int64))).logits.numpy()


class HFSampler:
  """`model.generate(do_sample=True, num_return_sequences=batch)`: pure sampling at temperature T,
  top_k=0 (HF defaults to 50), min_new_tokens = max_new_tokens so EOS never ends a row early."""

  def __init__(self, model, *, batch: int, new_tokens: int, temperature: float):
    import torch  # pylint: disable=g-import-not-at-top
    import transformers  # pylint: disable=g-import-not-at-top
    torch.set_num_threads(os.cpu_count())
    self.model = model
    self.gen_config = transformers.GenerationConfig(
        do_sample=True, temperature=temperature, top_k=0, top_p=1.0,
        max_new_tokens=new_tokens, min_new_tokens=new_tokens, num_return_sequences=batch,
        eos_token_id=model.config.eos_token_id, pad_token_id=0, bos_token_id=2)
    self.new_tokens = new_tokens

    self.batch = batch

  def sample(self, prompt: list[int], seed: int) -> np.ndarray:
    import torch  # pylint: disable=g-import-not-at-top
    torch.manual_seed(seed)
    ids = torch.tensor([prompt], dtype=torch.long)
    with torch.no_grad():
      out = self.model.generate(input_ids=ids, attention_mask=torch.ones_like(ids),
                                generation_config=self.gen_config)
    new = out[:, len(prompt):].numpy()
    if new.shape != (self.batch, self.new_tokens):
      raise RuntimeError(f'transformers generated {new.shape}, expected '
                         f'{(self.batch, self.new_tokens)}')
    return new
