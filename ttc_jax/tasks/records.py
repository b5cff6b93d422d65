"""TFDS builders of flat text/int records, written as array_record and read without TensorFlow.

Every task's data is a `JsonRecordsBuilder` subclass; `load_split` prepares it once (TFDS writes to
a temporary directory and renames it, and a finished dataset is never rebuilt) and returns plain
python dicts. Only `as_data_source` is used: `as_dataset` and tfrecord files need TensorFlow.
"""

from __future__ import annotations

import abc
import hashlib
import json
import os
import pathlib
import tempfile
from typing import ClassVar, Iterable, Iterator, Mapping, Sequence

import numpy as np
import tensorflow_datasets as tfds
from google.protobuf import json_format

from ttc_jax.errors import BadInputError, MissingInputError
from ttc_jax import workdir

Record = dict[str, str | int]
FILE_FORMAT = 'array_record'


class JsonRecordsBuilder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
  """A builder whose records are flat dicts of `TEXT_FIELDS` (str) and `INT_FIELDS` (int64).

  Subclasses set `name`, `VERSION`, the fields, and `_split_records`. A builder reading local files
  also sets `MANUAL_FILES` (names inside `manual_dir`) and `MANUAL_DOWNLOAD_INSTRUCTIONS`.
  """
  TEXT_FIELDS: ClassVar[tuple[str, ...]] = ()
  INT_FIELDS: ClassVar[tuple[str, ...]] = ()
  MANUAL_FILES: ClassVar[tuple[str, ...]] = ()

  # TFDS looks for a checksums file next to the builder's code, which for a builder inside a
  # package imports `importlib_resources` (not always installed). Ours download nothing.
  @tfds.core.utils.classproperty
  @classmethod
  def code_path(cls) -> None:
    return None

  def _info(self) -> tfds.core.DatasetInfo:
    features = {f: tfds.features.Text() for f in self.TEXT_FIELDS}
    features |= {f: tfds.features.Scalar(np.int64) for f in self.INT_FIELDS}
    # Record order is part of the data (ids, prefixes of a split), so it must not be shuffled.
    return tfds.core.DatasetInfo(builder=self, description=self.__doc__,
                                 features=tfds.features.FeaturesDict(features),
                                 disable_shuffling=True)

  @abc.abstractmethod
  def _split_records(self, dl_manager: tfds.download.DownloadManager,
                     ) -> Mapping[str, Iterable[Record]]:
    """Split name -> its records, in order."""

  def _split_generators(self, dl_manager: tfds.download.DownloadManager):
    return {split: self._generate_examples(recs)
            for split, recs in self._split_records(dl_manager).items()}

  def _generate_examples(self, recs: Iterable[Record]) -> Iterator[tuple[int, Record]]:
    fields = set(self.TEXT_FIELDS) | set(self.INT_FIELDS)
    for i, record in enumerate(recs):  # Integer keys: with shuffling off, TFDS keeps key order.
      if set(record) != fields:
        raise BadInputError(f'{self.name} record {i} has fields {sorted(record)}; '
                         f'expected {sorted(fields)}')
      yield i, record


def read_jsonl(path: str | os.PathLike) -> Iterator[dict]:
  """The JSON objects of a JSON Lines file, one per non-empty line."""
  with open(path, encoding='utf-8') as f:
    for line_number, line in enumerate(f, start=1):
      if line.strip():
        try:
          yield json.loads(line)
        except json.JSONDecodeError as e:
          raise BadInputError(f'{path}:{line_number} is not a JSON object: {e}') from None


def _check_writable(data_dir: str, what: str) -> None:
  try:
    os.makedirs(data_dir, exist_ok=True)
    with tempfile.TemporaryFile(dir=data_dir):
      pass
  except OSError as e:
    raise BadInputError(f'data_dir {data_dir} is not a writable directory ({e.strerror}); expected '
                     f'one to build {what} into') from None


def _check_manual_files(builder_cls: type[JsonRecordsBuilder], manual_dir: str | None) -> None:
  if not builder_cls.MANUAL_FILES:
    return
  if manual_dir is None:
    raise BadInputError(f'{builder_cls.__name__} reads {list(builder_cls.MANUAL_FILES)} from a '
                     'manual_dir; pass manual_dir=')
  for name in builder_cls.MANUAL_FILES:
    path = os.path.join(manual_dir, name)
    if not os.path.isfile(path):
      raise MissingInputError(f'{path} not found; expected {builder_cls.__name__} input file '
                              f'{name} in manual_dir {manual_dir}')


def _to_python(value: object) -> str | int:
  if isinstance(value, bytes):
    return value.decode('utf-8')
  if isinstance(value, (int, np.integer, np.ndarray)):
    return int(value)
  raise TypeError(f'unexpected record value {value!r} of type {type(value).__name__}')


def _damaged_info_dir(data_dir: str) -> str:
  """The dataset directory under `data_dir` whose dataset_info.json does not parse, or data_dir."""
  for info in sorted(pathlib.Path(data_dir).rglob('dataset_info.json')):
    try:
      json.loads(info.read_bytes())
    except ValueError:
      return str(info.parent)
  return data_dir


def open_builder(builder_cls: type[JsonRecordsBuilder] | str, data_dir: str | os.PathLike, *,
                 stage: str = '', **builder_kwargs) -> tfds.core.DatasetBuilder:
  """The builder on `data_dir`; a damaged dataset_info.json there is a `CorruptArtifactError`."""
  data_dir = os.fspath(data_dir)
  try:
    if isinstance(builder_cls, str):
      return tfds.builder(builder_cls, data_dir=data_dir, file_format=FILE_FORMAT,
                          **builder_kwargs)
    return builder_cls(data_dir=data_dir, file_format=FILE_FORMAT, **builder_kwargs)
  except (json_format.ParseError, UnicodeDecodeError) as e:
    raise workdir.damaged(_damaged_info_dir(data_dir),
                          f'dataset_info.json: {workdir.short_reason(e)}', stage) from None


def prepare(builder_cls: type[JsonRecordsBuilder] | str, data_dir: str | os.PathLike,
            manual_dir: str | os.PathLike | None = None, *, stage: str = '', **builder_kwargs,
            ) -> tfds.core.DatasetBuilder:
  """The builder, its data prepared under `data_dir` (reused if already there)."""
  data_dir = os.fspath(data_dir)
  manual_dir = None if manual_dir is None else os.fspath(manual_dir)
  if os.path.exists(data_dir) and not os.path.isdir(data_dir):
    raise BadInputError(f'data_dir {data_dir} is a file; expected a directory')
  builder = open_builder(builder_cls, data_dir, stage=stage, **builder_kwargs)
  if not isinstance(builder, JsonRecordsBuilder):
    raise BadInputError(f'{builder_cls} is not a JsonRecordsBuilder')
  if not builder.is_prepared():
    _check_writable(data_dir, builder.name)
    _check_manual_files(type(builder), manual_dir)
    builder.download_and_prepare(
        download_config=tfds.download.DownloadConfig(manual_dir=manual_dir))
  return builder


def load_split(builder_cls: type[JsonRecordsBuilder] | str, split: str,
               data_dir: str | os.PathLike, manual_dir: str | os.PathLike | None = None, *,
               stage: str = '', **builder_kwargs) -> list[Record]:
  """The records of one split as python dicts (str, int), preparing the dataset if needed.

  A damaged dataset (array_record or metadata file) is a `CorruptArtifactError` naming its
  directory and `stage`, the stage that builds it.
  """
  builder = prepare(builder_cls, data_dir, manual_dir, stage=stage, **builder_kwargs)
  if split not in builder.info.splits:
    raise BadInputError(f'split {split!r} not in {builder.name}; expected one of '
                     f'{sorted(builder.info.splits)}')
  try:  # Riegeli reports a damaged, truncated or deleted file as a RuntimeError.
    source = builder.as_data_source(split=split)
    raw = [source[i] for i in range(len(source))]  # every record read here, inside the try
  except (RuntimeError, OSError) as e:
    raise workdir.damaged(builder.data_dir, f'{split} split: {workdir.short_reason(e)}',
                          stage) from None
  return [{k: _to_python(v) for k, v in r.items()} for r in raw]


def build_dir(name: str, source: pathlib.Path, files: Sequence[str]) -> pathlib.Path:
  """A TFDS data_dir in the system temp dir, keyed by the inputs' path, size and mtime.

  TFDS never rebuilds a prepared dataset, so edited or different JSONL needs a different dir.
  """
  stats = [(str((source / f).resolve()), (source / f).stat().st_size,
            (source / f).stat().st_mtime_ns) for f in files if (source / f).is_file()]
  digest = hashlib.sha256(repr(stats).encode()).hexdigest()[:12]
  return pathlib.Path(tempfile.gettempdir()) / 'ttc_jax_tfds' / f'{name}_{digest}'


def load_local(builder_cls: type[JsonRecordsBuilder], split: str, splits: Sequence[str],
               source: str | os.PathLike, tfds_dir: str | os.PathLike | None,
               expected: str) -> list[Record]:
  """`split` of a builder whose MANUAL_FILES are local JSONL in `source`, built once into
  `tfds_dir` (default: a temp dir keyed by the input files) and read back from there."""
  if split not in splits:
    raise BadInputError(f'unknown {builder_cls.name} split {split!r}; expected one of {tuple(splits)}')
  source = pathlib.Path(source)
  for f in builder_cls.MANUAL_FILES:
    if not (source / f).is_file():
      raise MissingInputError(f'{source / f} not found; expected {expected}')
  tfds_dir = tfds_dir or build_dir(builder_cls.name, source, builder_cls.MANUAL_FILES)
  return load_split(builder_cls, split, tfds_dir, manual_dir=source)
