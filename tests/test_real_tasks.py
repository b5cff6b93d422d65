"""GSM8K and MATH500 task modules on the real data: TFDS loading, prompts, extraction, bad inputs."""

import collections
import json
import re

import pytest

from ttc_jax.tasks import gsm8k, math500


@pytest.fixture(scope='module')
def gsm8k_test(tmp_path_factory):
  return gsm8k.load('test', tfds_dir=tmp_path_factory.mktemp('tfds'))


@pytest.fixture(scope='module')
def math_test(tmp_path_factory):
  return math500.load('test', tfds_dir=tmp_path_factory.mktemp('tfds'))


def test_gsm8k_records_are_clean_and_grade_against_their_gold(gsm8k_test):
  assert len(gsm8k_test) == 1319
  first = gsm8k_test[0]
  assert first.question.startswith('Janet’s ducks lay 16 eggs per day.')
  assert first.answer == '18'
  assert first.solution.split(gsm8k.STEP_DELIMITER)[-1] == 'The answer is 18.'
  for r in gsm8k_test:
    assert '<<' not in r.solution and '####' not in r.solution
    assert gsm8k.END_OF_SOLUTION not in r.solution  # It would end a sampled solution early.
    assert gsm8k.extract(r.solution) == r.answer
    assert gsm8k.grade(r.solution, r.answer)
  assert not gsm8k.grade(first.solution, '19')


def test_gsm8k_prompt_uses_train_exemplars_drawn_by_seed():
  train = {r.question for r in gsm8k.load('train')}
  assert len(train) > 7000
  question = 'Tom has 3 apples and buys 4 more. How many apples does he have?'
  prompt = gsm8k.build_prompt(question, num_shots=3, seed=7)
  assert prompt == gsm8k.build_prompt(question, num_shots=3, seed=7)
  assert prompt != gsm8k.build_prompt(question, num_shots=3, seed=8)
  assert prompt.endswith(gsm8k.format_question(question))
  shots = prompt.split(gsm8k.END_OF_SOLUTION)[:-1]
  assert len(shots) == 3
  for shot in shots:
    head, solution = shot.split('\nAnswer:\n')
    assert head.removeprefix('Question: ') in train
    assert re.fullmatch(r'The answer is [-\d,.]+\.', solution.split('\n')[-1])
  # A train question never appears as its own exemplar.
  own = next(iter(sorted(train)))
  for seed in range(20):
    assert gsm8k.build_prompt(own, num_shots=4, seed=seed).count(own) == 1


def test_gsm8k_extract_stops_at_the_next_question():
  completion = 'She has 3 + 4 = 7.\nThe answer is 7.\n\nQuestion: Bob has 2.\nAnswer:\nThe answer is 2.'
  assert gsm8k.extract(completion) == '7'
  assert gsm8k.grade(completion, '7') and not gsm8k.grade(completion, '2')


def test_math500_records_match_the_data_card(math_test):
  assert len(math_test) == 500
  assert collections.Counter(r.level for r in math_test) == {1: 43, 2: 90, 3: 105, 4: 128, 5: 134}
  assert len({r.subject for r in math_test}) == 7
  assert len({r.unique_id for r in math_test}) == 500
  third = math_test[2]
  assert (third.answer, third.unique_id, third.level) == (r'\frac{14}{3}', 'test/algebra/2584.json', 3)
  for r in math_test:
    assert math500.extract(r.solution) == r.answer.strip() or math500.grade(r.solution, r.answer)


def test_math_prompt_exemplars_are_worked_and_not_from_math500(math_test):
  exemplars = math500.load_exemplars()
  assert len(exemplars) == 4
  problems = {r.question.strip() for r in math_test}
  for e in exemplars:
    assert e.question.strip() not in problems
    assert not any(math500.STEP_DELIMITER in step for step in e.steps)
    assert math500.grade(math500.STEP_DELIMITER.join(e.steps), e.answer)
  question = math_test[0].question
  prompt = math500.build_prompt(question, num_shots=4, seed=1)
  assert prompt.count('Problem: ') == 5 and prompt.endswith(math500.format_question(question))
  assert prompt != math500.build_prompt(question, num_shots=4, seed=2)  # Order follows the seed.
  assert math500.build_prompt(question, num_shots=0) == math500.format_question(question)
  with pytest.raises(ValueError, match='num_shots=5'):
    math500.build_prompt(question, num_shots=5)


def test_math_extract_prefers_boxed_and_stops_at_the_next_problem():
  completion = ('So $x = 3$.\nThe final answer is $\\boxed{(3,4]}$.\n\n'
                'Problem: Another one.\nSolution:\nThe final answer is $\\boxed{9}$.')
  assert math500.extract(completion) == '(3,4]'
  assert math500.grade(completion, '(3,4]') and not math500.grade(completion, '[3,4]')
  assert math500.extract('The final answer is $\\frac{1}{2}$. I hope it is correct.') == (
      '\\frac{1}{2}')


@pytest.mark.parametrize('task', [gsm8k, math500])
def test_a_missing_data_dir_is_a_one_line_file_not_found(task, tmp_path):
  missing = tmp_path / 'nowhere'
  with pytest.raises(FileNotFoundError) as e:
    task.load('test', data_dir=missing, tfds_dir=tmp_path / 'tfds')
  message = str(e.value)
  assert '\n' not in message
  assert str(missing) in message and 'not found; expected' in message and 'JSONL' in message
  with pytest.raises(ValueError, match='unknown .* split'):
    task.load('validation', data_dir=missing)


def _write(path, rows):
  path.write_text(''.join(json.dumps(r) + '\n' for r in rows))


GOOD_GSM8K = {'question': 'How many?', 'answer': 'It is 2 + 3 = <<2+3=5>>5.\n#### 5'}
GOOD_MATH = {'problem': 'What is $1+1$?', 'solution': '$\\boxed{2}$', 'answer': '2',
             'subject': 'Algebra', 'level': 1, 'unique_id': 'test/algebra/0.json'}


@pytest.mark.parametrize('task,good,field', [
    (gsm8k, GOOD_GSM8K, 'answer'), (gsm8k, GOOD_GSM8K, 'question'),
    (math500, GOOD_MATH, 'answer'), (math500, GOOD_MATH, 'level')])
def test_a_record_without_a_field_names_file_line_and_field(task, good, field, tmp_path):
  source = tmp_path / 'data'
  source.mkdir()
  bad = {k: v for k, v in good.items() if k != field}
  _write(source / 'test.jsonl', [good, good, bad])
  _write(source / 'train.jsonl', [good])
  with pytest.raises(ValueError) as e:
    task.load('test', data_dir=source, tfds_dir=tmp_path / 'tfds')
  message = str(e.value)
  assert '\n' not in message
  assert f'{source / "test.jsonl"}:3' in message and repr(field) in message
  # Fixed input builds into a fresh dataset; the failed build left nothing behind that is reused.
  _write(source / 'test.jsonl', [good, good])
  loaded = task.load('test', data_dir=source, tfds_dir=tmp_path / 'tfds')
  assert len(loaded) == 2 and loaded[0].answer in ('5', '2')


def test_malformed_values_fail_with_one_line_errors(tmp_path):
  source = tmp_path / 'data'
  source.mkdir()
  _write(source / 'train.jsonl', [GOOD_GSM8K])
  _write(source / 'test.jsonl', [{'question': 'q', 'answer': 'no final line'}])
  with pytest.raises(ValueError, match=r"test\.jsonl:1: field 'answer' has no '####'"):
    gsm8k.load('test', data_dir=source, tfds_dir=tmp_path / 'a')
  (source / 'test.jsonl').write_text('{"question": "q", "answer": \n')
  with pytest.raises(ValueError, match=r'test\.jsonl:1: not valid JSON'):
    gsm8k.load('test', data_dir=source, tfds_dir=tmp_path / 'b')
  _write(source / 'test.jsonl', [dict(GOOD_MATH, level='hard')])
  with pytest.raises(ValueError, match=r"test\.jsonl:1: field 'level' is 'hard'"):
    math500.load('test', data_dir=source, tfds_dir=tmp_path / 'c')


def test_default_tfds_dir_changes_when_the_input_changes(tmp_path):
  source = tmp_path / 'data'
  source.mkdir()
  _write(source / 'test.jsonl', [GOOD_MATH])
  before = math500.build_dir('math500', source, ('test.jsonl',))
  assert before == math500.build_dir('math500', source, ('test.jsonl',))
  _write(source / 'test.jsonl', [GOOD_MATH, GOOD_MATH])
  assert math500.build_dir('math500', source, ('test.jsonl',)) != before
