"""The launcher: `python -m launch.main --config=configs/<file>.py[:variant] --workdir=DIR --mode=STAGE`.

Each stage reads its inputs from the workdir, skips finished work and writes atomically. Bad
input (an unknown config key, a missing input, an unwritable workdir) ends with one line.
"""

import sys
import time

from absl import app, flags, logging
from ml_collections import config_flags

from ttc_jax import workdir as wd
from ttc_jax.pipeline import (calibrate, data, eval_verifiers, import_model, prm_data, sample,
                              sft, tokenizer, train_base, train_prm)
from ttc_jax.sampling import demo

STAGES = {
    'data': data.run,
    'tokenizer': tokenizer.run,
    'train_base': train_base.run,
    'sample': sample.run,
    'calibrate': calibrate.run,
    'prm_data': prm_data.run,
    'train_verifier_backbone': train_prm.run_backbone,
    'train_prm': train_prm.run_prm,
    'train_orm': train_prm.run_orm,
    'eval_verifiers': eval_verifiers.run,
    'demo': demo.run,
    # Real checkpoints (configs/gemma3_270m_gsm8k.py): then `sample` and `calibrate` as above.
    'import_model': import_model.run,
    'sft': sft.run,
}
# `all` runs these in order.
PIPELINE = ('data', 'tokenizer', 'train_base', 'sample', 'calibrate', 'prm_data',
            'train_verifier_backbone', 'train_prm', 'train_orm', 'eval_verifiers')

_CONFIG = config_flags.DEFINE_config_file('config', None, 'ml_collections config file.')
_WORKDIR = flags.DEFINE_string('workdir', None, 'Directory holding every artifact.')
_MODE = flags.DEFINE_enum('mode', 'all', ['all', *STAGES], 'Pipeline stage to run.')
_TRACEBACK = flags.DEFINE_bool('traceback', False, 'Show full tracebacks for input errors.')
flags.mark_flags_as_required(['config', 'workdir'])

USER_ERRORS = (ValueError, KeyError, AttributeError, OSError)


def _fail(e: BaseException, prefix: str = '') -> None:
  message = str(e).replace('\\n', ' ').replace("\\'", "'").strip().strip("'\"")
  print(f'error: {prefix}{" ".join(message.split())}', file=sys.stderr)
  sys.exit(2)


def _parse_flags(argv):
  try:
    return flags.FLAGS(argv)
  except (flags.Error, *USER_ERRORS) as e:
    if '--traceback' in argv:
      raise
    overrides = [a.split('=')[0] for a in argv if a.startswith('--config.')]
    unknown_key = isinstance(e, (KeyError, AttributeError)) or 'Did you mean' in str(e)
    _fail(e, f'unknown config key among {overrides}: ' if unknown_key and overrides else '')


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]}')
  try:
    try:
      config = _CONFIG.value
    except OSError as e:
      raise FileNotFoundError(f'cannot load --config: {str(e).splitlines()[-1].strip()}') from None
    workdir = wd.prepare(_WORKDIR.value)
    for stage in PIPELINE if _MODE.value == 'all' else (_MODE.value,):
      logging.info('stage %s in %s', stage, workdir)
      t0 = time.perf_counter()
      STAGES[stage](config, workdir)
      logging.info('stage %s finished in %.1f s', stage, time.perf_counter() - t0)
  except USER_ERRORS as e:
    if _TRACEBACK.value:
      raise
    _fail(e)


if __name__ == '__main__':
  app.run(main, flags_parser=_parse_flags)
