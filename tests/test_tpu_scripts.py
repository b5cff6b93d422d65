"""launch/tpu/job.py: the exact commands a Cloud TPU job prints (--dry_run) for a v5e-8 and a
v4-32 slice, the queued-resources (Spot) variant, stopping at the first failed command, and the
one-line errors for bad input. No network, no gcloud: nothing here runs a command."""

import os
import subprocess
import sys

import pytest

from launch.tpu import job as tpu

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
COMMON = ['--config=configs/arith.py:gpu', '--workdir=workdir', '--bucket=gs://my-bucket/ttc']
V5E = ['--action=all', '--name=ttc-v5e', '--zone=us-west4-a', '--accelerator_type=v5litepod-8',
       *COMMON]
V4 = ['--action=all', '--name=ttc-v4', '--zone=us-central2-b', '--accelerator_type=v4-32', *COMMON]
LAUNCHER = ("--command='cd ~/ttc_jax && ~/ttc_jax_venv/bin/python -m launch.main "
            "--config=configs/arith.py:gpu --workdir=workdir --mode=all")


def lines(argv):
  job, dry_run = tpu.parse(argv)
  assert dry_run == ('--dry_run' in argv)
  return tpu.render(tpu.plan(job))


def commands(rendered):
  return [l for l in rendered if not l.startswith('#')]


def test_v5e_8_all():
  out = lines([*V5E, '--', '--config.sample.num_samples=16'])
  assert out[0].startswith('# v5litepod-8: 1 host, 8 chips (TPU v5e, runtime v2-alpha-tpuv5-lite)')
  assert commands(out) == [
      'gcloud compute tpus tpu-vm create ttc-v5e --zone=us-west4-a '
      '--accelerator-type=v5litepod-8 --version=v2-alpha-tpuv5-lite',
      f'git -C {ROOT} archive --format=tar.gz --output=/tmp/ttc_jax-ttc-v5e.tar.gz HEAD',
      'gcloud compute tpus tpu-vm scp --recurse /tmp/ttc_jax-ttc-v5e.tar.gz '
      'ttc-v5e:ttc_jax.tar.gz --zone=us-west4-a --worker=all',
      out[out.index('# --- setup') + 4],  # the install, checked below
      f'gcloud compute tpus tpu-vm ssh ttc-v5e --zone=us-west4-a --worker=all {LAUNCHER} '
      "--config.sample.num_samples=16'",
      'gcloud compute tpus tpu-vm ssh ttc-v5e --zone=us-west4-a --worker=0 '
      "--command='cd ~/ttc_jax && gcloud storage rsync --recursive workdir "
      "gs://my-bucket/ttc'",
      'gcloud compute tpus tpu-vm delete ttc-v5e --zone=us-west4-a --quiet',
  ]
  install = commands(out)[3]
  assert install.startswith("gcloud compute tpus tpu-vm ssh ttc-v5e --zone=us-west4-a "
                            "--worker=all --command='")
  for part in ('$PY -m venv ~/ttc_jax_venv', 'tar -xzf ~/ttc_jax.tar.gz -C ~/ttc_jax',
               'cd ~/ttc_jax && ~/ttc_jax_venv/bin/pip install -e . "jax[tpu]"'):
    assert part in install
  # The five steps in order, each under its own heading; one host: no multi-host note.
  headings = [l for l in out if l.startswith('# --- ')]
  assert headings == [f'# --- {a}' for a in ('create', 'setup', 'run', 'copy', 'delete')]
  assert not any('jax.distributed' in l for l in out)


def test_v4_32_all():
  out = lines(V4)
  assert out[0].startswith('# v4-32: 4 hosts, 16 chips (TPU v4, runtime tpu-ubuntu2204-base)')
  cmds = commands(out)
  assert cmds[0] == ('gcloud compute tpus tpu-vm create ttc-v4 --zone=us-central2-b '
                     '--accelerator-type=v4-32 --version=tpu-ubuntu2204-base')
  ssh_all = [c for c in cmds if c.startswith('gcloud compute tpus tpu-vm ssh ttc-v4 '
                                             '--zone=us-central2-b --worker=all ')]
  assert len(ssh_all) == 2  # setup and run, on every worker at once
  # One job of 4 processes: every worker's launcher joins it (--distributed).
  assert ssh_all[1] == ('gcloud compute tpus tpu-vm ssh ttc-v4 --zone=us-central2-b '
                        f"--worker=all {LAUNCHER} --distributed'")
  assert cmds[-2].endswith("--worker=0 --command='cd ~/ttc_jax && gcloud storage rsync "
                           "--recursive workdir gs://my-bucket/ttc'")
  assert cmds[-1] == 'gcloud compute tpus tpu-vm delete ttc-v4 --zone=us-central2-b --quiet'
  # The run says its 4 hosts are one job, on one shared workdir.
  note = out[out.index('# --- run') + 1]
  assert note.startswith('# 4 hosts: one job of 4 processes') and 'mounts' in note


def test_queued_spot_and_project():
  out = lines([*V4, '--queued', '--spot', '--project=my-proj'])
  cmds = commands(out)
  assert cmds[0] == ('gcloud compute tpus queued-resources create ttc-v4 --zone=us-central2-b '
                     '--project=my-proj --node-id=ttc-v4 --accelerator-type=v4-32 '
                     '--runtime-version=tpu-ubuntu2204-base --spot')
  # Setup waits for the request to become an ACTIVE node.
  assert cmds[1].startswith("bash -c 'while :; do state=$(gcloud compute tpus queued-resources "
                            'describe ttc-v4 --zone=us-central2-b --project=my-proj ')
  assert 'ACTIVE) exit 0' in cmds[1]
  assert cmds[-1] == ('gcloud compute tpus queued-resources delete ttc-v4 --zone=us-central2-b '
                      '--project=my-proj --force --quiet')
  assert all('--project=my-proj' in c for c in cmds if c.startswith('gcloud'))
  assert 'queued resource (Spot) ttc-v4' in out[0]
  # Without --spot: the same request, on-demand.
  assert commands(lines([*V4, '--queued']))[0].endswith('--runtime-version=tpu-ubuntu2204-base')


def test_single_actions():
  base = ['--name=ttc-v5e', '--zone=us-west4-a', '--accelerator_type=v5litepod-8']
  run = lines(['--action=run', *base, '--config=configs/arith.py', '--workdir=/mnt/w',
               '--mode=train_base', '--', '--rebuild_stale'])
  assert commands(run) == ['gcloud compute tpus tpu-vm ssh ttc-v5e --zone=us-west4-a '
                           "--worker=all --command='cd ~/ttc_jax && ~/ttc_jax_venv/bin/python -m "
                           "launch.main --config=configs/arith.py --workdir=/mnt/w "
                           "--mode=train_base --rebuild_stale'"]
  assert commands(lines(['--action=delete', *base, '--queued'])) == [
      'gcloud compute tpus queued-resources delete ttc-v5e --zone=us-west4-a --force --quiet']
  # A runtime version given replaces the generation's default.
  create = lines(['--action=create', *base, '--runtime_version=v2-alpha-tpuv5-lite-next'])
  assert commands(create)[0].endswith('--version=v2-alpha-tpuv5-lite-next')


def test_table_and_runtimes():
  table = tpu.ACCELERATORS
  assert [(table[t].chips, table[t].hosts) for t in
          ('v5litepod-1', 'v5litepod-4', 'v5litepod-8', 'v5litepod-16', 'v4-8', 'v4-16', 'v4-32',
           'v5p-8', 'v6e-8')] == [(1, 1), (4, 1), (8, 1), (16, 4), (4, 1), (8, 2), (16, 4),
                                  (4, 1), (8, 1)]
  assert all(a.generation in tpu.RUNTIMES for a in table.values())
  assert tpu.RUNTIMES['v5e'] == 'v2-alpha-tpuv5-lite'
  assert tpu.RUNTIMES['v4'] == 'tpu-ubuntu2204-base'


@pytest.mark.parametrize('ours, theirs, message', [
    (['--accelerator_type=v9-8'], [], "unknown --accelerator_type='v9-8'; known: v4-8, "),
    (['--zone='], [], '--zone is required'),
    (['--action=launch'], [], "unknown --action='launch'; accepted: create, setup, run, copy, "
                              'delete, all'),
    (['--name='], [], '--name is required'),
    (['--name=TTC_v5e'], [], "--name='TTC_v5e'"),
    (['--spot'], [], '--spot needs --queued'),
    (['--bucket=my-bucket'], [], "--bucket='my-bucket': copy needs a gs:// destination"),
    (['--workdir=gs://b/w'], [], '--workdir=gs://b/w: the launcher writes a local directory'),
    (['--workdir=~/w'], [], '--workdir=~/w: ~ is not expanded'),
    (['--config=configs/nope.py'], [], '--config=configs/nope.py: configs/nope.py is not a'),
    ([], ['--mode=all'], "'--mode=all' after --: the launcher takes --config.KEY=VALUE"),
    (['--bogus'], [], 'unrecognized arguments: --bogus'),
])
def test_one_line_errors(ours, theirs, message, capsys):
  # A later flag overrides the same flag of V5E.
  assert tpu.main([*V5E, *ours, '--dry_run', '--', *theirs]) == 2
  out, err = capsys.readouterr()
  assert out == ''
  assert err.startswith(f'error: {message}') and err.count('\n') == 1, err
  if 'accelerator' in message:
    assert 'v5litepod-8' in err and 'v4-32' in err  # the accepted ones, named


def test_execute_stops_at_first_failure(capsys):
  job, _ = tpu.parse(V5E)
  ran = []

  def runner(argv):
    ran.append(argv)
    return 255 if len(ran) == 3 else 0  # the scp fails

  assert tpu.execute(tpu.plan(job), runner=runner) == 1
  out, err = capsys.readouterr()
  assert [a[:5] for a in ran] == [('gcloud', 'compute', 'tpus', 'tpu-vm', 'create'),
                                  ('git', '-C', ROOT, 'archive', '--format=tar.gz'),
                                  ('gcloud', 'compute', 'tpus', 'tpu-vm', 'scp')]
  assert err.count('\n') == 1
  assert err.startswith('error: command 3/7 failed with exit code 255: gcloud compute tpus '
                        'tpu-vm scp --recurse /tmp/ttc_jax-ttc-v5e.tar.gz')
  assert '+ gcloud compute tpus tpu-vm create ttc-v5e' in out and 'tpu-vm delete' not in out
  assert tpu.execute(tpu.plan(job), runner=lambda argv: 0) == 0


def test_execute_reports_a_missing_program(capsys):
  job, _ = tpu.parse(['--action=delete', '--name=ttc-v5e', '--zone=us-west4-a',
                      '--accelerator_type=v5litepod-8'])

  def runner(argv):
    raise FileNotFoundError(2, 'No such file or directory', argv[0])

  assert tpu.execute(tpu.plan(job), runner=runner) == 1
  err = capsys.readouterr().err
  assert err.startswith('error: command 1/1 could not start (No such file or directory: '
                        'gcloud): gcloud compute tpus tpu-vm delete')


def test_dry_run_runs_nothing(monkeypatch, capsys):
  def no_run(*args, **kwargs):
    raise AssertionError('a dry run ran a command')

  monkeypatch.setattr(tpu.subprocess, 'run', no_run)
  assert tpu.main([*V4, '--dry_run']) == 0
  assert capsys.readouterr().out.splitlines() == lines([*V4, '--dry_run'])


def test_command_line_dry_run():
  """The module as a user runs it prints exactly the plan, one line each."""
  argv = [*V5E, '--dry_run', '--', '--config.sample.num_samples=16']
  result = subprocess.run([sys.executable, '-m', 'launch.tpu.job', *argv], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)
  assert result.returncode == 0, result.stderr
  assert result.stderr == ''
  assert result.stdout.splitlines() == lines(argv)
