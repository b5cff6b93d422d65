"""Workdir helpers: every artifact is written atomically (temporary name, then rename)."""

from __future__ import annotations

import json
import os
import tempfile
from typing import Any


def prepare(workdir: str) -> str:
  """Creates the workdir and checks it is writable; one-line error otherwise."""
  workdir = os.path.abspath(workdir)
  try:
    os.makedirs(workdir, exist_ok=True)
    with tempfile.NamedTemporaryFile(dir=workdir, prefix='.probe-'):
      pass
  except OSError as e:
    raise PermissionError(f'workdir {workdir} is not writable ({e.strerror}); pass a writable '
                          '--workdir') from None
  return workdir


def atomic_write_text(path: str, text: str) -> None:
  directory = os.path.dirname(os.path.abspath(path))
  os.makedirs(directory, exist_ok=True)
  fd, tmp = tempfile.mkstemp(dir=directory, prefix='.tmp-' + os.path.basename(path))
  try:
    with os.fdopen(fd, 'w') as f:
      f.write(text)
    os.replace(tmp, path)
  except BaseException:
    os.unlink(tmp)
    raise


def atomic_write_json(path: str, obj: Any) -> None:
  atomic_write_text(path, json.dumps(obj, indent=1, sort_keys=True) + '\n')


def read_json(path: str) -> Any:
  with open(path) as f:
    return json.load(f)
