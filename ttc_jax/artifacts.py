"""The workdir registry: every artifact's path, the stage that makes it, the config values it is made
under, and the manifest that says whether it is done, partial, stale or damaged.

An artifact is a directory. `begin` writes its manifest.json before its stage starts (the config
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

MANIFEST = 'manifest.json'
VERIFIER_KINDS = ('prm', 'orm')


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
        st = Status(State.STALE, f'its input {i.name} was {"rebuilt" if now else "removed"} '
                                 'since it was made')
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


def finish(outputs: list[Artifact]) -> None:
  for a in outputs:
    _write_manifest(a, complete=True)


def _write_manifest(a: Artifact, complete: bool) -> None:
  if a.values is None:
    raise UserError(f'{a.name} is an input made under another config; it cannot be made here')
  inputs = _input_digests(a)
  key = json.dumps([a.values, inputs], sort_keys=True)
  wd.atomic_write_json(a.file(MANIFEST), {
      'artifact': a.name, 'stage': a.stage, 'values': a.values, 'inputs': inputs,
      'digest': hashlib.sha256(key.encode()).hexdigest()[:16], 'complete': complete,
      'files': _files(a.path) if complete else {}})


# --- every artifact of a workdir ----------------------------------------------------------------
# Each function returns the artifact under `config`; its stage declares it as an output, and the
# stages that read it as an input. `model_name` defaults to config.model_name.

REAL_TASKS = ('gsm8k', 'math500')


def is_real(config: ml_collections.ConfigDict) -> bool:
  """GSM8K / MATH500 with an imported (or SFT) model, rather than the synthetic arith task."""
  return 'task' in config and config.task.name in REAL_TASKS


def split_label(config: ml_collections.ConfigDict) -> str:
  s = config.sample.split
  return f'{config.task.name}_{s}' if is_real(config) else s


def data(config: ml_collections.ConfigDict, workdir: str) -> Artifact:
  """The arith task's TFDS dataset (stage data)."""
  return make(workdir, 'data', 'data', values(config, 'task'))


def tokenizer(config: ml_collections.ConfigDict, workdir: str) -> Artifact:
  """tokenizer/arith.model (stage tokenizer)."""
  return make(workdir, 'tokenizer', 'tokenizer', values(config, 'tokenizer'),
              [data(config, workdir)])


def tokenizer_file(config: ml_collections.ConfigDict, workdir: str) -> str:
  return tokenizer(config, workdir).file('arith.model')


def real_data_dir(workdir: str, task: str) -> str:
  """The real task's JSONL built into TFDS on first read (a cache of ../shared/data, no stage)."""
  return os.path.join(workdir, 'data', task)


def backbone_name(config: ml_collections.ConfigDict) -> str:
  """The model the verifiers sit on: config.verifier_backbone, or the proposer when ''."""
  name = config.verifier_backbone or config.model_name
  if name not in config.models:
    raise UserError(f'verifier_backbone={name!r} is not a model of this config; expected one of '
                    f'{sorted(config.models)}')
  return name


def backbone_config(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """The config train_verifier_backbone trains the backbone under: train_base of that model from
  config.train_verifier_backbone.init with that block's steps and learning rate."""
  spec = config.train_verifier_backbone
  derived = config.copy_and_resolve_references()
  derived.model_name, derived.train_init = backbone_name(config), spec.init
  derived.train.update(dict(steps=spec.steps, learning_rate=spec.learning_rate,
                            warmup_steps=spec.warmup_steps))
  return derived


def backbone_suffix(config: ml_collections.ConfigDict) -> str:
  """'' when the verifiers sit on the proposer, else `_on_<backbone>`."""
  backbone = backbone_name(config)
  return '' if backbone == config.model_name else f'_on_{backbone}'


def verifier_name(config: ml_collections.ConfigDict, kind: str) -> str:
  """`prm` / `orm` for the base proposer on its own backbone; `_<proposer>` is appended for
  another proposer, `_on_<backbone>` for a backbone other than the proposer."""
  if kind not in VERIFIER_KINDS:
    raise UserError(f'unknown verifier kind {kind!r}; expected one of {VERIFIER_KINDS}')
  return (kind + ('' if config.model_name == 'base' else f'_{config.model_name}')
          + backbone_suffix(config))


def model(config: ml_collections.ConfigDict, workdir: str, name: str = '') -> Artifact:
  """models/<name>: a trained LM (train_base; the verifier backbone by train_verifier_backbone),
  or for the real tasks an imported checkpoint (import_model) or its fine-tune (sft)."""
  name = name or config.model_name
  if is_real(config):
    base = config.sft.base if 'sft' in config else config.model_name
    if name == base:
      return make(workdir, f'models/{name}', 'import_model',
                  values(config, 'model.name', 'model.gguf', 'model.hf_dir'))
    return make(workdir, f'models/{name}', 'sft', values(config, 'sft', 'model.name'),
                [model(config, workdir, base)])
  if name not in config.models:
    raise UserError(f'unknown model {name!r}; expected one of {sorted(config.models)}')
  if name == config.model_name:
    return _trained(config, config, workdir, 'train_base', 'train_init', '')
  if 'verifier_backbone' in config and name == backbone_name(config):
    return _trained(config, backbone_config(config), workdir, 'train_verifier_backbone',
                    'train_verifier_backbone.init', '')
  # Another model (a train_init start, the base model of a `large` config): trained under
  # another config, so only its own manifest tells whether it is done.
  return make(workdir, f'models/{name}', 'train_base', None, (), f'--config.model_name={name}')


def _trained(config, trained_under, workdir: str, stage: str, init_key: str,
             hint: str) -> Artifact:
  name, init = trained_under.model_name, trained_under.train_init
  inputs = [tokenizer(config, workdir), data(config, workdir)]
  if init:
    if init == name:
      raise UserError(f'{init_key}={init!r} is the model being trained; name another model')
    inputs.append(model(config, workdir, init))
  return make(workdir, f'models/{name}', stage,
              values(trained_under, f'models.{name}', 'train', 'train_init'), inputs, hint)


def samples(config: ml_collections.ConfigDict, workdir: str, model_name: str = '') -> Artifact:
  """samples/<model>/<split>: pooled samples of the split, graded (stage sample)."""
  m = model_name or config.model_name
  hint = '' if m == config.model_name else f'--config.model_name={m}'
  if is_real(config):
    return make(workdir, f'samples/{m}/{split_label(config)}', 'sample',
                values(config, 'sample', 'seed', 'task'), [model(config, workdir, m)], hint)
  return make(workdir, f'samples/{m}/{split_label(config)}', 'sample',
              values(config, 'sample', 'seed'),
              [model(config, workdir, m), tokenizer(config, workdir), data(config, workdir)], hint)


def calibration(config: ml_collections.ConfigDict, workdir: str) -> Artifact:
  """calibration/<model>/<split>: pass@k by bin (calibration.json), per-problem pass@1 and bin
  (per_problem.json), the oracle bin of each problem (difficulty.json), pass_at_k.png."""
  m = config.model_name
  inputs = [samples(config, workdir)]
  if not is_real(config):
    inputs.append(data(config, workdir))
    if m != 'base':  # binned by the base model's difficulty, sampled under its own config
      inputs.append(foreign(samples(config, workdir, 'base')))
  return make(workdir, f'calibration/{m}/{split_label(config)}', 'calibrate',
              values(config, 'calibrate', 'seed'), inputs)


def prm_labels(config: ml_collections.ConfigDict, workdir: str) -> Artifact:
  """prm_data/<model>: Monte-Carlo step labels of the proposer's solutions (stage prm_data)."""
  m = config.model_name
  return make(workdir, f'prm_data/{m}', 'prm_data', values(config, 'prm_data', 'seed'),
              [model(config, workdir), tokenizer(config, workdir), data(config, workdir)])


def verifier(config: ml_collections.ConfigDict, workdir: str, kind: str) -> Artifact:
  """models/<verifier_name>: the PRM or ORM value head on the backbone (train_prm / train_orm)."""
  return make(workdir, f'models/{verifier_name(config, kind)}', f'train_{kind}',
              values(config, 'train_prm'),
              [prm_labels(config, workdir), model(config, workdir, backbone_name(config)),
               tokenizer(config, workdir)])


def verifier_scores(config: ml_collections.ConfigDict, workdir: str, kind: str) -> Artifact:
  """verifier_scores/<model>/<split>/<verifier>: step scores of every pooled sample, per shard."""
  return make(workdir, f'verifier_scores/{config.model_name}/{split_label(config)}/'
              f'{verifier_name(config, kind)}', 'eval_verifiers', {},
              [samples(config, workdir), verifier(config, workdir, kind),
               tokenizer(config, workdir), data(config, workdir)])


def verifier_eval(config: ml_collections.ConfigDict, workdir: str) -> Artifact:
  """eval_verifiers/<model>/<split>/on_<backbone>: accuracy vs N per bin (verifiers.json), per
  problem (per_problem.npz), plots (stage eval_verifiers)."""
  return make(workdir, f'eval_verifiers/{config.model_name}/{split_label(config)}/'
              f'on_{backbone_name(config)}', 'eval_verifiers',
              values(config, 'eval_verifiers', 'calibrate.num_bins'),
              [*(verifier_scores(config, workdir, k) for k in VERIFIER_KINDS),
               *(verifier(config, workdir, k) for k in VERIFIER_KINDS),
               samples(config, workdir), prm_labels(config, workdir), data(config, workdir)])


def demo_samples(config: ml_collections.ConfigDict, workdir: str) -> Artifact:
  """demo/samples.json: the sampling demo's tokens (configs/demo.py)."""
  return make(workdir, 'demo', 'demo', values(config, 'seed', 'model', 'sampling', 'demo'))


# Reserved for the stages still to come (search, revisions, difficulty, policy, report): the
# directory each will declare here as it is built, so the layout stays one place.
PLANNED = {
    'search': ('eval_search', 'search/<model>/<split>/<method>'),
    'revision_data': ('revision_data', 'revision_data/<model>'),
    'revision_model': ('train_revision', 'models/revision_<model>'),
    'revisions': ('eval_revisions', 'eval_revisions/<model>/<split>'),
    'difficulty': ('difficulty', 'difficulty/<model>/<split>'),
    'policy': ('policy', 'policy/<model>/<split>'),
    'report': ('report', 'report'),
}
