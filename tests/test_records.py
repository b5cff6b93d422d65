"""TFDS array_record builders without TensorFlow: round trip, atomic writes, reruns, bad inputs."""

import importlib.util
import json
import os

import pytest

from ttc_jax.tasks import arith, records

SIZES = (('train', 60), ('validation', 20), ('test', 20))
CONFIG = arith.ArithConfig.make(seed=5, sizes=SIZES, num_ops_range=(1, 4))


class JsonlToy(records.JsonRecordsBuilder):
  """A builder reading local JSONL, like GSM8K / MATH500 will."""
  name = 'jsonl_toy'
  VERSION = '1.0.0'
  TEXT_FIELDS = ('problem',)
  INT_FIELDS = ('level',)
  MANUAL_FILES = ('test.jsonl',)
  MANUAL_DOWNLOAD_INSTRUCTIONS = 'Put test.jsonl in manual_dir.'

  def _split_records(self, dl_manager):
    rows = records.read_jsonl(dl_manager.manual_dir / 'test.jsonl')
    return {'test': ({'problem': r['problem'], 'level': r['level']} for r in rows)}


def test_tensorflow_is_absent():
  assert importlib.util.find_spec('tensorflow') is None


def test_arith_round_trip_matches_the_generator(tmp_path):
  splits = arith.make_splits(5, dict(SIZES), (1, 4))
  for name, problems in splits.items():
    loaded = records.load_split(arith.ArithBuilder, name, tmp_path, config=CONFIG)
    assert loaded == [p.to_record() for p in problems]  # Same order, str not bytes, int not numpy.
    assert all(type(r['question']) is str and type(r['answer']) is int for r in loaded)
  assert records.load_split('arith', 'test', tmp_path, config=CONFIG) == loaded


def test_rerun_reuses_finished_data(tmp_path, monkeypatch):
  first = records.load_split(arith.ArithBuilder, 'test', tmp_path, config=CONFIG)
  monkeypatch.setattr(arith, 'make_splits', lambda *a, **k: pytest.fail('rebuilt finished data'))
  assert records.load_split(arith.ArithBuilder, 'test', tmp_path, config=CONFIG) == first


def test_a_failed_build_leaves_nothing_half_written(tmp_path, monkeypatch):
  def crash(*args, **kwargs):
    yield arith.generate(1, seed=0)[0]
    raise RuntimeError('killed mid-build')
  real = arith.make_splits
  monkeypatch.setattr(arith, 'make_splits', lambda *a, **k: {'train': crash(), 'test': []})
  with pytest.raises(RuntimeError, match='mid-build'):
    records.load_split(arith.ArithBuilder, 'test', tmp_path, config=CONFIG)
  leftovers = [p.name for p in (tmp_path / 'arith').rglob('*') if CONFIG.name in str(p)]
  assert leftovers == [CONFIG.name]  # Neither the version folder nor a temporary one.
  monkeypatch.setattr(arith, 'make_splits', real)
  assert len(records.load_split(arith.ArithBuilder, 'test', tmp_path, config=CONFIG)) == 20


def test_config_names_differ_with_their_parameters():
  assert arith.ArithConfig.make(seed=5) == arith.ArithConfig.make(seed=5)
  names = {arith.ArithConfig.make(**kw).name for kw in
           [{}, {'seed': 1}, {'num_ops_range': (1, 9)}, {'max_operand': 9}, {'sizes': SIZES}]}
  assert len(names) == 5


def test_manual_dir_jsonl_builder(tmp_path):
  manual = tmp_path / 'manual'
  manual.mkdir()
  rows = [{'problem': 'What is $\\frac{1}{2}$?\nÜber', 'level': 3, 'unused': 1},
          {'problem': 'x', 'level': 5}]
  (manual / 'test.jsonl').write_text('\n'.join(json.dumps(r) for r in rows) + '\n')
  loaded = records.load_split(JsonlToy, 'test', tmp_path / 'data', manual_dir=manual)
  assert loaded == [{'problem': r['problem'], 'level': r['level']} for r in rows]


def test_bad_inputs_raise_one_line_errors_naming_the_path(tmp_path):
  missing = tmp_path / 'nowhere'
  with pytest.raises(FileNotFoundError, match=str(missing / 'test.jsonl')):
    records.load_split(JsonlToy, 'test', tmp_path / 'data', manual_dir=missing)
  with pytest.raises(ValueError, match='manual_dir'):
    records.load_split(JsonlToy, 'test', tmp_path / 'data')
  a_file = tmp_path / 'file'
  a_file.write_text('')
  with pytest.raises(ValueError, match=f'data_dir {a_file} is a file'):
    records.load_split(arith.ArithBuilder, 'test', a_file, config=CONFIG)
  with pytest.raises(ValueError, match="split 'dev' not in arith"):
    records.load_split(arith.ArithBuilder, 'dev', tmp_path / 'data', config=CONFIG)
  bad = tmp_path / 'bad.jsonl'
  bad.write_text('{"a": 1}\nnot json\n')
  with pytest.raises(ValueError, match=f'{bad}:2 is not a JSON object'):
    list(records.read_jsonl(bad))


@pytest.mark.skipif(os.geteuid() == 0, reason='root can write to a read-only directory')
def test_read_only_data_dir(tmp_path):
  read_only = tmp_path / 'ro'
  read_only.mkdir()
  read_only.chmod(0o555)
  with pytest.raises(ValueError, match=f'data_dir {read_only} is not a writable directory'):
    records.load_split(arith.ArithBuilder, 'test', read_only, config=CONFIG)
