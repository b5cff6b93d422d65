"""Stage `difficulty`: every test problem's difficulty bin three ways (the paper's Section 3.2).

- oracle: the base model's pass@1 over its sample pool, graded against the gold answer (the bins
  of `calibrate`);
- predicted: the mean PRM final-answer score over the same samples (no gold answer), cut into
  `calibrate.num_bins` equal-count bins;
- deployable (beyond the paper): the mean PRM final-answer score of only the first
  `difficulty.deploy_k` samples, binned by cut points of those scores over the split. Its cost
  (k generations and their scoring) is charged to the budget by `policy`, and `infer` bins a new
  question with the same cut points.

Writes difficulty/<model>/<split>/<prm>/: per_problem.npz (ids, oracle_pass1, oracle_bin, predicted_score,
predicted_bin, deployable_score, deployable_bin) and difficulty.json (cut points, how often the
bins agree, and the cost of each predictor: samples, tokens, FLOPs).
"""

from __future__ import annotations

import ml_collections
import numpy as np
from absl import logging

from ttc_jax import artifacts
from ttc_jax import manifest
from ttc_jax import workdir as wd
from ttc_jax.compute import flops
from ttc_jax.errors import ConfigError, UserError
from ttc_jax.pipeline import common, eval_verifiers, sample
from ttc_jax.policy import selection

STAGE = 'difficulty'


def outputs(config: ml_collections.ConfigDict, workdir: str) -> list[manifest.Artifact]:
  return [artifacts.difficulty(config, workdir)]


def check(config: ml_collections.ConfigDict) -> None:
  k, n = config.difficulty.deploy_k, config.sample.num_samples
  if not 1 <= k <= n:
    raise ConfigError(f'--config.difficulty.deploy_k={k}: expected 1 <= k <= sample.num_samples '
                      f'({n}), the samples the deployable predictor averages')


def final_scores(step_scores: list[np.ndarray]) -> np.ndarray:
  """The PRM's final-answer score of each sample (its last step-end score; 0 with no step)."""
  return np.array([float(s[-1]) if len(s) else 0.0 for s in step_scores])


def model_sizes(config: ml_collections.ConfigDict, workdir: str, stage: str) -> dict[str, float]:
  """Parameter counts of the proposer and the verifier backbone (from their info.json)."""
  out = {}
  for role, name in (('proposer', config.model_name), ('verifier', artifacts.backbone_name(config))):
    a = artifacts.model(config, workdir, name)
    manifest.require(a, stage)
    out[role] = float(wd.read_json(a.file('info.json'), stage=a.stage)['num_params'])
  return out


def sample_cost(shapes: dict, prompt_len: int, lengths: list[int]) -> flops.Cost:
  """The cost of sampling `lengths` completions of one prompt (one shared prefill) and scoring
  each with the verifier (its prompt and completion read once); `shapes` from `model_shapes`."""
  attn = sum(flops.attention(shapes['proposer'], prompt_len, g)
             + flops.attention(shapes['verifier'], 0, prompt_len + g) for g in lengths)
  return flops.Cost(generations=len(lengths), sampled_tokens=float(sum(lengths)),
                    prompt_tokens=float(prompt_len),
                    verifier_tokens=float(sum(prompt_len + g for g in lengths)),
                    attention_pairs_flops=attn)


def model_shapes(config: ml_collections.ConfigDict, vocab: int) -> dict:
  """The architectures of the proposer and the verifier backbone (attention's FLOPs read them)."""
  return {'proposer': common.model_config(config, config.model_name, vocab),
          'verifier': common.model_config(config, artifacts.backbone_name(config), vocab)}


def run(config: ml_collections.ConfigDict, workdir: str) -> None:
  check(config)
  out = artifacts.difficulty(config, workdir)
  num_bins, k = config.calibrate.num_bins, config.difficulty.deploy_k
  recs = sample.load_samples(config, workdir, STAGE)
  tok = common.load_tokenizer(config, workdir, STAGE)
  problems = {p.id: p for p in common.load_problems(config, workdir, config.sample.split, STAGE)}
  prompts = {i: common.encode_example(tok, p)[0] for i, p in problems.items()}
  manifest.require(artifacts.verifier_scores(config, workdir, 'prm'), STAGE)

  def unavailable():
    raise UserError(f'stage {STAGE}: a PRM score shard is missing; rerun --mode=eval_verifiers')

  scores = eval_verifiers.score_samples(config, workdir, recs, prompts, tok, unavailable)['prm']
  oracle_bins = common.load_difficulty(config, workdir, STAGE)
  ids = [r['id'] for r in recs]
  oracle_pass1 = np.array([np.mean(r['correct']) for r in recs])
  finals = [final_scores(s) for s in scores]
  predicted = np.array([f.mean() for f in finals])
  deployable = np.array([f[:k].mean() for f in finals])
  predicted_edges = selection.quantile_edges(predicted, num_bins)
  deploy_edges = selection.quantile_edges(deployable, num_bins)
  oracle_bin = np.array([oracle_bins[i] for i in ids])
  predicted_bin = selection.assign_bins(predicted, predicted_edges)
  deploy_bin = selection.assign_bins(deployable, deploy_edges)

  sizes, shapes = model_sizes(config, workdir, STAGE), model_shapes(config, tok.vocab_size)
  full = flops.Cost.sum(sample_cost(shapes, len(prompts[r['id']]), r['num_tokens']) for r in recs)
  first_k = flops.Cost.sum(sample_cost(shapes, len(prompts[r['id']]), r['num_tokens'][:k])
                           for r in recs)
  n = len(recs)
  per_q = lambda c: c.scaled(1 / n)
  agree = lambda a, b: {'same_bin': float(np.mean(a == b)),
                        'within_one_bin': float(np.mean(np.abs(a - b) <= 1)),
                        'spearman': _spearman(a, b)}
  result = {
      'model': config.model_name, 'split': config.sample.split, 'num_problems': n,
      'num_bins': num_bins, 'bin_1': 'easiest', 'deploy_k': k,
      'oracle': "the base model's pass@1 over its sample pool, against the gold answer",
      'predicted': f'mean PRM final-answer score over the {len(recs[0]["correct"])} pooled samples',
      'deployable': f'mean PRM final-answer score over the first {k} samples',
      'predicted_edges': predicted_edges.tolist(), 'deployable_edges': deploy_edges.tolist(),
      'agreement': {'predicted_vs_oracle': agree(predicted_bin, oracle_bin),
                    'deployable_vs_predicted': agree(deploy_bin, predicted_bin),
                    'deployable_vs_oracle': agree(deploy_bin, oracle_bin)},
      'cost_per_problem': {'predicted': per_q(full).as_dict(sizes['proposer'], sizes['verifier']),
                           'deployable': per_q(first_k).as_dict(sizes['proposer'],
                                                                sizes['verifier'])},
      'cost_total': {'predicted': full.as_dict(sizes['proposer'], sizes['verifier']),
                     'deployable': first_k.as_dict(sizes['proposer'], sizes['verifier'])},
      'model_params': sizes,
  }
  wd.atomic_write_npz(out.file('per_problem.npz'), ids=np.array(ids), oracle_pass1=oracle_pass1,
                      oracle_bin=oracle_bin, predicted_score=predicted, predicted_bin=predicted_bin,
                      deployable_score=deployable, deployable_bin=deploy_bin)
  wd.atomic_write_json(out.file('difficulty.json'), result)
  a = result['agreement']
  logging.info('%s: predicted bin = oracle on %.0f%% of %d problems; deployable (k=%d) = '
               'predicted on %.0f%%, within one bin on %.0f%%', STAGE,
               100 * a['predicted_vs_oracle']['same_bin'], n, k,
               100 * a['deployable_vs_predicted']['same_bin'],
               100 * a['deployable_vs_predicted']['within_one_bin'])


def _spearman(a: np.ndarray, b: np.ndarray) -> float | None:
  if np.all(a == a[0]) or np.all(b == b[0]):
    return None
  from scipy import stats  # pylint: disable=g-import-not-at-top  (0.8 s the launcher skips)
  return float(stats.spearmanr(a, b).statistic)


def load(config: ml_collections.ConfigDict, workdir: str, stage: str
         ) -> tuple[dict[str, np.ndarray], dict]:
  """(per_problem arrays, difficulty.json) of a finished difficulty stage."""
  a = artifacts.difficulty(config, workdir)
  manifest.require(a, stage)
  arrays = wd.read_npz(a.file('per_problem.npz'), stage=STAGE,
                       keys=('ids', 'oracle_bin', 'predicted_bin', 'deployable_bin'))
  return arrays, wd.read_json(a.file('difficulty.json'), stage=STAGE)
