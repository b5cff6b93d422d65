"""Verifier scoring, aggregation, selection and evaluation: hand-made selection cases, one-pass
scoring equal to per-prefix re-scoring, subsampled accuracy equal to its exact expectation."""

import dataclasses
import itertools
import os

import jax
import numpy as np
import pytest

from configs.arith import get_config
from ttc_jax.model import config as cfg_lib
from ttc_jax import artifacts
from ttc_jax.pipeline import common, eval_verifiers, prm_data, stages, train_prm
from ttc_jax.tasks import arith
from ttc_jax.tokenizer import Tokenizer
from ttc_jax.training import data, objectives
from ttc_jax.training.objectives import ValueRegression
from ttc_jax.verifiers import evaluation, selection
from ttc_jax.verifiers.evaluation import Method
from ttc_jax.verifiers.scoring import Scorer
from ttc_jax.verifiers.selection import aggregate, select
from ttc_jax.verifiers.steps import step_ends


def test_aggregation():
  s = [0.9, 0.2, 0.7]
  assert aggregate(s) == aggregate(s, 'last') == 0.7
  assert aggregate(s, 'min') == 0.2
  assert aggregate(s, 'prod') == pytest.approx(0.126)
  assert aggregate([0.4], 'prod') == 0.4
  rows = [np.array(s), np.array([0.5]), np.array([0.3, 0.8])]
  padded, mask = selection.pad_steps(rows)
  assert padded.shape == (3, 3) and mask.sum() == 6
  for how in selection.AGGREGATIONS:
    np.testing.assert_allclose(selection.aggregate_padded(padded, mask, how),
                               [aggregate(r, how) for r in rows])
  with pytest.raises(ValueError, match="unknown aggregation 'mean'"):
    aggregate(s, 'mean')
  with pytest.raises(ValueError, match='non-empty'):
    aggregate([], 'last')


def test_select_hand_made_cases():
  methods = selection.METHODS
  # One answer.
  assert all(select(['5'], [0.1], m) == '5' for m in methods)
  # All answers distinct: majority is a 1-1-1 tie (first wins); scores decide the others.
  assert select(['a', 'b', 'c'], [0.2, 0.9, 0.5], 'majority') == 'a'
  assert select(['a', 'b', 'c'], [0.2, 0.9, 0.5], 'best_of_n') == 'b'
  assert select(['a', 'b', 'c'], [0.2, 0.9, 0.5], 'weighted') == 'b'
  # Frequency vs score: many weak votes, one strong.
  answers, scores = ['1', '1', '1', '2'], [0.3, 0.3, 0.3, 0.8]
  assert select(answers, None, 'majority') == '1'
  assert select(answers, scores, 'best_of_n') == '2'
  assert select(answers, scores, 'weighted') == '1'  # 0.9 > 0.8
  assert select(answers, [0.2, 0.2, 0.2, 0.8], 'weighted') == '2'  # 0.6 < 0.8
  # Ties: the answer whose first candidate comes first; in best_of_n the first top candidate.
  assert select(['3', '4', '4', '3'], None, 'majority') == '3'
  assert select(['4', '3', '3', '4'], None, 'majority') == '4'
  assert select(['a', 'b', 'b'], [0.5, 0.25, 0.25], 'weighted') == 'a'
  assert select(['b', 'b', 'a'], [0.25, 0.25, 0.5], 'weighted') == 'b'
  assert select(['x', 'y'], [0.5, 0.5], 'best_of_n') == 'x'
  # Invalid answers never win, however many or however well scored...
  assert all(select([None, None, '7'], [0.9, 0.9, 0.1], m) == '7' for m in methods)
  assert select([None, '7', None, '8', '8'], [1.0, 0.0, 1.0, 0.0, 0.0], 'weighted') == '7'
  # ... unless all are invalid.
  assert all(select([None, None], [0.9, 0.1], m) is None for m in methods)


def test_select_bad_input():
  with pytest.raises(ValueError, match="method 'weighted' needs scores"):
    select(['1'], None, 'weighted')
  with pytest.raises(ValueError, match="unknown selection method 'vote'"):
    select(['1'], [0.5], 'vote')
  with pytest.raises(ValueError, match='one per answer'):
    select(['1', '2'], [0.5], 'best_of_n')
  with pytest.raises(ValueError, match='at least one answer'):
    select([], [], 'majority')
  with pytest.raises(ValueError, match='finite'):
    select(['1', '2'], [0.5, float('nan')], 'weighted')


def test_vectorized_selection_equals_library():
  rng = np.random.default_rng(0)
  for _ in range(300):
    n = int(rng.integers(1, 9))
    answers = [None if v < 0 else str(v) for v in rng.integers(-1, 4, n)]
    scores = rng.integers(0, 5, n) / 4  # exact sums: ties are real ties
    ids = selection.answer_ids(answers)
    for method in selection.METHODS:
      i = selection.select_index(ids[None], scores[None], method)[0]
      assert (None if i < 0 else answers[i]) == select(answers, scores, method)


@pytest.mark.parametrize('name,batch_tokens,buckets', [
    ('tiny_gemma1', 4096, (128,)), ('tiny_gemma2', 4096, (128,)),
    ('tiny_gemma3', 512, (32, 64, 128))])  # the last: several batch and length buckets
def test_one_pass_scoring_equals_per_prefix_reference(name, batch_tokens, buckets):
  config = cfg_lib.get_config(name)
  params = ValueRegression(config).init(jax.random.key(0))
  # A random head (its activation weights start at 0) with large weights spreads the logits over
  # both inputs, so a mismatch could not hide in a saturated sigmoid.
  head = params['value_head']
  keys = jax.random.split(jax.random.key(1), len(jax.tree.leaves(head)))
  params['value_head'] = jax.tree.unflatten(jax.tree.structure(head), [
      3 * jax.random.normal(k, x.shape) for k, x in zip(keys, jax.tree.leaves(head))])
  rng = np.random.default_rng(1)
  delim, eos = 4, 1
  prompts, comps = [], []
  for length in (1, 3, 17, 40, 70, 9, 25):
    prompts.append(rng.integers(5, config.vocab_size, rng.integers(1, 20)).tolist())
    c = rng.integers(5, config.vocab_size, length).tolist()
    for k in rng.integers(0, length, length // 6):
      c[k] = delim
    comps.append(c + ([eos] if length % 2 else []))  # some unfinished (no EOS)
  scorer = Scorer(config, delimiter_id=delim, eos_id=eos, batch_tokens=batch_tokens,
                  buckets=buckets)
  one = scorer.step_logits(params, prompts, comps)
  ref = scorer.step_logits_per_prefix(params, prompts, comps)
  assert [len(x) for x in one] == [len(x) for x in ref] == [
      len(step_ends(c, delim, eos)) for c in comps]
  assert np.concatenate(one).std() > 1.0
  for a, b in zip(one, ref):
    np.testing.assert_allclose(a, b, atol=1e-4, rtol=1e-4)
  for p, x in zip(scorer.score(params, prompts, comps), one):
    np.testing.assert_allclose(p, 1 / (1 + np.exp(-x.astype(np.float64))), rtol=1e-6)
  # The backbone's head inputs at the step ends, through the head, give the same logits.
  for c, x, logits in zip(comps, scorer.step_inputs(params['transformer'], prompts, comps), one):
    assert x.shape == (len(logits), objectives.head_input_size(config))
    # The answer-step flag: 1 exactly at a step end on the EOS.
    np.testing.assert_array_equal(x[:, -1], [c[e] == eos for e in step_ends(c, delim, eos)])
    np.testing.assert_allclose(
        objectives.ValueHead().apply({'params': params['value_head']}, x), logits, atol=1e-4,
        rtol=1e-4)


def test_scoring_on_a_mesh_equals_one_device():
  """Rows split over 8 devices where a pass's padded row count divides, on one device where not,
  over several passes (a sharded pass then the next one), give one device's logits."""
  config = cfg_lib.get_config('tiny_gemma3')
  params = ValueRegression(config).init(jax.random.key(0))
  rng = np.random.default_rng(2)
  delim, eos = 4, 1
  prompts = [rng.integers(5, config.vocab_size, rng.integers(1, 8)).tolist() for _ in range(28)]
  comps = [rng.integers(5, config.vocab_size, n).tolist() + [delim, 7, eos]
           for n in rng.integers(4, 90, 28)]
  kw = dict(delimiter_id=delim, eos_id=eos, batch_tokens=512, buckets=(32, 64, 128))
  one = Scorer(config, **kw).step_logits(params, prompts, comps)
  mesh = jax.make_mesh((8,), ('data',), axis_types=(jax.sharding.AxisType.Auto,))
  scorer = Scorer(config, mesh=mesh, **kw)
  order = sorted(range(28), key=lambda i: len(prompts[i]) + len(comps[i]))
  passes = scorer._batches([len(prompts[i]) + len(comps[i]) for i in order])
  assert len(passes) > 2 and any(1 << (len(b) - 1).bit_length() >= 8 for b in passes[:-1])
  for a, b in zip(scorer.step_logits(params, prompts, comps), one):
    np.testing.assert_allclose(a, b, atol=1e-5, rtol=1e-5)


def test_scorer_bad_input():
  config = cfg_lib.get_config('tiny_gemma3')
  params = ValueRegression(config).init(jax.random.key(0))
  scorer = Scorer(config, delimiter_id=4)
  with pytest.raises(ValueError, match='expected \\[transformer, value_head\\]'):
    scorer.score(params['transformer'], [[2]], [[5]])
  with pytest.raises(ValueError, match='1 prompts but 2 completions'):
    scorer.score(params, [[2]], [[5], [6]])
  with pytest.raises(ValueError, match='token id 256 out of range'):
    scorer.score(params, [[2]], [[256]])
  with pytest.raises(ValueError, match='non-empty prompt'):
    scorer.score(params, [[]], [[5]])


def _exact_accuracy(method: Method, answers, correct, scores, n: int) -> float:
  """Expectation over every ordered n-subset of the pool (what draws estimate)."""
  hits = []
  for perm in itertools.permutations(range(len(answers)), n):
    pick = select([answers[i] for i in perm],
                  None if method.score is None else [scores[method.score][i] for i in perm],
                  method.selection)
    first = next((i for i in perm if answers[i] == pick), None)
    hits.append(pick is not None and correct[first])
  return float(np.mean(hits))


def test_subsampled_accuracy_matches_exact_expectation():
  answers = ['1', '2', '2', None, '1']
  correct = np.array([[True, False, False, False, True]])
  scores = {'prm/last': np.array([[0.9, 0.5, 0.3, 1.0, 0.1]])}
  ids = selection.answer_ids(answers)[None]
  rng = np.random.default_rng(0)
  for n in (1, 2, 3, 5):
    subsets = evaluation.draw_subsets(rng, 1, 5, n, 20_000)
    for method in (Method('majority', 'majority'), Method('bon', 'best_of_n', 'prm/last'),
                   Method('weighted', 'weighted', 'prm/last')):
      got = evaluation.method_accuracy(method, ids, correct, scores, subsets)[0]
      exact = _exact_accuracy(method, answers, correct[0],
                              {k: v[0] for k, v in scores.items()}, n)
      assert got == pytest.approx(exact, abs=0.015), (method.name, n)
    oracle = evaluation.oracle_accuracy(correct, subsets)[0]
    assert oracle == pytest.approx(evaluation.pass_at_k(5, 2, n), abs=0.015)
  with pytest.raises(ValueError, match='budget N=6 with a pool of 5'):
    evaluation.draw_subsets(rng, 1, 5, 6, 10)


def test_reliability():
  pred = np.array([0.05, 0.15, 0.95, 0.9, 0.5])
  labels = np.array([0.0, 0.25, 1.0, 0.75, 0.5])
  out = evaluation.reliability(pred, labels, 10)
  assert out['brier'] == pytest.approx(np.mean((pred - labels) ** 2))
  assert [b['count'] for b in out['bins']] == [1, 1, 0, 0, 0, 1, 0, 0, 0, 2]
  assert out['bins'][9]['mean_label'] == pytest.approx(0.875)
  with pytest.raises(ValueError, match='expected equal'):
    evaluation.reliability(pred, labels[:2], 10)


def test_accuracy_table_with_a_perfect_and_a_useless_verifier():
  rng = np.random.default_rng(0)
  p, k = 12, 8
  answer_ids = rng.integers(-1, 4, (p, k))
  correct = (answer_ids == 0) & (rng.random((p, 1)) < 0.8)  # answer 0 right on most problems
  perfect = correct.astype(np.float64)
  scores = {f'{v}/{a}': perfect if v == 'prm' else np.full((p, k), 0.5)
            for v in ('prm', 'orm') for a in selection.AGGREGATIONS}
  bins = evaluation.difficulty_bins(correct.mean(1), 3)
  table, per_problem = eval_verifiers.accuracy_table(answer_ids, correct, scores, bins,
                                                     (1, 4, 8), 500, 0)
  assert set(table) == {'overall', '1', '2', '3'}
  for name, acc in per_problem.items():  # per problem, per N: the bin means average them
    assert acc.shape == (p, 3)
    np.testing.assert_allclose(acc[bins == 1].mean(0), table['1']['methods'][name]['accuracy'])
  assert sum(table[b]['num_problems'] for b in '123') == p
  for group in table.values():
    m = group['methods']
    assert set(m) == {x.name for x in eval_verifiers.METHODS} | {'oracle', 'pass@N'}
    # A perfect verifier finds a correct sample whenever the draw has one: the oracle.
    for name in ('prm_bon_last', 'prm_bon_min', 'prm_weighted_prod'):
      np.testing.assert_allclose(m[name]['accuracy'], m['oracle']['accuracy'])
    # Constant scores: weighted is majority, best-of-N takes the first valid sample (pass@1).
    np.testing.assert_allclose(m['orm_weighted']['accuracy'], m['majority']['accuracy'])
    assert m['orm_bon']['accuracy'][-1] == pytest.approx(m['pass@N']['accuracy'][0], abs=0.05)
    np.testing.assert_allclose(m['oracle']['accuracy'], m['pass@N']['accuracy'], atol=0.05)


@pytest.fixture(scope='module')
def tok(tmp_path_factory):
  problems = arith.generate(200, seed=0, num_ops_range=(1, 4))
  return Tokenizer.train(arith.iter_texts(problems), tmp_path_factory.mktemp('tok') / 'a.model',
                         32, arith.SPECIAL_SYMBOLS)


def _random_head(params, seed):
  head = params['value_head']
  keys = jax.random.split(jax.random.key(seed), len(jax.tree.leaves(head)))
  return jax.tree.unflatten(jax.tree.structure(head), [
      jax.random.normal(k, x.shape) for k, x in zip(keys, jax.tree.leaves(head))])


def test_score_samples_cached_per_shard(tok, tmp_path):
  """PRM and ORM heads on one backbone share its pass and equal scoring each alone; scores are
  cached per shard and kind; a shard whose samples changed, or a kind missing, is rescored."""
  config = get_config('tiny')
  config.sample.problems_per_batch = 2
  problems = arith.generate(3, seed=1, num_ops_range=(2, 4))
  recs = [{'id': p.id, 'completions': [arith.format_solution(p.steps), '#### 7',
                                       arith.format_solution(p.steps)]} for p in problems]
  prompts = {p.id: common.encode_example(tok, p)[0] for p in problems}
  model = common.model_config(config, 'base', tok.vocab_size)
  scorer = Scorer(model, delimiter_id=tok.id_of('\n'), eos_id=tok.eos_id)
  prm = ValueRegression(model).init(jax.random.key(0))
  prm['value_head'] = _random_head(prm, 1)
  # The ORM's backbone: equal arrays, not the same objects (as two loaded checkpoints).
  orm = {'transformer': jax.tree.map(np.array, prm['transformer']),
         'value_head': _random_head(prm, 2)}
  params = {'prm': prm, 'orm': orm}
  calls = []
  verifiers = lambda: calls.append(1) or (scorer, params)
  first = eval_verifiers.score_samples(config, str(tmp_path), recs, prompts, tok, verifiers)
  comps = [tok.encode(t, add_eos=True) for r in recs for t in r['completions']]
  for kind in ('prm', 'orm'):
    directory = artifacts.verifier_scores(config, str(tmp_path), kind).path
    assert sorted(os.listdir(directory)) == ['shard_00000.npz', 'shard_00001.npz']
    direct = scorer.score(params[kind], [prompts[r['id']] for r in recs for _ in r['completions']],
                          comps)
    got = [x for r in first[kind] for x in r]
    assert [len(x) for x in got] == [len(step_ends(c, tok.id_of('\n'), tok.eos_id))
                                     for c in comps]
    for a, b in zip(got, direct):
      np.testing.assert_allclose(a, b, rtol=1e-5)
  assert scorer.score_verifiers(params, [], []) == {'prm': [], 'orm': []}
  assert not np.allclose(np.concatenate([x for r in first['prm'] for x in r]),
                         np.concatenate([x for r in first['orm'] for x in r]))
  calls.clear()
  again = eval_verifiers.score_samples(config, str(tmp_path), recs, prompts, tok, verifiers)
  assert not calls  # everything came from the cache
  for kind in ('prm', 'orm'):
    for a, b in zip([x for r in again[kind] for x in r], [x for r in first[kind] for x in r]):
      np.testing.assert_array_equal(a, b)
  os.remove(artifacts.verifier_scores(config, str(tmp_path), 'orm').file('shard_00000.npz'))
  recs[2]['id'] = recs[1]['id']  # other samples in shard 1: rescored, shard 0 reused
  eval_verifiers.score_samples(config, str(tmp_path), recs, prompts, tok, verifiers)
  assert calls == [1, 1]


def test_eval_verifiers_stage(tmp_path, monkeypatch):
  """The stage's glue on the tiny config, with stand-in samples and random-parameter verifiers
  (the trained chain runs in tests/test_launch.py): files and keys."""
  from ttc_jax import workdir as wd
  from ttc_jax.pipeline import sample
  config = get_config('tiny')
  config.verifier_backbone = ''  # the stand-in verifiers sit on the proposer
  workdir = str(tmp_path)
  for name in ('data', 'tokenizer'):
    stages.execute(stages.table(config)[name], config, workdir, rebuild_stale=False)
  tok = common.load_tokenizer(config, workdir, 'test')
  problems = common.load_problems(config, workdir, 'test', 'test')
  rng = np.random.default_rng(0)
  recs = []
  for p in problems:
    texts = [arith.format_solution(p.steps[:-1] + (arith.answer_line(p.answer + d),))
             for d in rng.integers(-1, 2, config.sample.num_samples)]
    texts[-1] = texts[-1][:-2]  # an unfinished one, no answer
    recs.append({'id': p.id, 'num_ops': p.num_ops, 'answer': p.answer, 'completions': texts,
                 'correct': [arith.grade(t, p.answer) for t in texts]})
  model = common.model_config(config, 'base', tok.vocab_size)
  loads = []

  def fake_verifier(config_, workdir_, kind, stage):
    loads.append(kind)
    return model, ValueRegression(model).init(jax.random.key(len(kind)))

  held_out = [prm_data.StepLabels(
      problem_id=p.id, num_ops=p.num_ops, answer=p.answer, sample_index=0,
      prompt_ids=common.encode_example(tok, p)[0], completion_ids=common.encode_example(tok, p)[1],
      completion=arith.format_solution(p.steps), labels=[0.5] * len(p.steps), correct=True,
      step_ends=step_ends(common.encode_example(tok, p)[1], tok.id_of('\n'), tok.eos_id))
      for p in problems[:3]]
  monkeypatch.setattr(sample, 'load_samples', lambda *a: recs)
  monkeypatch.setattr(train_prm, 'load_verifier', fake_verifier)
  monkeypatch.setattr(prm_data, 'load_labels', lambda *a: held_out)
  eval_verifiers.run(config, workdir)
  out = artifacts.verifier_eval(config, workdir)
  assert out.name == 'eval_verifiers/base/test/on_base'
  result = wd.read_json(out.file('verifiers.json'))
  assert sorted(loads) == ['orm', 'prm']
  assert result['ns'] == [1, 2, 4] and result['pool'] == 4
  assert set(result['groups']) == {'overall', '1', '2', '3', '4', '5'}
  overall = result['groups']['overall']
  assert overall['num_problems'] == 20
  for name, row in overall['methods'].items():
    assert len(row['accuracy']) == 3 and all(0 <= a <= 1 for a in row['accuracy']), name
  per_problem = wd.read_npz(out.file('per_problem.npz'))
  assert per_problem['ids'].tolist() == [r['id'] for r in recs]
  assert per_problem['accuracy:majority'].shape == (20, 3)
  calib = result['prm_calibration']
  assert calib['num_steps'] == sum(len(s.labels) for s in held_out)
  for png in ('verifiers.png', 'prm_reliability.png'):
    assert os.path.getsize(out.file(png)) > 1000


@pytest.mark.parametrize('kind', artifacts.VERIFIER_KINDS)
def test_head_examples_equal_token_examples(tok, kind):
  """A head trained on a frozen backbone's step-end inputs (`head_examples`) sees the loss the
  whole model would give on the token examples: same targets, same positions."""
  config = get_config('tiny')
  model = common.model_config(config, 'base', tok.vocab_size)
  params = ValueRegression(model).init(jax.random.key(0))
  head = params['value_head']
  keys = jax.random.split(jax.random.key(1), len(jax.tree.leaves(head)))
  params['value_head'] = jax.tree.unflatten(jax.tree.structure(head), [
      jax.random.normal(k, x.shape) for k, x in zip(keys, jax.tree.leaves(head))])
  rng = np.random.default_rng(0)
  delim = tok.id_of(arith.STEP_DELIMITER)
  labels = []
  for i, p in enumerate(arith.generate(5, seed=2, num_ops_range=(1, 4))):
    ids = tok.encode(arith.format_solution(p.steps), add_eos=True)
    ends = step_ends(ids, delim, tok.eos_id)
    labels.append(prm_data.StepLabels(
        problem_id=p.id, num_ops=p.num_ops, answer=p.answer, sample_index=i,
        prompt_ids=common.encode_example(tok, p)[0], completion_ids=ids, completion='',
        step_ends=ends, labels=rng.uniform(size=len(ends)).tolist(), correct=bool(i % 2)))
  scorer = Scorer(model, delimiter_id=delim, eos_id=tok.eos_id)
  inputs = scorer.step_inputs(params['transformer'], [l.prompt_ids for l in labels],
                              [l.completion_ids for l in labels])
  heads = train_prm.head_examples(labels, kind, inputs)
  tokens = train_prm.examples(labels, kind, 96)
  assert heads.value_mask.sum() == tokens.value_mask.sum() > 0
  batch = lambda ex: data.Batch(tokens=ex.tokens, loss_mask=ex.loss_mask,
                                value_targets=ex.value_targets, value_mask=ex.value_mask,
                                features=ex.features)
  want, _ = ValueRegression(model).loss(params, batch(tokens))
  got, _ = objectives.HeadRegression(model).loss({'value_head': params['value_head']},
                                                 batch(heads))
  np.testing.assert_allclose(float(got), float(want), rtol=1e-4)
  with pytest.raises(ValueError, match='has 2 step ends but the scorer finds 1'):
    train_prm.head_examples([dataclasses.replace(labels[0], step_ends=[0, 1])], kind,
                            [inputs[0][:1]])
