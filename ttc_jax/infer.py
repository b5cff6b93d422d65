"""The library entry point: answer a new question with a learned compute-optimal policy.

    from ttc_jax import infer
    policy = infer.LearnedPolicy.load('configs/arith.py', 'workdir')   # after --mode=policy
    result = infer.infer('3+4*2-5', budget=20, policy=policy)
    result.answer, result.strategy, result.difficulty_bin, result.cost

`infer` estimates the question's difficulty with the deployable predictor (the mean PRM
final-answer score of `difficulty.deploy_k` samples, binned by the cut points stage difficulty
learned), spends the rest of the budget on the strategy the policy chose for that bin at the
largest measured budget that fits, and returns the answer with everything it spent. The shape of
its_hub's `infer(lm, prompt, budget)`, with the policy deciding how the budget is spent.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib.util

import jax
import ml_collections
import numpy as np

from ttc_jax import artifacts
from ttc_jax import manifest
from ttc_jax import workdir as wd
from ttc_jax.compute import flops
from ttc_jax.errors import UserError
from ttc_jax.pipeline import (common, difficulty, eval_revisions, eval_search, train_base,
                              train_prm, train_revision, train_revision_orm)
from ttc_jax.pipeline import policy as policy_stage
from ttc_jax.policy import selection as policy_selection
from ttc_jax.revision import analysis
from ttc_jax.sampling.sampler import Sampler
from ttc_jax.search import engine
from ttc_jax.tasks import arith
from ttc_jax.verifiers import scoring, selection


@dataclasses.dataclass(frozen=True)
class Result:
  answer: str | None
  strategy: str  # a search method or revisions_l<L> (chains of L attempts)
  difficulty_bin: int  # the deployable predictor's bin, 1 = easiest
  generations: int  # all of them: the predictor's and the strategy's
  strategy_budget: int
  cost: dict  # tokens and FLOPs (ttc_jax.compute.flops.Cost.as_dict), predictor included


@dataclasses.dataclass
class LearnedPolicy:
  """The policy of a finished `policy` stage: per deployable bin and measured budget the strategy
  chosen on all the test problems, with the models it runs."""
  config: ml_collections.ConfigDict
  workdir: str
  space: str
  choices: dict[int, dict[int, str]]  # budget -> bin -> strategy
  edges: np.ndarray
  deploy_k: int

  @classmethod
  def load(cls, config: str | ml_collections.ConfigDict, workdir: str,
           space: str = 'combined') -> LearnedPolicy:
    if isinstance(config, str):
      config = load_config(config)
    if space not in policy_stage.SPACES:
      raise UserError(f'space={space!r}; expected one of {policy_stage.SPACES}')
    a = artifacts.policy(config, workdir)
    manifest.require(a, 'infer')
    pol = wd.read_json(a.file('policy.json'), stage=a.stage)
    diff = wd.read_json(artifacts.difficulty(config, workdir).file('difficulty.json'),
                        stage='difficulty')
    table = pol['spaces'][space]['deployed']['deployable']
    choices = {int(b): {int(k): v for k, v in per_bin.items()} for b, per_bin in table.items()}
    return cls(config, workdir, space, choices, np.array(diff['deployable_edges']),
               int(diff['deploy_k']))

  @functools.cached_property
  def models(self) -> dict:
    c, w = self.config, self.workdir
    tok = common.load_tokenizer(c, w, 'infer')
    proposer, params = train_base.load_model(c, w, c.model_name, 'infer')
    vmodel, prm = train_prm.load_verifier(c, w, 'prm', 'infer')
    scorer = scoring.Scorer(vmodel, delimiter_id=tok.id_of(arith.STEP_DELIMITER), eos_id=tok.eos_id)
    return {'tok': tok, 'proposer': proposer, 'params': params, 'verifier': vmodel, 'prm': prm,
            'scorer': scorer, 'shapes': difficulty.model_shapes(c, tok.vocab_size),
            'sizes': difficulty.model_sizes(c, w, 'infer')}

  @functools.cached_property
  def revision_models(self) -> dict:
    c, w = self.config, self.workdir
    model, params = train_revision.load_revision_model(c, w, 'infer')
    _, orm = train_revision_orm.load_revision_verifier(c, w, 'infer')
    return {'model': model, 'params': params, 'orm': orm}


def load_config(spec: str) -> ml_collections.ConfigDict:
  """The config of `FILE[:VARIANT]`, as --config takes it."""
  path, _, variant = spec.partition(':')
  loader = importlib.util.spec_from_file_location('ttc_jax_infer_config', path)
  if loader is None:
    raise UserError(f'config {path!r} is not a Python file; expected e.g. configs/arith.py')
  module = importlib.util.module_from_spec(loader)
  try:
    loader.loader.exec_module(module)
  except FileNotFoundError:
    raise UserError(f'config {path!r} does not exist') from None
  return module.get_config(variant or None)


def _problem(question: str) -> arith.Problem:
  """An arith problem of the question (its worked steps are computed only to satisfy the record;
  nothing the policy decides reads them or the answer)."""
  try:
    steps, answer = arith.solve(question)
  except (ValueError, KeyError) as e:
    raise UserError(f'{e} (infer answers questions of the arith task)') from None
  return arith.Problem(id='infer', question=question, steps=steps, answer=answer,
                       num_ops=len(steps))


def infer(question: str, budget: int, policy: LearnedPolicy, seed: int = 0) -> Result:
  """Answers `question` spending at most `budget` generations, as `policy` decides."""
  c, m = policy.config, policy.models
  k = policy.deploy_k
  fits = [b for b in sorted(policy.choices) if b <= budget - k]
  if not fits:
    raise UserError(f'budget={budget}: expected at least {k + min(policy.choices)} generations '
                    f'({k} for the difficulty predictor, {min(policy.choices)} the smallest '
                    'budget the policy measured)')
  strategy_budget = fits[-1]
  problem = _problem(question)
  tok = m['tok']
  prompt = common.encode_example(tok, problem)[0]
  key = jax.random.key(seed)
  # 1. Difficulty: the deployable predictor's k samples, scored by the PRM.
  s = c.sample
  out = Sampler(m['proposer'], eos_id=tok.eos_id).sample(
      m['params'], [prompt], key=jax.random.fold_in(key, 0), max_new_tokens=s.max_new_tokens,
      num_samples=k, temperature=s.temperature, top_k=s.top_k, top_p=s.top_p)
  samples = out.sequences()
  scores = m['scorer'].score(m['prm'], [prompt] * k, samples)
  bin_ = int(policy_selection.assign_bins(np.array([difficulty.final_scores(scores).mean()]),
                                         policy.edges)[0])
  cost = difficulty.sample_cost(m['shapes'], len(prompt), [len(x) for x in samples])
  strategy = policy.choices[strategy_budget].get(bin_) or next(
      iter(policy.choices[strategy_budget].values()))
  # 2. The chosen strategy at the rest of the budget.
  if strategy.startswith('revisions_l'):
    answer, spent = _revise(policy, problem, prompt, strategy, strategy_budget,
                            jax.random.fold_in(key, 1))
  else:
    answer, spent = _search(policy, prompt, strategy, strategy_budget, jax.random.fold_in(key, 1))
  cost = cost.plus(spent)
  return Result(answer=answer, strategy=strategy, difficulty_bin=bin_,
                generations=int(cost.generations), strategy_budget=strategy_budget,
                cost=cost.as_dict(m['sizes']['proposer'], m['sizes']['verifier']))


def _search(policy: LearnedPolicy, prompt: list[int], strategy: str, budget: int, key
            ) -> tuple[str | None, flops.Cost]:
  c, m = policy.config, policy.models
  sc = eval_search.parse_method(strategy, budget, c.search)
  models = engine.Models(m['proposer'], m['params'], m['verifier'], m['prm'],
                         delimiter_id=m['tok'].id_of(arith.STEP_DELIMITER), eos_id=m['tok'].eos_id)
  r = engine.search(sc, models, [prompt], key,
                    lambda ids: arith.extract_answer(m['tok'].decode(ids)))[0]
  row = {'generations': r.generations, 'proposer_tokens': r.proposer_tokens,
         'verifier_tokens': r.verifier_tokens, 'prompt_tokens': r.prompt_tokens}
  return r.answer, flops.search_cost(row, m['shapes'])


def _revise(policy: LearnedPolicy, problem: arith.Problem, prompt: list[int], strategy: str,
            budget: int, key) -> tuple[str | None, flops.Cost]:
  c, m, rm = policy.config, policy.models, policy.revision_models
  length = int(strategy[len('revisions_l'):])
  num_chains = budget // length
  recs, _ = eval_revisions.run_batch(c, [problem], m['tok'], rm['model'], rm['params'],
                                     m['scorer'], rm['orm'], m['prm'], key,
                                     lengths=[length] * num_chains)
  chains = recs[0]['chains']
  answers = [a['answer'] for ch in chains for a in ch]
  ids = selection.answer_ids(answers).reshape(num_chains, length)
  ch = analysis.Chains(ids, np.zeros(ids.shape, bool),
                       {'revision_orm': np.array([[a['revision_orm'] for a in x] for x in chains])},
                       np.ones(ids.shape, bool))
  pick = analysis.pick(ch, 'verifier', 'revision_orm')
  answer = None if pick < 0 else answers[int(np.flatnonzero(ids.reshape(-1) == pick)[0])]
  return answer, flops.revision_cost(chains, num_chains, length, len(prompt),
                                            c.revision.window, m['shapes'])
