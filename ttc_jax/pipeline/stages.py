"""Every stage the launcher runs: what it makes (through `ttc_jax.artifacts`), and how it is run.

A config runs the stages of its kind: the arith task's pipeline, the real tasks' (GSM8K /
MATH500 with an imported model), or the sampling demo. `execute` is the one way a stage runs:
inputs checked, finished work skipped, stale work refused (or rebuilt), manifests written.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Callable

import ml_collections
from absl import logging

from ttc_jax import artifacts
from ttc_jax import manifest
from ttc_jax.errors import UserError
from ttc_jax.parallel import hosts
from ttc_jax.pipeline import (calibrate, data, difficulty, eval_revisions, eval_search,
                              eval_verifiers, import_model, policy, prm_data, real_eval, report,
                              revision_data, sample, sft, tokenizer, train_base, train_prm,
                              train_revision, train_revision_orm)
from ttc_jax.sampling import demo

Outputs = Callable[[ml_collections.ConfigDict, str], list[manifest.Artifact]]


@dataclasses.dataclass(frozen=True)
class Stage:
  name: str
  summary: str  # one line, for --help and --mode=status
  run: Callable[[ml_collections.ConfigDict, str], None]
  outputs: Outputs
  # In a job of several processes: 'all' run it together (sharing its work: training batches
  # over the global mesh, sample shards, search batches), 'first' on process 0 while the others
  # wait.
  hosts: str = 'first'


ARITH = (
    Stage('data', 'the arith task: train/validation/test splits (TFDS array_record)',
          data.run, data.outputs),
    Stage('tokenizer', 'a sentencepiece model trained on the training texts',
          tokenizer.run, tokenizer.outputs),
    Stage('train_base', 'train the proposer LM (config.model_name: base, large, ...)',
          train_base.run, train_base.outputs, hosts='all'),
    Stage('sample', 'N samples per problem of the sample split, graded, in shards',
          sample.run, sample.outputs, hosts='all'),
    Stage('calibrate', 'pass@k per oracle difficulty bin; per-problem pass@1 and bins',
          calibrate.run, calibrate.outputs),
    Stage('prm_data', 'Monte-Carlo rollout labels at every step end of sampled solutions',
          prm_data.run, prm_data.outputs),
    Stage('train_verifier_backbone', 'train the LM the PRM/ORM sit on (default base_long)',
          train_prm.run_backbone, train_prm.backbone_outputs, hosts='all'),
    Stage('train_prm', 'the PRM value head on the verifier backbone',
          train_prm.run_prm, train_prm.prm_outputs, hosts='all'),
    Stage('train_orm', 'the ORM value head on the verifier backbone',
          train_prm.run_orm, train_prm.orm_outputs, hosts='all'),
    Stage('eval_verifiers', 'accuracy vs N of majority, PRM/ORM best-of-N and weighted BoN',
          eval_verifiers.run, eval_verifiers.outputs),
    Stage('eval_search', 'PRM-guided search (best-of-N, beam, lookahead, DVTS) per budget and '
          'bin', eval_search.run, eval_search.outputs, hosts='all'),
    Stage('revision_data', 'revision trajectories (incorrect attempts, then a correct one) '
          'from samples of training problems', revision_data.run, revision_data.outputs),
    Stage('train_revision', 'SFT of the revision model from the proposer on the trajectories',
          train_revision.run, train_revision.outputs, hosts='all'),
    Stage('train_revision_orm', "an ORM on the revision model's own attempts",
          train_revision_orm.run, train_revision_orm.outputs, hosts='all'),
    Stage('eval_revisions', 'revision chains: pass@1 per step, sequential vs parallel, the '
          'ratio sweep per bin', eval_revisions.run, eval_revisions.outputs),
    Stage('difficulty', 'oracle, predicted and deployable difficulty bins per test problem, with '
          "the predictors' costs", difficulty.run, difficulty.outputs),
    Stage('policy', 'the compute-optimal strategy per bin and budget (cross-validated), FLOPs '
          'per strategy, the exchange against the larger model', policy.run, policy.outputs),
    Stage('report', 'REPORT.md: every figure, the paper\'s findings as measured, config, stage '
          'times, FLOPs', report.run, report.outputs),
)
REAL = (
    Stage('import_model', 'a real checkpoint (GGUF or HF safetensors) into models/',
          import_model.run, import_model.outputs),
    Stage('sft', 'fine-tune the imported model on GSM8K train (only when model_name differs '
          'from sft.base)', sft.run, sft.outputs),
    Stage('sample', 'a greedy and N sampled completions per problem, graded, in shards',
          real_eval.sample, real_eval.sample_outputs),
    Stage('calibrate', 'greedy accuracy, pass@k and majority@k, overall and per MATH level',
          real_eval.calibrate, real_eval.calibrate_outputs),
)
DEMO = (Stage('demo', 'sample from a randomly initialised (or checkpointed) model',
              demo.run, demo.outputs),)
KINDS = {'arith': ARITH, 'real': REAL, 'demo': DEMO}


def kind(config: ml_collections.ConfigDict) -> str:
  if 'task' not in config:
    return 'demo'
  return 'real' if artifacts.is_real(config) else 'arith'


def table(config: ml_collections.ConfigDict) -> dict[str, Stage]:
  """The stages this config runs, in pipeline order (`--mode=all` runs them all)."""
  return {s.name: s for s in KINDS[kind(config)]}


def select(config: ml_collections.ConfigDict, mode: str) -> list[Stage]:
  stages = table(config)
  if mode == 'all':
    return list(stages.values())
  if mode not in stages:
    raise UserError(f'--mode={mode} is not a stage of this config ({kind(config)} pipeline); '
                    f'expected all, status or one of {", ".join(stages)}')
  return [stages[mode]]


def execute(stage: Stage, config: ml_collections.ConfigDict, workdir: str,
            rebuild_stale: bool) -> None:
  """Runs `stage` unless its outputs are done. In a job of several processes every process
  calls this; each decides from the same workdir, and only process 0 writes (manifests too)."""
  hosts.barrier(f'{stage.name}:begin')  # every process sees what the last stage finished
  outputs = stage.outputs(config, workdir)
  todo = not outputs or manifest.begin(outputs, stage.name, rebuild_stale)
  hosts.barrier(f'{stage.name}:started')  # process 0 has deleted stale outputs, if asked
  if not todo:
    return
  logging.info('stage %s in %s', stage.name, workdir)
  t0 = time.perf_counter()
  if stage.hosts == 'all' or hosts.count() == 1:
    stage.run(config, workdir)
  else:
    with hosts.first_only():
      if hosts.is_writer():
        stage.run(config, workdir)
    hosts.barrier(f'{stage.name}:ran', timeout_s=hosts.WAIT_S)
  manifest.finish(outputs, time.perf_counter() - t0)
  logging.info('stage %s finished in %.1f s', stage.name, time.perf_counter() - t0)


def status_report(config: ml_collections.ConfigDict, workdir: str) -> str:
  """Per stage and output: done / partial / missing / stale / damaged, and what runs next."""
  lines, upcoming = [], None
  for stage in table(config).values():
    outputs = stage.outputs(config, workdir)
    if not outputs:
      lines.append(f'{stage.name:<24} {"-":<8} (makes nothing under this config)')
      continue
    for a in outputs:
      st = manifest.status(a)
      lines.append(f'{stage.name:<24} {st.state.value:<8} {a.name}'
                   + (f'  ({st.detail})' if st.detail else ''))
      if st.state is not manifest.State.DONE and upcoming is None:
        upcoming = (stage.name, st.state)
  if upcoming is None:
    lines.append('next: nothing; every stage is done')
  else:
    name, state = upcoming
    extra = (' with --rebuild_stale' if state in (manifest.State.STALE, manifest.State.DAMAGED)
             else '')
    lines.append(f'next: --mode={name}{extra} (--mode=all{extra} runs it and every later stage)')
  return '\n'.join(lines)
