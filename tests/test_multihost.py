"""A real job of 2 processes on localhost (jax.distributed, CPU collectives over gloo), 4 CPU
devices each, through the launcher: train_base data-parallel over the job's 8 devices, sample
and eval_search sharing their batches, calibrate on process 0 alone; each gives what one process
gives."""

import json
import os
import shutil
import socket
import subprocess
import sys

import jax
import numpy as np
import pytest

from conftest import COMPILE_FLAGS
from ttc_jax.errors import ConfigError
from ttc_jax.parallel import hosts
from ttc_jax.pipeline import stages, train_base

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _config():
  from configs.arith import get_config
  return get_config('tiny')


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(('127.0.0.1', 0))
    return s.getsockname()[1]


def _job(workdirs, mode: str, *overrides: str) -> list[subprocess.CompletedProcess]:
  """`--mode=mode` as a job of 2 processes of 4 CPU devices each (process i in workdirs[i])."""
  port = _free_port()
  env = dict(os.environ, JAX_PLATFORMS='cpu',
             XLA_FLAGS=f'{COMPILE_FLAGS} --xla_force_host_platform_device_count=4')
  cmd = [sys.executable, '-m', 'launch.main', '--config=configs/arith.py:tiny', f'--mode={mode}',
         f'--coordinator_address=127.0.0.1:{port}', '--num_processes=2', *overrides]
  procs = [subprocess.Popen([*cmd, f'--workdir={w}', f'--process_id={i}'], cwd=ROOT, env=env,
                            text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
           for i, w in enumerate(workdirs)]
  outs = [p.communicate(timeout=600) for p in procs]
  return [subprocess.CompletedProcess(p.args, p.returncode, o, e)
          for p, (o, e) in zip(procs, outs)]


def _two_processes(workdir, mode: str, *overrides: str) -> None:
  for i, r in enumerate(_job([workdir, workdir], mode, *overrides)):
    assert r.returncode == 0, f'process {i} of --mode={mode}:\n{r.stderr[-3000:]}'


def _files(directory) -> dict[str, str]:
  return {p.name: p.read_text() for p in sorted(directory.rglob('*.jsonl'))}


def _search_rows(workdir) -> dict[str, list]:
  out = {}
  for p in sorted((workdir / 'search').rglob('n*_seed*.json')):
    out[str(p.relative_to(workdir))] = json.loads(p.read_text())['problems']
  return out


SHORT = {'train.steps': 6, 'train.checkpoint_every': 3, 'train.log_every': 3}


def test_train_base_on_two_processes_equals_one_device(tmp_path):
  """The data-parallel step over the 8 devices of 2 processes, each feeding its devices' rows:
  the parameters of one device, up to rounding (6 steps: rounding differences grow chaotically
  over hundreds)."""
  config = _config()
  for k, v in SHORT.items():
    config.train[k.split('.')[1]] = v
  one, two = tmp_path / 'one', tmp_path / 'two'
  for name in ('data', 'tokenizer'):  # not the shared tiny run: this test runs beside it
    stages.execute(stages.table(config)[name], config, str(one), rebuild_stale=False)
  for sub in ('data', 'tokenizer'):
    shutil.copytree(one / sub, two / sub)
  stages.execute(stages.table(config)['train_base'], config, str(one), rebuild_stale=False)
  _two_processes(two, 'train_base', *(f'--config.{k}={v}' for k, v in SHORT.items()))
  _, mine = train_base.load_model(config, str(two), 'base', 'test')
  _, ref = train_base.load_model(config, str(one), 'base', 'test')
  for a, b in zip(jax.tree.leaves(mine), jax.tree.leaves(ref)):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-6)
  lines = lambda w: (w / 'models/base/metrics.jsonl').read_text().count('\n')
  assert lines(two) == lines(one) == 2


@pytest.mark.slow
def test_sample_calibrate_and_search_on_two_processes(full_run, tmp_path):
  """From the very weights of the tiny `--mode=all` (one process, one device), every file the
  2-process job writes equals that run's."""
  one_process, two = full_run, tmp_path / 'two'
  shutil.copytree(one_process, two)
  for sub in ('samples', 'calibration', 'search', 'eval_search'):
    shutil.rmtree(two / sub)
  _two_processes(two, 'sample')  # 3 shards: a round of two, then one with process 1 idle
  assert _files(two / 'samples') == _files(one_process / 'samples')
  _two_processes(two, 'calibrate')  # process 0 alone, process 1 waiting
  difficulty = 'calibration/base/test/difficulty.json'
  assert (two / difficulty).read_text() == (one_process / difficulty).read_text()
  _two_processes(two, 'eval_search')
  assert _search_rows(two) == _search_rows(one_process)
  search = 'eval_search/base/test/prm_on_base_long/search.json'
  untimed = lambda w: {m: {b: {k: v for k, v in row.items() if k != 'seconds'}
                           for b, row in by_budget.items()}
                       for m, by_budget in json.loads((w / search).read_text())['methods'].items()}
  assert untimed(two) == untimed(one_process)
  # Only process 0 wrote: no file of another writer, no temporary left.
  assert not list(two.rglob('.tmp-*'))


def _untimed(tree):
  if isinstance(tree, dict):
    return {k: _untimed(v) for k, v in tree.items() if 'seconds' not in k}
  return [_untimed(v) for v in tree] if isinstance(tree, list) else tree


def test_a_stage_of_process_0_restores_the_verifiers(full_run, tmp_path):
  """eval_verifiers runs on process 0 alone while process 1 waits: it restores the PRM and ORM
  checkpoints there (orbax told only process 0 takes part) and writes the one-process files."""
  one_process, two = full_run, tmp_path / 'two'
  shutil.copytree(one_process, two)
  for sub in ('verifier_scores', 'eval_verifiers'):
    shutil.rmtree(two / sub)
  _two_processes(two, 'eval_verifiers')
  scores = lambda w: {str(p.relative_to(w)): {k: v.tolist() for k, v in np.load(p).items()}
                      for p in sorted((w / 'verifier_scores').rglob('*.npz'))}
  assert scores(two) and scores(two) == scores(one_process)
  result = 'eval_verifiers/base/test/on_base_long/verifiers.json'
  assert (_untimed(json.loads((two / result).read_text()))
          == _untimed(json.loads((one_process / result).read_text())))


def test_a_workdir_not_shared_by_the_processes(tmp_path):
  """Each process given its own directory: both stop with one line, before any stage."""
  workdirs = [tmp_path / 'a', tmp_path / 'b']
  for w, r in zip(workdirs, _job(workdirs, 'data')):
    assert r.returncode == 2, r.stderr[-2000:]
    assert r.stderr.strip().splitlines()[-1].startswith(
        f'error: --workdir={w} is not one directory for every process: process(es) [1] do not '
        'see'), r.stderr[-2000:]
  assert not (tmp_path / 'a' / 'data').exists()


def test_one_process_needs_no_job():
  assert hosts.count() == 1 and hosts.is_writer() and not hosts.shared()
  assert hosts.owned(3) == [0, 1, 2]
  assert hosts.gather({'a': 1}) == [{'a': 1}]
  hosts.barrier('nothing to wait for')
  with hosts.first_only():
    assert hosts.active() == frozenset({0})


@pytest.mark.parametrize('args, message', [
    (('', 2, 0), '--num_processes=2 needs --coordinator_address=HOST:PORT'),
    (('127.0.0.1:1234', 1, 0), '--num_processes=1 --process_id=0 with'),
    (('127.0.0.1:1234', 2, 2), 'an id from 0 to num_processes - 1'),
])
def test_bad_job_flags(args, message):
  with pytest.raises(ConfigError, match=message):
    hosts.initialize(*args)
