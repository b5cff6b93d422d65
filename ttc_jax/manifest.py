"""Artifacts and their manifests: whether a workdir directory is done, partial, stale or damaged.

`ttc_jax.artifacts` names every artifact of a workdir; this module is what they share. An
artifact is a directory. `begin` writes its manifest.json before its stage starts (the config
values, the digests of its inputs, complete=false); `finish` marks it complete and records its files
and their sizes. So "skip finished work", "run stage X first" and "made under another config" all
come from here: a stage never resumes or reuses an artifact made under other values.
"""

from __future__ import annotations

import dataclasses
import enum
import hashlib
import json
import os
import shutil
from typing import Any, Iterable, Mapping

import ml_collections
from absl import logging

from ttc_jax import workdir as wd
from ttc_jax.errors import CorruptArtifactError, MissingInputError, StaleArtifactError, UserError
from ttc_jax.parallel import hosts

MANIFEST = 'manifest.json'


class State(enum.Enum):
  MISSING = 'missing'  # nothing there
  PARTIAL = 'partial'  # started (or files deleted since) under these values: a rerun resumes it
  DONE = 'done'
  STALE = 'stale'  # made under other config values, or from inputs that changed since
  DAMAGED = 'damaged'  # a file changed size after its stage finished


@dataclasses.dataclass(frozen=True, eq=False)
class Artifact:
  """A workdir directory made by one stage. `values` are the config values (dotted key -> value)
  it is made under; None for an input made under another config (its state is then read from its
  own manifest alone, e.g. the base model's samples a `large` config bins by)."""
  name: str  # the path relative to the workdir, e.g. 'models/base'
  path: str
  stage: str
  hint: str  # the flags that make it, beside --mode=<stage>
  values: Mapping[str, Any] | None
  inputs: tuple[Artifact, ...] = ()

  def file(self, *parts: str) -> str:
    return os.path.join(self.path, *parts)

  @property
  def how(self) -> str:
    return f'--mode={self.stage}{" " + self.hint if self.hint else ""}'


@dataclasses.dataclass(frozen=True)
class Status:
  state: State
  detail: str = ''


def values(config: ml_collections.ConfigDict, *keys: str) -> dict[str, Any]:
  """{dotted key: JSON value} of each key (a block is flattened; tuples become lists)."""
  out: dict[str, Any] = {}

  def add(prefix: str, value: Any) -> None:
    if isinstance(value, (ml_collections.ConfigDict, dict)):
      for k in sorted(value):
        add(f'{prefix}.{k}', value[k])
    else:
      out[prefix] = json.loads(json.dumps(value))

  for key in keys:
    node = config
    for part in key.split('.'):
      node = node[part]
    add(key, node)
  return out


def make(workdir: str, name: str, stage: str, vals: Mapping[str, Any] | None,
         inputs: Iterable[Artifact] = (), hint: str = '') -> Artifact:
  return Artifact(name=name, path=os.path.join(workdir, *name.split('/')), stage=stage,
                  hint=hint, values=vals, inputs=tuple(inputs))


def foreign(a: Artifact) -> Artifact:
  """The same artifact as an input made under another config: only its own manifest counts."""
  return dataclasses.replace(a, values=None)


# --- manifests ----------------------------------------------------------------------------------

def _read_manifest(a: Artifact) -> dict | None:
  path = a.file(MANIFEST)
  if not os.path.exists(path):
    return None
  return wd.read_json(path, stage=a.stage)


def _try_manifest(a: Artifact) -> tuple[dict | None, str]:
  """(manifest or None, '' or why it could not be read)."""
  try:
    m = _read_manifest(a)
  except CorruptArtifactError as e:
    return None, str(e)
  if m is not None and not {'values', 'inputs', 'digest', 'complete', 'files'} <= set(m):
    return None, f'{a.file(MANIFEST)} lacks fields of a manifest'
  return m, ''


def digest(a: Artifact) -> str | None:
  m, _ = _try_manifest(a)
  return m['digest'] if m and m['complete'] else None


def _input_digests(a: Artifact) -> dict[str, str | None]:
  return {i.name: digest(i) for i in a.inputs}


def _files(directory: str) -> dict[str, int]:
  out = {}
  for root, dirs, names in os.walk(directory):
    dirs[:] = [d for d in dirs if not d.startswith('.')]
    for n in names:
      if not n.startswith('.') and n != MANIFEST:
        path = os.path.join(root, n)
        out[os.path.relpath(path, directory)] = os.path.getsize(path)
  return out


def _show(v: Any) -> str:
  return json.dumps(v) if isinstance(v, (list, dict)) else repr(v)


def _changed(old: Mapping[str, Any], new: Mapping[str, Any]) -> list[str]:
  return [f'{k}: {_show(old.get(k, "unset"))} -> {_show(new.get(k, "unset"))}'
          for k in sorted(set(old) | set(new)) if old.get(k, 'unset') != new.get(k, 'unset')]


def status(a: Artifact, _seen: dict[str, Status] | None = None) -> Status:
  """The artifact's state under its values; an artifact whose (same-config) input is not done is
  stale, since making that input would change it."""
  seen = {} if _seen is None else _seen
  if a.name in seen:
    return seen[a.name]
  m, unreadable = _try_manifest(a)
  if unreadable:
    st = Status(State.DAMAGED, unreadable.split('; delete it')[0])
  elif m is None:
    if os.path.isdir(a.path) and os.listdir(a.path):
      st = Status(State.STALE, 'it has no manifest (made by another version of ttc_jax)')
    else:
      st = Status(State.MISSING)
  elif a.values is not None and m['values'] != a.values:
    st = Status(State.STALE, '; '.join(_changed(m['values'], a.values)))
  else:
    st = Status(State.DONE if m['complete'] else State.PARTIAL,
                '' if m['complete'] else 'started, not finished')
    for i in a.inputs:
      if i.stage == a.stage and st.state is State.PARTIAL:
        continue  # made by the same stage run, before this one is finished
      recorded, now = m['inputs'].get(i.name), digest(i)
      if recorded != now and (now is not None or st.state is State.DONE):
        what = 'rebuilt' if recorded and now else 'removed' if recorded else 'made'
        st = Status(State.STALE, f'its input {i.name} was {what} since it was made')
        break
    if st.state is State.DONE:
      files = _files(a.path)
      lost = [f for f in m['files'] if f not in files]
      resized = [f for f, size in m['files'].items() if f in files and files[f] != size]
      if resized:
        st = Status(State.DAMAGED, f'{a.file(resized[0])} changed size after {a.stage} wrote '
                                   'it; delete that file to redo it')
      elif lost:
        st = Status(State.PARTIAL, f'{len(lost)} of its files were deleted (e.g. {lost[0]})')
  if st.state is State.DONE and a.values is not None:
    for i in a.inputs:
      if i.values is not None and (s := status(i, seen)).state is not State.DONE:
        if i.stage == a.stage and s.state in (State.PARTIAL, State.MISSING):
          # Made by the same stage, which redoes that input and then this output.
          st = Status(State.PARTIAL, f'its input {i.name} is {s.state.value}')
        else:
          st = Status(State.STALE, f'its input {i.name} is {s.state.value}')
        break
  seen[a.name] = st
  return st


def require(a: Artifact, stage: str) -> None:
  """One-line error unless `a` is done under its values, naming the stage that makes it."""
  st = status(a)
  if st.state is State.DONE:
    return
  if st.state is State.MISSING:
    raise MissingInputError(f'stage {stage} needs {a.path}, which does not exist; run {a.how} '
                            'first (or --mode=all)')
  raise MissingInputError(f'stage {stage} needs {a.path}, which is {st.state.value} '
                          f'({st.detail}); run {a.how} first'
                          + (' with --rebuild_stale' if st.state in (State.STALE, State.DAMAGED)
                             else ''))


def begin(outputs: list[Artifact], stage: str, rebuild_stale: bool) -> bool:
  """Before `stage` makes `outputs`: False when all are done (skip the stage). Checks every input
  is done, stops on a stale or damaged output (or deletes it with rebuild_stale), and writes the
  manifest of each output not yet done."""
  made_here = {a.name for a in outputs}
  for a in outputs:
    for i in a.inputs:
      if i.name not in made_here:
        require(i, stage)
  todo = []
  for a in outputs:
    st = status(a)
    if st.state is State.DONE:
      continue
    if st.state in (State.STALE, State.DAMAGED):
      if not rebuild_stale:
        raise StaleArtifactError(
            f'stage {stage}: {a.path} is {st.state.value} ({st.detail}); pass --rebuild_stale to '
            'delete and rebuild it (and what depends on it), or use another --workdir')
      logging.warning('%s: %s is %s (%s): deleting it to rebuild', stage, a.path,
                      st.state.value, st.detail)
      if hosts.is_writer():
        shutil.rmtree(a.path)
    todo.append(a)
  if not todo:
    logging.info('%s: %s done, skipping', stage, ', '.join(a.name for a in outputs))
    return False
  for a in todo:
    m, _ = _try_manifest(a)
    # A partial one started under these values keeps its manifest; one finished before and some
    # files deleted since is unfinished again (the files it remakes need not be byte-identical:
    # shards record their timings).
    if m is None or m['complete']:
      _write_manifest(a, complete=False)
  return True


def finish(outputs: list[Artifact], seconds: float | None = None) -> None:
  """Marks `outputs` complete; `seconds`, the stage run that finished them, is recorded (the
  report's stage times)."""
  for a in outputs:
    _write_manifest(a, complete=True, seconds=seconds)


def seconds(a: Artifact) -> float | None:
  """How long the stage run that finished `a` took (None: not recorded, or not finished)."""
  m, _ = _try_manifest(a)
  return m.get('seconds') if m and m['complete'] else None


def _write_manifest(a: Artifact, complete: bool, seconds: float | None = None) -> None:
  if a.values is None:
    raise UserError(f'{a.name} is an input made under another config; it cannot be made here')
  inputs = _input_digests(a)
  key = json.dumps([a.values, inputs], sort_keys=True)
  wd.atomic_write_json(a.file(MANIFEST), {
      'artifact': a.name, 'stage': a.stage, 'values': a.values, 'inputs': inputs,
      'digest': hashlib.sha256(key.encode()).hexdigest()[:16], 'complete': complete,
      'files': _files(a.path) if complete else {},
      **({'seconds': round(seconds, 1)} if seconds is not None else {})})
