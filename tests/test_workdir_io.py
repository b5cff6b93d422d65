"""Workdir I/O: atomic writes follow the umask and leave no temporaries; damaged artifacts are
one-line errors naming the file and the stage to rerun."""

import glob
import json
import os

import numpy as np
import pytest

from ttc_jax import tokenizer as tok_lib
from ttc_jax import workdir as wd
from ttc_jax.errors import CorruptArtifactError, MissingInputError
from ttc_jax.tasks import arith, records


def _error(fn, *args, **kwargs) -> str:
  """The message of the CorruptArtifactError `fn` raises, checked to be one line."""
  with pytest.raises(CorruptArtifactError) as info:
    fn(*args, **kwargs)
  message = str(info.value)
  assert '\n' not in message and 'Traceback' not in message
  return message


@pytest.fixture
def umask_022():
  old = os.umask(0o022)
  yield 0o644
  os.umask(old)


def test_writes_follow_the_umask(tmp_path, umask_022):
  paths = [tmp_path / 'a.txt', tmp_path / 'b.json', tmp_path / 'c.npz', tmp_path / 'd.bin']
  wd.atomic_write_text(str(paths[0]), 'hello')
  wd.atomic_write_json(str(paths[1]), {'a': 1})
  wd.atomic_write_npz(str(paths[2]), x=np.arange(3))
  wd.atomic_write_bytes(str(paths[3]), b'\0\1')
  assert [p.stat().st_mode & 0o777 for p in paths] == [umask_022] * 4
  assert wd.read_json(str(paths[1])) == {'a': 1} and paths[0].read_text() == 'hello'
  assert wd.read_npz(str(paths[2]), keys=['x'])['x'].tolist() == [0, 1, 2]
  assert sorted(os.listdir(tmp_path)) == ['a.txt', 'b.json', 'c.npz', 'd.bin']
  wd.atomic_write_text(str(paths[0]), 'again')  # Replacing keeps the mode too.
  assert paths[0].stat().st_mode & 0o777 == umask_022 and paths[0].read_text() == 'again'


def test_a_failed_write_leaves_no_temporary(tmp_path, monkeypatch):
  wd.atomic_write_json(str(tmp_path / 'a.json'), {'a': 1})
  with pytest.raises(TypeError):
    wd.atomic_write_json(str(tmp_path / 'a.json'), {'a': object()})
  monkeypatch.setattr(os, 'replace', lambda *a: (_ for _ in ()).throw(OSError('disk gone')))
  with pytest.raises(OSError, match='disk gone'):
    wd.atomic_write_bytes(str(tmp_path / 'a.json'), b'{}')
  assert os.listdir(tmp_path) == ['a.json']
  assert json.loads((tmp_path / 'a.json').read_text()) == {'a': 1}


def test_damaged_json(tmp_path):
  path = tmp_path / 'info.json'
  path.write_text('{"a": 1 "b": 2}')
  message = _error(wd.read_json, str(path), stage='train_base')
  assert message.startswith(f'{path} is damaged (Expecting')
  assert message.endswith('; delete it and rerun --mode=train_base')
  path.write_bytes(b'{"a": "\xff"}')
  assert str(path) in _error(wd.read_json, str(path))
  with pytest.raises(MissingInputError, match=f'{tmp_path / "none.json"} does not exist; '
                     'run --mode=train_base first'):
    wd.read_json(str(tmp_path / 'none.json'), stage='train_base')


def test_jsonl_is_checked_for_cuts_counts_and_fields(tmp_path):
  path = tmp_path / 'samples.jsonl'
  text = ''.join(json.dumps({'id': i, 'text': 'x' * 30}) + '\n' for i in range(20))
  path.write_text(text)
  recs = wd.read_jsonl(str(path), stage='sample', fields=('id', 'text'), count=20)
  assert [r['id'] for r in recs] == list(range(20))
  cut = len(text) // 2
  line = text[:cut].count('\n') + 1
  path.write_text(text[:cut])  # Cut mid-line.
  message = _error(wd.read_jsonl, str(path), stage='sample')
  assert message.startswith(f'{path} is damaged (line {line}: ')
  assert message.endswith('delete it and rerun --mode=sample')
  path.write_text(''.join(text.splitlines(keepends=True)[:15]))  # Cut at a line end.
  assert wd.read_jsonl(str(path))[-1] == {'id': 14, 'text': 'x' * 30}
  assert _error(wd.read_jsonl, str(path), stage='sample', count=20) == (
      f'{path} holds 15 records; expected 20; delete it and rerun --mode=sample')
  path.write_text('{"id": 0}\n\n{"text": "a"}\n')
  assert _error(wd.read_jsonl, str(path), fields=('id',)).startswith(
      f"{path} is damaged (line 3 lacks 'id'); delete it and rerun")
  path.write_text('[1, 2]\n')
  assert 'line 1 is not a JSON object' in _error(wd.read_jsonl, str(path))
  with pytest.raises(MissingInputError, match='does not exist'):
    wd.read_jsonl(str(tmp_path / 'none.jsonl'))


def test_npz_is_checked_for_damage_and_keys(tmp_path):
  path = tmp_path / 'bins.npz'
  wd.atomic_write_npz(str(path), means=np.linspace(0, 1, 100), counts=np.arange(100))
  data = path.read_bytes()
  path.write_bytes(data[:len(data) // 2])
  message = _error(wd.read_npz, str(path), stage='calibrate')
  assert message.startswith(f'{path} is damaged (') and 'allow_pickle' not in message
  assert message.endswith('; delete it and rerun --mode=calibrate')
  path.write_bytes(data[:20])
  assert 'allow_pickle' not in _error(wd.read_npz, str(path))
  path.write_bytes(data)
  assert _error(wd.read_npz, str(path), stage='calibrate', keys=('means', 'oracle', 'x')) == (
      f"{path} is damaged (no array 'oracle', 'x'); delete it and rerun --mode=calibrate")


SIZES = (('train', 10), ('validation', 5), ('test', 5))
CONFIG = arith.ArithConfig.make(seed=5, sizes=SIZES, num_ops_range=(1, 3))


def test_damaged_array_record_and_dataset_info(tmp_path):
  assert len(records.load_split(arith.ArithBuilder, 'test', tmp_path, config=CONFIG)) == 5
  [record_file] = glob.glob(str(tmp_path / '**' / '*test.array_record-*'), recursive=True)
  dataset_dir = os.path.dirname(record_file)
  with open(record_file, 'r+b') as f:
    f.seek(os.path.getsize(record_file) // 2)
    f.write(b'\xff' * 16)
  message = _error(records.load_split, arith.ArithBuilder, 'test', tmp_path, stage='data',
                   config=CONFIG)
  assert message.startswith(f'{dataset_dir} is damaged (test split: Corrupted Riegeli')
  assert message.endswith('; delete it and rerun --mode=data')
  info = os.path.join(dataset_dir, 'dataset_info.json')
  with open(info) as f:
    text = f.read()
  with open(info, 'w') as f:
    f.write(text[:len(text) // 2])
  message = _error(records.load_split, arith.ArithBuilder, 'train', tmp_path, stage='data',
                   config=CONFIG)
  assert message.startswith(f'{dataset_dir} is damaged (dataset_info.json: ')
  assert message.endswith('; delete it and rerun --mode=data')


def test_damaged_tokenizer_model(tmp_path, umask_022):
  path = tmp_path / 'tokenizer.model'
  texts = list(arith.iter_texts(arith.generate(100, seed=0)))
  tok_lib.Tokenizer.train(texts, path, 40, arith.SPECIAL_SYMBOLS)
  assert path.stat().st_mode & 0o777 == umask_022 and os.listdir(tmp_path) == [path.name]
  data = path.read_bytes()
  path.write_bytes(data[:len(data) // 2])
  assert _error(tok_lib.Tokenizer.load, path, stage='tokenizer') == (
      f'{path} is damaged (not a SentencePiece model); delete it and rerun --mode=tokenizer')
  with pytest.raises(MissingInputError, match=str(tmp_path / 'none.model')):
    tok_lib.Tokenizer.load(tmp_path / 'none.model')
