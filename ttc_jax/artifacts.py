"""The workdir registry: one function per artifact of a workdir (its directory, the stage that
makes it, the config values it is made under, its inputs). Stages declare their outputs with
these; `ttc_jax.manifest` says whether each is done, partial, stale or damaged.
"""

from __future__ import annotations

import os

import ml_collections

from ttc_jax.errors import UserError
from ttc_jax.manifest import Artifact, digest, foreign, make, values

VERIFIER_KINDS = ('prm', 'orm')


# Each function returns the artifact under `config`; its stage declares it as an output, and the
# stages that read it as an input. `model_name` defaults to config.model_name.

REAL_TASKS = ('gsm8k', 'math500')


def is_real(config: ml_collections.ConfigDict) -> bool:
  """GSM8K / MATH500 with an imported (or SFT) model, rather than the synthetic arith task."""
  return 'task' in config and config.task.name in REAL_TASKS


def split_label(config: ml_collections.ConfigDict) -> str:
  s = config.sample.split
  return f'{config.task.name}_{s}' if is_real(config) else s


def data(config: ml_collections.ConfigDict, workdir: str) -> Artifact:
  """The arith task's TFDS dataset (stage data)."""
  return make(workdir, 'data', 'data', values(config, 'task'))


def tokenizer(config: ml_collections.ConfigDict, workdir: str) -> Artifact:
  """tokenizer/arith.model (stage tokenizer)."""
  return make(workdir, 'tokenizer', 'tokenizer', values(config, 'tokenizer'),
              [data(config, workdir)])


def tokenizer_file(config: ml_collections.ConfigDict, workdir: str) -> str:
  return tokenizer(config, workdir).file('arith.model')


def real_data_dir(workdir: str, task: str) -> str:
  """The real task's JSONL built into TFDS on first read (a cache of ../shared/data, no stage)."""
  return os.path.join(workdir, 'data', task)


def backbone_name(config: ml_collections.ConfigDict) -> str:
  """The model the verifiers sit on: config.verifier_backbone, or the proposer when ''."""
  name = config.verifier_backbone or config.model_name
  if name not in config.models:
    raise UserError(f'verifier_backbone={name!r} is not a model of this config; expected one of '
                    f'{sorted(config.models)}')
  return name


def backbone_config(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """The config train_verifier_backbone trains the backbone under: train_base of that model from
  config.train_verifier_backbone.init with that block's steps and learning rate."""
  spec = config.train_verifier_backbone
  derived = config.copy_and_resolve_references()
  derived.model_name, derived.train_init = backbone_name(config), spec.init
  derived.train.update(dict(steps=spec.steps, learning_rate=spec.learning_rate,
                            warmup_steps=spec.warmup_steps))
  return derived


def backbone_suffix(config: ml_collections.ConfigDict) -> str:
  """'' when the verifiers sit on the proposer, else `_on_<backbone>`."""
  backbone = backbone_name(config)
  return '' if backbone == config.model_name else f'_on_{backbone}'


def verifier_name(config: ml_collections.ConfigDict, kind: str) -> str:
  """`prm` / `orm` for the base proposer on its own backbone; `_<proposer>` is appended for
  another proposer, `_on_<backbone>` for a backbone other than the proposer."""
  if kind not in VERIFIER_KINDS:
    raise UserError(f'unknown verifier kind {kind!r}; expected one of {VERIFIER_KINDS}')
  return (kind + ('' if config.model_name == 'base' else f'_{config.model_name}')
          + backbone_suffix(config))


def model(config: ml_collections.ConfigDict, workdir: str, name: str = '') -> Artifact:
  """models/<name>: a trained LM (train_base; the verifier backbone by train_verifier_backbone),
  or for the real tasks an imported checkpoint (import_model) or its fine-tune (sft)."""
  name = name or config.model_name
  if is_real(config):
    base = config.sft.base if 'sft' in config else config.model_name
    if name == base:
      return make(workdir, f'models/{name}', 'import_model',
                  values(config, 'model.name', 'model.gguf', 'model.hf_dir'))
    return make(workdir, f'models/{name}', 'sft', values(config, 'sft', 'model.name'),
                [model(config, workdir, base)])
  if name not in config.models:
    raise UserError(f'unknown model {name!r}; expected one of {sorted(config.models)}')
  if name == config.model_name:
    return _trained(config, config, workdir, 'train_base', 'train_init')
  if 'verifier_backbone' in config and name == backbone_name(config):
    return _trained(config, backbone_config(config), workdir, 'train_verifier_backbone',
                    'train_verifier_backbone.init')
  # Another model (a train_init start, the base model of a `large` config): trained under
  # another config, so only its own manifest tells whether it is done.
  return make(workdir, f'models/{name}', 'train_base', None, (), f'--config.model_name={name}')


def _trained(config, trained_under, workdir: str, stage: str, init_key: str) -> Artifact:
  name, init = trained_under.model_name, trained_under.train_init
  inputs = [tokenizer(config, workdir), data(config, workdir)]
  if init:
    if init == name:
      raise UserError(f'{init_key}={init!r} is the model being trained; name another model')
    inputs.append(model(config, workdir, init))
  return make(workdir, f'models/{name}', stage,
              values(trained_under, f'models.{name}', 'train', 'train_init'), inputs)


def samples(config: ml_collections.ConfigDict, workdir: str, model_name: str = '') -> Artifact:
  """samples/<model>/<split>: pooled samples of the split, graded (stage sample)."""
  m = model_name or config.model_name
  hint = '' if m == config.model_name else f'--config.model_name={m}'
  if is_real(config):
    return make(workdir, f'samples/{m}/{split_label(config)}', 'sample',
                values(config, 'sample', 'seed', 'task'), [model(config, workdir, m)], hint)
  return make(workdir, f'samples/{m}/{split_label(config)}', 'sample',
              values(config, 'sample', 'seed'),
              [model(config, workdir, m), tokenizer(config, workdir), data(config, workdir)], hint)


def calibration(config: ml_collections.ConfigDict, workdir: str) -> Artifact:
  """calibration/<model>/<split>: pass@k by bin (calibration.json), per-problem pass@1 and bin
  (per_problem.json), the oracle bin of each problem (difficulty.json), pass_at_k.png."""
  m = config.model_name
  inputs = [samples(config, workdir)]
  if not is_real(config):
    inputs.append(data(config, workdir))
    if m != 'base':  # binned by the base model's difficulty, sampled under its own config
      inputs.append(foreign(samples(config, workdir, 'base')))
  return make(workdir, f'calibration/{m}/{split_label(config)}', 'calibrate',
              values(config, 'calibrate', 'seed'), inputs)


def prm_labels(config: ml_collections.ConfigDict, workdir: str) -> Artifact:
  """prm_data/<model>: Monte-Carlo step labels of the proposer's solutions (stage prm_data)."""
  m = config.model_name
  return make(workdir, f'prm_data/{m}', 'prm_data', values(config, 'prm_data', 'seed'),
              [model(config, workdir), tokenizer(config, workdir), data(config, workdir)])


def verifier(config: ml_collections.ConfigDict, workdir: str, kind: str) -> Artifact:
  """models/<verifier_name>: the PRM or ORM value head on the backbone (train_prm / train_orm)."""
  return make(workdir, f'models/{verifier_name(config, kind)}', f'train_{kind}',
              values(config, 'train_prm'),
              [prm_labels(config, workdir), model(config, workdir, backbone_name(config)),
               tokenizer(config, workdir)])


def verifier_scores(config: ml_collections.ConfigDict, workdir: str, kind: str) -> Artifact:
  """verifier_scores/<model>/<split>/<verifier>: step scores of every pooled sample, per shard."""
  return make(workdir, f'verifier_scores/{config.model_name}/{split_label(config)}/'
              f'{verifier_name(config, kind)}', 'eval_verifiers', {},
              [samples(config, workdir), verifier(config, workdir, kind),
               tokenizer(config, workdir), data(config, workdir)])


def verifier_eval(config: ml_collections.ConfigDict, workdir: str) -> Artifact:
  """eval_verifiers/<model>/<split>/on_<backbone>: accuracy vs N per bin (verifiers.json), per
  problem (per_problem.npz), plots (stage eval_verifiers)."""
  return make(workdir, f'eval_verifiers/{config.model_name}/{split_label(config)}/'
              f'on_{backbone_name(config)}', 'eval_verifiers',
              values(config, 'eval_verifiers', 'calibrate.num_bins'),
              [*(verifier_scores(config, workdir, k) for k in VERIFIER_KINDS),
               *(verifier(config, workdir, k) for k in VERIFIER_KINDS),
               samples(config, workdir), prm_labels(config, workdir), data(config, workdir)])


def search_runs(config: ml_collections.ConfigDict, workdir: str, method: str) -> Artifact:
  """search/<model>/<split>/<prm>/<method>: one result file per budget and seed (stage
  eval_search); a budget or seed added to the config adds files, a changed setting makes the
  runs stale."""
  return make(workdir, f'search/{config.model_name}/{split_label(config)}/'
              f'{verifier_name(config, "prm")}/{method}',
              'eval_search',
              values(config, *(f'search.{k}' for k in SEARCH_SETTINGS), 'calibrate.num_bins'),
              [model(config, workdir), verifier(config, workdir, 'prm'), calibration(config, workdir),
               tokenizer(config, workdir), data(config, workdir)])


# The settings every search run depends on (methods, budgets and seeds only choose which runs).
SEARCH_SETTINGS = ('max_problems', 'rows_per_batch', 'max_rounds', 'max_step_tokens',
                   'max_new_tokens', 'temperature', 'top_k', 'top_p')


def search_eval(config: ml_collections.ConfigDict, workdir: str) -> Artifact:
  """eval_search/<model>/<split>/<prm>: accuracy per method, budget and bin (search.json), per
  problem (per_problem.npz), search.png (stage eval_search)."""
  return make(workdir, f'eval_search/{config.model_name}/{split_label(config)}/'
              f'{verifier_name(config, "prm")}', 'eval_search',
              values(config, 'search', 'calibrate.num_bins'),
              [*(search_runs(config, workdir, m) for m in config.search.methods),
               calibration(config, workdir), data(config, workdir)])


def demo_samples(config: ml_collections.ConfigDict, workdir: str) -> Artifact:
  """demo/samples.json: the sampling demo's tokens (configs/demo.py)."""
  return make(workdir, 'demo', 'demo', values(config, 'seed', 'model', 'sampling', 'demo'))


def revision_data(config: ml_collections.ConfigDict, workdir: str) -> Artifact:
  """revision_data/<model>: revision trajectories from the proposer's samples of training
  problems, as a TFDS dataset (stage revision_data)."""
  return make(workdir, f'revision_data/{config.model_name}', 'revision_data',
              values(config, 'revision_data', 'seed'),
              [model(config, workdir), tokenizer(config, workdir), data(config, workdir)])


def revision_model_name(config: ml_collections.ConfigDict) -> str:
  return f'revision_{config.model_name}'


def revision_model(config: ml_collections.ConfigDict, workdir: str) -> Artifact:
  """models/revision_<model>: the revision model, SFT from the proposer (stage train_revision)."""
  return make(workdir, f'models/{revision_model_name(config)}', 'train_revision',
              values(config, 'train_revision', 'revision.window'),
              [revision_data(config, workdir), model(config, workdir), tokenizer(config, workdir)])


def revision_verifier_name(config: ml_collections.ConfigDict) -> str:
  return f'orm_{revision_model_name(config)}{backbone_suffix(config)}'


def revision_verifier(config: ml_collections.ConfigDict, workdir: str) -> Artifact:
  """models/orm_revision_<model>[_on_<backbone>]: an ORM head trained on the revision model's
  own attempts (stage train_revision_orm)."""
  return make(workdir, f'models/{revision_verifier_name(config)}', 'train_revision_orm',
              values(config, 'revision_orm', 'revision', 'train_prm', 'revision_data.problems',
                     'seed'),
              [revision_model(config, workdir), model(config, workdir, backbone_name(config)),
               verifier(config, workdir, 'prm'), tokenizer(config, workdir),
               data(config, workdir)])


def revision_chains(config: ml_collections.ConfigDict, workdir: str) -> Artifact:
  """revisions/<model>/<split>/on_<backbone>: the revision model's chains on the sample split,
  graded and scored by the revision ORM and the PRM, one file per batch of problems
  (eval_revisions)."""
  return make(workdir, f'revisions/{config.model_name}/{split_label(config)}/'
              f'on_{backbone_name(config)}', 'eval_revisions',
              values(config, 'revision', 'eval_revisions.budget', 'eval_revisions.max_problems',
                     'eval_revisions.seed', 'calibrate.num_bins'),
              [revision_model(config, workdir), revision_verifier(config, workdir),
               verifier(config, workdir, 'prm'), calibration(config, workdir),
               tokenizer(config, workdir), data(config, workdir)])


def revision_eval(config: ml_collections.ConfigDict, workdir: str) -> Artifact:
  """eval_revisions/<model>/<split>/on_<backbone>: pass@1 per revision step, sequential vs
  parallel, the ratio sweep (revisions.json), per_problem.npz, the paper's Figures 6 and 7."""
  return make(workdir, f'eval_revisions/{config.model_name}/{split_label(config)}/'
              f'on_{backbone_name(config)}',
              'eval_revisions', values(config, 'eval_revisions', 'calibrate.num_bins'),
              [revision_chains(config, workdir), calibration(config, workdir),
               data(config, workdir)])


def difficulty(config: ml_collections.ConfigDict, workdir: str) -> Artifact:
  """difficulty/<model>/<split>/<prm>: oracle, predicted (by that PRM) and deployable difficulty
  bins per problem,
  with the predictors' costs (stage difficulty)."""
  return make(workdir, f'difficulty/{config.model_name}/{split_label(config)}/'
              f'{verifier_name(config, "prm")}', 'difficulty',
              values(config, 'difficulty', 'calibrate.num_bins'),
              [samples(config, workdir), verifier_scores(config, workdir, 'prm'),
               calibration(config, workdir), model(config, workdir),
               model(config, workdir, backbone_name(config)), tokenizer(config, workdir),
               data(config, workdir)])


def large_config(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """The config the exchange's larger model (config.policy.large) is trained and sampled under:
  this one with model_name set to it (configs/arith.py:large)."""
  name = config.policy.large
  if name not in config.models:
    raise UserError(f'--config.policy.large={name!r} is not a model of this config; expected one '
                    f'of {sorted(config.models)}')
  derived = config.copy_and_resolve_references()
  derived.model_name = name
  return derived


def large_results(config: ml_collections.ConfigDict, workdir: str) -> list[Artifact]:
  """The larger model's checkpoint info, greedy samples and calibration, as inputs made under its
  own config: only when its calibration is done in this workdir (the exchange then uses them,
  and a policy made before they existed is stale)."""
  large = large_config(config)
  found = [foreign(model(large, workdir)), foreign(samples(large, workdir)),
           foreign(calibration(large, workdir))]
  return found if digest(found[-1]) is not None else []


def policy(config: ml_collections.ConfigDict, workdir: str) -> Artifact:
  """policy/<model>/<split>/on_<backbone>: the compute-optimal policy per difficulty bin and budget (2-fold
  cross-validated), its accuracy vs budget, the FLOPs of every strategy and the exchange
  against the larger model (stage policy)."""
  return make(workdir, f'policy/{config.model_name}/{split_label(config)}/'
              f'on_{backbone_name(config)}', 'policy',
              values(config, 'policy', 'difficulty', 'calibrate.num_bins'),
              [difficulty(config, workdir), search_eval(config, workdir),
               *(search_runs(config, workdir, m) for m in config.search.methods),
               revision_eval(config, workdir), revision_chains(config, workdir),
               model(config, workdir), revision_model(config, workdir),
               *large_results(config, workdir)])


def report(config: ml_collections.ConfigDict, workdir: str) -> Artifact:
  """report/<model>/<split>/on_<backbone>: REPORT.md and its figures, from every result of the
  run (stage report)."""
  return make(workdir, f'report/{config.model_name}/{split_label(config)}/'
              f'on_{backbone_name(config)}', 'report', values(config, *sorted(config.keys())),
              [policy(config, workdir), difficulty(config, workdir), calibration(config, workdir),
               verifier_eval(config, workdir), search_eval(config, workdir),
               revision_eval(config, workdir), revision_model(config, workdir),
               revision_verifier(config, workdir)])
