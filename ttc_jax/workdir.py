"""Workdir helpers: every artifact is written atomically (temporary name, then rename) with the
umask's mode, and read back by checked readers whose errors name the file and the stage to rerun."""

from __future__ import annotations

import io
import json
import os
import secrets
import tempfile
import zipfile
import zlib
from typing import Any, Collection

import numpy as np

from ttc_jax.errors import CorruptArtifactError, MissingInputError, UserError
from ttc_jax.parallel import hosts


def prepare(workdir: str) -> str:
  """Creates the workdir and checks it is writable; one-line error otherwise."""
  workdir = os.path.abspath(workdir)
  try:
    os.makedirs(workdir, exist_ok=True)
    with tempfile.NamedTemporaryFile(dir=workdir, prefix='.probe-'):
      pass
  except OSError as e:
    raise UserError(f'workdir {workdir} is not writable ({e.strerror}); pass a writable '
                          '--workdir') from None
  return workdir


def atomic_write_bytes(path: str, data: bytes) -> None:
  """Writes `data` to a temporary name beside `path`, then renames it; the file gets the mode a
  plain `open(path, 'w')` would (0o666 & ~umask), and no temporary is left behind on error.
  In a job of several processes only process 0 writes (`ttc_jax.parallel.hosts`)."""
  if not hosts.is_writer():
    return
  directory = os.path.dirname(os.path.abspath(path))
  os.makedirs(directory, exist_ok=True)
  while True:
    tmp = os.path.join(directory, f'.tmp-{os.path.basename(path)}-{secrets.token_hex(4)}')
    try:  # os.open with 0o666 lets the kernel apply the umask, as open() does (mkstemp: 0o600).
      fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
      break
    except FileExistsError:
      continue
  try:
    with os.fdopen(fd, 'wb') as f:
      f.write(data)
    os.replace(tmp, path)
  except BaseException:
    os.unlink(tmp)
    raise


def atomic_write_text(path: str, text: str) -> None:
  atomic_write_bytes(path, text.encode('utf-8'))


def atomic_write_json(path: str, obj: Any) -> None:
  atomic_write_text(path, json.dumps(obj, indent=1, sort_keys=True) + '\n')


def atomic_write_npz(path: str, **arrays: np.ndarray) -> None:
  buffer = io.BytesIO()
  np.savez(buffer, **arrays)
  atomic_write_bytes(path, buffer.getvalue())


def atomic_write_figure(fig, path: str, dpi: int = 110) -> None:
  """A matplotlib figure as PNG, written like every other artifact."""
  buffer = io.BytesIO()
  fig.savefig(buffer, format='png', dpi=dpi)
  atomic_write_bytes(path, buffer.getvalue())


def _rerun(stage: str) -> str:
  return f'rerun --mode={stage}' if stage else 'rerun the stage that wrote it'


def damaged(path: str | os.PathLike, reason: str, stage: str = '') -> CorruptArtifactError:
  """The one-line error for an unreadable artifact: `<path> is damaged (<reason>); delete it...`"""
  return CorruptArtifactError(f'{os.fspath(path)} is damaged ({reason}); delete it and '
                              f'{_rerun(stage)}')


def missing(path: str | os.PathLike, stage: str = '') -> MissingInputError:
  """The one-line error for an artifact not written yet."""
  todo = f'run --mode={stage} first' if stage else 'run the stage that writes it first'
  return MissingInputError(f'{os.fspath(path)} does not exist; {todo}')


def short_reason(e: BaseException, limit: int = 160) -> str:
  """The first line of an exception's message, cut to `limit` characters (for `damaged`)."""
  lines = [line for line in str(e).splitlines() if line.strip()]
  text = lines[0].strip() if lines else type(e).__name__
  return text if len(text) <= limit else text[:limit - 3] + '...'


def read_json(path: str, *, stage: str = '') -> Any:
  try:
    with open(path, 'rb') as f:
      return json.loads(f.read())
  except FileNotFoundError:
    raise missing(path, stage) from None
  except ValueError as e:  # JSONDecodeError and UnicodeDecodeError
    raise damaged(path, short_reason(e), stage) from None


def read_jsonl(path: str, *, stage: str = '', fields: Collection[str] = (),
               count: int | None = None) -> list[dict]:
  """The JSON objects of a JSON Lines file, one per non-empty line, each holding every name in
  `fields`; with `count`, exactly that many of them."""
  try:
    with open(path, 'rb') as f:
      lines = f.read().split(b'\n')
  except FileNotFoundError:
    raise missing(path, stage) from None
  recs = []
  for number, line in enumerate(lines, start=1):
    if not line.strip():
      continue
    try:
      rec = json.loads(line)
    except ValueError as e:
      raise damaged(path, f'line {number}: {short_reason(e)}', stage) from None
    if not isinstance(rec, dict):
      raise damaged(path, f'line {number} is not a JSON object', stage)
    if lacking := [name for name in fields if name not in rec]:
      raise damaged(path, f'line {number} lacks {", ".join(map(repr, lacking))}', stage)
    recs.append(rec)
  if count is not None and len(recs) != count:
    raise CorruptArtifactError(f'{path} holds {len(recs)} records; expected {count}; delete it '
                               f'and {_rerun(stage)}')
  return recs


def read_npz(path: str, *, stage: str = '', keys: Collection[str] = ()) -> dict[str, np.ndarray]:
  """All arrays of an `.npz`, loaded into memory without pickle; `keys` must be among them."""
  try:
    npz = np.load(path, allow_pickle=False)
    if not isinstance(npz, np.lib.npyio.NpzFile):  # a lone .npy array
      raise damaged(path, 'not an .npz archive', stage)
    with npz:
      arrays = {k: npz[k] for k in npz.files}
  except FileNotFoundError:
    raise missing(path, stage) from None
  except (zipfile.BadZipFile, zlib.error, ValueError, EOFError, OSError, NotImplementedError) as e:
    # numpy reads a file that is not a zip as a pickle and blames allow_pickle.
    reason = 'not an .npz archive' if 'allow_pickle' in str(e) else short_reason(e)
    raise damaged(path, reason, stage) from None
  if lacking := [k for k in keys if k not in arrays]:
    raise damaged(path, f'no array {", ".join(map(repr, lacking))}', stage)
  return arrays
