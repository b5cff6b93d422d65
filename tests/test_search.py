"""Search-engine tests: incremental = one-pass scoring, gathered caches continue like a fresh
prefill, the survivor rule, the methods' bookkeeping, no recompiles, bad input."""

import dataclasses
import os
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ttc_jax.errors import ConfigError
from ttc_jax.model import config as cfg_lib
from ttc_jax.model import transformer as tr
from ttc_jax.sampling import sampler
from ttc_jax.search import beams, engine, incremental
from ttc_jax.training.objectives import ValueRegression
from ttc_jax.verifiers.scoring import Scorer
from ttc_jax.verifiers.steps import step_ends

DELIM, EOS = 4, 1
# A small vocabulary makes the random model end steps (DELIM) and answers (EOS) often; the
# sliding window of 8 makes the local layers' masks matter across rounds.
CONFIG = cfg_lib.gemma3(vocab_size=16, embed_dim=32, hidden_dim=64, num_heads=2, head_dim=16,
                        num_kv_heads=1, num_layers=2, sliding_window_size=8)


def _scaled(tree, scale, seed):
  keys = jax.random.split(jax.random.key(seed), len(jax.tree.leaves(tree)))
  return jax.tree.unflatten(jax.tree.structure(tree), [
      scale * jax.random.normal(k, x.shape) for k, x in zip(keys, jax.tree.leaves(tree))])


PROPOSER = _scaled(tr.init_params(CONFIG, jax.random.key(0)), 0.3, 1)
VERIFIER = ValueRegression(CONFIG).init(jax.random.key(2))
VERIFIER = {'transformer': _scaled(VERIFIER['transformer'], 0.3, 3),
            'value_head': _scaled(VERIFIER['value_head'], 3.0, 4)}
MODELS = engine.Models(CONFIG, PROPOSER, CONFIG, VERIFIER, delimiter_id=DELIM, eos_id=EOS)
PROMPTS = [[2, 7, 9, 4], [2, 5, 6, 8, 11, 4], [2, 13, 4]]


def _answer(ids):
  """A toy answer: the token before EOS (None without EOS)."""
  return str(ids[-2]) if len(ids) >= 2 and ids[-1] == EOS else None


def _config(method, n=8, m=2, **kw):
  kw = dict(dict(max_step_tokens=6, max_new_tokens=24, max_rounds=8), **kw)
  return engine.SearchConfig(method=method, n=n, beam_width=m, **kw)


def test_incremental_scores_equal_one_pass_across_rounds_and_gathers():
  rng = np.random.default_rng(0)
  rows, cache_size = 4, 128
  tokens = np.zeros((rows, 8), np.int32)
  lengths = np.array([4, 7, 2, 5], np.int32)
  prompts = [rng.integers(5, 16, n).tolist() for n in lengths]
  for i, p in enumerate(prompts):
    tokens[i, :len(p)] = p
  state = incremental.prefill(VERIFIER['transformer'], jnp.asarray(tokens), jnp.asarray(lengths),
                              config=CONFIG, num_samples=1, cache_size=cache_size)
  completions = [[] for _ in range(rows)]
  logits = [[] for _ in range(rows)]
  order = np.arange(rows)
  for r in range(5):
    n = rng.integers(0 if r else 1, 6, rows)  # some rows append nothing in a round
    chunk = np.zeros((rows, 8), np.int32)
    for i in range(rows):
      step = rng.integers(5, 16, n[i]).tolist()
      if n[i]:
        step[-1] = EOS if r == 4 else DELIM
      chunk[i, :n[i]] = step
      completions[i] += step
    state, value = incremental.append(VERIFIER, state, jnp.asarray(chunk), jnp.asarray(n),
                                      config=CONFIG, eos_id=EOS)
    for i in range(rows):
      if n[i]:
        logits[i].append(float(value[i]))
    if r == 2:  # survivors gathered: row 0 <- 2, 1 <- 1, 2 <- 2, 3 <- 0
      src = np.array([2, 1, 2, 0])
      state = jax.tree.map(lambda x: x if x.ndim == 0 else x[src], state)
      completions = [list(completions[s]) for s in src]
      logits = [list(logits[s]) for s in src]
      order = order[src]
  scorer = Scorer(CONFIG, delimiter_id=DELIM, eos_id=EOS)
  one_pass = scorer.step_logits(VERIFIER, [prompts[s] for s in order], completions)
  for i in range(rows):
    assert len(one_pass[i]) == len(step_ends(completions[i], DELIM, EOS)) == len(logits[i])
    np.testing.assert_allclose(logits[i], one_pass[i], atol=1e-5, rtol=1e-5)
  assert np.std(np.concatenate(one_pass)) > 0.5  # the head is not saturated or constant


def test_gathered_cache_continues_like_a_fresh_prefill():
  """Greedy continuation of gathered cache rows = greedy continuation of the same history
  prefilled from scratch."""
  prompt = [[2, 7, 9, 4], [2, 5, 6, 8, 11, 4]]
  out = sampler.generate(PROPOSER, jnp.asarray([[2, 7, 9, 4, 0, 0], [2, 5, 6, 8, 11, 4]]),
                         jnp.asarray([4, 6]), jnp.full((2, 1), DELIM), jax.random.key(0),
                         jnp.float32(1.0), jnp.float32(1.0), config=CONFIG, num_samples=3,
                         max_new_tokens=5, top_k=0, cache_size=64)
  seqs = out.sequences()
  src = jnp.asarray([4, 0, 5, 5, 1, 2])
  cache = jax.tree.map(lambda x: x if x.ndim == 0 else x[src], out.cache)
  pending = out.last_token[src]
  cont = sampler.generate(PROPOSER, pending[:, None], jnp.ones((6,), jnp.int32),
                          jnp.full((6, 1), -1), jax.random.key(1), jnp.float32(0.0),
                          jnp.float32(1.0), cache, config=CONFIG, num_samples=1,
                          max_new_tokens=7, top_k=0, cache_size=64)
  history = [prompt[int(s) // 3] + seqs[int(s)] for s in src]
  fresh = sampler.Sampler(CONFIG, eos_id=EOS).sample(
      PROPOSER, history, key=jax.random.key(2), max_new_tokens=7, temperature=0.0,
      stop_tokens=[])
  assert cont.sequences() == fresh.sequences()


def test_survivor_rule_on_a_hand_made_two_problem_case():
  # Problem 0 (rows 0-3): row 1 completed; values of live rows 0, 2, 3: 0.2, 0.9, 0.9 (a tie).
  # Problem 1 (rows 4-7): all live, values 0.1, 0.5, 0.3, 0.7.
  value = jnp.asarray([0.2, 0.0, 0.9, 0.9, 0.1, 0.5, 0.3, 0.7])
  done = jnp.asarray([False, True, False, False, False, False, False, False])
  src = np.asarray(beams.plan_sources(value, done, group=4, width=2))
  # P0: 3 live -> ceil(3/2) = 2 survivors: rows 2 and 3 (0.9 tie: both, lower first); live slots
  # 0, 2, 3 take survivors 2, 2, 3; row 1 keeps itself. P1: 2 survivors, rows 7 (0.7) and 5
  # (0.5); in row order 5, 7: slots 4, 5 <- 5; 6, 7 <- 7.
  np.testing.assert_array_equal(src, [2, 1, 2, 3, 5, 5, 7, 7])
  # The tie rule: equal values, the lower row survives.
  src = np.asarray(beams.plan_sources(jnp.asarray([0.5, 0.5, 0.5, 0.5]),
                                       jnp.zeros(4, bool), group=4, width=4))
  np.testing.assert_array_equal(src, [0, 0, 0, 0])
  # Width 1 keeps every row where it is (beam M=1 = N independent samples).
  src = np.asarray(beams.plan_sources(value, done, group=4, width=1))
  np.testing.assert_array_equal(src, np.arange(8))
  # DVTS: groups of M=2, the best of each: [0,1]: row 1 done, row 0 alone; [2,3] tie -> 2;
  # [4,5] -> 5; [6,7] -> 7.
  src = np.asarray(beams.plan_sources(value, done, group=2, width=2))
  np.testing.assert_array_equal(src, [0, 1, 2, 2, 5, 5, 7, 7])


STEP_METHODS = [('beam', 2, 0), ('dvts', 2, 0), ('lookahead', 2, 2), ('beam', 1, 0)]


@functools.cache
def _searched(method, m, k, devices=1):
  """Results of one search of PROMPTS (+2 problems: 5, padded to 8 on a mesh), key 0."""
  mesh = None
  if devices > 1:
    mesh = jax.make_mesh((devices,), ('data',), axis_types=(jax.sharding.AxisType.Auto,))
  return engine.search(_config(method, m=m, lookahead=k), MODELS, PROMPTS + EXTRA,
                       jax.random.key(0), _answer, mesh=mesh)


EXTRA = [[2, 9, 4], [2, 6, 6, 4]]


@pytest.mark.parametrize('method,m,k', STEP_METHODS)
def test_step_search_bookkeeping(method, m, k):
  c = _config(method, m=m, lookahead=k)
  results = _searched(method, m, k)
  assert len(results) == len(PROMPTS + EXTRA)
  for prompt, r in zip(PROMPTS + EXTRA, results):
    assert len(r.completions) == len(r.step_scores) == len(r.scores) == c.n
    for comp, steps in zip(r.completions, r.step_scores):
      # One score per step, every step ends on the delimiter but a final one (EOS or a cut).
      assert len(steps) == len(step_ends(comp, DELIM, EOS)) if comp else len(steps) == 0
      assert len(comp) <= c.max_new_tokens + c.max_step_tokens
    np.testing.assert_allclose(r.scores, [s[-1] if len(s) else 0 for s in r.step_scores],
                               rtol=1e-6)
    assert r.generations == c.n * (k + 1 if method == 'lookahead' else 1)
    assert r.prompt_tokens == len(prompt)
    sampled = sum(map(len, r.completions))
    # Pruned rows' steps were sampled too; a lookahead's rollouts as well.
    assert r.proposer_tokens >= sampled
    assert r.verifier_tokens >= r.proposer_tokens + len(prompt)
    if r.pick >= 0:
      assert r.answers[r.pick] is not None
  # The scores are the verifier's on the final candidates (one pass agrees with the search).
  scorer = Scorer(CONFIG, delimiter_id=DELIM, eos_id=EOS)
  r = results[1]
  one = scorer.score(VERIFIER, [PROMPTS[1]] * c.n, r.completions)
  if method != 'lookahead':  # lookahead's values are rollout ends, its step scores are not
    for a, b in zip(one, r.step_scores):
      np.testing.assert_allclose(a, b, atol=1e-5)


@pytest.mark.parametrize('method,m,k', [('best_of_n', 2, 0), *STEP_METHODS[:3]])
def test_eight_devices_give_the_same_search_as_one(method, m, k):
  """Rows sharded over problems on 8 simulated devices (5 problems padded to 8): the same
  tokens, scores, picks and token counts as one device, for the same key."""
  assert jax.device_count() >= 8  # conftest simulates 8 CPU devices
  one, eight = _searched(method, m, k), _searched(method, m, k, devices=8)
  assert len(one) == len(eight) == len(PROMPTS + EXTRA)
  for a, b in zip(one, eight):
    assert a.completions == b.completions
    assert a.pick == b.pick
    assert (a.proposer_tokens, a.verifier_tokens) == (b.proposer_tokens, b.verifier_tokens)
    for x, y in zip(a.step_scores, b.step_scores):
      np.testing.assert_allclose(x, y, atol=1e-5)
  assert sum(len(c) for r in one for c in r.completions) > 0


def test_beam_search_prunes_toward_the_verifier():
  """After the first round, the beams of a problem descend from its top-scored first steps."""
  c = _config('beam', m=2, max_rounds=2)
  r = engine.search(c, MODELS, PROMPTS + EXTRA, jax.random.key(3), _answer)[0]
  first = engine.search(dataclasses.replace(c, max_rounds=1), MODELS, PROMPTS + EXTRA,
                        jax.random.key(3), _answer)[0]
  # Same key: round 1 is the same; the survivors are the top half of the live first steps.
  live = [i for i, comp in enumerate(first.completions) if comp and comp[-1] == DELIM]
  assert live
  top = sorted(live, key=lambda i: (-first.step_scores[i][0], i))[:-(-len(live) // 2)]
  kept = {tuple(first.completions[i]) for i in top}
  for comp, done in zip(r.completions, first.completions):
    prefix = tuple(comp[:comp.index(DELIM) + 1]) if DELIM in comp else tuple(comp)
    assert prefix in kept or tuple(comp) == tuple(done)


def test_best_of_n_uses_one_sampler_call_and_the_one_pass_scorer():
  c = _config('best_of_n')
  results = _searched('best_of_n', 2, 0)
  scorer = Scorer(CONFIG, delimiter_id=DELIM, eos_id=EOS)
  for prompt, r in zip(PROMPTS + EXTRA, results):
    assert r.rounds == 1 and r.generations == c.n
    assert r.proposer_tokens == sum(map(len, r.completions))
    assert r.verifier_tokens == r.proposer_tokens + c.n * len(prompt)
    for a, b in zip(scorer.score(VERIFIER, [prompt] * c.n, r.completions), r.step_scores):
      np.testing.assert_allclose(a, b, atol=5e-6)  # other batches: rounding differs


def test_no_recompile_on_a_second_search():
  c = _config('lookahead', m=2, lookahead=2)
  _searched('lookahead', 2, 2)  # the same shapes, compiled
  compiles = []
  listener = lambda name, *a, **k: compiles.append(name) if 'backend_compile' in name else None
  jax.monitoring.register_event_duration_secs_listener(listener)
  try:
    engine.search(c, MODELS, [[2, 9, 9, 4], [2, 4], [2, 3, 3, 3, 4], [2, 8, 4], [2, 5, 4]],
                  jax.random.key(5), _answer)
  finally:
    jax.monitoring.unregister_event_duration_listener(listener)
  # Same shapes, other problems and key: every round's calls are compiled already (a chunk
  # width not seen before would compile once; widths are few: multiples of 8 up to the step).
  assert compiles == []


@pytest.mark.parametrize('kw,match', [
    (dict(method='bfs', n=4), 'unknown search method'),
    (dict(method='beam', n=6, beam_width=4), 'not divisible'),
    (dict(method='beam', n=4, beam_width=8), 'M=8'),
    (dict(method='dvts', n=0), 'n=0'),
    (dict(method='lookahead', n=4, beam_width=2, lookahead=0), 'lookahead k=0'),
])
def test_bad_settings_are_one_line_errors(kw, match):
  with pytest.raises(ConfigError, match=match):
    engine.SearchConfig(**kw)


def test_verifier_with_another_vocabulary_is_refused():
  other = cfg_lib.gemma3(vocab_size=32, embed_dim=32, hidden_dim=64, num_heads=2, head_dim=16,
                         num_kv_heads=1, num_layers=2, sliding_window_size=8)
  with pytest.raises(ConfigError, match='vocabulary 32 != proposer vocabulary 16'):
    engine.Models(CONFIG, PROPOSER, other, VERIFIER, delimiter_id=DELIM, eos_id=EOS)


def test_eval_search_resumes_at_the_missing_run(full_run, tmp_path, monkeypatch):
  """A run file lost (a kill mid-run) is the only work a rerun does; the summary is the same."""
  import json
  import shutil
  from configs.arith import get_config
  from ttc_jax import artifacts
  from ttc_jax.manifest import State, status
  from ttc_jax.pipeline import eval_search, stages
  config = get_config('tiny')
  workdir = tmp_path / 'wd'
  shutil.copytree(full_run, workdir)
  summary = artifacts.search_eval(config, str(workdir))
  before = json.loads(open(summary.file('search.json')).read())
  runs = artifacts.search_runs(config, str(workdir), 'beam_m2')
  lost = runs.file('n4_seed0.json')
  os.remove(lost)
  assert status(runs).state is State.PARTIAL
  calls = []
  real = engine.search
  monkeypatch.setattr(engine, 'search', lambda c, *a, **k: calls.append(c.name) or real(c, *a, **k))
  stages.execute(stages.table(config)['eval_search'], config, str(workdir), rebuild_stale=False)
  assert set(calls) == {'beam_m2'} and os.path.exists(lost)
  after = json.loads(open(summary.file('search.json')).read())
  strip = lambda d: {m: {b: {k: v for k, v in e.items() if k != 'seconds'} for b, e in x.items()}
                     for m, x in d['methods'].items()}
  assert strip(after) == strip(before)
  assert status(runs).state is State.DONE
  assert eval_search.runs(config)  # every configured (method, budget, seed) has a file
  for name, budget, seed, _ in eval_search.runs(config):
    assert os.path.exists(artifacts.search_runs(config, str(workdir), name).file(
        f'n{budget}_seed{seed}.json'))
