"""MATH500 (Lightman et al. 2023's MATH test subset): records, few-shot prompts, extraction, grading.

Format: one step per line (STEP_DELIMITER "\\n", the PRM800K convention); the last step states the
answer in `\\boxed{}`, and a blank line (END_OF_SOLUTION "\\n\\n") ends the solution.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import pathlib
import random

from ttc_jax.tasks import grading
from ttc_jax.tasks.gsm8k import read_jsonl

NAME = "math500"
SPLITS = ("test",)
STEP_DELIMITER = "\n"
END_OF_SOLUTION = "\n\n"
_REPO_ROOT = pathlib.Path(__file__).resolve().parents[2]
DEFAULT_DATA_DIR = _REPO_ROOT.parent / "shared" / "data" / "math"
FEWSHOT_FILE = _REPO_ROOT / "configs" / "prompts" / "math_fewshot.json"
_FIELDS = ("problem", "solution", "answer", "subject", "level", "unique_id")
_NEXT_PROBLEM = "\n\nProblem:"


@dataclasses.dataclass(frozen=True, kw_only=True)
class Record:
    question: str  # the dataset's `problem`
    solution: str  # human-written worked solution (free-form paragraphs, answer in \boxed{})
    answer: str  # gold final answer in LaTeX, e.g. "\frac{14}{3}"
    level: int  # difficulty 1-5
    subject: str
    unique_id: str  # e.g. "test/algebra/2584.json"


@dataclasses.dataclass(frozen=True, kw_only=True)
class Exemplar:
    question: str
    steps: tuple[str, ...]
    answer: str


def load(split: str = "test", data_dir: str | pathlib.Path | None = None) -> list[Record]:
    """The records of `split` from `<data_dir>/<split>.jsonl` (default ../shared/data/math)."""
    if split not in SPLITS:
        raise ValueError(f"unknown MATH500 split {split!r}; expected one of {SPLITS}")
    path = pathlib.Path(data_dir or DEFAULT_DATA_DIR) / f"{split}.jsonl"
    expected = "the MATH500 JSONL from ../shared/data or --config.data_dir"
    records = []
    for number, row in read_jsonl(path, _FIELDS, expected):
        try:
            level = int(row["level"])
        except (TypeError, ValueError):
            raise ValueError(f"{path}:{number}: field 'level' is {row['level']!r}, not 1-5") from None
        records.append(
            Record(
                question=row["problem"],
                solution=row["solution"],
                answer=row["answer"],
                level=level,
                subject=row["subject"],
                unique_id=row["unique_id"],
            )
        )
    return records


@functools.lru_cache(maxsize=4)
def load_exemplars(path: pathlib.Path = FEWSHOT_FILE) -> tuple[Exemplar, ...]:
    """The worked few-shot problems of `path` (configs/prompts/math_fewshot.json)."""
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found; expected the MATH few-shot exemplars JSON")
    rows = json.loads(path.read_text(encoding="utf-8"))["exemplars"]
    return tuple(
        Exemplar(question=r["problem"], steps=tuple(r["steps"]), answer=r["answer"]) for r in rows
    )


def format_question(question: str) -> str:
    return f"Problem: {question.strip()}\nSolution:\n"


def build_prompt(question: str, num_shots: int = 4, seed: int = 0) -> str:
    """`num_shots` exemplars (chosen and ordered by `seed`) followed by `question`."""
    exemplars = load_exemplars()
    if not 0 <= num_shots <= len(exemplars):
        raise ValueError(f"num_shots={num_shots}; {FEWSHOT_FILE} has {len(exemplars)} exemplars")
    shots = [
        format_question(e.question) + STEP_DELIMITER.join(e.steps) + END_OF_SOLUTION
        for e in random.Random(seed).sample(exemplars, num_shots)
    ]
    return "".join(shots) + format_question(question)


def extract(completion: str) -> str | None:
    """The final answer of a completion (text after "Solution:\\n"); ignores any further problems."""
    return grading.extract_answer(completion.split(_NEXT_PROBLEM, 1)[0], "math")


def grade(completion: str, gold: str) -> bool:
    return grading.grade(extract(completion), gold)
