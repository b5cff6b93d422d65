"""GSM8K (Cobbe et al. 2021): records, few-shot prompts from the train split, extraction, grading.

Format: one step per line (STEP_DELIMITER "\\n"); a solution ends with "The answer is X." and a blank
line (END_OF_SOLUTION "\\n\\n") separates it from the next question.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import pathlib
import random
import re
from collections.abc import Sequence

from ttc_jax.tasks import grading

NAME = "gsm8k"
SPLITS = ("train", "test")
STEP_DELIMITER = "\n"
END_OF_SOLUTION = "\n\n"
DEFAULT_NUM_SHOTS = 8
DEFAULT_DATA_DIR = pathlib.Path(__file__).resolve().parents[2].parent / "shared" / "data" / NAME
_CALCULATOR = re.compile(r"<<.*?>>")
_NEXT_QUESTION = "\n\nQuestion:"


@dataclasses.dataclass(frozen=True, kw_only=True)
class Record:
    question: str
    solution: str  # steps one per line, calculator annotations removed, ending "The answer is X."
    answer: str  # gold final answer as written after "####", e.g. "1,080"


def read_jsonl(
    path: pathlib.Path, fields: Sequence[str], expected: str
) -> list[tuple[int, dict]]:
    """(line number, JSON object) pairs from `path`, each object checked to have `fields`."""
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found; expected {expected}")
    rows = []
    with path.open(encoding="utf-8") as f:
        for number, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}:{number}: not valid JSON ({e.msg})") from None
            if not isinstance(row, dict):
                raise ValueError(f"{path}:{number}: expected a JSON object, got {type(row).__name__}")
            for field in fields:
                if field not in row:
                    raise ValueError(f"{path}:{number}: record has no field {field!r}")
            rows.append((number, row))
    return rows


def format_solution(raw: str) -> tuple[str, str]:
    """(solution in the prompt format, gold answer) from a GSM8K `answer` field."""
    body, sep, final = raw.rpartition("####")
    if not sep:
        raise ValueError("no '####' final-answer line")
    answer = final.strip()
    # A few train solutions contain blank lines; they would read as END_OF_SOLUTION.
    steps = [s.strip() for s in _CALCULATOR.sub("", body).split("\n") if s.strip()]
    return STEP_DELIMITER.join([*steps, f"The answer is {answer}."]), answer


def load(split: str = "test", data_dir: str | pathlib.Path | None = None) -> list[Record]:
    """The records of `split` from `<data_dir>/<split>.jsonl` (default ../shared/data/gsm8k)."""
    if split not in SPLITS:
        raise ValueError(f"unknown GSM8K split {split!r}; expected one of {SPLITS}")
    path = pathlib.Path(data_dir or DEFAULT_DATA_DIR) / f"{split}.jsonl"
    expected = "the GSM8K JSONL from ../shared/data or --config.data_dir"
    records = []
    for number, row in read_jsonl(path, ("question", "answer"), expected):
        try:
            solution, answer = format_solution(row["answer"])
        except ValueError as e:
            raise ValueError(f"{path}:{number}: field 'answer' has {e}") from None
        records.append(Record(question=row["question"].strip(), solution=solution, answer=answer))
    return records


@functools.lru_cache(maxsize=4)
def _train(data_dir: pathlib.Path) -> tuple[Record, ...]:
    return tuple(load("train", data_dir))


def format_question(question: str) -> str:
    return f"Question: {question.strip()}\nAnswer:\n"


def build_prompt(
    question: str,
    num_shots: int = DEFAULT_NUM_SHOTS,
    seed: int = 0,
    data_dir: str | pathlib.Path | None = None,
) -> str:
    """`num_shots` train exemplars drawn by `seed` (never `question` itself), then `question`."""
    train = _train(pathlib.Path(data_dir or DEFAULT_DATA_DIR))
    pool = [r for r in random.Random(seed).sample(train, num_shots + 1) if r.question != question]
    shots = [format_question(r.question) + r.solution + END_OF_SOLUTION for r in pool[:num_shots]]
    return "".join(shots) + format_question(question)


def extract(completion: str) -> str | None:
    """The final answer of a completion (text after "Answer:\\n"); ignores any further questions."""
    return grading.extract_answer(completion.split(_NEXT_QUESTION, 1)[0], "gsm8k")


def grade(completion: str, gold: str) -> bool:
    return grading.grade(extract(completion), gold)
