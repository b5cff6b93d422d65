"""Stage `prm_data`: Monte-Carlo step labels for the PRM, as a TFDS array_record dataset.

For each problem, K solutions are sampled from the proposer (config.model_name) and those without
a parseable final answer dropped. Every step end of a kept solution gets a soft label: the fraction
of M rollouts from that prefix reaching the gold answer, continued from the solution's own cache
(`verifiers.rollouts`). A prefix that already holds a final answer (the last step, or anything
after an answer line) is labelled by grading it: no rollouts. Identical prefixes of one problem
share one set of M rollouts.

Labels splits: `train` (config.prm_data.train_problems problems of the task's train split) and
`validation` (config.prm_data.validation_problems of the task's validation split, held out for
calibration diagnostics). Layout under prm_data/<model>/ (`artifacts.prm_labels`):
  shards/<split>-00000.json ...   one per problems_per_shard problems, written atomically; a rerun
                                  skips those that exist, so a kill loses at most one shard
  tfds/prm_labels/...             the dataset, built from the shards once all exist
  stats.json                      counts and rollout throughput
Read it with `load_labels`.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time

import jax
import ml_collections
import tensorflow_datasets as tfds
from absl import logging

from ttc_jax import artifacts
from ttc_jax import manifest
from ttc_jax import workdir as wd
from ttc_jax.errors import MissingInputError, UserError
from ttc_jax.pipeline import common, train_base
from ttc_jax.sampling.sampler import Sampler, bucket_length
from ttc_jax.tasks import arith, records
from ttc_jax.tokenizer import Tokenizer
from ttc_jax.verifiers import rollouts
from ttc_jax.verifiers.steps import step_ends

SPLITS = {'train': 'train', 'validation': 'validation'}  # labels split -> task split


@dataclasses.dataclass(frozen=True)
class StepLabels:
  """One sampled solution and a soft label at each of its step ends."""
  problem_id: str
  num_ops: int
  answer: int
  sample_index: int
  prompt_ids: list[int]  # BOS + prompt, as sampled
  completion_ids: list[int]  # the sampled ids (EOS included when sampled)
  completion: str
  step_ends: list[int]  # `steps.step_ends(completion_ids, ...)`: indices into completion_ids
  labels: list[float]  # one per step end, in [0, 1]
  correct: bool

  def to_record(self) -> dict[str, str | int]:
    d = dataclasses.asdict(self)
    for f in ('prompt_ids', 'completion_ids', 'step_ends', 'labels'):
      d[f] = json.dumps(d[f])
    d['correct'] = int(self.correct)
    return d

  @classmethod
  def from_record(cls, r) -> StepLabels:
    return cls(problem_id=str(r['problem_id']), num_ops=int(r['num_ops']),
               answer=int(r['answer']), sample_index=int(r['sample_index']),
               prompt_ids=json.loads(r['prompt_ids']),
               completion_ids=json.loads(r['completion_ids']), completion=str(r['completion']),
               step_ends=json.loads(r['step_ends']), labels=json.loads(r['labels']),
               correct=bool(r['correct']))


class PrmLabelsConfig(tfds.core.BuilderConfig):
  pass


class PrmLabelsBuilder(records.JsonRecordsBuilder):
  """The `prm_data` labels, one record per solution (`StepLabels`), from the shards in manual_dir."""
  name = 'prm_labels'
  VERSION = tfds.core.Version('1.0.0')
  TEXT_FIELDS = ('problem_id', 'completion', 'prompt_ids', 'completion_ids', 'step_ends', 'labels')
  INT_FIELDS = ('num_ops', 'answer', 'sample_index', 'correct')
  MANUAL_DOWNLOAD_INSTRUCTIONS = 'Written by the prm_data stage; run --mode=prm_data.'

  def _split_records(self, dl_manager):
    shards = sorted(os.listdir(dl_manager.manual_dir))
    out = {}
    for split in SPLITS:
      files = [f for f in shards if f.startswith(f'{split}-') and f.endswith('.json')]
      recs = [r for f in files for r in wd.read_json(os.path.join(dl_manager.manual_dir, f),
                                                     stage='prm_data')['records']]
      if recs:  # TFDS cannot write an empty split; `load_labels` reads a missing one as empty.
        out[split] = recs
    return out


def labels_dir(config: ml_collections.ConfigDict, workdir: str) -> str:
  return artifacts.prm_labels(config, workdir).path


def _tfds_dir(config, workdir) -> str:
  return os.path.join(labels_dir(config, workdir), 'tfds')


# One labels dataset per artifact directory: the manifest beside it holds the config it was made
# under, so the TFDS config name needs no digest.
_BUILDER_CONFIG = PrmLabelsConfig(name='labels')


def _builder(config, workdir) -> PrmLabelsBuilder:
  return records.open_builder(PrmLabelsBuilder, _tfds_dir(config, workdir), stage='prm_data',
                              config=_BUILDER_CONFIG)


def _problems(config, workdir, split: str) -> list[arith.Problem]:
  d = config.prm_data
  n = d.train_problems if split == 'train' else d.validation_problems
  problems = common.load_problems(config, workdir, SPLITS[split], 'prm_data')
  if n > len(problems):
    raise UserError(f'prm_data.{split}_problems={n} exceeds the {len(problems)} problems of '
                     f'the task split {SPLITS[split]!r}')
  # Similar lengths in one shard: sampling and rollouts decode until their longest row ends.
  return sorted(problems[:n], key=lambda p: (p.num_ops, p.id))


def exact_label(tok: Tokenizer, prefix_ids: list[int], gold: int, last: bool) -> float | None:
  """The label of a prefix whose outcome is already decided: the whole solution (`last`), or a
  prefix holding an answer line (grading reads the first one, so no continuation can change it:
  a wrong answer already written is 0). None when the label needs rollouts."""
  head = tok.decode(prefix_ids)
  if last or arith.extract_answer(head) is not None:
    return float(arith.grade(head, gold))
  return None


def label_shard(config, tok: Tokenizer, sampler: Sampler, params, problems: list[arith.Problem],
                key: jax.Array) -> tuple[list[StepLabels], dict]:
  """Samples K solutions per problem and labels every step end of those with an answer."""
  d = config.prm_data
  k = d.num_samples
  prompts = [common.encode_example(tok, p)[0] for p in problems]
  bucket = bucket_length(max(map(len, prompts)), sampler.buckets)
  t0 = time.perf_counter()
  sample_key, rollout_key = jax.random.split(key)
  # Room for the solution, then a 1-token continuation and a rollout of the same budget.
  out = sampler.sample(params, prompts, key=sample_key, max_new_tokens=d.max_new_tokens,
                       num_samples=k, temperature=d.temperature,
                       cache_size=bucket + 2 * d.max_new_tokens + 1)
  completions = out.sequences()
  sample_seconds = time.perf_counter() - t0
  delimiter = tok.id_of(arith.STEP_DELIMITER)
  problem_of = lambda row: problems[row // k]
  grade = lambda row, ids: arith.grade(tok.decode(ids), problem_of(row).answer)

  solutions, labels, pending = [], {}, {}  # pending: (problem, prefix ids) -> Prefix
  for row, ids in enumerate(completions):
    text = tok.decode(ids)
    if arith.extract_answer(text) is None:
      continue
    ends = step_ends(ids, delimiter, tok.eos_id)
    solutions.append((row, text, ends))
    for i, e in enumerate(ends):
      label = exact_label(tok, ids[:e + 1], problem_of(row).answer, last=i == len(ends) - 1)
      if label is not None:
        labels[row, e] = label
      else:
        pending.setdefault((row // k, tuple(ids[:e + 1])), rollouts.Prefix(row, e))
  prefixes = list(pending.values())
  fractions, stats = rollouts.rollout_labels(
      sampler, params, out.cache, [len(prompts[row // k]) for row in range(len(completions))],
      completions, prefixes, grade, key=rollout_key, num_rollouts=d.num_rollouts,
      max_new_tokens=d.max_new_tokens, temperature=d.temperature,
      prefixes_per_call=d.prefixes_per_call)
  shared = dict(zip(pending, fractions))
  result = []
  for row, text, ends in solutions:
    ids, p = completions[row], problem_of(row)
    result.append(StepLabels(
        problem_id=p.id, num_ops=p.num_ops, answer=p.answer, sample_index=row % k,
        prompt_ids=prompts[row // k], completion_ids=ids, completion=text, step_ends=ends,
        labels=[labels[row, e] if (row, e) in labels else shared[row // k, tuple(ids[:e + 1])]
                for e in ends],
        correct=arith.grade(text, p.answer)))
  info = dict(problems=len(problems), samples=len(completions), kept=len(solutions),
              sample_tokens=sum(map(len, completions)), sample_seconds=sample_seconds,
              unique_prefixes=len(prefixes), rollouts=stats.rollouts,
              rollout_tokens=stats.tokens, rollout_seconds=stats.seconds,
              rollout_calls=stats.calls, warm_rollout_tokens=stats.warm_tokens,
              warm_rollout_seconds=stats.warm_seconds)
  return result, info


def shard_path(config, workdir, split: str, index: int) -> str:
  return os.path.join(labels_dir(config, workdir), 'shards', f'{split}-{index:05d}.json')


def outputs(config: ml_collections.ConfigDict, workdir: str) -> list[manifest.Artifact]:
  return [artifacts.prm_labels(config, workdir)]


def run(config: ml_collections.ConfigDict, workdir: str) -> None:
  d = config.prm_data
  model, params = train_base.load_model(config, workdir, config.model_name, 'prm_data')
  tok = common.load_tokenizer(config, workdir, 'prm_data')
  sampler = Sampler(model, eos_id=tok.eos_id, buckets=rollouts.CONTINUATION_BUCKETS)
  t_start = time.perf_counter()
  for split_index, split in enumerate(SPLITS):
    problems = _problems(config, workdir, split)
    per = d.problems_per_shard
    total = -(-len(problems) // per)
    for shard in range(total):
      path = shard_path(config, workdir, split, shard)
      if os.path.exists(path):
        continue
      key = jax.random.fold_in(jax.random.fold_in(jax.random.key(config.seed), split_index), shard)
      batch = problems[shard * per:(shard + 1) * per]
      recs, info = label_shard(config, tok, sampler, params, batch, key)
      wd.atomic_write_json(path, {'stats': info, 'records': [r.to_record() for r in recs]})
      logging.info(
          'prm_data: %s shard %d/%d (num_ops %d-%d): kept %d/%d, %d prefixes, %d rollouts, '
          'rollouts %.0f tokens/s (%.0f without compiling), %.0fs elapsed', split, shard + 1,
          total, batch[0].num_ops, batch[-1].num_ops, info['kept'], info['samples'],
          info['unique_prefixes'], info['rollouts'],
          info['rollout_tokens'] / max(info['rollout_seconds'], 1e-9),
          info['warm_rollout_tokens'] / max(info['warm_rollout_seconds'], 1e-9),
          time.perf_counter() - t_start)
  stats = _summary(config, workdir)
  records.prepare(PrmLabelsBuilder, _tfds_dir(config, workdir),
                  manual_dir=os.path.dirname(shard_path(config, workdir, 'train', 0)),
                  config=_BUILDER_CONFIG, stage='prm_data')
  wd.atomic_write_json(os.path.join(labels_dir(config, workdir), 'stats.json'), stats)
  for split, total in stats.items():
    if total:
      logging.info('prm_data: %s: kept %d of %d solutions, %d rollouts at %.0f tokens/s (all in '
                   '%s)', split, total['kept'], total['samples'], total['rollouts'],
                   total['rollout_tokens_per_s'], os.path.join(labels_dir(config, workdir),
                                                               'stats.json'))


def _summary(config, workdir) -> dict:
  out = {}
  for split in SPLITS:
    directory = os.path.dirname(shard_path(config, workdir, split, 0))
    infos = [wd.read_json(os.path.join(directory, f), stage='prm_data')['stats']
             for f in sorted(os.listdir(directory))
             if f.startswith(f'{split}-')]
    total = {k: sum(i[k] for i in infos) for k in infos[0]} if infos else {}
    for what in ('rollout', 'warm_rollout', 'sample') if total else ():
      total[f'{what}_tokens_per_s'] = total[f'{what}_tokens'] / max(total[f'{what}_seconds'], 1e-9)
    out[split] = total
  return out


def load_labels(config: ml_collections.ConfigDict, workdir: str, split: str,
                stage: str) -> list[StepLabels]:
  """The labelled solutions of a labels split ('train' or 'validation') of a finished prm_data."""
  if split not in SPLITS:
    raise UserError(f'unknown prm_data split {split!r}; expected one of {tuple(SPLITS)}')
  manifest.require(artifacts.prm_labels(config, workdir), stage)
  builder = _builder(config, workdir)
  if not builder.is_prepared():
    raise MissingInputError(f'stage {stage} needs the prm_data labels in '
                            f'{_tfds_dir(config, workdir)}, which are not built; delete '
                            f'{labels_dir(config, workdir)} and run --mode=prm_data')
  if split not in builder.info.splits:
    return []
  recs = records.load_split(PrmLabelsBuilder, split, _tfds_dir(config, workdir),
                            config=_BUILDER_CONFIG, stage='prm_data')
  return [StepLabels.from_record(r) for r in recs]
