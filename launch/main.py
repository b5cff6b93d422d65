"""The launcher: python -m launch.main --config=configs/<file>.py[:variant] --workdir=DIR --mode=MODE

Every artifact lives in --workdir, with a manifest naming the config values it was made under.
A stage skips finished work, resumes partial work, and stops on work made under other values
(name the changed key) unless --rebuild_stale. Bad input ends with one line `error: ...`, exit 2.
"""

import logging as py_logging
import os
import re
import sys
import warnings

import tensorflow_datasets as tfds
from absl import app, flags, logging
from ml_collections import config_flags

from ttc_jax import config_checks
from ttc_jax import workdir as wd
from ttc_jax.errors import UserError
from ttc_jax.parallel import hosts
from ttc_jax.pipeline import stages

VARIANTS = {
    'configs/arith.py': 'default (CPU, the README main job), large (~14x base), tiny (tests), gpu, '
                        'tpu (one v5e-8 VM), tpu_pod (a v4-32 slice, 4 processes)',
    'configs/gemma3_270m_gsm8k.py': 'default (GSM8K, 50 problems), math500, full, sft, tiny',
    'configs/demo.py': 'default (tiny Gemma 3) or any named model config, e.g. gemma3_1b',
}


def _help() -> str:
  lines = [__doc__.strip(), '',
           'MODE: all (every stage of the config\'s pipeline, in order), status (per stage: done /',
           'partial / missing / stale / damaged, and what runs next; runs nothing), or a stage.']
  for kind, table in stages.KINDS.items():
    lines.append(f'\nStages of the {kind} pipeline (`all` runs them in this order):')
    lines += [f'  {s.name:<24} {s.summary}' for s in table]
  lines.append('\nConfigs and their variants (--config=FILE:VARIANT):')
  lines += [f'  {f:<30} {v}' for f, v in VARIANTS.items()]
  lines += ['\nOverride any config value with --config.KEY=VALUE, e.g. --config.train.steps=600 '
            '--config.sample.num_samples=16 (dotted keys as in the config file).']
  return '\n'.join(lines)


_CONFIG = config_flags.DEFINE_config_file('config', None, 'ml_collections config file.')
_WORKDIR = flags.DEFINE_string('workdir', None, 'Directory holding every artifact.')
_MODE = flags.DEFINE_string('mode', 'all', 'all, status, or one stage (see above).')
_REBUILD = flags.DEFINE_bool('rebuild_stale', False, 'Delete and rebuild outputs made under other '
                             'config values (or from inputs rebuilt since) instead of stopping.')
_TRACEBACK = flags.DEFINE_bool('traceback', False, 'Show full tracebacks for input errors.')
_COORDINATOR = flags.DEFINE_string(
    'coordinator_address', '', 'A job of several processes: HOST:PORT of process 0, the same on '
    'every process, with --num_processes and --process_id.')
_NUM_PROCESSES = flags.DEFINE_integer('num_processes', 1, 'Processes in the job.')
_PROCESS_ID = flags.DEFINE_integer('process_id', 0, "This process's id, 0 to num_processes - 1.")
_DISTRIBUTED = flags.DEFINE_bool(
    'distributed', False, 'Join the job JAX finds itself (every worker of a multi-host Cloud TPU '
    'slice, SLURM): jax.distributed.initialize() with no arguments.')
flags.mark_flags_as_required(['config', 'workdir'])


def _fail(message: str) -> None:
  print(f'error: {" ".join(message.split())}', file=sys.stderr)
  sys.exit(2)


def _message(e: BaseException) -> str:
  """One line from an error of the command line: config_flags puts a config file's exception,
  or a KeyError's repr, into the text of its own."""
  text = e.args[0] if isinstance(e, KeyError) and e.args and isinstance(e.args[0], str) else str(e)
  text = text.replace('\\n', '\n').replace("\\'", "'")
  lines = [l.strip() for l in text.strip().splitlines() if l.strip().strip('\'"')]
  if not lines:
    return type(e).__name__
  if isinstance(e, KeyError) or 'Did you mean' in text:  # the key, then the suggestion
    return '; '.join(l.strip('\'"') for l in lines)
  return re.sub(r'^[A-Za-z_.]*(Error|Exception): ', '', lines[-1])


def _parse_flags(argv):
  try:
    return flags.FLAGS(argv)
  except (flags.Error, KeyError, AttributeError, OSError, ValueError) as e:
    # While parsing, these come from the command line itself: a config file that does not load,
    # a variant it rejects, an override of a key the config does not have.
    if '--traceback' in argv:
      raise
    overrides = [a.split('=')[0] for a in argv if a.startswith('--config.')]
    unknown_key = isinstance(e, (KeyError, AttributeError)) or 'Did you mean' in str(e)
    _fail(f'unknown config key among {overrides}: {_message(e)}' if unknown_key and overrides
          else _message(e))


def _config_arg() -> str:
  return flags.FLAGS['config'].serialize().split('=', 1)[-1]


def _load_config():
  try:
    config = _CONFIG.value
    'seed' in config  # noqa: B015 (config_flags defers a failed load to the first access)
  except (OSError, ValueError, KeyError, AttributeError, SyntaxError, ImportError) as e:
    if _TRACEBACK.value:
      raise
    raise UserError(f'--config={_config_arg()} did not '
                    f'load: {_message(e)}') from None
  return config


class _QuietLibraries(py_logging.Filter):
  """Keeps library INFO lines (orbax logs a multi-kilobyte options dump per checkpoint manager)
  off the console; their warnings, and every line of ours, still show."""

  def filter(self, record: py_logging.LogRecord) -> bool:
    if f'{os.sep}ttc_jax{os.sep}' in record.pathname:
      return True
    # TFDS warns at every builder of a config it has no registry entry for (all of ours), and
    # before it builds a dataset that is not there yet.
    return (record.levelno >= py_logging.WARNING
            and not str(record.msg).startswith(('Using custom data configuration',
                                                'Variant folder')))


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]}')
  logging.get_absl_handler().addFilter(_QuietLibraries())
  tfds.disable_progress_bar()
  # Rollouts donate caches that XLA:CPU cannot always alias; the warning says nothing to a user.
  warnings.filterwarnings('ignore', message='Some donated buffers were not usable')
  try:
    # Before anything asks JAX for its devices: a job of several processes is joined first.
    hosts.initialize(_COORDINATOR.value, _NUM_PROCESSES.value, _PROCESS_ID.value,
                     _DISTRIBUTED.value)
    config = _load_config()
    config_checks.check(config)
    if hosts.count() > 1 and stages.kind(config) != 'arith':
      raise UserError(f'a job of {hosts.count()} processes runs the arith pipeline only; run '
                      f'the {stages.kind(config)} pipeline of --config={_config_arg()} as one '
                      'process')
    if '://' in _WORKDIR.value:
      raise UserError(f'--workdir={_WORKDIR.value}: the workdir is a directory of this machine '
                      '(on a pod slice, one every host mounts: gcsfuse or a shared disk); copy '
                      'it to a bucket afterwards (launch.tpu.job --action=copy --bucket=gs://...)')
    workdir = os.path.abspath(_WORKDIR.value)
    if _MODE.value == 'status':
      print(stages.status_report(config, workdir))
      return
    chosen = stages.select(config, _MODE.value)
    for stage in chosen:  # each stage's declarations check their config values before any work
      stage.outputs(config, workdir)
    workdir = wd.prepare(workdir)
    hosts.check_shared_directory(workdir)
    for stage in chosen:
      stages.execute(stage, config, workdir, _REBUILD.value)
  except UserError as e:
    if _TRACEBACK.value:
      raise
    _fail(str(e))


if __name__ == '__main__':
  sys.modules['__main__'].__doc__ = _help()  # absl's --help prints the main module's docstring
  app.run(main, flags_parser=_parse_flags)
