"""MATH500 (Lightman et al. 2023's MATH test subset): TFDS records, few-shot prompts, grading.

Format: one step per line (STEP_DELIMITER '\\n', the PRM800K convention); the last step states the
answer in `\\boxed{}`, and a blank line (END_OF_SOLUTION '\\n\\n') ends the solution.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import pathlib
import random
from typing import Iterator

import tensorflow_datasets as tfds

from ttc_jax.errors import BadInputError, MissingInputError
from ttc_jax.tasks import grading, records
from ttc_jax.tasks.gsm8k import read_jsonl
from ttc_jax.tasks.records import build_dir  # noqa: F401  (public: tests key dirs by it)

NAME = 'math500'
SPLITS = ('test',)
STEP_DELIMITER = '\n'
END_OF_SOLUTION = '\n\n'
_REPO_ROOT = pathlib.Path(__file__).resolve().parents[2]
DEFAULT_DATA_DIR = _REPO_ROOT.parent / 'shared' / 'data' / 'math'
FEWSHOT_FILE = _REPO_ROOT / 'configs' / 'prompts' / 'math_fewshot.json'
_EXPECTED = 'the MATH500 JSONL from ../shared/data or --config.data_dir'
_FIELDS = ('problem', 'solution', 'answer', 'subject', 'level', 'unique_id')
_NEXT_PROBLEM = '\n\nProblem:'


@dataclasses.dataclass(frozen=True, kw_only=True)
class Record:
  question: str  # The dataset's `problem`.
  solution: str  # Human-written worked solution (free-form paragraphs, answer in \boxed{}).
  answer: str  # Gold final answer in LaTeX, e.g. '\frac{14}{3}'.
  level: int  # Difficulty 1-5.
  subject: str
  unique_id: str  # E.g. 'test/algebra/2584.json'.


@dataclasses.dataclass(frozen=True, kw_only=True)
class Exemplar:
  question: str
  steps: tuple[str, ...]
  answer: str


def read_records(path: pathlib.Path) -> Iterator[Record]:
  """The records of one MATH JSONL file (PRM800K's math_splits format)."""
  for number, row in read_jsonl(path, _FIELDS, _EXPECTED):
    if not isinstance(row['level'], int) or not 1 <= row['level'] <= 5:
      raise BadInputError(f"{path}:{number}: field 'level' is {row['level']!r}; expected 1-5")
    yield Record(question=row['problem'], solution=row['solution'], answer=row['answer'],
                 level=row['level'], subject=row['subject'], unique_id=row['unique_id'])


class Math500Builder(records.JsonRecordsBuilder):
  """MATH500 from local JSONL (PRM800K math_splits/test.jsonl) in manual_dir."""
  name = 'ttc_math500'  # Prefixed like ttc_gsm8k, clear of TFDS's own math datasets.
  VERSION = tfds.core.Version('1.0.0')
  TEXT_FIELDS = ('question', 'solution', 'answer', 'subject', 'unique_id')
  INT_FIELDS = ('level',)
  MANUAL_FILES = tuple(f'{split}.jsonl' for split in SPLITS)
  MANUAL_DOWNLOAD_INSTRUCTIONS = 'Put MATH500 test.jsonl (openai/prm800k math_splits).'

  def _split_records(self, dl_manager: tfds.download.DownloadManager):
    manual_dir = pathlib.Path(dl_manager.manual_dir)
    return {split: (dataclasses.asdict(r) for r in read_records(manual_dir / f'{split}.jsonl'))
            for split in SPLITS}


def load(split: str = 'test', data_dir: str | os.PathLike | None = None,
         tfds_dir: str | os.PathLike | None = None) -> list[Record]:
  """The records of `split`, from `<data_dir>/<split>.jsonl` (default ../shared/data/math).

  The JSONL is built once into a TFDS array_record dataset under `tfds_dir` (default: a temp dir
  keyed by the input files) and read back from there.
  """
  rows = records.load_local(Math500Builder, split, SPLITS, data_dir or DEFAULT_DATA_DIR,
                            tfds_dir, _EXPECTED)
  return [Record(**row) for row in rows]


@functools.lru_cache(maxsize=4)
def load_exemplars(path: pathlib.Path = FEWSHOT_FILE) -> tuple[Exemplar, ...]:
  """The worked few-shot problems of `path` (configs/prompts/math_fewshot.json)."""
  if not path.is_file():
    raise MissingInputError(f'{path} not found; expected the MATH few-shot exemplars JSON')
  rows = json.loads(path.read_text(encoding='utf-8'))['exemplars']
  return tuple(Exemplar(question=r['problem'], steps=tuple(r['steps']), answer=r['answer'])
               for r in rows)


def format_question(question: str) -> str:
  return f'Problem: {question.strip()}\nSolution:\n'


def build_prompt(question: str, num_shots: int = 4, seed: int = 0) -> str:
  """`num_shots` exemplars (chosen and ordered by `seed`) followed by `question`."""
  exemplars = load_exemplars()
  if not 0 <= num_shots <= len(exemplars):
    raise BadInputError(f'num_shots={num_shots}; {FEWSHOT_FILE} has {len(exemplars)} exemplars')
  shots = [format_question(e.question) + STEP_DELIMITER.join(e.steps) + END_OF_SOLUTION
           for e in random.Random(seed).sample(exemplars, num_shots)]
  return ''.join(shots) + format_question(question)


def extract(completion: str) -> str | None:
  """The final answer of a completion (the text after 'Solution:\\n'); later problems ignored."""
  return grading.extract_answer(completion.split(_NEXT_PROBLEM, 1)[0], 'math')


def grade(completion: str, gold: str) -> bool:
  return grading.grade(extract(completion), gold)
