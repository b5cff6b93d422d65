"""Cloud TPU jobs: python -m launch.tpu.job --action=ACTION --name=NAME --zone=ZONE
  --accelerator_type=TYPE [--config=configs/<file>.py[:variant] --workdir=DIR --mode=STAGE|all]
  [--bucket=gs://...] [--queued [--spot]] [--project=P] [--runtime_version=V] [--dry_run]
  [-- --config.KEY=VALUE ...]

Builds the exact list of commands of a job (gcloud, and git for the source tarball) and prints
them, one per line (--dry_run: nothing runs), or runs them one by one, stopping at the first
failure with one line naming the command and its exit code. Actions:

  create  a TPU VM or pod slice (`--queued`: a queued resource, `--spot` optional)
  setup   on every worker: the committed repository (a `git archive` tarball copied with
          `tpu-vm scp --worker=all`) unpacked in ~/ttc_jax, a Python >= 3.11 venv in
          ~/ttc_jax_venv, `pip install -e . "jax[tpu]"`
  run     `python -m launch.main --config=... --workdir=... --mode=...` on all workers at once
          (`--worker=all`; on several hosts with `--distributed`: one JAX job); arguments after
          `--` are passed through (--config.KEY=VALUE)
  copy    worker 0's workdir to --bucket with `gcloud storage rsync --recursive`
  delete  the TPU VM (or the queued resource and its node)
  all     create, setup, run, copy, delete, in this order

Bad input ends with one line `error: ...` and exit code 2, as launch/main.py does.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import re
import shlex
import subprocess
import sys
from typing import Callable, NoReturn, Sequence

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
REMOTE_REPO = 'ttc_jax'  # ~/ttc_jax on every worker
REMOTE_VENV = 'ttc_jax_venv'  # ~/ttc_jax_venv: pyproject.toml requires Python >= 3.11
ACTIONS = ('create', 'setup', 'run', 'copy', 'delete', 'all')
ALL_STEPS = ('create', 'setup', 'run', 'copy', 'delete')
TPU_VM = ('compute', 'tpus', 'tpu-vm')
QUEUED = ('compute', 'tpus', 'queued-resources')


@dataclasses.dataclass(frozen=True)
class Accelerator:
  name: str  # the --accelerator-type of gcloud
  generation: str  # a key of RUNTIMES
  chips: int
  hosts: int  # TPU VMs (workers): the machines `--worker=all` reaches


# Chips and TPU VMs per accelerator type. Sources:
# - v4: the type counts TensorCores, 2 per chip
#   (https://cloud.google.com/tpu/docs/types-topologies); 4 chips per TPU VM: v4-8 2x2x1 1 VM,
#   v4-16 2x2x2 2, v4-32 2x2x4 4, v4-64 8, v4-128 16
#   (github.com/AI-Hypercomputer/xpk, src/xpk/core/system_characteristics.py, `vms_per_slice`).
# - v5p: same naming; the v5p topology table (https://cloud.google.com/tpu/docs/v5p: 2x2x1 =
#   8 cores, 4 chips, 1 host; 2x2x2 = 16 cores, 8 chips, 2 hosts; ...) and xpk (v5p-32: 4 VMs).
# - v5e: the type counts chips (https://cloud.google.com/tpu/docs/v5e: "v$VERSION-$CHIP_COUNT");
#   a v5e TPU VM holds 1, 4 or 8 chips, so v5litepod-1/4/8 are one VM; larger slices are 4-chip
#   VMs (ct5lp-hightpu-4t): v5litepod-16 4 VMs, -32 8, -64 16, -128 32, -256 64 (xpk). The v5e
#   page's own "Number of hosts" column (4x4: 2) counts 8-chip physical hosts, not VMs.
# - v6e: the type counts chips (https://cloud.google.com/tpu/docs/v6e: 8 chips per host);
#   larger slices are 4-chip VMs (ct6e-standard-4t): v6e-16 4 VMs, -32 8, -64 16 (xpk). v6e-8
#   as one 8-chip VM is our reading of "8 chips per host", not confirmed by a source found: xpk
#   lists v6e-8 as 2 VMs of GKE's 4-chip machine type.
ACCELERATORS: dict[str, Accelerator] = {a.name: a for a in (
    Accelerator('v4-8', 'v4', 4, 1),
    Accelerator('v4-16', 'v4', 8, 2),
    Accelerator('v4-32', 'v4', 16, 4),
    Accelerator('v4-64', 'v4', 32, 8),
    Accelerator('v4-128', 'v4', 64, 16),
    Accelerator('v5litepod-1', 'v5e', 1, 1),
    Accelerator('v5litepod-4', 'v5e', 4, 1),
    Accelerator('v5litepod-8', 'v5e', 8, 1),
    Accelerator('v5litepod-16', 'v5e', 16, 4),
    Accelerator('v5litepod-32', 'v5e', 32, 8),
    Accelerator('v5litepod-64', 'v5e', 64, 16),
    Accelerator('v5litepod-128', 'v5e', 128, 32),
    Accelerator('v5litepod-256', 'v5e', 256, 64),
    Accelerator('v5p-8', 'v5p', 4, 1),
    Accelerator('v5p-16', 'v5p', 8, 2),
    Accelerator('v5p-32', 'v5p', 16, 4),
    Accelerator('v5p-64', 'v5p', 32, 8),
    Accelerator('v5p-128', 'v5p', 64, 16),
    Accelerator('v6e-1', 'v6e', 1, 1),
    Accelerator('v6e-4', 'v6e', 4, 1),
    Accelerator('v6e-8', 'v6e', 8, 1),
    Accelerator('v6e-16', 'v6e', 16, 4),
    Accelerator('v6e-32', 'v6e', 32, 8),
    Accelerator('v6e-64', 'v6e', 64, 16),
)}

# Default TPU software (runtime) versions for JAX, per generation: "TPU software versions",
# https://cloud.google.com/tpu/docs/runtimes (v6e v2-alpha-tpuv6e, v5p v2-alpha-tpuv5,
# v5e v2-alpha-tpuv5-lite, v4 and older tpu-ubuntu2204-base).
RUNTIMES = {'v4': 'tpu-ubuntu2204-base', 'v5e': 'v2-alpha-tpuv5-lite', 'v5p': 'v2-alpha-tpuv5',
            'v6e': 'v2-alpha-tpuv6e'}

_NAME = re.compile(r'[a-z]([-a-z0-9]*[a-z0-9])?$')  # a TPU node's name (a GCE resource name)
_ZONE = re.compile(r'[a-z]+-[a-z0-9]+-[a-z]$')  # us-west4-a, europe-west4-b
_PROJECT = re.compile(r'[a-z][-a-z0-9.:]*[a-z0-9]$')
_TOKEN = re.compile(r'[A-Za-z0-9_.-]+$')  # runtime versions, stage names


class JobError(ValueError):
  """Bad input: printed as one line `error: ...`, exit code 2."""


@dataclasses.dataclass(frozen=True)
class Job:
  action: str
  name: str
  zone: str
  accelerator: Accelerator
  runtime_version: str
  project: str = ''
  queued: bool = False
  spot: bool = False
  config: str = ''
  workdir: str = ''
  mode: str = 'all'
  bucket: str = ''
  overrides: tuple[str, ...] = ()

  @property
  def tarball(self) -> str:
    return f'/tmp/{REMOTE_REPO}-{self.name}.tar.gz'


@dataclasses.dataclass(frozen=True)
class Comment:
  text: str

  def render(self) -> str:
    return f'# {self.text}'


@dataclasses.dataclass(frozen=True)
class Command:
  argv: tuple[str, ...]

  def render(self) -> str:
    """The command as one shell line (`--flag=VALUE` keeps the flag outside the quotes)."""
    return ' '.join(_quote(arg) for arg in self.argv)


Step = Comment | Command


def _quote(arg: str) -> str:
  flag = re.match(r'--[A-Za-z0-9_-]+=', arg)
  if flag:
    return flag.group(0) + shlex.quote(arg[flag.end():])
  return shlex.quote(arg)


# ---------------------------------------------------------------------------------------------
# Input


def make_job(action: str, name: str = '', zone: str = '', accelerator_type: str = '',
             runtime_version: str = '', project: str = '', queued: bool = False,
             spot: bool = False, config: str = '', workdir: str = '', mode: str = 'all',
             bucket: str = '', overrides: Sequence[str] = ()) -> Job:
  """A checked job; bad input raises JobError naming the value and the accepted ones."""
  if action not in ACTIONS:
    raise JobError(f'unknown --action={action!r}; accepted: {", ".join(ACTIONS)}')
  if not name:
    raise JobError('--name is required: the TPU VM (or queued resource) name, e.g. ttc-v5e')
  if not _NAME.match(name):
    raise JobError(f'--name={name!r}: lowercase letters, digits and hyphens, starting with a '
                   'letter (e.g. ttc-v5e)')
  if not zone:
    raise JobError('--zone is required: a zone with the accelerator, e.g. us-west4-a (v5e), '
                   'us-central2-b (v4)')
  if not _ZONE.match(zone):
    raise JobError(f'--zone={zone!r} is not a zone name such as us-west4-a')
  if not accelerator_type:
    raise JobError(f'--accelerator_type is required; known: {", ".join(ACCELERATORS)}')
  if accelerator_type not in ACCELERATORS:
    raise JobError(f'unknown --accelerator_type={accelerator_type!r}; known: '
                   f'{", ".join(ACCELERATORS)}')
  accelerator = ACCELERATORS[accelerator_type]
  runtime_version = runtime_version or RUNTIMES[accelerator.generation]
  if not _TOKEN.match(runtime_version):
    raise JobError(f'--runtime_version={runtime_version!r} is not a version name such as '
                   f'{RUNTIMES[accelerator.generation]}')
  if project and not _PROJECT.match(project):
    raise JobError(f'--project={project!r} is not a project id')
  if spot and not queued:
    raise JobError('--spot needs --queued (a Spot TPU is requested as a queued resource)')
  steps = ALL_STEPS if action == 'all' else (action,)
  if 'run' in steps:
    _check_config(config)
    if not _TOKEN.match(mode):
      raise JobError(f'--mode={mode!r}: all, status or a stage name')
  elif overrides:
    raise JobError(f'arguments after -- ({" ".join(overrides)}) are for --action=run or all')
  if 'run' in steps or 'copy' in steps:
    _check_workdir(workdir)
  if 'copy' in steps and not bucket.startswith('gs://'):
    raise JobError(f'--bucket={bucket!r}: copy needs a gs:// destination, e.g. '
                   'gs://my-bucket/ttc_jax/run1')
  for arg in overrides:
    if not (arg == '--rebuild_stale' or re.match(r'--config\.[A-Za-z0-9_.]+=', arg)):
      raise JobError(f'{arg!r} after --: the launcher takes --config.KEY=VALUE or --rebuild_stale')
  return Job(action=action, name=name, zone=zone, accelerator=accelerator,
             runtime_version=runtime_version, project=project, queued=queued, spot=spot,
             config=config, workdir=workdir, mode=mode, bucket=bucket.rstrip('/'),
             overrides=tuple(overrides))


def _check_config(config: str) -> None:
  if not config:
    raise JobError('--config is required for run: configs/<file>.py[:variant], e.g. '
                   'configs/arith.py:gpu')
  path = config.split(':', 1)[0]
  if os.path.isabs(path) or not os.path.isfile(os.path.join(ROOT, path)):
    raise JobError(f'--config={config}: {path} is not a config file of this repository (the '
                   'workers run its copy), e.g. configs/arith.py:gpu')


def _check_workdir(workdir: str) -> None:
  if not workdir:
    raise JobError('--workdir is required: a directory on each worker, relative to '
                   f'~/{REMOTE_REPO} or absolute, e.g. workdir')
  if workdir.startswith('gs://'):
    raise JobError(f'--workdir={workdir}: the launcher writes a local directory (atomic '
                   'renames), not GCS; give a path on the workers and --bucket=gs://... to copy it')
  if workdir.startswith('~'):
    raise JobError(f'--workdir={workdir}: ~ is not expanded in a flag value; give a path '
                   f'relative to ~/{REMOTE_REPO} or an absolute one')


class _Parser(argparse.ArgumentParser):

  def error(self, message: str) -> NoReturn:
    raise JobError(message)


def _parser() -> argparse.ArgumentParser:
  p = _Parser(prog='python -m launch.tpu.job', description=__doc__,
              formatter_class=argparse.RawDescriptionHelpFormatter, allow_abbrev=False)
  p.add_argument('--action', default='', help=f'one of {", ".join(ACTIONS)}')
  p.add_argument('--name', default='', help='TPU VM / queued resource name')
  p.add_argument('--zone', default='')
  p.add_argument('--accelerator_type', default='', help=f'one of {", ".join(ACCELERATORS)}')
  p.add_argument('--runtime_version', default='', help='default per generation: ' +
                 ', '.join(f'{g} {v}' for g, v in RUNTIMES.items()))
  p.add_argument('--project', default='', help='added to every local gcloud command')
  p.add_argument('--queued', action='store_true', help='create / delete as a queued resource')
  p.add_argument('--spot', action='store_true', help='a Spot queued resource (needs --queued)')
  p.add_argument('--config', default='', help='configs/<file>.py[:variant] (run)')
  p.add_argument('--workdir', default='', help=f'on the workers, relative to ~/{REMOTE_REPO}')
  p.add_argument('--mode', default='all', help='all, status or a stage (run)')
  p.add_argument('--bucket', default='', help='gs:// destination of copy')
  p.add_argument('--dry_run', action='store_true', help='print the commands, run nothing')
  return p


def parse(argv: Sequence[str]) -> tuple[Job, bool]:
  """The job and --dry_run from the arguments (without the program name); `--` ends ours, what
  follows goes to the launcher."""
  argv = list(argv)
  ours, theirs = (argv[:argv.index('--')], argv[argv.index('--') + 1:]) if '--' in argv \
      else (argv, [])
  args = _parser().parse_args(ours)
  if not args.action:
    raise JobError(f'--action is required; accepted: {", ".join(ACTIONS)}')
  job = make_job(args.action, name=args.name, zone=args.zone,
                 accelerator_type=args.accelerator_type, runtime_version=args.runtime_version,
                 project=args.project, queued=args.queued, spot=args.spot, config=args.config,
                 workdir=args.workdir, mode=args.mode, bucket=args.bucket, overrides=theirs)
  return job, args.dry_run


# ---------------------------------------------------------------------------------------------
# Commands


def _gcloud(job: Job, head: Sequence[str], tail: Sequence[str] = ()) -> Command:
  project = (f'--project={job.project}',) if job.project else ()
  return Command(('gcloud', *head, f'--zone={job.zone}', *project, *tail))


def _ssh(job: Job, worker: str, remote: str) -> Command:
  return _gcloud(job, (*TPU_VM, 'ssh', job.name), (f'--worker={worker}', f'--command={remote}'))


def header(job: Job) -> Comment:
  a = job.accelerator
  hosts = f'{a.hosts} host' + ('s' if a.hosts > 1 else '')
  kind = 'queued resource' + (' (Spot)' if job.spot else '') if job.queued else 'TPU VM'
  return Comment(f'{a.name}: {hosts}, {a.chips} chips (TPU {a.generation}, runtime '
                 f'{job.runtime_version}); {kind} {job.name} in {job.zone}')


def create_steps(job: Job) -> list[Step]:
  a = job.accelerator
  if not job.queued:  # returns once the TPU VM is ready
    return [_gcloud(job, (*TPU_VM, 'create', job.name),
                    (f'--accelerator-type={a.name}', f'--version={job.runtime_version}'))]
  create = _gcloud(job, (*QUEUED, 'create', job.name),
                   (f'--node-id={job.name}', f'--accelerator-type={a.name}',
                    f'--runtime-version={job.runtime_version}', *(('--spot',) if job.spot else ())))
  # A queued resource is only a request: wait until its node is ACTIVE (provisioned).
  describe = ' '.join(_gcloud(job, (*QUEUED, 'describe', job.name)).argv)
  wait = (f'while :; do state=$({describe} --format="value(state.state)") || exit 1; '
          f'case "$state" in ACTIVE) exit 0;; FAILED|SUSPENDED) echo "queued resource {job.name} '
          f'is $state" >&2; exit 1;; esac; sleep 30; done')
  return [create, Comment(f'wait until queued resource {job.name} is ACTIVE'),
          Command(('bash', '-c', wait))]


def setup_steps(job: Job) -> list[Step]:
  remote_tarball = f'{REMOTE_REPO}.tar.gz'
  # TPU VM images ship Ubuntu 22.04's Python 3.10; pyproject.toml requires >= 3.11.
  python = ('if python3 -c "import sys; sys.exit(sys.version_info < (3, 11))"; then PY=python3; '
            'PKGS=python3-venv; else PY=python3.11; PKGS="python3.11 python3.11-venv"; fi')
  remote = ' && '.join([
      python, 'sudo apt-get update -qq', 'sudo apt-get install -y -qq $PKGS',
      f'$PY -m venv ~/{REMOTE_VENV}', f'mkdir -p ~/{REMOTE_REPO}',
      f'tar -xzf ~/{remote_tarball} -C ~/{REMOTE_REPO}', f'cd ~/{REMOTE_REPO}',
      f'~/{REMOTE_VENV}/bin/pip install -e . "jax[tpu]"'])
  return [
      Comment('the tarball holds the committed HEAD (git archive): commit local changes first'),
      Command(('git', '-C', ROOT, 'archive', '--format=tar.gz', f'--output={job.tarball}', 'HEAD')),
      _gcloud(job, (*TPU_VM, 'scp', '--recurse', job.tarball, f'{job.name}:{remote_tarball}'),
              ('--worker=all',)),
      _ssh(job, 'all', remote),
  ]


def launcher_command(job: Job) -> str:
  """The launcher as the workers' shell runs it, in ~/ttc_jax with the venv's Python."""
  args = [f'--config={job.config}', f'--workdir={job.workdir}', f'--mode={job.mode}',
          *(['--distributed'] if job.accelerator.hosts > 1 else []), *job.overrides]
  return f'cd ~/{REMOTE_REPO} && ~/{REMOTE_VENV}/bin/python -m launch.main {shlex.join(args)}'


def run_steps(job: Job) -> list[Step]:
  steps: list[Step] = []
  if job.accelerator.hosts > 1:
    steps.append(Comment(f'{job.accelerator.hosts} hosts: one job of {job.accelerator.hosts} '
                         'processes (--distributed: jax.distributed finds the slice); --workdir '
                         'must be one directory every worker mounts (launch/tpu/README.md)'))
  steps.append(_ssh(job, 'all', launcher_command(job)))
  return steps


def copy_steps(job: Job) -> list[Step]:
  # rsync, not `cp -r`: cp puts the files under BUCKET/ or BUCKET/<workdir>/ depending on whether
  # BUCKET exists yet, so a second copy would nest; rsync maps the workdir's contents onto BUCKET
  # every time and copies only what changed.
  copy = shlex.join(['gcloud', 'storage', 'rsync', '--recursive', job.workdir, job.bucket])
  where = job.workdir if os.path.isabs(job.workdir) else f'~/{REMOTE_REPO}/{job.workdir}'
  return [Comment(f"copy worker 0's workdir {where} to {job.bucket}"),
          _ssh(job, '0', f'cd ~/{REMOTE_REPO} && {copy}')]


def delete_steps(job: Job) -> list[Step]:
  if job.queued:  # --force deletes the node with the request
    return [_gcloud(job, (*QUEUED, 'delete', job.name), ('--force', '--quiet'))]
  return [_gcloud(job, (*TPU_VM, 'delete', job.name), ('--quiet',))]


STEPS: dict[str, Callable[[Job], list[Step]]] = {
    'create': create_steps, 'setup': setup_steps, 'run': run_steps, 'copy': copy_steps,
    'delete': delete_steps}


def plan(job: Job) -> list[Step]:
  """Every step of the job's action, in order, after the header naming the hosts and chips."""
  actions = ALL_STEPS if job.action == 'all' else (job.action,)
  steps: list[Step] = [header(job)]
  for action in actions:
    if len(actions) > 1:
      steps.append(Comment(f'--- {action}'))
    steps += STEPS[action](job)
  return steps


def render(steps: Sequence[Step]) -> list[str]:
  return [step.render() for step in steps]


# ---------------------------------------------------------------------------------------------
# Execution


def _subprocess_runner(argv: Sequence[str]) -> int:
  return subprocess.run(list(argv), check=False).returncode


def execute(steps: Sequence[Step], runner: Callable[[Sequence[str]], int] = _subprocess_runner
            ) -> int:
  """Runs the commands one by one (echoed as `+ command`); at the first failure prints one line
  naming it and its exit code and returns 1, else 0."""
  total = sum(isinstance(s, Command) for s in steps)
  done = 0
  for step in steps:
    if isinstance(step, Comment):
      print(step.render(), flush=True)
      continue
    done += 1
    print(f'+ {step.render()}', flush=True)
    try:
      code = runner(step.argv)
    except OSError as e:  # e.g. gcloud not installed
      print(f'error: command {done}/{total} could not start ({e.strerror}: {step.argv[0]}): '
            f'{step.render()}', file=sys.stderr)
      return 1
    if code != 0:
      print(f'error: command {done}/{total} failed with exit code {code}: {step.render()}',
            file=sys.stderr)
      return 1
  return 0


def main(argv: Sequence[str] | None = None) -> int:
  try:
    job, dry_run = parse(sys.argv[1:] if argv is None else argv)
  except JobError as e:
    print(f'error: {" ".join(str(e).split())}', file=sys.stderr)
    return 2
  steps = plan(job)
  if dry_run:
    print('\n'.join(render(steps)))
    return 0
  return execute(steps)


if __name__ == '__main__':
  sys.exit(main())
