"""The one training loop: AdamW with warm-up and cosine decay, orbax checkpoints, resume after kill.

Batches are a pure function of the step (see data.batch_at), so a killed and resumed run ends
with exactly the parameters of an uninterrupted one.
"""

from __future__ import annotations

import functools
import json
import os
import time
from typing import Any, Protocol

import flax
import jax
import jax.numpy as jnp
import ml_collections
import optax
import orbax.checkpoint as ocp
from absl import logging

from ttc_jax.errors import ConfigError, CorruptArtifactError, MissingInputError
from ttc_jax.parallel import hosts, sharding
from ttc_jax.training.data import Batch, Examples, batch_at


class Objective(Protocol):
  def init(self, key: jax.Array) -> Any: ...
  def loss(self, params, batch: Batch) -> tuple[jax.Array, dict[str, jax.Array]]: ...


@flax.struct.dataclass
class TrainState:
  step: jax.Array
  params: Any
  opt_state: Any


def make_optimizer(cfg: ml_collections.ConfigDict) -> optax.GradientTransformation:
  """AdamW with warmup + cosine decay and global-norm clipping."""
  schedule = optax.warmup_cosine_decay_schedule(
      init_value=0.0, peak_value=cfg.learning_rate, warmup_steps=cfg.warmup_steps,
      decay_steps=max(cfg.steps, cfg.warmup_steps + 1), end_value=cfg.learning_rate * 0.1)
  return optax.chain(
      optax.clip_by_global_norm(cfg.grad_clip),
      optax.adamw(schedule, b1=0.9, b2=0.95, weight_decay=cfg.weight_decay))


def train_step(state: TrainState, batch: Batch, *, objective: Objective,
               optimizer: optax.GradientTransformation) -> tuple[TrainState, dict]:
  grads, metrics = jax.grad(objective.loss, has_aux=True)(state.params, batch)
  updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
  params = optax.apply_updates(state.params, updates)
  metrics = dict(metrics, grad_norm=optax.tree.norm(grads))
  return TrainState(step=state.step + 1, params=params, opt_state=opt_state), metrics


def _manager(directory: str) -> ocp.CheckpointManager:
  directory = os.path.abspath(directory)
  # orbax creates the directory itself only when every process of the job takes part.
  if not hosts.everyone():
    os.makedirs(directory, exist_ok=True)
  options = ocp.CheckpointManagerOptions(max_to_keep=2, create=hosts.everyone(),
                                         enable_async_checkpointing=False,
                                         multiprocessing_options=hosts.orbax_options())
  return ocp.CheckpointManager(directory, options=options)


def _restore(mngr: ocp.CheckpointManager, state: TrainState, directory: str,
             step: int | None = None, stage: str = '') -> TrainState:
  step = mngr.latest_step() if step is None else step
  rerun = f'rerun --mode={stage} to' if stage else 'rerun its training stage to'
  try:
    abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, state)
    return mngr.restore(step, args=ocp.args.StandardRestore(abstract))
  except Exception as e:  # orbax raises many types for truncated or mismatching checkpoints.
    raise CorruptArtifactError(
        f'checkpoint step {step} in {directory} is corrupt or does not match the config '
        f'({type(e).__name__}: {str(e).splitlines()[0][:160]}); delete {directory}/{step} and '
        f'{rerun} resume from an earlier step, or delete the whole directory to restart'
    ) from None


def _initial_state(objective: Objective, cfg, optimizer, init_params) -> TrainState:
  params = objective.init(jax.random.key(cfg.seed)) if init_params is None else init_params
  return TrainState(step=jnp.zeros((), jnp.int32), params=params,
                    opt_state=optimizer.init(params))


def load_params(directory: str, objective: Objective, cfg: ml_collections.ConfigDict,
                step: int | None = None, stage: str = ''):
  """Params of checkpoint `step` (default: the latest) in `directory`, written by `train` with
  this cfg. A finished model is loaded at the step its info.json records, never an earlier one."""
  mngr = _manager(directory)
  latest = mngr.latest_step()
  rerun = f'run --mode={stage}' if stage else 'run its training stage'
  if latest is None:
    raise MissingInputError(f'no checkpoint in {directory}; {rerun} first')
  if step is not None and step not in mngr.all_steps():
    raise CorruptArtifactError(
        f'{directory} has no checkpoint of step {step}, the step its info.json records (it has '
        f'{sorted(mngr.all_steps())}); delete its info.json and {rerun} to finish training')
  optimizer = make_optimizer(cfg)
  abstract = jax.eval_shape(lambda: _initial_state(objective, cfg, optimizer, None))
  # Whole on this process's first device, however many devices or processes trained it.
  abstract = jax.tree.map(
      lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=hosts.local_sharding()),
      abstract)
  return _restore(mngr, abstract, directory, step, stage).params


def train(objective: Objective, examples: Examples, cfg: ml_collections.ConfigDict,
          directory: str, name: str, init_params: Any = None,
          stop_after: int | None = None, mesh: Any = None, rules: Any = 'data',
          keep_layout: bool = False) -> Any:
  """Trains to cfg.steps, checkpointing into `directory`; resumes from its latest checkpoint.

  `stop_after` ends the run early at that step (as a kill would), leaving its checkpoints.
  `mesh` (a Mesh or a {axis: size} shape for `sharding.make_mesh`) shards the run: params and
  optimizer state by `rules` (a `sharding.RULES` name or rules), each batch over the rules' data
  axes; XLA averages the gradients. The same parameters as without a mesh, up to rounding.
  In a job of several processes the mesh spans every process's devices (each process feeding
  its devices' rows of each batch); the parameters come back whole on one device of every
  process (`keep_layout`: as trained, laid out over the mesh).
  """
  optimizer = make_optimizer(cfg)
  jit_shardings, place = {}, lambda batch: batch
  if mesh is None and hosts.shared():
    raise ConfigError(f'{name}: a job of {hosts.count()} processes trains on a mesh over every '
                      'device; pass one (config.mesh)')
  if mesh is None:
    state = _initial_state(objective, cfg, optimizer, init_params)
  else:
    mesh = mesh if isinstance(mesh, jax.sharding.Mesh) else sharding.make_mesh(mesh)
    sharding.check_batch_size(mesh, rules, cfg.batch_size)
    init = functools.partial(_initial_state, objective, cfg, optimizer)
    state_sh = sharding.train_state_shardings(mesh, rules, optimizer, jax.eval_shape(
        init, init_params), getattr(objective, 'config', None))
    if init_params is not None:
      init_params = jax.tree.map(lambda x, s: hosts.global_array(jax.device_get(x), s),
                                 init_params, state_sh.params)
    state = jax.jit(init, out_shardings=state_sh)(init_params)  # each device its shards only
    batch_sh = sharding.batch_sharding(mesh, rules)
    jit_shardings = dict(in_shardings=(state_sh, batch_sh),
                         out_shardings=(state_sh, sharding.replicated(mesh)))
    place = lambda batch: jax.tree.map(lambda x: hosts.global_array(x, batch_sh), batch)
  mngr = _manager(directory)
  if mngr.latest_step() is not None:
    state = _restore(mngr, state, directory)
    logging.info('%s: resumed from step %d', name, int(state.step))
  start = int(state.step)
  metrics_path = os.path.join(directory, 'metrics.jsonl')
  _truncate_metrics(metrics_path, start)
  step_fn = jax.jit(functools.partial(train_step, objective=objective, optimizer=optimizer),
                    donate_argnames=('state',), **jit_shardings)
  t0, last_log = time.perf_counter(), start
  # Every step runs inside the rules (the context mesh is part of the jit's cache key), so
  # activations are laid out by their logical axes too.
  with sharding.axis_rules(mesh, rules):
    for step in range(start, min(cfg.steps, stop_after or cfg.steps)):
      batch = place(batch_at(examples, step, cfg.batch_size, cfg.seed))
      state, metrics = step_fn(state, batch)
      done = step + 1
      if done % cfg.log_every == 0 or done == cfg.steps:
        metrics = {k: float(v) for k, v in metrics.items()}
        rate = (done - last_log) / (time.perf_counter() - t0)
        t0, last_log = time.perf_counter(), done
        eta = (cfg.steps - done) / max(rate, 1e-9)
        logging.info('%s: step %d/%d loss %.4f %.2f steps/s ETA %dm%02ds', name, done, cfg.steps,
                     metrics['loss'], rate, eta // 60, eta % 60)
        if hosts.is_writer():
          with open(metrics_path, 'a') as f:
            f.write(json.dumps(dict(metrics, step=done, steps_per_s=rate)) + '\n')
      if done % cfg.checkpoint_every == 0 or done == cfg.steps:
        mngr.save(done, args=ocp.args.StandardSave(state))
  mngr.wait_until_finished()
  hosts.barrier(f'{name}:trained')  # process 0's metrics.jsonl is complete
  return state.params if keep_layout else hosts.to_local(state.params)


def _truncate_metrics(path: str, step: int) -> None:
  """Drops log lines past the resumed step so the log reads as one uninterrupted run."""
  if not os.path.exists(path) or not hosts.is_writer():
    return
  with open(path) as f:
    keep = [line for line in f if line.strip() and json.loads(line)['step'] <= step]
  tmp = path + '.tmp'
  with open(tmp, 'w') as f:
    f.writelines(keep)
  os.replace(tmp, path)


def default_config() -> ml_collections.ConfigDict:
  return ml_collections.ConfigDict(dict(
      steps=1000, batch_size=32, learning_rate=1e-3, warmup_steps=100, weight_decay=0.01,
      grad_clip=1.0, seed=0, log_every=50, checkpoint_every=200))
