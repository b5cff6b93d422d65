"""The workdir registry: status on an empty, a half and a finished workdir; a changed config key
is caught for each stage it feeds (and only downstream); partial and damaged artifacts; rerun with
a changed key stops with one line, or rebuilds exactly the affected chain with --rebuild_stale."""

import json
import shutil

import pytest

from configs.arith import get_config
from conftest import launch
from ttc_jax import artifacts
from ttc_jax import manifest
from ttc_jax.manifest import State
from ttc_jax.errors import CorruptArtifactError, MissingInputError
from ttc_jax.pipeline import sample_shards, stages

ORDER = [s.name for s in stages.ARITH]


def _states(config, workdir) -> dict[str, State]:
  """{stage: the state of its first output} (train_verifier_backbone etc. make one each)."""
  out = {}
  for stage in stages.ARITH:
    outputs = stage.outputs(config, str(workdir))
    out[stage.name] = manifest.status(outputs[-1]).state if outputs else None
  return out


def test_status_on_an_empty_a_half_and_a_finished_workdir(full_run, tmp_path):
  config = get_config('tiny')
  empty = stages.status_report(config, str(tmp_path / 'empty'))
  assert 'next: --mode=data ' in empty and empty.count(" missing ") == 24
  assert not (tmp_path / 'empty').exists()  # status writes nothing
  half = tmp_path / 'half'
  for sub in ('data', 'tokenizer', 'models/base'):
    shutil.copytree(full_run / sub, half / sub)
  states = _states(config, half)
  assert [states[s] for s in ORDER[:3]] == [State.DONE] * 3
  assert all(states[s] is State.MISSING for s in ORDER[3:])
  assert 'next: --mode=sample ' in stages.status_report(config, str(half))
  assert set(_states(config, full_run).values()) == {State.DONE}
  assert stages.status_report(config, str(full_run)).endswith('next: nothing; every stage is done')
  # A stage's missing input is named under that stage's own name (train_verifier_backbone runs
  # train_base's code under other values: its errors still name it).
  backbone = stages.table(config)['train_verifier_backbone']
  with pytest.raises(MissingInputError, match='^stage train_verifier_backbone needs .*tokenizer'):
    manifest.begin(backbone.outputs(config, str(tmp_path / 'empty')),
                    'train_verifier_backbone', False)
  # The launcher prints the same table and runs nothing.
  result = launch(tmp_path / 'half', mode='status')
  assert result.returncode == 0 and 'next: --mode=sample ' in result.stdout, result.stderr[-2000:]
  assert sorted(p.name for p in half.iterdir()) == ['data', 'models', 'tokenizer']


# Every later result feeds these (the report also records the whole config).
LAST = ('difficulty', 'policy', 'report')


@pytest.mark.parametrize('stage,key,value', [
    ('train_base', 'train.steps', 200),
    ('sample', 'sample.temperature', 0.5),
    ('prm_data', 'prm_data.num_rollouts', 2),
    ('train_prm', 'train_prm.steps', 12),
])
def test_a_changed_key_makes_its_stage_and_only_those_downstream_stale(full_run, stage, key,
                                                                        value):
  config = get_config('tiny')
  block, name = key.split('.')
  old = config[block][name]
  config[block][name] = value
  states = _states(config, full_run)
  first = ORDER.index(stage)
  assert all(states[s] is State.DONE for s in ORDER[:first]), states
  assert states[stage] is State.STALE, states
  own = manifest.status(stages.table(config)[stage].outputs(config, str(full_run))[0])
  assert own.detail == f'{key}: {old!r} -> {value!r}'
  downstream = {s for s in ORDER[first + 1:] if states[s] is State.STALE}
  fed = {'train_base': set(ORDER[first + 1:]),  # every later stage reads the proposer
         # search and revisions bin by calibrate; the revision ORM is compared with the PRM
         'sample': {'calibrate', 'eval_verifiers', 'eval_search', 'eval_revisions', *LAST},
         'prm_data': {'train_prm', 'train_orm', 'eval_verifiers', 'eval_search',
                      'train_revision_orm', 'eval_revisions', *LAST},
         # train_orm and the revision ORM train with train_prm's block
         'train_prm': {'train_orm', 'eval_verifiers', 'eval_search', 'train_revision_orm',
                       'eval_revisions', *LAST}}[stage]
  assert downstream == fed, states
  assert all(states[s] is State.DONE for s in ORDER[first + 1:] if s not in fed), states


def test_deleted_files_are_partial_and_resized_ones_damaged(full_run, tmp_path):
  config = get_config('tiny')
  workdir = tmp_path / 'wd'
  shutil.copytree(full_run, workdir)
  samples = artifacts.samples(config, str(workdir))
  (workdir / samples.name / 'shard_00001.jsonl').unlink()
  assert manifest.status(samples).state is State.PARTIAL
  assert manifest.status(artifacts.calibration(config, str(workdir))).state is State.STALE
  with pytest.raises(MissingInputError, match='which is partial.*run --mode=sample first'):
    manifest.require(samples, 'calibrate')
  # A shard cut mid-line: damaged, one line naming the file.
  shard = workdir / samples.name / 'shard_00000.jsonl'
  shard.write_text(shard.read_text()[:-40])
  st = manifest.status(samples)
  assert st.state is State.DAMAGED and str(shard) in st.detail
  # An unreadable manifest: damaged too (--rebuild_stale rebuilds it), and not an input digest.
  calibration = artifacts.calibration(config, str(workdir))
  (workdir / calibration.name / 'manifest.json').write_text('{"artifact": ')
  st = manifest.status(calibration)
  assert st.state is State.DAMAGED and 'manifest.json is damaged' in st.detail
  assert manifest.digest(calibration) is None


def test_sample_reader_checks_counts_and_schema(full_run, tmp_path):
  """Behind the manifest's sizes, the reader itself checks each shard holds one record per
  problem with the fields the stages read (a shard rewritten by hand and re-finished)."""
  config = get_config('tiny')
  workdir = tmp_path / 'wd'
  shutil.copytree(full_run, workdir)
  samples = artifacts.samples(config, str(workdir))
  shard = workdir / samples.name / 'shard_00000.jsonl'
  lines = shard.read_text().splitlines()
  shard.write_text('\n'.join(lines[:-1]) + '\n')
  manifest.finish([samples])
  per = config.sample.problems_per_batch
  with pytest.raises(CorruptArtifactError, match=f'{shard} holds {per - 1} records; expected '
                     f'{per}'):
    sample_shards.read(samples, 20, per, 'calibrate')
  bad = json.loads(lines[0])
  bad['correct'] = bad['correct'][:-1]
  shard.write_text('\n'.join([json.dumps(bad), *lines[1:]]) + '\n')
  manifest.finish([samples])
  with pytest.raises(CorruptArtifactError, match='record 1 has 4 completions, 3 grades'):
    sample_shards.read(samples, 20, per, 'calibrate')


@pytest.mark.slow
def test_rerun_with_a_changed_key_stops_or_rebuilds_only_the_affected_chain(full_run, tmp_path):
  workdir = tmp_path / 'wd'
  shutil.copytree(full_run, workdir)
  manifests = {p: p.read_bytes() for p in workdir.rglob('manifest.json')}
  result = launch(workdir, '--config.train.steps=200')
  assert result.returncode == 2
  assert result.stderr.strip().splitlines()[-1].startswith(
      f'error: stage train_base: {workdir}/models/base is stale (train.steps: 300 -> 200)')
  assert 'tokenizer done, skipping' in result.stderr
  assert {p: p.read_bytes() for p in workdir.rglob('manifest.json')} == manifests
  result = launch(workdir, '--config.train_prm.steps=12', '--rebuild_stale')
  assert result.returncode == 0, result.stderr[-2000:]
  rebuilt = {'models/prm_on_base_long', 'models/orm_on_base_long',
             'verifier_scores/base/test/prm_on_base_long',
             'verifier_scores/base/test/orm_on_base_long', 'eval_verifiers/base/test/on_base_long',
             'eval_search/base/test/prm_on_base_long', 'models/orm_revision_base_on_base_long',
             'revisions/base/test/on_base_long', 'eval_revisions/base/test/on_base_long',
             'difficulty/base/test/prm_on_base_long', 'policy/base/test/on_base_long',
             'report/base/test/on_base_long',
             *(f'search/base/test/prm_on_base_long/{m}' for m in get_config('tiny').search.methods)}
  for path, before in manifests.items():
    name = str(path.parent.relative_to(workdir))
    assert (path.read_bytes() != before) == (name in rebuilt), name
  info = json.loads((workdir / 'models' / 'prm_on_base_long' / 'info.json').read_text())
  assert info['steps'] == 12
