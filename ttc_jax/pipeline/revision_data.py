"""Stage `revision_data`: revision trajectories from the proposer's samples, as a TFDS dataset.

Training problems only (the first config.revision_data.problems of the task's train split):
K samples each from the proposer at revision_data.temperature, graded, turned into trajectories
by `revision.trajectories.build` (incorrect attempts chosen by edit distance, closest last, then
the correct one). With revision_data.use_gold, a problem none of whose samples is right ends its
trajectory in the reference solution instead (the tiny test config, whose model solves nothing). Layout under revision_data/<model>/ (`artifacts.revision_data`):
  shards/train-00000.json ...   one per problems_per_shard problems, atomic; a rerun skips those
                                that exist, so a kill loses at most one shard
  tfds/revision_trajectories/   the dataset, built from the shards once all exist
  info.json                     trajectories, attempts per trajectory, mean edit distance, tokens
Read it with `load_trajectories`.
"""

from __future__ import annotations

import os
import time

import jax
import ml_collections
import numpy as np
import tensorflow_datasets as tfds
from absl import logging

from ttc_jax import artifacts
from ttc_jax import manifest
from ttc_jax import workdir as wd
from ttc_jax.errors import MissingInputError, UserError
from ttc_jax.pipeline import common, train_base
from ttc_jax.revision import trajectories
from ttc_jax.sampling.sampler import Sampler
from ttc_jax.tasks import arith, records

STAGE = 'revision_data'


class RevisionTrajectoriesBuilder(records.JsonRecordsBuilder):
  """One record per trajectory (`trajectories.Trajectory`), from the shards in manual_dir."""
  name = 'revision_trajectories'
  VERSION = tfds.core.Version('1.0.0')
  TEXT_FIELDS = ('problem_id', 'prompt_ids', 'incorrect', 'correct', 'distances')
  INT_FIELDS = ('num_ops', 'answer', 'num_incorrect')
  MANUAL_DOWNLOAD_INSTRUCTIONS = 'Written by the revision_data stage; run --mode=revision_data.'

  def _split_records(self, dl_manager):
    files = sorted(f for f in os.listdir(dl_manager.manual_dir) if f.endswith('.json'))
    return {'train': [r for f in files for r in wd.read_json(
        os.path.join(dl_manager.manual_dir, f), stage=STAGE)['records']]}


# One dataset per artifact directory (its manifest holds the config), so no digest in the name.
_BUILDER_CONFIG = tfds.core.BuilderConfig(name='trajectories')


def outputs(config: ml_collections.ConfigDict, workdir: str) -> list[manifest.Artifact]:
  return [artifacts.revision_data(config, workdir)]


def _shard_path(config, workdir, index: int) -> str:
  return artifacts.revision_data(config, workdir).file('shards', f'train-{index:05d}.json')


def _tfds_dir(config, workdir) -> str:
  return artifacts.revision_data(config, workdir).file('tfds')


def training_problems(config: ml_collections.ConfigDict, workdir: str, start: int, count: int,
                      stage: str, key: str) -> list[arith.Problem]:
  """Problems start .. start+count of the task's train split (`key` names the config value in
  the error when there are too few), in (num_ops, id) order: similar lengths in one batch."""
  problems = common.load_problems(config, workdir, 'train', stage)
  if start + count > len(problems):
    raise UserError(f'--config.{key}={count} needs {start + count} training problems; the task '
                    f'has {len(problems)} (--config.task.train_size): lower it')
  return sorted(problems[start:start + count], key=lambda p: (p.num_ops, p.id))


def run(config: ml_collections.ConfigDict, workdir: str) -> None:
  d = config.revision_data
  problems = training_problems(config, workdir, 0, d.problems, STAGE, 'revision_data.problems')
  total = -(-len(problems) // d.problems_per_shard)
  todo = [i for i in range(total) if not os.path.exists(_shard_path(config, workdir, i))]
  if todo:
    model, params = train_base.load_model(config, workdir, config.model_name, STAGE)
    tok = common.load_tokenizer(config, workdir, STAGE)
    sampler = Sampler(model, eos_id=tok.eos_id)
  t0, sampled = time.perf_counter(), 0
  for shard in todo:
    batch = problems[shard * d.problems_per_shard:(shard + 1) * d.problems_per_shard]
    prompts = [common.encode_example(tok, p)[0] for p in batch]
    key = jax.random.fold_in(jax.random.key(config.seed), shard)
    out = sampler.sample(params, prompts, key=key,
                         max_new_tokens=common.attempt_tokens(config, batch, d.max_new_tokens),
                         num_samples=d.num_samples, temperature=d.temperature)
    seqs = out.sequences()
    rng = np.random.default_rng([config.seed, shard])
    recs, num_correct = [], 0
    for i, (p, prompt) in enumerate(zip(batch, prompts)):
      rows = seqs[i * d.num_samples:(i + 1) * d.num_samples]
      texts = [tok.decode(r) for r in rows]
      samples = [trajectories.Sample(ids=r, text=t, correct=arith.grade(t, p.answer))
                 for r, t in zip(rows, texts)]
      num_correct += sum(s.correct for s in samples)
      gold = None
      if d.use_gold:
        ids = common.encode_example(tok, p)[1]
        gold = trajectories.Sample(ids=ids, text=tok.decode(ids), correct=True)
      recs += [t.to_record() for t in trajectories.build(
          p.id, p.num_ops, p.answer, prompt, samples, rng, max_incorrect=d.max_incorrect,
          max_per_problem=d.max_per_problem, gold=gold)]
      sampled += sum(len(r) for r in rows)
    wd.atomic_write_json(_shard_path(config, workdir, shard), {
        'problems': len(batch), 'samples': len(batch) * d.num_samples,
        'correct_samples': num_correct, 'records': recs})
    elapsed = time.perf_counter() - t0
    logging.info('%s: shard %d/%d (num_ops %d-%d): %d trajectories, %.0f%% of samples correct, '
                 '%.0f tokens/s, %.0fs elapsed', STAGE, shard + 1, total, batch[0].num_ops,
                 batch[-1].num_ops, len(recs), 100 * num_correct / (len(batch) * d.num_samples),
                 sampled / elapsed, elapsed)
  shards = [wd.read_json(_shard_path(config, workdir, i), stage=STAGE) for i in range(total)]
  if not any(s['records'] for s in shards):
    raise UserError(f'{STAGE}: no sample of the {len(problems)} problems is correct, so there is '
                    f'no trajectory; train {config.model_name} longer or raise '
                    '--config.revision_data.num_samples')
  records.prepare(RevisionTrajectoriesBuilder, _tfds_dir(config, workdir),
                  manual_dir=os.path.dirname(_shard_path(config, workdir, 0)),
                  config=_BUILDER_CONFIG, stage=STAGE)
  tok = common.load_tokenizer(config, workdir, STAGE)
  trajs = load_trajectories(config, workdir, STAGE, check_done=False)
  info = trajectories.statistics(trajs, len(problems), tok.eos_id, config.revision.window)
  info['sample_accuracy'] = (sum(s['correct_samples'] for s in shards)
                             / max(1, sum(s['samples'] for s in shards)))
  info.update(num_samples=d.num_samples, temperature=d.temperature)
  wd.atomic_write_json(artifacts.revision_data(config, workdir).file('info.json'), info)
  logging.info('%s: %d trajectories from %d problems (%.2f incorrect attempts each, mean edit '
               'distance %s)', STAGE, info['trajectories'], len(problems),
               info['incorrect_attempts_per_trajectory']['mean'], info['mean_edit_distance'])


def load_trajectories(config: ml_collections.ConfigDict, workdir: str, stage: str,
                      check_done: bool = True) -> list[trajectories.Trajectory]:
  """Every trajectory of a finished revision_data, in shard order."""
  if check_done:
    manifest.require(artifacts.revision_data(config, workdir), stage)
  builder = records.open_builder(RevisionTrajectoriesBuilder, _tfds_dir(config, workdir),
                                 stage=STAGE, config=_BUILDER_CONFIG)
  if not builder.is_prepared():
    raise MissingInputError(f'stage {stage} needs the revision trajectories in '
                            f'{_tfds_dir(config, workdir)}, which are not built; run '
                            '--mode=revision_data')
  recs = records.load_split(RevisionTrajectoriesBuilder, 'train', _tfds_dir(config, workdir),
                            config=_BUILDER_CONFIG, stage=STAGE)
  return [trajectories.Trajectory.from_record(r) for r in recs]
