"""What the stages need of a real task (`gsm8k`, `math500`): problems, few-shot prompts, grading.

A config's `task` names the task (`name`), where its JSONL lives (`data_dir`, '' for
../shared/data) and the number of few-shot exemplars (`num_shots`).
"""

from __future__ import annotations

import dataclasses

import ml_collections

from ttc_jax import artifacts
from ttc_jax.errors import ConfigError
from ttc_jax.tasks import grading, gsm8k, math500

TASKS = artifacts.REAL_TASKS


@dataclasses.dataclass(frozen=True, kw_only=True)
class Problem:
  id: str
  question: str
  answer: str
  level: int  # MATH difficulty 1-5; 0 for GSM8K.
  subject: str


def _check(config: ml_collections.ConfigDict) -> None:
  if config.task.name not in TASKS:
    raise ConfigError(f'unknown real task {config.task.name!r}; expected one of {TASKS}')


def load_problems(config: ml_collections.ConfigDict, workdir: str, split: str) -> list[Problem]:
  """The split's problems; the JSONL is built once into a TFDS dataset under workdir/data."""
  _check(config)
  t = config.task
  tfds_dir = artifacts.real_data_dir(workdir, t.name)
  if t.name == 'gsm8k':
    recs = gsm8k.load(split, t.data_dir or None, tfds_dir)
    return [Problem(id=f'gsm8k/{split}/{i}', question=r.question, answer=r.answer, level=0,
                    subject='') for i, r in enumerate(recs)]
  recs = math500.load(split, t.data_dir or None, tfds_dir)
  return [Problem(id=r.unique_id, question=r.question, answer=r.answer, level=r.level,
                  subject=r.subject) for r in recs]


def prompt(config: ml_collections.ConfigDict, problem: Problem) -> str:
  t = config.task
  if t.name == 'gsm8k':
    return gsm8k.build_prompt(problem.question, t.num_shots, config.seed, t.data_dir or None)
  return math500.build_prompt(problem.question, t.num_shots, config.seed)


def extract(config: ml_collections.ConfigDict, completion: str) -> str | None:
  return (gsm8k if config.task.name == 'gsm8k' else math500).extract(completion)


def grade(pred: str | None, gold: str) -> bool:
  return grading.grade(pred, gold)


def end_of_solution(config: ml_collections.ConfigDict) -> str:
  return (gsm8k if config.task.name == 'gsm8k' else math500).END_OF_SOLUTION
