"""Hugging Face Gemma 3 checkpoints (`config.json` + safetensors) into our parameter tree.

Reads `model.safetensors` or the shards of `model.safetensors.index.json` with the `safetensors`
package (no torch). HF's Gemma RMSNorm is `x * (1 + w)` like ours, so norms copy unchanged; torch
Linear weights are [out, in] and are reshaped to the official einsum layouts.
"""

from __future__ import annotations

import dataclasses
import json
import os
import pathlib

import numpy as np
from safetensors import safe_open

from ttc_jax.errors import BadInputError, MissingInputError
from ttc_jax.model.config import AttentionType, TransformerConfig, gemma3

_TYPES = {'sliding_attention': AttentionType.LOCAL_SLIDING, 'full_attention': AttentionType.GLOBAL}
# Gemma3ForConditionalGeneration keeps the text model under one of these.
_PREFIXES = ('model.language_model.', 'language_model.model.', 'model.')


def _rope(cfg: dict, kind: str) -> tuple[float, float]:
  """(base, linear scale factor) of `kind` layers in a transformers 4.x or 5.x config."""
  params = cfg.get('rope_parameters')
  if isinstance(params, dict) and kind in params:
    p = params[kind]
  elif kind == 'sliding_attention':
    p = {'rope_theta': cfg.get('rope_local_base_freq', 10_000.0)}
  else:
    p = {'rope_theta': cfg.get('rope_theta', 1_000_000.0), **(cfg.get('rope_scaling') or {})}
  rope_type = p.get('rope_type', p.get('type', 'default'))
  if rope_type not in ('default', 'linear'):
    raise BadInputError(f'rope_type {rope_type!r} of {kind} layers is not supported (default, linear)')
  return float(p['rope_theta']), float(p.get('factor', 1.0)) if rope_type == 'linear' else 1.0


def read_config(cfg: dict, where: str = 'config.json') -> TransformerConfig:
  """Our config from a Gemma3TextConfig dict (or a Gemma3Config's `text_config`)."""
  cfg = cfg.get('text_config', cfg)
  if cfg.get('model_type') not in ('gemma3_text', 'gemma3'):
    raise BadInputError(f'{where} has model_type {cfg.get("model_type")!r}; expected gemma3_text')
  for key in ('vocab_size', 'hidden_size', 'intermediate_size', 'num_hidden_layers',
              'num_attention_heads', 'num_key_value_heads', 'head_dim'):
    if key not in cfg:
      raise BadInputError(f'{where} has no {key!r}; expected a Gemma 3 text config')
  if cfg.get('hidden_activation', 'gelu_pytorch_tanh') != 'gelu_pytorch_tanh':
    raise BadInputError(f'{where}: hidden_activation {cfg["hidden_activation"]!r}; ours is the '
                     'tanh-approximate GELU')
  n = cfg['num_hidden_layers']
  layer_types = cfg.get('layer_types') or [
      'full_attention' if (i + 1) % cfg.get('sliding_window_pattern', 6) == 0
      else 'sliding_attention' for i in range(n)]
  local_base, local_scale = _rope(cfg, 'sliding_attention')
  global_base, global_scale = _rope(cfg, 'full_attention')
  config = gemma3(
      vocab_size=cfg['vocab_size'], embed_dim=cfg['hidden_size'],
      hidden_dim=cfg['intermediate_size'], num_heads=cfg['num_attention_heads'],
      head_dim=cfg['head_dim'], num_kv_heads=cfg['num_key_value_heads'], num_layers=n,
      sliding_window_size=cfg.get('sliding_window') or 4096,
      final_logit_softcap=cfg.get('final_logit_softcapping'),
      attn_logits_soft_cap=cfg.get('attn_logit_softcapping'),
      local_scale_factor=local_scale, global_base_frequency=int(global_base),
      global_scale_factor=global_scale)
  # Fields the gemma3 preset fixes, but that a checkpoint may set otherwise.
  return dataclasses.replace(
      config, attention_types=tuple(_TYPES[t] for t in layer_types),
      local_base_frequency=int(local_base),
      query_pre_attn_scalar=float(cfg.get('query_pre_attn_scalar', cfg['head_dim'])) ** -0.5)


def _read_tensors(directory: pathlib.Path) -> dict[str, np.ndarray]:
  index = directory / 'model.safetensors.index.json'
  if index.is_file():
    files = sorted(set(json.loads(index.read_text())['weight_map'].values()))
  elif (directory / 'model.safetensors').is_file():
    files = ['model.safetensors']
  else:
    raise MissingInputError(f'{directory} has no model.safetensors or '
                            'model.safetensors.index.json; expected a HF checkpoint directory')
  tensors = {}
  for name in files:
    try:
      # framework='flax' reads bfloat16 too (numpy has no bfloat16); we keep float32 numpy.
      with safe_open(directory / name, framework='flax') as f:
        for key in f.keys():
          tensors[key] = np.asarray(f.get_tensor(key), np.float32)
    except Exception as e:  # safetensors raises its own error types for truncated files.
      raise BadInputError(f'{directory / name} could not be read ({type(e).__name__}: '
                       f'{str(e).splitlines()[0][:160]}); expected a complete safetensors '
                       'file') from None
  return tensors


def convert_params(tensors: dict[str, np.ndarray], config: TransformerConfig) -> dict:
  """HF Gemma 3 state dict (numpy) -> our tree."""
  prefix = next((p for p in _PREFIXES if f'{p}embed_tokens.weight' in tensors), None)
  if prefix is None:
    raise BadInputError('checkpoint has no embed_tokens.weight; expected a Gemma 3 causal LM')
  c = config
  n, k, h, d = c.num_heads, c.num_kv_heads, c.head_dim, c.embed_dim

  def get(name: str) -> np.ndarray:
    if prefix + name not in tensors:
      raise BadInputError(f'checkpoint has no tensor {prefix + name!r}; expected {c.num_layers} '
                       'Gemma 3 layers')
    return tensors[prefix + name]

  to_einsum = lambda w, heads: w.reshape(heads, h, d).transpose(0, 2, 1)  # [N*H, D] -> [N, D, H]
  params = {'embedder': {'input_embedding': get('embed_tokens.weight')},
            'final_norm': {'scale': get('norm.weight')}}
  for i in range(c.num_layers):
    w = lambda name: get(f'layers.{i}.{name}.weight')
    s = lambda name: {'scale': w(name)}
    params[f'layer_{i}'] = {
        'attn': {
            'q_einsum': {'w': to_einsum(w('self_attn.q_proj'), n)},
            'kv_einsum': {'w': np.stack([to_einsum(w('self_attn.k_proj'), k),
                                         to_einsum(w('self_attn.v_proj'), k)])},
            'attn_vec_einsum': {'w': w('self_attn.o_proj').T.reshape(n, h, d)},
            '_query_norm': s('self_attn.q_norm'),
            '_key_norm': s('self_attn.k_norm'),
        },
        'mlp': {'gating_einsum': np.stack([w('mlp.gate_proj'), w('mlp.up_proj')]),
                'linear': w('mlp.down_proj').T},
        'pre_attention_norm': s('input_layernorm'),
        'post_attention_norm': s('post_attention_layernorm'),
        'pre_ffw_norm': s('pre_feedforward_layernorm'),
        'post_ffw_norm': s('post_feedforward_layernorm'),
    }
  if f'layers.{c.num_layers}.input_layernorm.weight' in {k[len(prefix):] for k in tensors}:
    raise BadInputError(f'checkpoint has more than the {c.num_layers} layers of its config')
  lm_head = tensors.get('lm_head.weight')
  if lm_head is not None and not np.array_equal(lm_head, params['embedder']['input_embedding']):
    raise BadInputError('checkpoint has an untied lm_head.weight; Gemma ties it to embed_tokens')
  return params


def load(directory: str | os.PathLike) -> tuple[TransformerConfig, dict]:
  """(config, float32 numpy params) of a HF Gemma 3 checkpoint directory."""
  directory = pathlib.Path(directory)
  config_path = directory / 'config.json'
  if not config_path.is_file():
    raise MissingInputError(f'{config_path} not found; expected a HF checkpoint directory')
  try:
    cfg = json.loads(config_path.read_text())
  except json.JSONDecodeError as e:
    raise BadInputError(f'{config_path} is not valid JSON ({e.msg})') from None
  config = read_config(cfg, str(config_path))
  return config, convert_params(_read_tensors(directory), config)
