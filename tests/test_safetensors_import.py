"""HF safetensors Gemma 3 import, checked against transformers' logits without torch.

tests/fixtures/tiny_gemma3_hf/ was saved by transformers (benchmarks/parity_safetensors.py): a
random 3-layer Gemma3ForCausalLM in bf16 with a sliding window of 8, linear RoPE scaling on the
global layer and query_pre_attn_scalar != head_dim, plus its fp32 logits on 24-token rows.
"""

import json
import pathlib
import shutil

import jax.numpy as jnp
import numpy as np
import pytest

from ttc_jax.model import checkpoint
from ttc_jax.model import safetensors_import as st
from ttc_jax.model.config import AttentionType
from ttc_jax.model.transformer import Transformer

FIXTURE = pathlib.Path(__file__).resolve().parent / 'fixtures' / 'tiny_gemma3_hf'


def test_logits_match_transformers():
  config, params = st.load(FIXTURE)
  assert config.attention_types == (AttentionType.LOCAL_SLIDING, AttentionType.GLOBAL,
                                    AttentionType.LOCAL_SLIDING)
  assert config.global_scale_factor == 8.0 and config.query_pre_attn_scalar == 24 ** -0.5
  checkpoint.check_tree(params, config, 'HF checkpoint')
  with np.load(FIXTURE / 'reference.npz') as ref:
    tokens, expected = ref['tokens'], ref['logits']
  logits = np.asarray(Transformer(config).apply(
      {'params': params}, jnp.asarray(tokens)).logits)
  err = np.abs(logits - expected).max() / np.abs(expected).max()
  assert err < 1e-5, err
  np.testing.assert_array_equal(logits.argmax(-1), expected.argmax(-1))


def test_missing_directory_and_files(tmp_path):
  with pytest.raises(FileNotFoundError, match='config.json not found'):
    st.load(tmp_path / 'absent')
  shutil.copy(FIXTURE / 'config.json', tmp_path / 'config.json')
  with pytest.raises(FileNotFoundError, match='has no model.safetensors'):
    st.load(tmp_path)


def test_truncated_weights_are_a_one_line_error(tmp_path):
  shutil.copy(FIXTURE / 'config.json', tmp_path / 'config.json')
  data = (FIXTURE / 'model.safetensors').read_bytes()
  (tmp_path / 'model.safetensors').write_bytes(data[:len(data) // 2])
  with pytest.raises(ValueError, match='could not be read') as e:
    st.load(tmp_path)
  assert '\n' not in str(e.value)


def test_wrong_model_type_and_missing_layer(tmp_path):
  cfg = json.loads((FIXTURE / 'config.json').read_text())
  with pytest.raises(ValueError, match="model_type 'llama'"):
    st.read_config(dict(cfg, model_type='llama'))
  shutil.copy(FIXTURE / 'model.safetensors', tmp_path / 'model.safetensors')
  (tmp_path / 'config.json').write_text(json.dumps(dict(cfg, num_hidden_layers=4,
                                                        layer_types=None)))
  with pytest.raises(ValueError, match="no tensor 'model.layers.3.self_attn.q_proj.weight'"):
    st.load(tmp_path)
