"""The launcher end to end on the tiny arith config: stages, skipping, resume after kill -9,
one-line errors for bad input; the PRM chain (prm_data, train_prm, train_orm) on its outputs."""

import json
import os
import signal
import time

import numpy as np
import pytest

from conftest import COMPILE_FLAGS, launch

CALIB = ('calibration', 'base', 'test')
EVAL = ('eval_verifiers', 'base', 'test', 'on_base_long')


def _under(workdir, parts):
  return workdir.joinpath(*parts)


def _final_params(workdir, steps):
  from configs.arith import get_config
  from ttc_jax.pipeline import train_base
  import jax
  config = get_config('tiny')
  config.train.steps = steps
  _, params = train_base.load_model(config, str(workdir), 'base', 'test')
  return [np.asarray(x) for x in jax.tree.leaves(params)]


def test_all_writes_every_artifact(full_run):
  from configs.arith import get_config
  calib = json.loads((_under(full_run, CALIB) / 'calibration.json').read_text())
  assert set(calib['bins']) == {'1', '2', '3', '4', '5'}
  assert calib['overall']['num_problems'] == 20
  assert (_under(full_run, CALIB) / 'pass_at_k.png').stat().st_size > 1000
  # Per problem: oracle pass@1 and bin, the same bins as the bin means, one difficulty file.
  per = json.loads((_under(full_run, CALIB) / 'per_problem.json').read_text())['problems']
  assert len(per) == 20 and len({p['id'] for p in per}) == 20
  for b, row in calib['bins'].items():
    mine = [p for p in per if p['bin'] == int(b)]
    assert len(mine) == row['num_problems']
    assert np.mean([p['pass@1'] for p in mine]) == pytest.approx(row['pass@1'])
  difficulty = json.loads((_under(full_run, CALIB) / 'difficulty.json').read_text())
  assert difficulty['bins'] == {p['id']: p['bin'] for p in per}
  info = json.loads((full_run / 'models' / 'base' / 'info.json').read_text())
  assert info['pretrain_flops'] == pytest.approx(6 * info['num_params'] * info['tokens_seen'])
  assert not [p for p in full_run.rglob('*') if '.tmp' in p.name]
  # The verifiers sit on base_long: the base model trained on by train_verifier_backbone.
  base_info = json.loads((full_run / 'models' / 'base' / 'info.json').read_text())
  backbone = json.loads((full_run / 'models' / 'base_long' / 'info.json').read_text())
  assert backbone['init_from'] == 'base' and backbone['init_steps'] == base_info['steps']
  assert backbone['steps'] == get_config('tiny').train_verifier_backbone.steps
  for kind in ('prm', 'orm'):
    info = json.loads((full_run / 'models' / f'{kind}_on_base_long' / 'info.json').read_text())
    assert info['train_solutions'] > 0 and 0 <= info['validation']['step_brier'] <= 1
    assert info['backbone'] == 'base_long'
  verifiers = json.loads((_under(full_run, EVAL) / 'verifiers.json').read_text())
  assert verifiers['ns'] == [1, 2, 4] and verifiers['groups']['overall']['num_problems'] == 20
  # Per problem, method and N: their mean over a bin's problems is the bin's mean.
  with np.load(_under(full_run, EVAL) / 'per_problem.npz') as z:
    assert z['ids'].tolist() == [p['id'] for p in per] and z['ns'].tolist() == [1, 2, 4]
    for b, group in verifiers['groups'].items():
      rows = np.ones(20, bool) if b == 'overall' else z['bins'] == int(b)
      for name, method in group['methods'].items():
        np.testing.assert_allclose(z[f'accuracy:{name}'][rows].mean(0), method['accuracy'],
                                   atol=1e-12)
  # The PRM's calibration is read against the labels train_prm held out; both see the same steps.
  prm_info = json.loads((full_run / 'models' / 'prm_on_base_long' / 'info.json').read_text())
  assert verifiers['prm_calibration']['num_steps'] == prm_info['validation']['step_count']
  assert verifiers['prm_calibration']['brier'] == pytest.approx(
      prm_info['validation']['step_brier'], abs=1e-4)
  assert (_under(full_run, EVAL) / 'verifiers.png').stat().st_size > 1000
  # The console shows the stages' progress lines, not library dumps (orbax's options, TFDS's
  # warnings about its config registry).
  console = (full_run / '.console.log').read_text()
  assert 'stage eval_verifiers finished' in console
  assert 'CheckpointManagerOptions' not in console and 'orbax' not in console.lower()
  assert 'Using custom data configuration' not in console
  # Every artifact's manifest says it is complete; the files follow the umask, not 0600.
  for manifest in full_run.rglob('manifest.json'):
    assert json.loads(manifest.read_text())['complete'], manifest
    assert manifest.stat().st_mode & 0o044, manifest


def test_rerun_skips_finished_stages(full_run):
  before = {p: p.stat().st_mtime for p in full_run.rglob('*.json*')}
  result = launch(full_run)
  assert result.returncode == 0
  assert 'skipping' in result.stderr
  assert {p: p.stat().st_mtime for p in full_run.rglob('*.json*')} == before


@pytest.mark.slow
def test_kill_9_during_train_base_then_rerun_equals_uninterrupted(full_run, tmp_path):
  """Killed at its first checkpoint and rerun, train_base ends on the parameters of the
  uninterrupted run (full_run's)."""
  import shutil
  for sub in ('data', 'tokenizer'):  # the stages before train_base, as full_run made them
    shutil.copytree(full_run / sub, tmp_path / sub)
  proc = launch(tmp_path, mode='train_base', wait=False)
  ckpt = tmp_path / 'models' / 'base' / '10'
  deadline = time.time() + 300
  while not ckpt.exists() and time.time() < deadline and proc.poll() is None:
    time.sleep(0.05)
  os.kill(proc.pid, signal.SIGKILL)
  proc.wait()
  assert not (tmp_path / 'models' / 'base' / 'info.json').exists()
  result = launch(tmp_path, mode='train_base')
  assert result.returncode == 0 and 'resumed from step' in result.stderr, result.stderr[-2000:]
  for a, b in zip(_final_params(tmp_path, 300), _final_params(full_run, 300)):
    np.testing.assert_array_equal(a, b)


def _one_line_error(result, pattern):
  assert result.returncode == 2, result.stderr[-2000:]
  last = result.stderr.strip().splitlines()[-1]
  assert last.startswith('error: ') and pattern in last, last


def test_unknown_config_key(tmp_path):
  _one_line_error(launch(tmp_path, '--config.train.stepz=3', mode='data'),
                  "unknown config key among ['--config.train.stepz']")
  assert not os.listdir(tmp_path)


@pytest.mark.parametrize('args,line', [
    # Values are checked before any work (every rule: tests/test_config_checks.py).
    (['--config.train.steps=-5'], 'error: --config.train.steps=-5: expected an integer >= 1\n'),
    # (The line keeps its closing quote.)
    (['--config=configs/nope.py'], "error: --config=configs/nope.py did not load: [Errno 2] No "
     "such file or directory: 'configs/nope.py'\n"),
    (['--config=configs/arith.py:huge'], "error: unknown arith variant 'huge'; expected default, "
     'large, tiny, gpu, tpu or tpu_pod\n'),
    (['--num_processes=2'], 'error: --num_processes=2 needs --coordinator_address=HOST:PORT'),
])
def test_bad_command_lines_stop_before_any_work(tmp_path, args, line):
  """Config values are checked when parsed: one line, exit 2, no workdir made, no traceback."""
  result = launch(tmp_path / 'wd', *args)
  assert result.returncode == 2, result.stderr[-2000:]
  assert (result.stderr.strip() + '\n').startswith(line), result.stderr[-2000:]
  assert len(result.stderr.strip().splitlines()) == 1, result.stderr[-2000:]
  assert not (tmp_path / 'wd').exists()


def test_a_bucket_workdir_is_a_one_line_error():
  from conftest import ROOT
  result = launch('gs://bucket/wd', mode='data')
  assert result.returncode == 2, result.stderr[-2000:]
  assert result.stderr.strip() == (
      'error: --workdir=gs://bucket/wd: the workdir is a directory of this machine (on a pod '
      'slice, one every host mounts: gcsfuse or a shared disk); copy it to a bucket afterwards '
      '(launch.tpu.job --action=copy --bucket=gs://...)'), result.stderr[-2000:]
  assert not os.path.exists(os.path.join(ROOT, 'gs:'))


def test_a_bug_keeps_its_traceback(tmp_path):
  """Only bad input (UserError) is one line: a KeyError from inside a stage is a bug and shows
  its traceback, where the launcher used to print it as `error: 'key'`."""
  import subprocess
  import sys
  from conftest import ROOT
  code = ('import sys; from launch import main as m; from ttc_jax.pipeline import stages; '
          "stages.execute = lambda *a: {}['no_such_key']; "
          'm.app.run(m.main, flags_parser=m._parse_flags)')
  result = subprocess.run(
      [sys.executable, '-c', code, '--config=configs/arith.py:tiny', f'--workdir={tmp_path}',
       '--mode=data'], cwd=ROOT, capture_output=True, text=True, timeout=300,
      env=dict(os.environ, JAX_PLATFORMS='cpu', XLA_FLAGS=COMPILE_FLAGS))
  assert result.returncode == 1, result.stderr[-2000:]
  assert 'Traceback (most recent call last)' in result.stderr
  assert result.stderr.strip().splitlines()[-1] == "KeyError: 'no_such_key'"


def test_help_lists_stages_variants_and_overrides():
  result = launch('unused', '--help')  # absl ends --help with exit code 1
  out = result.stdout + result.stderr
  for text in ('train_verifier_backbone', 'import_model', 'configs/arith.py', 'tiny',
               '--config.KEY=VALUE', '`all` runs them in this order', '--rebuild_stale'):
    assert text in out, text


def test_stage_before_its_inputs(tmp_path):
  _one_line_error(launch(tmp_path, mode='train_base'), 'run --mode=tokenizer first')
  assert not (tmp_path / 'models').exists()


def test_unwritable_workdir(tmp_path):
  blocker = tmp_path / 'file'
  blocker.write_text('x')
  # Root ignores permission bits, so "read-only" is a path under a regular file.
  _one_line_error(launch(blocker / 'wd', mode='data'), 'is not writable')


def test_corrupt_checkpoint(full_run, tmp_path):
  """A damaged checkpoint stops every stage that reads it, with the remedy; after the remedy
  (delete the bad step), readers refuse the model until train_base has trained it back to the
  step its info.json records (never the previous step in its place)."""
  import shutil
  from configs.arith import get_config
  from ttc_jax import artifacts
  from ttc_jax import manifest
  from ttc_jax.errors import CorruptArtifactError, MissingInputError
  from ttc_jax.pipeline import common
  from ttc_jax.training import objectives, trainer
  workdir = tmp_path / 'wd'
  shutil.copytree(full_run, workdir)
  for f in (workdir / 'models' / 'base' / '300').rglob('*'):
    if f.is_file():
      f.write_bytes(b'')
  _one_line_error(launch(workdir, mode='train_base'), 'changed size after train_base wrote it')
  config = get_config('tiny')
  model = artifacts.model(config, str(workdir))
  with pytest.raises(MissingInputError, match='needs .*models/base, which is damaged'):
    manifest.require(model, 'sample')
  shutil.rmtree(workdir / 'models' / 'base' / '300')
  with pytest.raises(CorruptArtifactError, match='no checkpoint of step 300'):
    trainer.load_params(model.path, objectives.LanguageModeling(
        common.model_config(config, 'base', 64)), config.train, step=300)
  with pytest.raises(MissingInputError, match='which is partial .*run --mode=train_base first'):
    manifest.require(model, 'sample')
  result = launch(workdir, mode='train_base')
  assert result.returncode == 0 and 'resumed from step 290' in result.stderr, result.stderr[-2000:]
  for a, b in zip(_final_params(workdir, 300), _final_params(full_run, 300)):
    np.testing.assert_array_equal(a, b)


def test_second_model_is_binned_by_the_base_models_difficulty(full_run, tmp_path, monkeypatch):
  """`large` is calibrated on the base model's bins: same problems per bin, base pass@1 alongside."""
  import shutil
  from configs.arith import get_config
  from ttc_jax import artifacts
  from ttc_jax.pipeline import calibrate, sample
  workdir = tmp_path / 'wd'
  shutil.copytree(full_run, workdir)
  base_calib = json.loads((_under(full_run, CALIB) / 'calibration.json').read_text())
  # The second model's samples: the base model's with every grade flipped, so its own easiest
  # problems are the base's hardest.
  load = sample.load_samples

  def flipped(config, workdir_, stage, model_name=''):
    if model_name or config.model_name == 'base':
      return load(config, workdir_, stage, model_name)
    recs = load(config, workdir_, stage, 'base')
    return [dict(r, correct=[not c for c in r['correct']]) for r in recs]

  monkeypatch.setattr(sample, 'load_samples', flipped)
  config = get_config('tiny')
  config.model_name = 'large'
  out = artifacts.calibration(config, str(workdir))
  assert out.name == 'calibration/large/test'
  calibrate.run(config, str(workdir))
  calib = json.loads((workdir / out.name / 'calibration.json').read_text())
  assert calib['bins_by'] == 'base'
  for b, row in calib['bins'].items():
    base_row = base_calib['bins'][b]
    assert row['num_problems'] == base_row['num_problems']
    assert row['base_pass@1'] == pytest.approx(base_row['pass@1'])
    assert row['pass@1'] == pytest.approx(1 - base_row['pass@1'])
  # Problems the base model was never sampled on cannot be binned: a one-line error, no file.
  shutil.rmtree(workdir / out.name)
  shutil.rmtree(workdir / 'samples' / 'base')
  with pytest.raises(FileNotFoundError, match='run --mode=sample --config.model_name=base first'):
    calibrate.run(config, str(workdir))
  assert not (workdir / out.name).exists()


def _labels(workdir, split='train'):
  from configs.arith import get_config
  from ttc_jax.pipeline import prm_data
  return prm_data.load_labels(get_config('tiny'), str(workdir), split, 'test')


def test_prm_labels(full_run):
  from configs.arith import get_config
  from ttc_jax.pipeline import common
  from ttc_jax.tasks import arith
  from ttc_jax.verifiers.steps import step_ends
  config = get_config('tiny')
  tok = common.load_tokenizer(config, str(full_run), 'test')
  train, valid = _labels(full_run), _labels(full_run, 'validation')
  assert train and valid
  assert not {l.problem_id for l in train} & {l.problem_id for l in valid}
  assert len({l.problem_id for l in train}) <= config.prm_data.train_problems
  for l in train + valid:
    assert arith.extract_answer(l.completion) is not None
    assert tok.decode(l.completion_ids) == l.completion
    assert l.step_ends == step_ends(l.completion_ids, tok.id_of('\n'), tok.eos_id)
    assert len(l.labels) == len(l.step_ends)
    assert all(0.0 <= x <= 1.0 for x in l.labels)
    assert l.labels[-1] == float(l.correct) == float(arith.grade(l.completion, l.answer))
  m = config.prm_data.num_rollouts
  mc = [x for l in train for x in l.labels[:-1]]
  assert mc and all(x * m == round(x * m) for x in mc)


def test_kill_9_during_prm_data_then_rerun_loses_at_most_one_shard(full_run, tmp_path):
  import shutil
  shutil.copytree(full_run, tmp_path / 'wd')
  labels_dir = tmp_path / 'wd' / 'prm_data' / 'base'
  shards = labels_dir / 'shards'
  originals = {p.name: json.loads(p.read_text())['records'] for p in shards.iterdir()}
  assert sorted(originals) == ['train-00000.json', 'train-00001.json', 'validation-00000.json']
  shutil.rmtree(labels_dir / 'tfds')
  for p in list(shards.iterdir())[1:]:
    p.unlink()
  kept = next(shards.iterdir())
  mtime = kept.stat().st_mtime_ns
  proc = launch(tmp_path / 'wd', mode='prm_data', wait=False)
  deadline = time.time() + 300
  while len([p for p in shards.iterdir() if not p.name.startswith('.')]) < 2 and (
      time.time() < deadline and proc.poll() is None):
    time.sleep(0.05)
  assert proc.poll() is None, 'prm_data ended before the kill'
  os.kill(proc.pid, signal.SIGKILL)
  proc.wait()
  done = sorted(p.name for p in shards.iterdir() if not p.name.startswith('.'))
  assert len(done) == 2 and not any(labels_dir.rglob('dataset_info.json'))
  assert launch(tmp_path / 'wd', mode='prm_data').returncode == 0
  assert kept.stat().st_mtime_ns == mtime  # a finished shard is never redone
  for p in shards.iterdir():
    if not p.name.startswith('.'):
      assert json.loads(p.read_text())['records'] == originals[p.name]  # same keys, same labels
  assert _labels(tmp_path / 'wd') == _labels(full_run)


def test_train_prm_resumes_to_the_uninterrupted_parameters(full_run, tmp_path):
  import shutil
  import jax
  from configs.arith import get_config
  from ttc_jax.pipeline import train_prm
  shutil.copytree(full_run, tmp_path / 'wd')
  prm = tmp_path / 'wd' / 'models' / 'prm_on_base_long'
  (prm / 'info.json').unlink()
  shutil.rmtree(prm / str(get_config('tiny').train_prm.steps))  # killed before the last save
  result = launch(tmp_path / 'wd', mode='train_prm')
  assert result.returncode == 0 and 'resumed from step' in result.stderr
  config = get_config('tiny')
  _, resumed = train_prm.load_verifier(config, str(tmp_path / 'wd'), 'prm', 'test')
  _, original = train_prm.load_verifier(config, str(full_run), 'prm', 'test')
  for a, b in zip(jax.tree.leaves(resumed), jax.tree.leaves(original)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


@pytest.mark.slow
def test_train_prm_with_the_backbone_trained_too(full_run, tmp_path):
  """freeze_backbone=False: backbone and head train together on token batches; the checkpoint
  holds both, and info.json's held-out metrics are those of the trained backbone."""
  import shutil
  import jax
  from configs.arith import get_config
  from ttc_jax.pipeline import prm_data, train_base, train_prm
  shutil.copytree(full_run, tmp_path / 'wd')
  workdir = tmp_path / 'wd'
  shutil.rmtree(workdir / 'models' / 'prm_on_base_long')
  result = launch(workdir, '--config.train_prm.freeze_backbone=False', mode='train_prm')
  assert result.returncode == 0, result.stderr[-2000:]
  config = get_config('tiny')
  config.train_prm.freeze_backbone = False
  model, params = train_prm.load_verifier(config, str(workdir), 'prm', 'test')
  _, backbone = train_base.load_model(config, str(workdir), 'base_long', 'test')
  assert not all(np.array_equal(a, b) for a, b in zip(jax.tree.leaves(params['transformer']),
                                                      jax.tree.leaves(backbone)))
  info = json.loads((workdir / 'models' / 'prm_on_base_long' / 'info.json').read_text())
  assert info['freeze_backbone'] is False
  valid = prm_data.load_labels(config, str(workdir), 'validation', 'test')
  want = train_prm.heldout_metrics(model, params, valid, config.train_prm.max_len, 1)
  assert info['validation'] == pytest.approx(want, rel=1e-5)


def test_train_prm_before_prm_data(full_run, tmp_path):
  import shutil
  shutil.copytree(full_run, tmp_path / 'wd')
  shutil.rmtree(tmp_path / 'wd' / 'prm_data')
  shutil.rmtree(tmp_path / 'wd' / 'models' / 'prm_on_base_long')
  from configs.arith import get_config
  from ttc_jax.errors import MissingInputError
  from ttc_jax.pipeline import stages
  config = get_config('tiny')
  with pytest.raises(MissingInputError, match=r'^stage train_prm needs .*prm_data/base, which '
                     r'does not exist; run --mode=prm_data first \(or --mode=all\)$'):
    stages.execute(stages.table(config)['train_prm'], config, str(tmp_path / 'wd'), False)


# A second tiny model for the verifier-backbone tests (the real `large` is 14M parameters).
TINY_LARGE = ['--config.models.large.embed_dim=48', '--config.models.large.hidden_dim=96',
              '--config.models.large.num_heads=2', '--config.models.large.head_dim=16',
              '--config.models.large.num_kv_heads=1', '--config.models.large.num_layers=2']


@pytest.mark.slow
def test_verifiers_on_another_backbone(full_run, tmp_path):
  """verifier_backbone=large (trained from scratch by train_verifier_backbone): PRM/ORM start from
  the large model's weights, are scored and evaluated under their own names; the default
  (base_long) results are left as they were. verifier_backbone='' (the proposer): nothing to
  train, the verifiers are plain `prm` / `orm`."""
  import shutil
  import jax
  from configs.arith import get_config
  from ttc_jax import config_checks
  from ttc_jax.errors import ConfigError, MissingInputError, UserError
  from ttc_jax.model import transformer
  from ttc_jax.pipeline import stages, train_base, train_prm
  shutil.copytree(full_run, tmp_path / 'wd')
  workdir = tmp_path / 'wd'
  before = (_under(workdir, EVAL) / 'verifiers.json').read_bytes()
  on_large = [*TINY_LARGE, '--config.verifier_backbone=large']
  config = get_config('tiny')
  config.models.large.update(dict(embed_dim=48, hidden_dim=96, num_heads=2, head_dim=16,
                                  num_kv_heads=1, num_layers=2))
  config.verifier_backbone = 'large'
  table = stages.table(config)
  # The backbone must be trained first: an error naming the stage, nothing written.
  with pytest.raises(MissingInputError, match='run --mode=train_verifier_backbone first'):
    stages.execute(table['train_prm'], config, str(workdir), rebuild_stale=False)
  assert not (workdir / 'models' / 'prm_on_large').exists()
  # From the base model's weights: other shapes, an error naming the key to change (before any
  # work: the stage's declaration checks it).
  with pytest.raises(UserError, match="train_verifier_backbone.init='base' has other parameter "
                     "shapes than 'large'"):
    table['train_verifier_backbone'].outputs(config, str(workdir))
  # The backbone from the command line, then the verifiers on it (the stages after them, which
  # --mode=all would rerun on the new verifiers, are other tests' business).
  result = launch(workdir, *on_large, '--config.train_verifier_backbone.init=',
                  mode='train_verifier_backbone')
  assert result.returncode == 0, result.stderr[-2000:]
  config.train_verifier_backbone.init = ''
  for name in ('train_verifier_backbone', 'train_prm', 'train_orm', 'eval_verifiers'):
    stages.execute(table[name], config, str(workdir), rebuild_stale=False)
  large_model, large_params = train_base.load_model(config, str(workdir), 'large', 'test')
  large_info = json.loads((workdir / 'models' / 'large' / 'info.json').read_text())
  assert 'init_from' not in large_info
  assert large_info['steps'] == config.train_verifier_backbone.steps
  for kind in ('prm', 'orm'):
    info = json.loads((workdir / 'models' / f'{kind}_on_large' / 'info.json').read_text())
    assert info['backbone'] == 'large' and info['proposer'] == 'base'
    assert info['num_params'] == transformer.count_params(large_params)
    model, params = train_prm.load_verifier(config, str(workdir), kind, 'test')
    assert model == large_model
    assert (jax.tree.structure(params['transformer']) == jax.tree.structure(large_params))
    # freeze_backbone: the verifier's backbone is the trained LM, unchanged.
    for a, b in zip(jax.tree.leaves(params['transformer']), jax.tree.leaves(large_params)):
      np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  assert (workdir / 'verifier_scores' / 'base' / 'test' / 'prm_on_large').is_dir()
  on_large = ('eval_verifiers', 'base', 'test', 'on_large')
  verifiers = json.loads((_under(workdir, on_large) / 'verifiers.json').read_text())
  assert verifiers['verifier_backbone'] == 'large' and verifiers['model'] == 'base'
  assert (_under(workdir, on_large) / 'verifiers.png').stat().st_size > 1000
  assert (_under(workdir, EVAL) / 'verifiers.json').read_bytes() == before
  # A backbone the config does not define: a config error.
  config.verifier_backbone = 'huge'
  with pytest.raises(ConfigError, match="--config.verifier_backbone='huge': expected '' or one "
                     'of the models'):
    config_checks.check(config)
  # On the proposer itself: nothing to train.
  config.verifier_backbone = ''
  models = sorted(os.listdir(workdir / 'models'))
  assert table['train_verifier_backbone'].outputs(config, str(workdir)) == []
  stages.execute(table['train_verifier_backbone'], config, str(workdir), rebuild_stale=False)
  assert sorted(os.listdir(workdir / 'models')) == models


def test_train_base_continues_from_another_model(full_run, tmp_path):
  """train_init=base: base_long starts from the base model's weights (with a zero learning rate
  it ends on them exactly) and its info.json counts the base model's FLOPs too."""
  import shutil
  import jax
  from configs.arith import get_config
  from ttc_jax import config_checks
  from ttc_jax.errors import ConfigError, UserError
  from ttc_jax.pipeline import train_base
  workdir = tmp_path / 'wd'
  for sub in ('data', 'tokenizer', 'models/base'):
    shutil.copytree(full_run / sub, workdir / sub)
  args = ['--config.model_name=base_long', '--config.train.steps=3',
          '--config.train.learning_rate=0.0', '--config.train.warmup_steps=1']
  # A start of another architecture, or the model itself: an error before any work.
  config = get_config('tiny')
  config.update(dict(model_name='base_long', train_init='large'))
  config.models.large.update(dict(embed_dim=48, hidden_dim=96, num_heads=2, head_dim=16,
                                  num_kv_heads=1, num_layers=2))
  with pytest.raises(UserError, match="train_init='large' has other parameter shapes"):
    train_base.outputs(config, str(workdir))
  config.train_init = 'base_long'
  with pytest.raises(ConfigError, match="--config.train_init='base_long': expected '' or a "
                     'model other than'):
    config_checks.check(config)
  assert not (workdir / 'models' / 'base_long').exists()
  result = launch(workdir, *args, '--config.train_init=base', mode='train_base')
  assert result.returncode == 0, result.stderr[-2000:]
  config = get_config('tiny')
  config.update(dict(model_name='base_long', train_init='base'))
  config.train.update(dict(steps=3, learning_rate=0.0, warmup_steps=1))
  _, base = train_base.load_model(config, str(workdir), 'base', 'test')
  _, cont = train_base.load_model(config, str(workdir), 'base_long', 'test')
  for a, b in zip(jax.tree.leaves(base), jax.tree.leaves(cont)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  base_info = json.loads((workdir / 'models' / 'base' / 'info.json').read_text())
  info = json.loads((workdir / 'models' / 'base_long' / 'info.json').read_text())
  assert info['init_from'] == 'base' and info['init_steps'] == base_info['steps']
  own = info['tokens_seen'] - base_info['tokens_seen']
  assert 0 < own < base_info['tokens_seen']
  assert info['pretrain_flops'] == pytest.approx(6 * info['num_params'] * info['tokens_seen'])
