"""PRM labels: rollouts continue the cache like a re-sent prefix; a written wrong answer is 0.

The prm_data / train_prm / train_orm stages are tested end to end in test_launch.py."""

import jax
import numpy as np
import pytest

from configs.arith import get_config
from ttc_jax.model import config as cfg_lib
from ttc_jax.model import transformer as tr
from ttc_jax.pipeline import common, prm_data
from ttc_jax.sampling.sampler import Sampler
from ttc_jax.tasks import arith
from ttc_jax.tokenizer import Tokenizer
from ttc_jax.verifiers import rollouts
from ttc_jax.verifiers.steps import step_ends

CONFIG = cfg_lib.get_config('tiny_gemma3')
PARAMS = tr.init_params(CONFIG, jax.random.key(0))


def test_rollouts_continue_the_cache_like_a_resent_prefix():
  sampler = Sampler(CONFIG, eos_id=1, buckets=rollouts.CONTINUATION_BUCKETS)
  rng = np.random.default_rng(0)
  prompts = [rng.integers(3, CONFIG.vocab_size, n).tolist() for n in (5, 9)]
  first = sampler.sample(PARAMS, prompts, key=jax.random.key(1), max_new_tokens=10,
                         num_samples=2, temperature=1.0, stop_tokens=[], cache_size=16 + 10 + 9)
  completions = first.sequences()
  prompt_lengths = [len(prompts[r // 2]) for r in range(4)]
  prefixes = [rollouts.Prefix(row, end) for row, end in ((0, 0), (1, 4), (2, 9), (3, 6), (3, 2))]
  resent = {}
  for p in prefixes:  # Reference: the whole prefix sent again as a prompt, greedy.
    full = prompts[p.row // 2] + completions[p.row][:p.end + 1]
    out = Sampler(CONFIG, eos_id=1).sample(PARAMS, [full], key=jax.random.key(5),
                                           max_new_tokens=8, temperature=0.0, stop_tokens=[])
    resent[p] = completions[p.row][:p.end + 1] + out.sequences()[0]
  seen = []
  grade = lambda row, ids: seen.append(ids) or any(ids == v for v in resent.values())
  labels, stats = rollouts.rollout_labels(
      sampler, PARAMS, first.cache, prompt_lengths, completions, prefixes, grade,
      key=jax.random.key(2), num_rollouts=3, max_new_tokens=8, temperature=0.0,
      prefixes_per_call=2)
  assert labels == [1.0] * len(prefixes)
  assert sorted(map(tuple, seen)) == sorted(tuple(resent[p]) for p in prefixes for _ in range(3))
  assert stats.rollouts == 15 and stats.tokens == 15 * 8 and stats.calls == 3


@pytest.fixture(scope='module')
def tok(tmp_path_factory):
  problems = arith.generate(200, seed=0, num_ops_range=(1, 4))
  return Tokenizer.train(arith.iter_texts(problems), tmp_path_factory.mktemp('tok') / 'a.model',
                         32, arith.SPECIAL_SYMBOLS)


def test_exact_labels_a_written_wrong_answer_is_0(tok):
  ids = tok.encode('7*2-5\n#### 3\n14-5\n#### 9', add_eos=True)
  ends = step_ends(ids, tok.id_of('\n'), tok.eos_id)
  labels = [prm_data.exact_label(tok, ids[:e + 1], 9, last=i == len(ends) - 1)
            for i, e in enumerate(ends)]
  assert labels == [None, 0.0, 0.0, 0.0]  # 1st: rollouts; after the wrong '#### 3': 0
  right = tok.encode('7*2-5\n14-5\n#### 9', add_eos=True)
  assert prm_data.exact_label(tok, right, 9, last=True) == 1.0
  # Any continuation of the wrong prefix grades wrong, so its Monte-Carlo label is 0 as well.
  assert not arith.grade(tok.decode(ids[:ends[1] + 1]) + '14-5\n#### 9', 9)


def test_mc_label_of_a_prefix_holding_a_wrong_answer_is_0(tok):
  """Through the rollout path: continuations of '... #### 3' never count, whatever they say."""
  model = common.model_config(get_config('tiny'), 'base', tok.vocab_size)
  params = tr.init_params(model, jax.random.key(3))
  sampler = Sampler(model, eos_id=tok.eos_id, buckets=rollouts.CONTINUATION_BUCKETS)
  prompt = tok.encode('Q: 7*2-5\n', add_bos=True)
  forced = tok.encode('14-5\n#### 3\n', add_eos=False)
  out = sampler.sample(params, [prompt + forced[:-1]], key=jax.random.key(0), max_new_tokens=1,
                       temperature=0.0, cache_size=64)
  completion = [forced[-1]]  # cache: prompt + forced[:-1]; continue from the last '\n'.
  grade = lambda row, ids: arith.grade(tok.decode(forced[:-1] + ids), 9)
  labels, _ = rollouts.rollout_labels(
      sampler, params, out.cache, [len(prompt) + len(forced) - 1], [completion],
      [rollouts.Prefix(0, 0)], grade, key=jax.random.key(1), num_rollouts=8, max_new_tokens=16,
      temperature=1.0, prefixes_per_call=1)
  assert labels == [0.0]
