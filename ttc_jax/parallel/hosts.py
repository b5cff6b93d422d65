"""Several processes (hosts) running one job: start-up, who writes, splitting work, gathering it.

JAX runs one process per host (a TPU VM worker, or processes on one machine for tests); each sees
every device of the job (`jax.devices()`) and drives its own (`jax.local_devices()`). Rules:

* `initialize` joins the job (`jax.distributed.initialize`) before any JAX work: explicitly
  (coordinator address, process count and id), or found by JAX's cluster detection (a
  multi-host Cloud TPU slice, SLURM, ...). One process, no arguments: nothing to do.
* Only process 0 (`is_writer`) writes workdir files (`ttc_jax.workdir` drops the others'
  writes); orbax checkpoints follow orbax's own multi-host protocol. The workdir is one
  directory every process reads (a shared disk, or a `gs://` bucket where supported).
* A stage either runs on every process, each taking its share (`owned`) and process 0 writing
  what `gather` brings it, or on process 0 alone (`first_only`) while the others wait at the
  stage's end.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import pickle
from typing import Any, Iterator

import jax
import numpy as np

from ttc_jax.errors import ConfigError

# The processes running the current stage: None = every process of the job.
_ACTIVE: frozenset[int] | None = None
_BARRIERS = itertools.count()
# A stage on process 0 alone may run for hours while the others wait for it.
WAIT_S = 48 * 3600


def initialize(coordinator_address: str = '', num_processes: int = 1, process_id: int = 0,
               detect: bool = False) -> None:
  """Joins a multi-process job: with a coordinator address, as process `process_id` of
  `num_processes`; with `detect`, as JAX's cluster detection finds it (on every worker of a
  multi-host Cloud TPU slice, with no other argument)."""
  if coordinator_address:
    if num_processes < 2 or not 0 <= process_id < num_processes:
      raise ConfigError(f'--num_processes={num_processes} --process_id={process_id} with '
                        f'--coordinator_address={coordinator_address}: expect 2 or more processes '
                        'and an id from 0 to num_processes - 1')
    jax.distributed.initialize(coordinator_address=coordinator_address,
                               num_processes=num_processes, process_id=process_id)
  elif num_processes > 1:
    raise ConfigError(f'--num_processes={num_processes} needs --coordinator_address=HOST:PORT '
                      '(process 0\'s address, the same on every process)')
  elif detect:
    jax.distributed.initialize()


def _joined() -> bool:
  from jax._src import distributed
  return distributed.global_state.client is not None


def count() -> int:
  """Processes in the job (1 unless `initialize` joined one; asks no backend before that)."""
  return jax.process_count() if _joined() else 1


def index() -> int:
  return jax.process_index() if _joined() else 0


def active() -> frozenset[int]:
  return frozenset(range(count())) if _ACTIVE is None else _ACTIVE


def is_writer() -> bool:
  """Whether this process writes workdir files (process 0 only)."""
  return index() == 0


def everyone() -> bool:
  """Whether every process of the job runs the current stage (not `first_only`)."""
  return _ACTIVE is None or _ACTIVE == frozenset(range(count()))


def shared() -> bool:
  """Whether several processes run the current stage together."""
  return len(active()) > 1


@contextlib.contextmanager
def first_only() -> Iterator[None]:
  """Within: process 0 runs alone (no barriers or gathers, orbax told the others are away)."""
  global _ACTIVE
  previous, _ACTIVE = _ACTIVE, frozenset({0})
  try:
    yield
  finally:
    _ACTIVE = previous


def owned(n: int) -> list[int]:
  """This process's share of items 0..n-1 (round robin: item i to process i mod count)."""
  if not shared():
    return list(range(n))
  return [i for i in range(n) if i % count() == index()]


def gather(obj: Any) -> list[Any]:
  """Every running process's `obj`, in process order, on every process (one process: [obj])."""
  if not shared():
    return [obj]
  from jax.experimental import multihost_utils
  data = np.frombuffer(pickle.dumps(obj), np.uint8)
  sizes = np.asarray(multihost_utils.process_allgather(np.int64(data.size))).reshape(-1)
  padded = np.zeros(int(sizes.max()), np.uint8)
  padded[:data.size] = data
  every = np.asarray(multihost_utils.process_allgather(padded))
  return [pickle.loads(every[i, :int(n)].tobytes()) for i, n in enumerate(sizes)]


def barrier(name: str, timeout_s: float = 600) -> None:
  """Waits until every running process gets here (a no-op for one)."""
  if not shared():
    return
  from jax._src import distributed
  distributed.global_state.client.wait_at_barrier(f'ttc_jax_{next(_BARRIERS)}_{name}',
                                                  int(timeout_s * 1000))


def orbax_options():
  """orbax's MultiprocessingOptions for the processes of the current stage."""
  import orbax.checkpoint as ocp
  if everyone():
    return ocp.options.MultiprocessingOptions()
  return ocp.options.MultiprocessingOptions(primary_host=0, active_processes=set(_ACTIVE),
                                            barrier_sync_key_prefix='first_only')


def global_array(x: Any, sharding: jax.sharding.Sharding) -> jax.Array:
  """A host value every process holds in full, as one array laid out by `sharding` (each
  process placing only its devices' pieces)."""
  x = np.asarray(x)
  return jax.make_array_from_callback(x.shape, sharding, lambda i: x[i])


def local_sharding() -> jax.sharding.Sharding:
  """This process's first device, where a model lives that one process runs on its own."""
  return jax.sharding.SingleDeviceSharding(jax.local_devices()[0])


def to_local(tree: Any) -> Any:
  """Arrays laid out over several devices (this process's, or every process's), whole on this
  process's first device: what one process then computes with on its own, beside params that
  were loaded there."""
  from jax.experimental import multihost_utils

  def local(x):
    if not isinstance(x, jax.Array) or len(x.sharding.device_set) == 1:
      return x
    if x.is_fully_addressable:
      return jax.device_put(x, local_sharding())
    return jax.device_put(np.asarray(multihost_utils.process_allgather(x, tiled=True)),
                          local_sharding())
  return jax.tree.map(local, tree)


def check_shared_directory(path: str) -> None:
  """That every process of the job sees `path` as one directory (what process 0 writes, the
  others read): a one-line error naming the processes that do not."""
  if count() == 1:
    return
  token = gather(os.urandom(8).hex())[0]  # process 0's
  probe = os.path.join(path, f'.hosts-probe-{token}')
  if is_writer():
    with open(probe, 'w') as f:
      f.write(token)
  barrier('probe written')
  seen = gather(os.path.exists(probe))
  barrier('probe read')
  if is_writer():
    os.unlink(probe)
  blind = [i for i, s in enumerate(seen) if not s]
  if blind:
    raise ConfigError(f'--workdir={path} is not one directory for every process: process(es) '
                      f'{blind} do not see what process 0 writes there; put the workdir on a disk '
                      'every host mounts at the same path (NFS / Filestore, a gcsfuse bucket)')
