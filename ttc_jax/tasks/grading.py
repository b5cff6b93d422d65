"""Final-answer extraction (boxed, ####, "the answer is") and equivalence grading via Math-Verify.

`python -m ttc_jax.tasks.grading --bench` measures grading speed on MATH500 answers.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import decimal
import functools
import json
import multiprocessing
import pathlib
import re
import threading
import time
from typing import Sequence


STYLES = ('math', 'gsm8k')
_TIMEOUT_S = 5
_BOXED = re.compile(r'\\(?:boxed|fbox)\b')
_ANSWER_IS = re.compile(r'answer is\s*:?\s*', re.IGNORECASE)
_NUMBER = re.compile(r'-?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?|-?\.\d+')
_PLAIN_NUMBER = re.compile(r'[-+]?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d*)?|[-+]?\.\d+')
_SCIENTIFIC = re.compile(r'[-+]?(?:\d+\.?\d*|\.\d+)[eE][-+]?\d+')
_BASE_SUBSCRIPT = re.compile(r'_\{?(\d+)\}?\s*$')


def extract_boxed(text: str) -> str | None:
  """Content of the last complete `\\boxed{...}` / `\\fbox{...}` (or `\\boxed 5`) in `text`."""
  for match in reversed(list(_BOXED.finditer(text))):
    rest = text[match.end():]
    if not rest.startswith('{'):
      # `\boxed 5` is valid TeX: the argument is the next token.
      token = re.match(r'\s+([^\s$]+)', rest)
      if token:
        return token.group(1)
      continue
    depth = 0
    for i, char in enumerate(rest):
      depth += {'{': 1, '}': -1}.get(char, 0)
      if depth == 0:
        return rest[1:i].strip()
  return None


def extract_gsm8k(text: str) -> str | None:
  """The number after the last '####', separators kept (grading removes them)."""
  if '####' not in text:
    return None
  line = text.rsplit('####', 1)[1].strip().split('\n', 1)[0]
  number = _NUMBER.search(line)
  return number.group(0) if number else None


def extract_answer_is(text: str) -> str | None:
  """X in the last "The answer is X." / "the final answer is $X$" of `text`."""
  matches = list(_ANSWER_IS.finditer(text))
  if not matches:
    return None
  rest = text[matches[-1].end():].split('\n', 1)[0].strip()
  for left, right in (('$$', '$$'), ('$', '$'), ('\\(', '\\)'), ('\\[', '\\]')):
    if rest.startswith(left):
      end = rest.find(right, len(left))
      rest = rest[len(left):end if end >= 0 else None]
      break
  else:
    # Minerva's "X. I hope it is correct.": the sentence ends at the first '. '.
    rest = rest.split('. ', 1)[0]
  rest = rest.strip().rstrip('.').strip()
  return rest or None


def extract_last_number(text: str) -> str | None:
  numbers = _NUMBER.findall(text)
  return numbers[-1] if numbers else None


def extract_answer(text: str, style: str) -> str | None:
  """The final answer of a completion, by the task's conventions ('math' or 'gsm8k')."""
  if style == 'math':
    return extract_boxed(text) or extract_answer_is(text)
  if style == 'gsm8k':
    found = extract_gsm8k(text)
    if found is None:
      stated = extract_answer_is(text)
      # "The answer is $18 per week." -> 18; a statement without digits (\frac{a}{b}) stays whole.
      found = (extract_last_number(stated) or stated) if stated else None
    return found or extract_last_number(text)
  raise ValueError(f'unknown answer style {style!r}; expected one of {STYLES}')


def _as_decimal(answer: str) -> decimal.Decimal | None:
  """A plain number (optional $, thousands separators, trailing period) as a Decimal."""
  answer = answer.replace('\\$', '').replace('$', '').replace('\\!', '').strip().rstrip('.')
  if not _PLAIN_NUMBER.fullmatch(answer):
    return None
  return decimal.Decimal(answer.replace(',', ''))


def _latex(answer: str) -> str:
  # Math-Verify parses '6.72e-5' as 6.72*e - 5; spell scientific notation out.
  if _SCIENTIFIC.fullmatch(answer):
    return format(decimal.Decimal(answer), 'f')
  return answer


@functools.cache
def _math_verify():
  """Math-Verify, imported on first use (it and sympy take 0.5 s every launcher start would
  pay)."""
  import math_verify  # pylint: disable=g-import-not-at-top
  import math_verify.errors  # pylint: disable=g-import-not-at-top
  return math_verify


@functools.lru_cache(maxsize=1 << 16)
def _parse(answer: str, timeout: int | None) -> tuple:
  """Math-Verify's parse of a bare answer, preferring a reading that yields a sympy object."""
  first: list = []
  for wrapped in (f'\\boxed{{{answer}}}', f'${answer}$', answer):
    parsed = _math_verify().parse(wrapped, parsing_timeout=timeout)
    if any(not isinstance(p, str) for p in parsed):
      return tuple(parsed)
    first = first or parsed
  return tuple(first) or (answer,)


@functools.lru_cache(maxsize=1 << 16)
def _grade(pred: str, gold: str, timeout: int | None) -> bool:
  pred_number, gold_number = _as_decimal(pred), _as_decimal(gold)
  if pred_number is not None and gold_number is not None:
    return pred_number == gold_number
  # Math-Verify drops base subscripts, so 4343_6 would equal 4343_8.
  pred_base, gold_base = _BASE_SUBSCRIPT.search(pred), _BASE_SUBSCRIPT.search(gold)
  if pred_base and gold_base and pred_base.group(1) != gold_base.group(1):
    return False
  return _math_verify().verify(list(_parse(_latex(gold), timeout)),
                               list(_parse(_latex(pred), timeout)), timeout_seconds=timeout)


def grade(pred: str | None, gold: str) -> bool:
  """Whether an extracted answer is mathematically equivalent to the gold answer.

  Plain numbers (GSM8K) compare exactly after removing thousands separators; everything else goes
  through Math-Verify. Safe off the main thread, where Math-Verify's timeout is disabled.
  """
  if pred is None or not pred.strip():
    return False
  # Math-Verify times out with signal.alarm, which only the main thread may use.
  on_main = threading.current_thread() is threading.main_thread()
  try:
    return _grade(pred.strip(), gold.strip(), _TIMEOUT_S if on_main else None)
  # Math-Verify's TimeoutException is a BaseException: `except Exception` would let it through.
  except _math_verify().errors.TimeoutException:
    return False


def _grade_pair(pair: tuple[str | None, str]) -> bool:
  return grade(*pair)


def grade_many(preds: Sequence[str | None], golds: Sequence[str],
               processes: int = 0) -> list[bool]:
  """`grade` over pairs; `processes > 0` uses a process pool (where timeouts still work)."""
  if len(preds) != len(golds):
    raise ValueError(f'{len(preds)} predictions but {len(golds)} gold answers; expected equal')
  pairs = list(zip(preds, golds))
  if processes <= 0:
    return [grade(p, g) for p, g in pairs]
  # Spawn, not fork: forking a process that runs JAX/XLA threads can deadlock the child.
  context = multiprocessing.get_context('spawn')
  chunksize = max(1, len(pairs) // (4 * processes))
  with concurrent.futures.ProcessPoolExecutor(processes, mp_context=context) as pool:
    return list(pool.map(_grade_pair, pairs, chunksize=chunksize))


def perturb(answer: str) -> str:
  """A wrong answer close to `answer`: its first digit bumped, or '+1' appended."""
  digits = [i for i, c in enumerate(answer) if c.isdigit()]
  if not digits:
    return answer + '+1'
  i = digits[0]
  return answer[:i] + str((int(answer[i]) + 1) % 10) + answer[i + 1:]


def bench(data_file: pathlib.Path, processes: int = 0) -> None:
  """Prints answers/s on every MATH500 gold against itself and against a perturbed copy."""
  golds = [json.loads(line)['answer'] for line in data_file.read_text().splitlines()]
  preds, pairs = golds + [perturb(g) for g in golds], golds + golds
  # 1st pass: fresh process (Math-Verify's ANTLR parser builds its DFA cache); 2nd: warm parser,
  # our answer caches cleared; 3rd: every pair cached (best-of-N repeats answers a lot).
  for label in ('first pass', 'warm parser', 'cached'):
    if label != 'cached':
      _grade.cache_clear()
      _parse.cache_clear()
    start = time.perf_counter()
    results = grade_many(preds, pairs, processes)
    seconds = time.perf_counter() - start
    same, perturbed = sum(results[:len(golds)]), sum(results[len(golds):])
    print(f'{label}: {len(pairs)} answers in {seconds:.2f}s = {len(pairs) / seconds:.0f} '
          f'answers/s; gold-vs-gold {same}/{len(golds)} True, perturbed {perturbed}/{len(golds)} '
          'True')


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__)
  parser.add_argument('--bench', action='store_true', help='measure grading speed')
  default = pathlib.Path(__file__).resolve().parents[2].parent / 'shared/data/math/test.jsonl'
  parser.add_argument('--data', type=pathlib.Path, default=default, help='MATH500 JSONL')
  parser.add_argument('--processes', type=int, default=0, help='grade_many process pool size')
  args = parser.parse_args()
  if not args.bench:
    parser.error('nothing to do; pass --bench')
  if not args.data.is_file():
    raise SystemExit(f'{args.data} not found; expected the MATH500 JSONL (--data)')
  bench(args.data, args.processes)


if __name__ == '__main__':
  main()
