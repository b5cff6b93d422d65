"""Revision chains: cache continuation == fresh prefill of the same context, the window's
semantics against a full forward pass, the rounds' shapes, counts and input checks."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ttc_jax.errors import ConfigError
from ttc_jax.model import config as cfg_lib
from ttc_jax.model import transformer as tr
from ttc_jax.revision import chains
from ttc_jax.sampling import sampler

CONFIG = cfg_lib.get_config('tiny_gemma3')
PARAMS = tr.init_params(CONFIG, jax.random.key(0))
# A token the random model's argmax often picks: some attempts end on it early, others run to
# MAX_NEW (both separator cases, sampled EOS and appended EOS, occur).
EOS = 146
MAX_NEW = 6
WINDOW = 4
LENGTHS = [7, 3, 1]  # window + 3: rounds 2-5 continue the caches, rounds 6-7 slide the window
# Two problems per batch (rows_per_batch 6 / 3 chains): two batches, so batching is covered.
ROWS_PER_BATCH = 6


def _prompts(lengths=(5, 9, 7, 4), seed=0):
  rng = np.random.default_rng(seed)
  return [[2] + rng.integers(3, CONFIG.vocab_size, n).tolist() for n in lengths]


PROMPTS = _prompts()


def _run(key=1, temperature=0.0, reprefill=False, prompts=PROMPTS, **kw):
  return chains.run_chains(CONFIG, PARAMS, prompts, LENGTHS, jax.random.key(key), eos_id=EOS,
                           max_new_tokens=MAX_NEW, temperature=temperature, window=WINDOW,
                           rows_per_batch=ROWS_PER_BATCH, reprefill=reprefill, **kw)


@functools.cache
def _greedy(reprefill: bool) -> chains.ChainResult:
  return _run(reprefill=reprefill)


def test_context_keeps_last_window_attempts_each_closed_by_one_eos():
  e = 1
  attempts = [[10, e], [11, 12], [13, e], [14], [15, 16, e], [17]]
  # Each attempt closed by one EOS, then the prompt again without its BOS (2).
  assert chains.context_tokens([2, 5], [], eos_id=e) == [2, 5]
  assert chains.context_tokens([2, 5], attempts[:2], eos_id=e) == [2, 5, 10, e, 5, 11, 12, e, 5]
  assert chains.context_tokens([2, 5], attempts, eos_id=e) == [
      2, 5, 13, e, 5, 14, e, 5, 15, 16, e, 5, 17, e, 5]
  assert chains.context_tokens([2], attempts, eos_id=e, window=1) == [2, 17, e]
  assert chains.context_tokens([2], [[e]], eos_id=e) == [2, e]  # an empty attempt: EOS alone
  with pytest.raises(ConfigError, match='window=0'):
    chains.context_tokens([2], attempts, eos_id=e, window=0)


def test_continued_caches_equal_fresh_prefill_of_the_context():
  ours, fresh = _greedy(False), _greedy(True)
  assert ours.attempts == fresh.attempts
  flat = [a for problem in ours.attempts for chain in problem for a in chain]
  ended = [a[-1] == EOS for a in flat]
  assert any(ended) and not all(ended)  # both separator cases were exercised
  assert len({tuple(a) for a in flat}) > 3


def test_each_attempt_is_the_argmax_continuation_of_its_window_context():
  model = tr.Transformer(CONFIG)
  width = 64

  @jax.jit
  def logits(tokens, mask):
    return model.apply({'params': PARAMS}, tokens, mask).logits[0]

  result = _greedy(False)
  for p in (0, 3):  # a problem of each batch
    history = result.attempts[p][0]
    assert len(history) == 7
    for j, attempt in enumerate(history):
      context = chains.context_tokens(PROMPTS[p], history[:j], eos_id=EOS, window=WINDOW)
      assert attempt[-1] == EOS or len(attempt) == MAX_NEW
      assert EOS not in attempt[:-1]
      seq = context + attempt
      tokens = np.zeros((1, width), np.int32)
      tokens[0, :len(seq)] = seq
      got = logits(jnp.asarray(tokens), jnp.asarray(np.arange(width)[None] < len(seq)))
      expected = np.argmax(np.asarray(got[len(context) - 1:len(seq) - 1]), axis=-1).tolist()
      assert attempt == expected, (p, j)


def test_counts():
  for reprefill in (False, True):
    r = _greedy(reprefill)
    assert [[len(chain) for chain in problem] for problem in r.attempts] == [LENGTHS] * 4
    assert r.sampled_tokens == sum(len(a) for problem in r.attempts for chain in problem
                                   for a in chain)
  ours, fresh = _greedy(False), _greedy(True)
  # Only rounds >= window + 2 rebuild a cache (ours); the baseline rebuilds every attempt's.
  assert ours.prefills == 4 * sum(max(0, n - WINDOW - 1) for n in LENGTHS) == 8
  assert fresh.prefills == 4 * sum(n - 1 for n in LENGTHS)
  # Ours feeds each prompt once, then per continued attempt the pending token (+ an appended
  # EOS), then each slid window's context; the baseline feeds every attempt's whole context.
  expected, baseline = 0, 0
  for prompt, problem in zip(PROMPTS, ours.attempts):
    expected += len(prompt)
    for chain in problem:
      for j in range(len(chain)):
        context = len(chains.context_tokens(prompt, chain[:j], eos_id=EOS, window=WINDOW))
        baseline += context
        if 1 <= j <= WINDOW:  # pending token (+ EOS), the prompt again without BOS
          expected += (1 if chain[j - 1][-1] == EOS else 2) + len(prompt) - 1
        elif j > WINDOW:
          expected += context
  assert ours.prefill_tokens == expected
  assert fresh.prefill_tokens == baseline


def test_rounds_continue_caches_and_compact_rows(monkeypatch):
  calls = []
  real = sampler.generate

  def spy(params, tokens, lengths, stop, key, temperature, top_p, cache=None, active=None, **kw):
    calls.append((tokens.shape[0], tokens.shape[1], cache is not None, kw['num_samples'],
                  int(np.asarray(active).sum())))
    return real(params, tokens, lengths, stop, key, temperature, top_p, cache, active, **kw)

  monkeypatch.setattr(sampler, 'generate', spy)
  seen = []
  result = _run(progress=lambda done, total: seen.append((done, total)))
  assert result.attempts == _greedy(False).attempts
  # (rows, continues a cache, fan-out, live rows) per round of each batch: round 1 one prefill
  # per prompt fanned out to 3 chains; rounds 2-3 the 7- and 3-chains continue (6 rows compacted
  # to 4); rounds 4-5 the 7-chains alone (2 rows); rounds 6-7 slide: fresh caches.
  per_batch = [(2, False, 3, 2), (4, True, 1, 4), (4, True, 1, 4), (2, True, 1, 2),
               (2, True, 1, 2), (2, False, 1, 2), (2, False, 1, 2)]
  assert [c[:1] + c[2:] for c in calls] == per_batch * 2
  # A continued round feeds one chunk (pending token, EOS, the question line: <= 11 tokens,
  # bucket 16), never the earlier attempts again.
  assert [c[1] for c in calls if c[2]] == [16] * 8
  assert [calls[0][1], calls[7][1]] == [16, 16]  # the prompt bucket
  total = 4 * sum(LENGTHS)
  assert seen[-1] == (total, total) and len(seen) == 14
  assert [d for d, _ in seen] == sorted(d for d, _ in seen)


def test_same_key_same_tokens_other_key_other_tokens():
  prompts = PROMPTS[:2] + PROMPTS[:2]  # the same problems again, in the second batch
  a = _run(key=5, temperature=1.0, prompts=prompts).attempts
  assert a == _run(key=5, temperature=1.0, prompts=prompts).attempts
  assert a != _run(key=6, temperature=1.0, prompts=prompts).attempts
  assert a[:2] != a[2:]  # each batch folds its own index into the key


@pytest.mark.parametrize('kwargs, message', [
    (dict(lengths=[3, 0]), 'chain length 0 '),
    (dict(lengths=[]), 'chain lengths are empty'),
    (dict(max_new_tokens=0), 'max_new_tokens=0'),
    (dict(window=0), 'window=0'),
    (dict(prompts=[[2, 5], []]), 'prompt 1 is empty'),
    (dict(eos_id=CONFIG.vocab_size), f'eos_id={CONFIG.vocab_size}'),
])
def test_bad_inputs_are_config_errors(kwargs, message):
  args = dict(prompts=PROMPTS, lengths=LENGTHS, eos_id=EOS, max_new_tokens=MAX_NEW,
              window=WINDOW)
  args.update(kwargs)
  with pytest.raises(ConfigError, match=message):
    chains.run_chains(CONFIG, PARAMS, args.pop('prompts'), args.pop('lengths'),
                      jax.random.key(0), **args)
