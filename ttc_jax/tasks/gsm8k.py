"""GSM8K (Cobbe et al. 2021): TFDS records from local JSONL, few-shot prompts, extraction, grading.

Format: one step per line (STEP_DELIMITER '\\n'); a solution ends with "The answer is X." and a blank
line (END_OF_SOLUTION '\\n\\n') separates it from the next question.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import pathlib
import random
import re
from typing import Iterator, Sequence

import tensorflow_datasets as tfds

from ttc_jax.errors import BadInputError, MissingInputError
from ttc_jax.tasks import grading, records

NAME = 'gsm8k'
SPLITS = ('train', 'test')
STEP_DELIMITER = '\n'
END_OF_SOLUTION = '\n\n'
DEFAULT_NUM_SHOTS = 8
DEFAULT_DATA_DIR = pathlib.Path(__file__).resolve().parents[2].parent / 'shared' / 'data' / NAME
_EXPECTED = 'the GSM8K JSONL from ../shared/data or --config.data_dir'
_CALCULATOR = re.compile(r'<<.*?>>')
_NEXT_QUESTION = '\n\nQuestion:'


@dataclasses.dataclass(frozen=True, kw_only=True)
class Record:
  question: str
  solution: str  # Steps one per line, calculator annotations removed, ending "The answer is X.".
  answer: str  # Gold final answer as written after '####', e.g. '1,080'.


def read_jsonl(path: pathlib.Path, fields: Sequence[str], expected: str,
               ) -> Iterator[tuple[int, dict]]:
  """(line number, JSON object) of each non-empty line, checked to have `fields`.

  Unlike `records.read_jsonl`, a record missing a field fails here, naming its line.
  """
  if not path.is_file():
    raise MissingInputError(f'{path} not found; expected {expected}')
  with path.open(encoding='utf-8') as f:
    for number, line in enumerate(f, start=1):
      if not line.strip():
        continue
      try:
        row = json.loads(line)
      except json.JSONDecodeError as e:
        raise BadInputError(f'{path}:{number}: not valid JSON ({e.msg})') from None
      if not isinstance(row, dict):
        raise BadInputError(f'{path}:{number}: expected a JSON object, got {type(row).__name__}')
      for field in fields:
        if field not in row:
          raise BadInputError(f'{path}:{number}: record has no field {field!r}')
      yield number, row


def format_solution(raw: str) -> tuple[str, str]:
  """(solution in the prompt format, gold answer) from a GSM8K `answer` field."""
  body, sep, final = raw.rpartition('####')
  if not sep:
    raise BadInputError("no '####' final-answer line")
  answer = final.strip()
  # A few train solutions contain blank lines, which would read as END_OF_SOLUTION.
  steps = [s.strip() for s in _CALCULATOR.sub('', body).split('\n') if s.strip()]
  return STEP_DELIMITER.join([*steps, f'The answer is {answer}.']), answer


def read_records(path: pathlib.Path) -> Iterator[Record]:
  """The records of one GSM8K JSONL file."""
  for number, row in read_jsonl(path, ('question', 'answer'), _EXPECTED):
    try:
      solution, answer = format_solution(row['answer'])
    except ValueError as e:
      raise BadInputError(f"{path}:{number}: field 'answer' has {e}") from None
    yield Record(question=row['question'].strip(), solution=solution, answer=answer)


class Gsm8kBuilder(records.JsonRecordsBuilder):
  """GSM8K from local JSONL in manual_dir; solutions in this module's prompt format."""
  name = 'ttc_gsm8k'  # TFDS ships its own 'gsm8k'; a second registration of a name fails.
  VERSION = tfds.core.Version('1.0.0')
  TEXT_FIELDS = ('question', 'solution', 'answer')
  MANUAL_FILES = tuple(f'{split}.jsonl' for split in SPLITS)
  MANUAL_DOWNLOAD_INSTRUCTIONS = 'Put GSM8K train.jsonl and test.jsonl (openai/grade-school-math).'

  def _split_records(self, dl_manager: tfds.download.DownloadManager):
    manual_dir = pathlib.Path(dl_manager.manual_dir)
    return {split: (dataclasses.asdict(r) for r in read_records(manual_dir / f'{split}.jsonl'))
            for split in SPLITS}


def load(split: str = 'test', data_dir: str | os.PathLike | None = None,
         tfds_dir: str | os.PathLike | None = None) -> list[Record]:
  """The records of `split`, from `<data_dir>/<split>.jsonl` (default ../shared/data/gsm8k).

  The JSONL is built once into a TFDS array_record dataset under `tfds_dir` (default: a temp dir
  keyed by the input files) and read back from there.
  """
  rows = records.load_local(Gsm8kBuilder, split, SPLITS, data_dir or DEFAULT_DATA_DIR,
                            tfds_dir, _EXPECTED)
  return [Record(**row) for row in rows]


@functools.lru_cache(maxsize=4)
def _train(data_dir: pathlib.Path) -> tuple[Record, ...]:
  return tuple(load('train', data_dir))


def format_question(question: str) -> str:
  return f'Question: {question.strip()}\nAnswer:\n'


def build_prompt(question: str, num_shots: int = DEFAULT_NUM_SHOTS, seed: int = 0,
                 data_dir: str | os.PathLike | None = None) -> str:
  """`num_shots` train exemplars drawn by `seed` (never `question` itself), then `question`."""
  train = _train(pathlib.Path(data_dir or DEFAULT_DATA_DIR))
  pool = [r for r in random.Random(seed).sample(train, num_shots + 1) if r.question != question]
  shots = [format_question(r.question) + r.solution + END_OF_SOLUTION for r in pool[:num_shots]]
  return ''.join(shots) + format_question(question)


def extract(completion: str) -> str | None:
  """The final answer of a completion (the text after 'Answer:\\n'); later questions are ignored."""
  return grading.extract_answer(completion.split(_NEXT_QUESTION, 1)[0], 'gsm8k')


def grade(completion: str, gold: str) -> bool:
  return grading.grade(extract(completion), gold)
