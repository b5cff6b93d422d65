"""Arith task tests: determinism, disjoint splits, valid one-op steps, grading, error classification."""

import re

import pytest

from ttc_jax.tasks import arith


def _problem(question: str) -> arith.Problem:
  steps, answer = arith.solve(question)
  return arith.Problem('p', question, steps, answer, len(steps))


def _left_to_right(expression: str) -> int:
  """Independent reference: parenthesize left to right and let python evaluate."""
  head, *ops = re.findall(r'^-?\d+|[-+*]\d+', expression)
  text = head
  for op in ops:
    text = f'({text}){op}'
  return eval(text)  # Only digits and + - * ( ) reach here.


def test_same_seed_same_problems_other_seed_other_problems():
  assert arith.generate(50, seed=3) == arith.generate(50, seed=3)
  assert arith.generate(50, seed=3) != arith.generate(50, seed=4)


def test_splits_are_disjoint_deterministic_and_sized():
  sizes = {'train': 400, 'validation': 50, 'test': 50}
  splits = arith.make_splits(0, sizes)
  assert {k: len(v) for k, v in splits.items()} == sizes
  questions = [{p.question for p in split} for split in splits.values()]
  assert sum(map(len, questions)) == sum(sizes.values())  # Also no duplicate inside a split.
  assert splits == arith.make_splits(0, sizes)
  # With only ~1000 one-op questions, independent draws would collide; the splits must not.
  one_op = arith.make_splits(0, {'train': 400, 'test': 200}, num_ops_range=(1, 1))
  assert not {p.question for p in one_op['train']} & {p.question for p in one_op['test']}
  assert arith.make_splits(1, sizes)['test'] != splits['test']
  # Held-out splits do not move when train grows.
  bigger = arith.make_splits(0, {**sizes, 'train': 800})
  assert bigger['test'] == splits['test'] and bigger['validation'] == splits['validation']


def test_every_step_reduces_the_leftmost_operation_and_the_answer_is_correct():
  for p in arith.generate(300, seed=1):
    assert p.answer == _left_to_right(p.question)
    assert len(p.steps) == p.num_ops and p.steps[-1] == f'#### {p.answer}'
    previous = p.question
    for step in p.steps:
      head, op, b, rest = re.fullmatch(r'(-?\d+)([-+*])(\d+)(.*)', previous).groups()
      value = _left_to_right(f'{head}{op}{b}')
      assert step == (f'{value}{rest}' if rest else f'#### {value}'), (previous, step)
      assert abs(value) <= arith.MAX_VALUE
      assert op != '*' or b != '0'  # '*0' would hide every earlier error.
      previous = step


@pytest.mark.parametrize('num_ops', [1, 3, 8])
def test_num_ops_sets_the_number_of_operations_and_steps(num_ops):
  for p in arith.generate(40, seed=2, num_ops_range=(num_ops, num_ops)):
    assert p.num_ops == num_ops == len(p.steps)
    assert len(re.findall(r'[-+*]\d+', p.question)) == num_ops
    assert len(arith.split_steps(arith.format_solution(p.steps))) == num_ops
    assert max(int(n) for n in re.findall(r'\d+', p.question)) <= arith.MAX_OPERAND


def test_text_format_and_record_round_trip():
  p = _problem('3+4*2-5')
  assert arith.prompt(p) + arith.format_solution(p.steps) == 'Q: 3+4*2-5\n7*2-5\n14-5\n#### 9'
  assert arith.split_steps('7*2-5\n14-5\n#### 9') == ['7*2-5', '14-5', '#### 9']
  assert arith.split_steps('7*2-5\n') == ['7*2-5']
  assert arith.split_steps('7*2-5\n#### 9\n1+1') == ['7*2-5', '#### 9']
  assert arith.Problem.from_record(p.to_record()) == p
  assert arith.solve('2-9*3') == (('-7*3', '#### -21'), -21)


def test_extract_and_grade():
  right, wrong, garbled = '7*2-5\n14-5\n#### 9', '7*2-5\n14-5\n#### 8', '7*2-5\n14-5\n9'
  assert arith.extract_answer(right) == '9' and arith.grade(right, 9) and arith.grade(right, '9')
  assert arith.extract_answer(wrong) == '8' and not arith.grade(wrong, 9)
  assert arith.extract_answer(garbled) is None and not arith.grade(garbled, 9)
  assert arith.extract_answer('#### -21') == '-21' and arith.grade('#### -21', -21)
  assert arith.extract_answer('#### 9\n#### 8') == '9'  # The first answer line counts.
  assert arith.extract_answer('') is None and arith.extract_answer('#### x') is None
  assert arith.grade('9', 9) and arith.grade(9, 9) and not arith.grade(None, 9)


def test_first_wrong_step_classifies_hand_made_errors():
  p = _problem('3+4*2-5+6')  # 7*2-5+6 / 14-5+6 / 9+6 / #### 15
  check = lambda c: (lambda r: (r.index, r.kind))(arith.first_wrong_step(p, c))
  assert check('7*2-5+6\n14-5+6\n9+6\n#### 15') == (None, None)
  assert check('7*2-5+6\n15-5+6\n10+6\n#### 16') == (1, 'arithmetic')
  assert check('7*2-5+6\n14-5+6\n9+6\n#### 16') == (3, 'arithmetic')
  assert check('7*2-5+6\n14-5+8\n9+8\n#### 17') == (1, 'copy')
  assert check('7*2-5+6\n14-6\n#### 8') == (1, 'copy')  # Dropped an operation.
  assert check('7*2-5+6\n9+6\n#### 15') == (1, 'structure')  # Two operations in one step.
  assert check('7*2-5+6\n14-5+6\n#### 15') == (2, 'structure')  # Premature answer line.
  assert check('7*2-5+6\n14-5+6') == (2, 'structure')  # Stopped early.
  assert check('seven times two') == (0, 'structure')
  result = arith.first_wrong_step(p, '7*2-5+6\n15-5+6')
  assert (result.expected, result.got) == ('14-5+6', '15-5+6')


def test_impossible_requests_fail_with_one_line_errors():
  with pytest.raises(ValueError, match='distinct problems'):
    arith.generate(500, seed=0, num_ops_range=(1, 1), max_operand=3)
  with pytest.raises(ValueError, match='num_ops_range'):
    arith.generate(5, seed=0, num_ops_range=(3, 2))
  with pytest.raises(ValueError, match='not an expression'):
    arith.solve('7')
