"""Test setup: CPU, 8 simulated devices, strict rank promotion."""
import os

# XLA:CPU without its LLVM optimization passes, here and in every launcher subprocess the tests
# start: the tests' models are tiny, so compiling is most of their time (the tiny --mode=all
# takes 102 s instead of 163 s on 2 cores). Same programs, same semantics; users' runs keep the
# default level.
COMPILE_FLAGS = '--xla_backend_optimization_level=0'
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "") + f" {COMPILE_FLAGS} --xla_force_host_platform_device_count=8"
)

import atexit  # noqa: E402
import pathlib  # noqa: E402
import shutil  # noqa: E402
import tempfile  # noqa: E402

# One directory for the whole session, made by the first pytest process (under xdist, the
# controller; its workers inherit the variable): the shared tiny run and one persistent XLA
# compilation cache, so the many launcher subprocesses and both workers compile the same tiny
# stages (a rerun, a kill -9 and resume, another backbone) only once.
if 'TTC_JAX_TEST_SHARED' not in os.environ:
  os.environ['TTC_JAX_TEST_SHARED'] = tempfile.mkdtemp(prefix='ttc_jax_test_')
  atexit.register(shutil.rmtree, os.environ['TTC_JAX_TEST_SHARED'], ignore_errors=True)
SHARED = pathlib.Path(os.environ['TTC_JAX_TEST_SHARED'])
os.environ["JAX_COMPILATION_CACHE_DIR"] = str(SHARED / 'xla_cache')
os.environ["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0.3"

import jax  # noqa: E402

jax.config.update("jax_numpy_rank_promotion", "raise")

import shlex  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402

import pytest  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = 'configs/arith.py:tiny'


def _command(workdir, *args, mode='all', config=TINY):
  cmd = [sys.executable, '-m', 'launch.main', f'--config={config}', f'--workdir={workdir}',
         f'--mode={mode}', *args]
  return cmd, dict(os.environ, JAX_PLATFORMS='cpu', XLA_FLAGS=COMPILE_FLAGS)


def launch(workdir, *args, mode='all', wait=True, config=TINY):
  """The launcher in a subprocess, as a user runs it (CPU, one device)."""
  cmd, env = _command(workdir, *args, mode=mode, config=config)
  if not wait:
    return subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
  return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)


# The shared tiny run: a finished `--mode=all`, built in the background from the moment the
# session collects a test that needs it, while the workers run the tests that do not.
FULL_RUN = SHARED / 'full'
_FULL_RC = SHARED / 'full.rc'


def _start_full_run() -> None:
  """Starts the build once per session: the first process to claim it runs it."""
  try:
    os.close(os.open(SHARED / 'full.claimed', os.O_CREAT | os.O_EXCL | os.O_WRONLY))
  except FileExistsError:
    return
  cmd, env = _command(FULL_RUN)
  log = SHARED / 'full.log'
  # The console log lands in the workdir (tests read it), then the exit status, atomically.
  script = (f'{shlex.join(cmd)} 2> {shlex.quote(str(log))}; rc=$?; '
            f'cp {shlex.quote(str(log))} {shlex.quote(str(FULL_RUN / ".console.log"))}; '
            f'echo $rc > {shlex.quote(str(_FULL_RC))}.tmp && '
            f'mv {shlex.quote(str(_FULL_RC))}.tmp {shlex.quote(str(_FULL_RC))}')
  build = subprocess.Popen(['bash', '-c', script], cwd=ROOT, env=env, stdout=subprocess.DEVNULL)
  atexit.register(lambda: build.poll() is None and build.kill())


@pytest.fixture(scope='session')
def full_run():
  """A finished `--mode=all` on the tiny arith config (the launcher and registry tests share it;
  tests copy it before changing anything)."""
  _start_full_run()  # started at collection; here when a test asks for it first
  deadline = time.monotonic() + 1500
  while not _FULL_RC.exists():
    assert time.monotonic() < deadline, 'the shared tiny run did not finish in 25 minutes'
    time.sleep(0.5)
  rc = int(_FULL_RC.read_text())
  assert rc == 0, (SHARED / 'full.log').read_text()[-2000:]
  return FULL_RUN


@pytest.hookimpl(tryfirst=True)  # before xdist's own hook reads the marks into node ids
def pytest_collection_modifyitems(config, items):
  """Under pytest-xdist (`-n 2 --dist loadgroup --no-loadscope-reorder`, pyproject.toml): each
  module's tests on one worker (module fixtures and in-process compilations made once), in
  collection order; the tests reading the shared tiny run each on their own, after all the
  others, so they start once its background build is done and spread over both workers, the
  ones marked `slow` first (the longest first keeps the two workers' ends close)."""
  shared = [item for item in items if 'full_run' in item.fixturenames]
  shared.sort(key=lambda item: item.get_closest_marker('slow') is None)
  if shared:
    _start_full_run()
  for item in items:
    if 'full_run' not in item.fixturenames:
      item.add_marker(pytest.mark.xdist_group(item.module.__name__))
  items[:] = [item for item in items if 'full_run' not in item.fixturenames] + shared
