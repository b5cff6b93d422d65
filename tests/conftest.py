"""Test setup: CPU, 8 simulated devices, strict rank promotion."""
import os

os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
)

import atexit  # noqa: E402
import shutil  # noqa: E402
import tempfile  # noqa: E402

# One persistent XLA compilation cache for the session: the many launcher subprocesses compile
# the same tiny stages (a rerun, a kill -9 and resume, another backbone) only once.
_XLA_CACHE = tempfile.mkdtemp(prefix="ttc_jax_test_xla_cache_")
atexit.register(shutil.rmtree, _XLA_CACHE, ignore_errors=True)
os.environ["JAX_COMPILATION_CACHE_DIR"] = _XLA_CACHE
os.environ["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0.3"

import jax  # noqa: E402

jax.config.update("jax_numpy_rank_promotion", "raise")

import subprocess  # noqa: E402
import sys  # noqa: E402

import pytest  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = 'configs/arith.py:tiny'


def launch(workdir, *args, mode='all', wait=True, config=TINY):
  """The launcher in a subprocess, as a user runs it (CPU, one device)."""
  cmd = [sys.executable, '-m', 'launch.main', f'--config={config}', f'--workdir={workdir}',
         f'--mode={mode}', *args]
  env = dict(os.environ, JAX_PLATFORMS='cpu', XLA_FLAGS='')
  if not wait:
    return subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
  return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)


@pytest.fixture(scope='session')
def full_run(tmp_path_factory):
  """A finished `--mode=all` on the tiny arith config (the launcher and registry tests share it;
  tests copy it before changing anything)."""
  workdir = tmp_path_factory.mktemp('full')
  result = launch(workdir)
  assert result.returncode == 0, result.stderr[-2000:]
  (workdir / '.console.log').write_text(result.stderr)
  return workdir


@pytest.hookimpl(tryfirst=True)  # before xdist's own hook reads the marks into node ids
def pytest_collection_modifyitems(config, items):
  """Under pytest-xdist (`-n 2 --dist loadgroup`, pyproject.toml): every test reading the shared
  tiny run on one worker, so it is built once; the others stay with their module, so module
  fixtures and in-process compilations are made once."""
  for item in items:
    group = 'full_run' if 'full_run' in item.fixturenames else item.module.__name__
    item.add_marker(pytest.mark.xdist_group(group))
