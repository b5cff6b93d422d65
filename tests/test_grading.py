"""Answer extraction and Math-Verify grading on real MATH500 gold answers, right and wrong."""

import json
import pathlib
import threading
import time

import pytest
from math_verify.errors import TimeoutException

from ttc_jax.tasks import grading

MATH500 = pathlib.Path(__file__).resolve().parents[1].parent / 'shared/data/math/test.jsonl'
GOLDS = [json.loads(line)['answer'] for line in MATH500.read_text().splitlines()]

# (MATH500 gold, equivalent predictions, wrong predictions), one row per kind of answer.
CASES = [
    (r'\frac{14}{3}', ['14/3', r'\dfrac{14}{3}', r'\frac{28}{6}', r'4\frac{2}{3}'],
     [r'\frac{13}{3}', '4.67', '3/14']),
    ('1.25', [r'\frac{5}{4}', '5/4', '1.250'], ['1.2', r'\frac{4}{5}']),
    ('0.15', [r'\frac{3}{20}', '.15'], ['0.015', r'\frac{3}{2}']),
    (r'\dfrac{33}{100}', ['0.33', r'\frac{33}{100}', '33/100'], ['0.34', r'\frac{1}{3}']),
    ('.0000672', ['0.0000672', '6.72e-5', r'6.72 \times 10^{-5}'], ['6.72e-6', '0.000672']),
    (r'137 \frac{1}{2}', ['137.5', r'\frac{275}{2}'], ['137', r'\frac{137}{2}']),
    ('(3,4]', ['(3, 4]', r'\left(3,4\right]'], ['[3,4]', '(3,4)', '[3,4)']),
    (r'(2,\infty)', [r'(2, \infty)'], [r'[2,\infty)', r'(-\infty,2)']),
    (r'(-\infty, 2) \cup (3, \infty)', [r'(-\infty,2)\cup(3,\infty)'],
     [r'(-\infty, 2] \cup [3, \infty)', r'(2, 3)']),
    (r'\left( 3, \frac{\pi}{2} \right)', [r'(3, \pi/2)', r'\left(3,\frac{\pi}{2}\right)'],
     [r'(\frac{\pi}{2}, 3)', r'(3, \pi)']),
    ('(1,-16,-4,43)', ['(1, -16, -4, 43)'], ['(1,-16,-4,42)', '(43,-4,-16,1)']),
    ('(8,-2)', ['(8, -2)'], ['(-2,8)', '(8,2)']),
    ('3, 5, 7', ['7, 5, 3', r'\{3,5,7\}'], ['3, 5', '3, 5, 8']),
    (r'1 \pm \sqrt{19}', [r'1+\sqrt{19}, 1-\sqrt{19}'], [r'1+\sqrt{19}', r'1 \pm \sqrt{17}']),
    (r'\text{Evelyn}', ['Evelyn', r'\text{Evelyn}', r'\textbf{Evelyn}'], ['Navin', r'\text{Bob}']),
    (r'\text{east}', ['east', r'\text{East}'], ['west', r'\text{north}']),
    (r'5.4 \text{ cents}', ['5.4', r'5.4\text{ cents}', r'5.40'], ['54', '5.5']),
    (r'864 \mbox{ inches}^2', ['864', r'864 \text{ inches}^2'], ['865', r'864^2']),
    (r'90^\circ', ['90', r'90^{\circ}', r'90^\circ'], [r'45^\circ', '180']),
    (r'\frac{270}7\text{ degrees}', [r'\frac{270}{7}', r'\frac{270}{7}^\circ'], [r'\frac{27}{7}']),
    (r'10,\!080', ['10080', '10,080', '10080.0'], ['10,081', '1008']),
    (r'11,\! 111,\! 111,\! 100', ['11111111100', '11,111,111,100'], ['11111111101']),
    (r'\$32,\!348', ['32348', r'\$32,348', '32,348'], ['32,349']),
    (r'\begin{pmatrix} -2 \\ -14 \\ -7 \end{pmatrix}',
     [r'\begin{pmatrix}-2\\-14\\-7\end{pmatrix}', r'\begin{bmatrix} -2 \\ -14 \\ -7 \end{bmatrix}'],
     [r'\begin{pmatrix} -2 \\ -14 \\ 7 \end{pmatrix}', r'\begin{pmatrix} -2 \\ -14 \end{pmatrix}']),
    (r'\begin{pmatrix} 1/5 \\ -18/5 \end{pmatrix}',
     [r'\begin{pmatrix} \frac{1}{5} \\ -\frac{18}{5} \end{pmatrix}',
      r'\begin{pmatrix} 0.2 \\ -3.6 \end{pmatrix}'],
     [r'\begin{pmatrix} -18/5 \\ 1/5 \end{pmatrix}']),
    (r'\begin{pmatrix} -1 & 0 \\ 0 & -1 \end{pmatrix}',
     [r'\begin{pmatrix}-1&0\\0&-1\end{pmatrix}'],
     [r'\begin{pmatrix} 0 & -1 \\ -1 & 0 \end{pmatrix}', r'\begin{pmatrix} 1 & 0 \\ 0 & 1 \end{pmatrix}']),
    (r'\text{(C)}', ['C', '(C)', r'\text{C}', r'\textbf{(C)}'], ['D', '(B)', r'\text{(E)}']),
    ('4343_6', ['4343_6', '4343_{6}', '4343'], ['4343_8', '4344_6']),
    ('x=5', ['5', 'x = 5'], ['x=6', '-5']),
    ('p - q', ['-q + p'], ['q - p', 'p + q']),
    (r'6 - 5i', ['6-5i', '-5i+6'], ['6+5i', '5i-6']),
    (r'\frac{3\sqrt{3}}{4}', [r'\frac{3}{4}\sqrt{3}', r'\frac{\sqrt{27}}{4}'], [r'\frac{3}{4}']),
    (r'x^5 - x^4 + x^3 - x^2 + x - 1', ['x^5-x^4+x^3-x^2+x-1'], ['x^5-x^4+x^3-x^2+x+1']),
]


@pytest.mark.parametrize('gold,rights,wrongs', CASES, ids=[c[0] for c in CASES])
def test_math500_answer_kinds(gold, rights, wrongs):
  assert gold in GOLDS, f'{gold!r} is not a MATH500 answer'
  for pred in rights:
    assert grading.grade(pred, gold), f'{pred!r} should equal {gold!r}'
  for pred in wrongs:
    assert not grading.grade(pred, gold), f'{pred!r} should not equal {gold!r}'


def test_gsm8k_numbers_ignore_thousands_separators():
  for pred in ('1000', '1,000', '1000.0', '$1,000', '1,000.'):
    assert grading.grade(pred, '1,000') and grading.grade(pred, '1000')
  assert not grading.grade('1001', '1,000')
  assert not grading.grade('100', '1,000')
  assert not grading.grade(None, '5') and not grading.grade('  ', '5')


def test_extract_boxed():
  assert grading.extract_boxed(r'so $\boxed{\frac{1}{2}}$ and then $\boxed{\frac{a}{b^{2}}}$.') == (
      r'\frac{a}{b^{2}}')
  assert grading.extract_boxed(r'\fbox{7} is it') == '7'
  assert grading.extract_boxed(r'$\boxed 5$') == '5'
  assert grading.extract_boxed(r'\boxed{3} then a cut-off \boxed{\frac{1}{') == '3'
  assert grading.extract_boxed('no box here') is None


def test_extract_gsm8k_and_answer_is():
  assert grading.extract_gsm8k('a\nb\n#### 1,234\n') == '1,234'
  assert grading.extract_gsm8k('#### $-5.5 dollars') == '-5.5'
  assert grading.extract_gsm8k('no marker 12') is None
  assert grading.extract_answer_is('So the answer is 3.5.') == '3.5'
  assert grading.extract_answer_is(
      r'Final Answer: The final answer is $\frac{1}{2}$. I hope it is correct.') == r'\frac{1}{2}'
  assert grading.extract_answer_is('The answer is 7. Next question: 9') == '7'
  assert grading.extract_answer_is('nothing stated') is None


def test_extract_answer_dispatches_by_style():
  text = 'We get 5 apples.\nThe answer is 12.'
  assert grading.extract_answer(text, 'gsm8k') == '12'
  assert grading.extract_answer('x\n#### 40\nThe answer is 12.', 'gsm8k') == '40'
  assert grading.extract_answer('The answer is $1,080 in total.', 'gsm8k') == '1,080'
  assert grading.extract_answer('3 + 4 = 7 apples', 'gsm8k') == '7'  # Last number.
  assert grading.extract_answer(r'It is $\boxed{(3,4]}$. The answer is 2.', 'math') == '(3,4]'
  assert grading.extract_answer('The answer is $x=5$.', 'math') == 'x=5'
  assert grading.extract_answer('3 + 4 = 7', 'math') is None  # MATH needs a stated answer.
  with pytest.raises(ValueError, match='unknown answer style'):
    grading.extract_answer(text, 'mmlu')


def test_grade_off_the_main_thread_runs_without_timeout():
  results = {}

  def work():
    results['right'] = grading.grade(r'\dfrac{7}{4}', r'\frac{7}{4}')
    results['wrong'] = grading.grade(r'(1,2]', r'[1,2]')

  thread = threading.Thread(target=work)
  thread.start()
  thread.join()
  assert results == {'right': True, 'wrong': False}


def test_a_math_verify_timeout_grades_false(monkeypatch):
  def slow(*args, **kwargs):
    raise TimeoutException('Operation timed out!')

  monkeypatch.setattr(grading._math_verify(), 'verify', slow)
  grading._grade.cache_clear()
  assert not grading.grade(r'\frac{1}{3}', r'\frac{1}{3}')
  grading._grade.cache_clear()


def test_grade_many_in_order_with_and_without_a_process_pool():
  preds = [r'\frac{14}{3}', '(3,4)', '10080', 'C', None]
  golds = [r'\frac{14}{3}', '(3,4]', r'10,\!080', r'\text{(C)}', '1']
  expected = [True, False, True, True, False]
  assert grading.grade_many(preds, golds) == expected
  assert grading.grade_many(preds, golds, processes=2) == expected
  with pytest.raises(ValueError, match='2 predictions but 1 gold'):
    grading.grade_many(['1', '2'], ['1'])


def test_every_math500_gold_equals_itself_not_a_perturbed_copy_and_speed():
  grading._grade.cache_clear()
  grading._parse.cache_clear()
  preds = GOLDS + [grading.perturb(g) for g in GOLDS]
  start = time.perf_counter()
  results = grading.grade_many(preds, GOLDS + GOLDS)
  seconds = time.perf_counter() - start
  print(f'\ngrade: {len(preds)} MATH500 answers in {seconds:.2f}s = '
        f'{len(preds) / seconds:.0f} answers/s (uncached)')
  assert all(results[:len(GOLDS)])
  assert [g for g, r in zip(GOLDS, results[len(GOLDS):]) if r] == []
