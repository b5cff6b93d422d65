"""Shared by the parity tests: load a script from benchmarks/ and read its committed .npz fixture."""
import functools
import importlib.util
import json
import pathlib
from types import ModuleType

import numpy as np

ROOT = pathlib.Path(__file__).resolve().parents[1]


def load_benchmark(name: str) -> ModuleType:
  """benchmarks/<name>.py as a module (it owns the configs, prompts and fixture format)."""
  spec = importlib.util.spec_from_file_location(name, ROOT / 'benchmarks' / f'{name}.py')
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


@functools.cache
def read_fixture(path: pathlib.Path) -> tuple[dict, dict[str, np.ndarray]]:
  """(spec dict, arrays) of a fixture written by a parity script."""
  with np.load(path) as f:
    arrays = {k: f[k] for k in f.files}
  return json.loads(str(arrays.pop('spec'))), arrays
