"""Config values checked before any stage runs: `check` raises a one-line ConfigError naming the
first bad `--config.` key, its value and what is allowed."""

from __future__ import annotations

import os

import math
import numbers
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import ml_collections

from ttc_jax.errors import ConfigError
from ttc_jax.model.config import NAMED
from ttc_jax.pipeline.common import PRESETS
from ttc_jax.pipeline.real_tasks import TASKS
from ttc_jax.tasks import gsm8k, math500

# A rule returns None for an allowed value, else what is allowed ("an integer >= 1").
Rule = Callable[[Any], str | None]

ARITH_SPLITS = ('train', 'validation', 'test')
REAL_SPLITS = {'gsm8k': gsm8k.SPLITS, 'math500': math500.SPLITS}


def _is_int(v: Any) -> bool:
  # bool is an int subclass, but `steps=True` is a typo, not 1.
  return isinstance(v, numbers.Integral) and not isinstance(v, bool)


def _int(lo: int) -> Rule:
  return lambda v: None if _is_int(v) and v >= lo else f'an integer >= {lo}'


def _real(lo: float, *, strict: bool = False, hi: float | None = None) -> Rule:
  """A finite number > lo (strict) or >= lo, and <= hi when given; ints are fine (2 == 2.0)."""
  if hi is not None:
    what = f'a number in {"(" if strict else "["}{lo:g}, {hi:g}]'
  else:
    what = f'a number {">" if strict else ">="} {lo:g}'

  def rule(v: Any) -> str | None:
    if not isinstance(v, numbers.Real) or isinstance(v, bool) or not math.isfinite(v):
      return what
    ok = (v > lo if strict else v >= lo) and (hi is None or v <= hi)
    return None if ok else what
  return rule


def _ints(lo: int) -> Rule:
  """A non-empty list (tuple) of integers >= lo: ks, ns, prompt tokens."""
  def rule(v: Any) -> str | None:
    ok = isinstance(v, (list, tuple)) and v and all(_is_int(x) and x >= lo for x in v)
    return None if ok else f'a non-empty list of integers >= {lo}'
  return rule


def _choices(allowed) -> str:
  return ', '.join(map(repr, allowed))


def _one_of(allowed) -> Rule:
  allowed = tuple(allowed)
  return lambda v: None if v in allowed else f'one of {_choices(allowed)}'


def _bool(v: Any) -> str | None:
  return None if isinstance(v, bool) else 'True or False'


COUNT, NATURAL, NONNEG, POSITIVE = _int(1), _int(0), _real(0), _real(0, strict=True)
TOP_P = _real(0, strict=True, hi=1)  # 1 keeps every token; 0 would keep none

# trainer.default_config() and what the stages add to it (blocks train, train_prm, sft.train).
TRAINER = (('steps', COUNT), ('batch_size', COUNT), ('learning_rate', NONNEG),
           ('warmup_steps', NATURAL), ('weight_decay', NONNEG), ('grad_clip', POSITIVE),
           ('seed', NATURAL), ('log_every', COUNT), ('checkpoint_every', COUNT),
           ('max_len', COUNT), ('freeze_backbone', _bool))
# Sampler arguments (blocks sample and, in configs/demo.py, sampling). Temperature 0 = greedy,
# top_k 0 = off.
SAMPLING = (('num_samples', COUNT), ('max_new_tokens', COUNT), ('temperature', NONNEG),
            ('top_k', NATURAL), ('top_p', TOP_P))
MODEL_DIMS = ('embed_dim', 'hidden_dim', 'num_heads', 'head_dim', 'num_kv_heads', 'num_layers',
              'sliding_window_size')

# In this order; `models.*` is every model of config.models. Seeds feed np.random.default_rng,
# which rejects negative ones.
RULES: list[tuple[str, Rule]] = [
    ('seed', NATURAL),
    ('task.seed', NATURAL),
    ('task.train_size', COUNT), ('task.validation_size', COUNT), ('task.test_size', COUNT),
    ('task.num_ops_min', COUNT), ('task.num_ops_max', COUNT),
    ('task.max_operand', COUNT), ('task.max_value', COUNT),
    ('task.num_shots', NATURAL),
    ('tokenizer.vocab_size', COUNT),
    ('models.*.generation', _one_of(PRESETS)),
    *((f'models.*.{k}', COUNT) for k in MODEL_DIMS),
    ('model.name', _one_of(NAMED)),
    *((f'train.{k}', r) for k, r in TRAINER),
    *((f'sample.{k}', r) for k, r in SAMPLING),
    ('sample.problems_per_batch', COUNT),
    ('sample.max_problems', NATURAL),  # 0 = all problems of the split
    ('calibrate.ks', _ints(1)), ('calibrate.num_bins', COUNT),
    ('calibrate.error_sample', COUNT), ('calibrate.majority_draws', COUNT),
    ('prm_data.train_problems', COUNT),
    ('prm_data.validation_problems', NATURAL),  # 0 = no held-out labels (no PRM calibration)
    ('prm_data.num_samples', COUNT), ('prm_data.num_rollouts', COUNT),
    ('prm_data.temperature', NONNEG), ('prm_data.max_new_tokens', COUNT),
    ('prm_data.problems_per_shard', COUNT), ('prm_data.prefixes_per_call', COUNT),
    ('train_verifier_backbone.steps', COUNT),
    ('train_verifier_backbone.learning_rate', NONNEG),
    ('train_verifier_backbone.warmup_steps', NATURAL),
    *((f'train_prm.{k}', r) for k, r in TRAINER),
    ('eval_verifiers.ns', _ints(1)), ('eval_verifiers.num_draws', COUNT),
    ('eval_verifiers.seed', NATURAL), ('eval_verifiers.batch_tokens', COUNT),
    ('eval_verifiers.calibration_bins', COUNT),
    ('search.budgets', _ints(1)), ('search.seeds', _ints(0)),
    ('search.max_problems', NATURAL),  # 0 = every problem of the split
    ('search.rows_per_batch', COUNT), ('search.max_rounds', COUNT),
    ('search.max_step_tokens', COUNT), ('search.max_new_tokens', COUNT),
    ('search.temperature', NONNEG), ('search.top_k', NATURAL),
    ('search.top_p', _real(0.0, strict=True, hi=1.0)),
    ('revision_data.problems', COUNT), ('revision_data.num_samples', COUNT),
    ('revision_data.temperature', NONNEG), ('revision_data.max_new_tokens', COUNT),
    ('revision_data.max_incorrect', NATURAL), ('revision_data.max_per_problem', COUNT),
    ('revision_data.problems_per_shard', COUNT), ('revision_data.use_gold', _bool),
    *((f'train_revision.{k}', r) for k, r in TRAINER), ('train_revision.packing', _bool),
    ('train_revision.pack_len', COUNT), ('train_revision.replay', NONNEG),
    ('revision.window', COUNT), ('revision.max_new_tokens', COUNT),
    ('revision.temperature', NONNEG), ('revision.top_k', NATURAL), ('revision.top_p', TOP_P),
    ('revision.rows_per_batch', COUNT),
    ('revision_orm.problems', COUNT), ('revision_orm.validation_problems', NATURAL),
    ('revision_orm.chains', COUNT), ('revision_orm.length', COUNT),
    ('revision_orm.context', _bool),
    ('eval_revisions.budget', COUNT), ('eval_revisions.budgets', _ints(1)),
    ('eval_revisions.ratio_budgets', _ints(1)), ('eval_revisions.max_problems', NATURAL),
    ('eval_revisions.seed', NATURAL),
    ('mesh.data', COUNT), ('mesh.fsdp', COUNT), ('mesh.tensor', COUNT),
    ('mesh.rules', _one_of(('replicated', 'data', 'fsdp', 'fsdp_tensor'))),
    ('difficulty.deploy_k', COUNT), ('policy.folds', COUNT), ('policy.seed', NATURAL),
    ('sft.max_len', COUNT),
    *((f'sft.train.{k}', r) for k, r in TRAINER),
    *((f'sampling.{k}', r) for k, r in SAMPLING),
    ('demo.prompt_tokens', _ints(0)),
]


def _fail(key: str, value: Any, expected: str) -> None:
  raise ConfigError(f'--config.{key}={value!r}: expected {expected}')


def _values(node: Any, parts: list[str], prefix: str = '') -> Iterator[tuple[str, Any]]:
  """(dotted key, value) of every key matching `parts` ('*' = each key); missing ones skipped,
  so a config is checked only for the blocks it has."""
  if not parts:
    yield prefix.rstrip('.'), node
    return
  if not isinstance(node, (ml_collections.ConfigDict, Mapping)):
    return
  head, rest = parts[0], parts[1:]
  for name in (list(node.keys()) if head == '*' else [head] if head in node else []):
    yield from _values(node[name], rest, f'{prefix}{name}.')


def _at_most(key: str, value: int, limit_key: str, limit: int, why: str = '') -> None:
  if value > limit:
    _fail(key, value, f'an integer <= --config.{limit_key}={limit}{why}')


def _check_arith(c: ml_collections.ConfigDict) -> None:
  """Relations of an arith config (configs/arith.py: one with its own `models`)."""
  t = c.task
  if t.name != 'arith':
    _fail('task.name', t.name, "'arith' (gsm8k, math500: configs/gemma3_270m_gsm8k.py)")
  _at_most('task.num_ops_min', t.num_ops_min, 'task.num_ops_max', t.num_ops_max)
  _at_most('task.max_operand', t.max_operand, 'task.max_value', t.max_value)
  models = list(c.models.keys())
  for name in models:
    m = c.models[name]
    if m.num_heads % m.num_kv_heads:  # grouped-query attention shares each kv head by a group
      _fail(f'models.{name}.num_kv_heads', m.num_kv_heads,
            f'a divisor of --config.models.{name}.num_heads={m.num_heads}')
  if c.model_name not in models:
    _fail('model_name', c.model_name, f'one of the models of --config.models: {_choices(models)}')
  # '' = the proposer (verifier_backbone), a random start (the inits).
  for key in ('verifier_backbone', 'train_init', 'train_verifier_backbone.init'):
    for k, v in _values(c, key.split('.')):
      if v and v not in models:
        _fail(k, v, f"'' or one of the models of --config.models: {_choices(models)}")
  if c.get('train_init') and c.train_init == c.model_name:  # train_base continues another model
    _fail('train_init', c.train_init,
          f"'' or a model other than --config.model_name={c.model_name!r}")
  if 'sample' in c:
    s = c.sample
    if s.split not in ARITH_SPLITS:
      _fail('sample.split', s.split, f'one of {_choices(ARITH_SPLITS)}')
    if 'calibrate' in c:  # calibrate summarizes every difficulty bin: each needs a problem
      limit_key, limit = f'task.{s.split}_size', t[f'{s.split}_size']
      if 0 < s.max_problems < limit:
        limit_key, limit = 'sample.max_problems', s.max_problems
      _at_most('calibrate.num_bins', c.calibrate.num_bins, limit_key, limit,
               ', the number of problems sampled')
  if 'search' in c:
    _check_search(c)
  if 'eval_revisions' in c:
    _check_revisions(c)
  if 'policy' in c:
    _check_policy(c)
  if 'prm_data' in c:
    for split in ('train', 'validation'):
      _at_most(f'prm_data.{split}_problems', c.prm_data[f'{split}_problems'],
               f'task.{split}_size', t[f'{split}_size'])


def _check_search(c: ml_collections.ConfigDict) -> None:
  """Every search method names a known method and runs at the budgets it is given."""
  from ttc_jax.pipeline import eval_search  # pylint: disable=g-import-not-at-top
  s = c.search
  if not isinstance(s.methods, (list, tuple)) or not s.methods:
    _fail('search.methods', s.methods, 'a non-empty list of method names')
  for name in s.methods:
    runnable = [b for b in s.budgets if eval_search.parse_method(name, int(b), s) is not None]
    if name.startswith('lookahead'):  # k + 1 generations per beam: small budgets may not fit
      if not runnable:
        _fail('search.methods', name, f'a method that fits one of --config.search.budgets='
              f'{tuple(s.budgets)} (lookahead_k<K>_m<M> needs budgets that are multiples of '
              '(K + 1) * M)')
    elif len(runnable) < len(s.budgets):
      bad = next(b for b in s.budgets if b not in runnable)
      _fail('search.methods', name, f'M dividing every budget of --config.search.budgets='
            f'{tuple(s.budgets)} ({bad} is not a multiple of M, or M > {bad}; sqrt needs square '
            'budgets)')
  if 0 < s.max_problems < c.calibrate.num_bins:
    _fail('search.max_problems', s.max_problems, f'0 (all) or >= --config.calibrate.num_bins='
          f'{c.calibrate.num_bins} (the same number from each bin)')


def _check_revisions(c: ml_collections.ConfigDict) -> None:
  """Budgets the nested chains serve, and training problems enough for both revision stages."""
  from ttc_jax.pipeline import eval_revisions  # pylint: disable=g-import-not-at-top
  eval_revisions.check(c)
  o = c.revision_orm
  room = c.task.train_size - o.problems - o.validation_problems
  if c.revision_data.problems > room:
    _fail('revision_data.problems', c.revision_data.problems,
          f'an integer <= {room}: --config.task.train_size={c.task.train_size} minus '
          f'--config.revision_orm.problems={o.problems} and .validation_problems='
          f'{o.validation_problems}, the training problems taken after them')
  e = c.eval_revisions
  if 0 < e.max_problems < c.calibrate.num_bins:
    _fail('eval_revisions.max_problems', e.max_problems, f'0 (all) or >= '
          f'--config.calibrate.num_bins={c.calibrate.num_bins} (the same number from each bin)')


def _check_policy(c: ml_collections.ConfigDict) -> None:
  """The deployable predictor's samples exist; the larger model and the ratios are valid."""
  from ttc_jax.pipeline import difficulty, policy  # pylint: disable=g-import-not-at-top
  difficulty.check(c)
  policy.check(c)
  if c.policy.large not in c.models:
    _fail('policy.large', c.policy.large, f'one of the models of --config.models: '
          f'{_choices(list(c.models.keys()))}')


def _check_real(c: ml_collections.ConfigDict) -> None:
  """Relations of a real-task config (configs/gemma3_270m_gsm8k.py)."""
  name = c.task.name
  if name not in TASKS:
    _fail('task.name', name, f'one of {_choices(TASKS)}')
  if c.task.get('data_dir') and not os.path.isdir(c.task.data_dir):
    _fail('task.data_dir', c.task.data_dir, f"an existing directory holding the {name} JSONL "
          "('' = ../shared/data)")
  if 'sample' in c and c.sample.split not in REAL_SPLITS[name]:
    _fail('sample.split', c.sample.split, f'one of {_choices(REAL_SPLITS[name])} for {name}')


def check(config: ml_collections.ConfigDict) -> None:
  """Raises ConfigError on the first bad value: RULES in order, then the relations between
  values (which can then rely on every value's type and range)."""
  for key, rule in RULES:
    for k, v in _values(config, key.split('.')):
      expected = rule(v)
      if expected is not None:
        _fail(k, v, expected)
  if 'task' in config:
    (_check_arith if 'models' in config else _check_real)(config)
