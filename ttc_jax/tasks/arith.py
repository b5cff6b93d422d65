"""The synthetic reasoning task: integer expressions reduced one operation per step, left to right.

Expressions are evaluated strictly LEFT TO RIGHT, without precedence: `3+4*2-5` is `((3+4)*2)-5`.
Each step rewrites the remaining expression with its leftmost operation evaluated; the last step is
the answer line. So a `num_ops=k` problem has exactly k steps, and an error is usually local: one
wrong result (or a miscopied tail) in one step. Full example (prompt, then completion):

  Q: 3+4*2-5
  7*2-5
  14-5
  #### 9
"""

from __future__ import annotations

import dataclasses
import hashlib
import random
import re
from typing import Iterator, Literal, Mapping, Sequence

import numpy as np
import tensorflow_datasets as tfds

from ttc_jax.tasks import records

STEP_DELIMITER = '\n'
ANSWER_PREFIX = '####'
QUESTION_PREFIX = 'Q: '
OPERATORS = ('+', '-', '*')
# Pieces a tokenizer for this task should keep whole (the delimiter doubles as the stop token).
SPECIAL_SYMBOLS = (STEP_DELIMITER, ANSWER_PREFIX)

DEFAULT_NUM_OPS_RANGE = (1, 8)
MAX_OPERAND = 20  # Operands are drawn from 0..MAX_OPERAND.
MAX_VALUE = 99  # Every intermediate value stays within [-MAX_VALUE, MAX_VALUE].

ErrorKind = Literal['arithmetic', 'copy', 'structure']

_EXPRESSION = re.compile(r'(-?\d+)((?:[-+*]\d+)*)')
_OPERATION = re.compile(r'([-+*])(\d+)')
_ANSWER = re.compile(re.escape(ANSWER_PREFIX) + r'\s*(-?\d+)\s*')
_INTEGER = re.compile(r'\s*(-?\d+)\s*')


@dataclasses.dataclass(frozen=True)
class Problem:
  id: str
  question: str  # The bare expression, e.g. '3+4*2-5'.
  steps: tuple[str, ...]  # num_ops steps; the last one is the answer line.
  answer: int
  num_ops: int

  def to_record(self) -> dict[str, str | int]:
    return dict(id=self.id, question=self.question, solution=format_solution(self.steps),
                answer=self.answer, num_ops=self.num_ops)

  @classmethod
  def from_record(cls, record: Mapping[str, str | int]) -> Problem:
    return cls(id=str(record['id']), question=str(record['question']),
               steps=tuple(split_steps(str(record['solution']))), answer=int(record['answer']),
               num_ops=int(record['num_ops']))


@dataclasses.dataclass(frozen=True)
class StepCheck:
  """The first wrong step of a completion (index into `split_steps`), or index=None if all right."""
  index: int | None
  kind: ErrorKind | None
  expected: str | None = None
  got: str | None = None  # None when the completion stopped before this step.


# An expression is its head value plus the (operator, operand) pairs still to apply.
_Expr = tuple[int, tuple[tuple[str, int], ...]]


def _apply(a: int, op: str, b: int) -> int:
  return a + b if op == '+' else a - b if op == '-' else a * b


def _parse(text: str) -> _Expr | None:
  match = _EXPRESSION.fullmatch(text)
  if match is None:
    return None
  ops = tuple((op, int(b)) for op, b in _OPERATION.findall(match.group(2)))
  return int(match.group(1)), ops


def _render(expr: _Expr) -> str:
  head, ops = expr
  return answer_line(head) if not ops else str(head) + _tail(ops)


def _tail(ops: tuple[tuple[str, int], ...]) -> str:
  return ''.join(f'{op}{b}' for op, b in ops)


def _reduce(expr: _Expr) -> _Expr:
  head, ((op, b), *rest) = expr
  return _apply(head, op, b), tuple(rest)


def answer_line(value: int) -> str:
  return f'{ANSWER_PREFIX} {value}'


def solve(question: str) -> tuple[tuple[str, ...], int]:
  """The reference steps and answer of a question (a bare expression)."""
  expr = _parse(question)
  if expr is None or not expr[1]:
    raise ValueError(f'question {question!r} is not an expression like "3+4*2" with >= 1 operation')
  steps = []
  while expr[1]:
    expr = _reduce(expr)
    steps.append(_render(expr))
  return tuple(steps), expr[0]


def _sample_question(rng: random.Random, num_ops: int, max_operand: int, max_value: int) -> str:
  value = rng.randint(0, max_operand)
  parts = [str(value)]
  for _ in range(num_ops):
    # Pick the operator first so '*' (few operands keep the value in range) is not starved. No '*0':
    # it would erase every earlier error, and a wrong step must make the answer wrong.
    valid = {op: [b for b in range(1 if op == '*' else 0, max_operand + 1)
                  if abs(_apply(value, op, b)) <= max_value] for op in OPERATORS}
    op = rng.choice([o for o in OPERATORS if valid[o]])
    b = rng.choice(valid[op])
    value = _apply(value, op, b)
    parts.append(f'{op}{b}')
  return ''.join(parts)


def generate(num_problems: int, seed: int, num_ops_range: tuple[int, int] = DEFAULT_NUM_OPS_RANGE,
             *, max_operand: int = MAX_OPERAND, max_value: int = MAX_VALUE,
             exclude: frozenset[str] = frozenset(), id_prefix: str = 'arith') -> list[Problem]:
  """`num_problems` distinct problems, num_ops uniform in the inclusive range, none in `exclude`.

  A duplicate is redrawn from scratch (num_ops too), so a num_ops whose few distinct questions are
  used up gets fewer problems instead of looping forever.
  """
  lo, hi = num_ops_range
  if not 1 <= lo <= hi:
    raise ValueError(f'num_ops_range {num_ops_range} must be (lo, hi) with 1 <= lo <= hi')
  if max_operand < 1 or max_value < max_operand:
    raise ValueError(f'need 1 <= max_operand <= max_value, got {max_operand}, {max_value}')
  rng = random.Random(seed)
  seen = set(exclude)
  problems: list[Problem] = []
  for _ in range(100 * num_problems + 1000):
    if len(problems) == num_problems:
      break
    num_ops = rng.randint(lo, hi)
    question = _sample_question(rng, num_ops, max_operand, max_value)
    if question in seen:
      continue
    seen.add(question)
    steps, answer = solve(question)
    problems.append(Problem(f'{id_prefix}-{len(problems):06d}', question, steps, answer, num_ops))
  if len(problems) < num_problems:
    raise ValueError(f'only {len(problems)} of {num_problems} distinct problems exist for '
                     f'num_ops_range={num_ops_range}, max_operand={max_operand}; widen them')
  return problems


def make_splits(seed: int, sizes: Mapping[str, int],
                num_ops_range: tuple[int, int] = DEFAULT_NUM_OPS_RANGE, *,
                max_operand: int = MAX_OPERAND, max_value: int = MAX_VALUE,
                ) -> dict[str, list[Problem]]:
  """Disjoint splits (no shared question). Smaller splits draw first, each from its own stream, so
  a held-out split keeps its full difficulty range and does not change when train grows."""
  splits: dict[str, list[Problem]] = {}
  taken: set[str] = set()
  for name in sorted(sizes, key=lambda s: (sizes[s], s)):
    split_seed = int.from_bytes(hashlib.sha256(f'{seed}/{name}'.encode()).digest()[:8], 'little')
    problems = generate(sizes[name], split_seed, num_ops_range, max_operand=max_operand,
                        max_value=max_value, exclude=frozenset(taken), id_prefix=name)
    taken.update(p.question for p in problems)
    splits[name] = problems
  return {name: splits[name] for name in sizes}


def prompt(problem: Problem) -> str:
  """What the model is conditioned on; it ends with the delimiter, so the model starts step 1."""
  return f'{QUESTION_PREFIX}{problem.question}{STEP_DELIMITER}'


def format_solution(steps: Sequence[str]) -> str:
  """The completion text of `steps` (the last being the answer line); inverse of `split_steps`."""
  return STEP_DELIMITER.join(steps)


def split_steps(completion: str) -> list[str]:
  """The steps of a completion, up to and including the first answer line."""
  steps = completion.split(STEP_DELIMITER)
  for i, step in enumerate(steps):
    if step.startswith(ANSWER_PREFIX):
      return steps[:i + 1]
  return steps[:-1] if steps[-1] == '' else steps


def solution_length_bound(question: str, max_value: int = MAX_VALUE) -> int:
  """An upper bound on the characters of any correct solution of `question`, from the question
  alone: each of its steps is a value within +-max_value followed by a suffix of the question,
  the last the answer line, all joined by delimiters. A tokenizer whose pieces are at least one
  character (ours) needs at most this many tokens, plus EOS; an attempt longer is wrong."""
  expr = _parse(question)
  if expr is None:
    raise ValueError(f'{question!r} is not an arith expression')
  value = len(str(-max_value))
  steps = len(expr[1])
  return (steps - 1) * (value + len(question) + len(STEP_DELIMITER)) + len(answer_line(-max_value))


def extract_answer(completion: str) -> str | None:
  """The integer on the answer line, as a canonical string, or None without a well-formed one."""
  steps = split_steps(completion)
  match = _ANSWER.fullmatch(steps[-1]) if steps else None
  return None if match is None else str(int(match.group(1)))


def grade(completion_or_answer: str | int | None, gold: int | str) -> bool:
  """Exact integer match; a bare integer string counts as an answer, anything else is a completion."""
  if completion_or_answer is None:
    return False
  if isinstance(completion_or_answer, (int, np.integer)):
    answer: str | None = str(int(completion_or_answer))
  elif _INTEGER.fullmatch(completion_or_answer):
    answer = str(int(completion_or_answer))
  else:
    answer = extract_answer(completion_or_answer)
  return answer is not None and int(answer) == int(gold)


def _classify(expected: _Expr, got: str) -> ErrorKind:
  if not expected[1]:  # The answer line was due.
    return 'arithmetic' if _ANSWER.fullmatch(got) else 'structure'
  match = _EXPRESSION.fullmatch(got)
  if match is None:
    return 'structure'
  head_ok = match.group(1) == str(expected[0])
  tail_ok = match.group(2) == _tail(expected[1])
  if tail_ok and not head_ok:
    return 'arithmetic'
  if head_ok and not tail_ok:
    return 'copy'
  return 'structure'  # Both wrong, e.g. two operations reduced in one step.


def first_wrong_step(problem: Problem, completion: str) -> StepCheck:
  """Replays the completion against the question and classifies its first wrong step.

  'arithmetic': the leftmost operation was reduced and the rest copied, but the result is wrong;
  'copy': the result is right but the rest of the expression was not copied faithfully;
  'structure': anything else (unparseable, premature/missing answer line, several ops at once).
  """
  expr = _parse(problem.question)
  assert expr is not None, problem.question
  steps = split_steps(completion)
  for index in range(problem.num_ops):
    expr = _reduce(expr)
    expected = _render(expr)
    if index >= len(steps):
      return StepCheck(index, 'structure', expected, None)
    if steps[index] != expected:
      return StepCheck(index, _classify(expr, steps[index]), expected, steps[index])
  return StepCheck(None, None)


def iter_texts(problems: Sequence[Problem]) -> Iterator[str]:
  """Full training texts (prompt + solution), e.g. to train a tokenizer."""
  for p in problems:
    yield prompt(p) + format_solution(p.steps)


@dataclasses.dataclass
class ArithConfig(tfds.core.BuilderConfig):
  seed: int = 0
  sizes: tuple[tuple[str, int], ...] = (('train', 20_000), ('validation', 1_000), ('test', 1_000))
  num_ops_range: tuple[int, int] = DEFAULT_NUM_OPS_RANGE
  max_operand: int = MAX_OPERAND
  max_value: int = MAX_VALUE

  @classmethod
  def make(cls, **kwargs) -> ArithConfig:
    """A config named by a digest of its parameters, so different data never shares a directory."""
    config = cls(name='tmp', **kwargs)
    params = (config.seed, config.sizes, config.num_ops_range, config.max_operand, config.max_value)
    digest = hashlib.sha256(repr(params).encode()).hexdigest()[:10]
    return dataclasses.replace(config, name=f'seed{config.seed}_{digest}')


class ArithBuilder(records.JsonRecordsBuilder):
  """The arith task as a TFDS dataset; one record per problem (`Problem.to_record`)."""
  name = 'arith'
  VERSION = tfds.core.Version('1.0.0')
  BUILDER_CONFIGS = [ArithConfig.make()]
  TEXT_FIELDS = ('id', 'question', 'solution')
  INT_FIELDS = ('answer', 'num_ops')

  def _split_records(self, dl_manager) -> dict[str, Iterator[dict[str, str | int]]]:
    del dl_manager
    config = self.builder_config
    assert isinstance(config, ArithConfig), config
    splits = make_splits(config.seed, dict(config.sizes), config.num_ops_range,
                         max_operand=config.max_operand, max_value=config.max_value)
    return {name: (p.to_record() for p in problems) for name, problems in splits.items()}
