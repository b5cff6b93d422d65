"""PRM-guided search: our batched beam search vs the open reproduction's re-prefill loop.

Same problems, proposer, PRM and budget N, side by side in one run:
  beam       ours: `engine.search(method='beam', n=N, beam_width=4, max_new_tokens=256)` over all
             problems at once (KV caches kept across rounds; the PRM reads only each new step);
  reprefill  the same algorithm the way huggingface search-and-learn's
             `src/sal/search/beam_search.py` runs it: one problem at a time; every round the
             proposer re-prefills each live beam's whole prefix (prompt + steps so far) into a
             fresh cache and samples one step (`Sampler.sample`, stop on the step delimiter /
             EOS, at most 48 tokens), and the PRM re-scores every live beam's whole prefix
             (`Scorer.step_logits`, the last step's value); selection and refill by the same rule
             (`search.beams.plan_sources`, completed beams frozen), the same end conditions (EOS, 256
             completion tokens, a 48-token step without a delimiter, 40 rounds) and the same
             final pick (best-of-N weighted over last-step scores);
  best_of_n  ours: `engine.search(method='best_of_n', n=N)` (N full samples, one-pass scoring).
Each system runs once as a warm-up (same inputs and key, so the timed run hits only compiled
shapes; warm-up minus timed wall time is reported as compile time), then once timed. The
reprefill baseline may run on a subset (`--baseline_problems`); the ratio then compares
per-problem wall time.

  python benchmarks/search.py --workdir=WORKDIR   # a finished default --mode=all workdir
"""

from __future__ import annotations

import argparse
import datetime
import hashlib
import os
import platform
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from configs.arith import get_config  # noqa: E402
from ttc_jax.errors import UserError  # noqa: E402
from ttc_jax.pipeline import common, train_base, train_prm  # noqa: E402
from ttc_jax.sampling.sampler import Sampler  # noqa: E402
from ttc_jax.search import beams as search_rows  # noqa: E402
from ttc_jax.search import engine  # noqa: E402
from ttc_jax.tasks import arith  # noqa: E402
from ttc_jax.verifiers import scoring, selection  # noqa: E402
from ttc_jax.workdir import atomic_write_json  # noqa: E402

BEAM_WIDTH = 4
MAX_NEW_TOKENS = 256
SYSTEMS = ('beam', 'reprefill', 'best_of_n')
_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# What was timed (the search code changes often): file hashes at import time.
SOURCES = {p: hashlib.sha256(open(os.path.join(_ROOT, p), 'rb').read()).hexdigest()[:16]
           for p in ('ttc_jax/search/engine.py', 'ttc_jax/search/incremental.py',
                     'ttc_jax/sampling/sampler.py', 'ttc_jax/verifiers/scoring.py',
                     'ttc_jax/model/transformer.py')}
# The baseline's live beams are padded to a multiple of this many rows (copies of a live beam,
# not counted): a handful of static batch shapes instead of one compile per live count.
ROW_QUANTUM = 8


def pick_problems(problems: list[arith.Problem], count: int) -> list[arith.Problem]:
  """`count` problems spread over difficulty: every k-th of them sorted by (num_ops, id), as the
  sample stage orders them, starting half a stride in."""
  ordered = sorted(problems, key=lambda p: (p.num_ops, p.id))
  count = min(count, len(ordered))
  return [ordered[int((i + 0.5) * len(ordered) / count)] for i in range(count)]


def spread(indices: list[int], count: int) -> list[int]:
  count = min(count, len(indices))
  return [indices[int((i + 0.5) * len(indices) / count)] for i in range(count)]


# --- (b) the re-prefill / re-score baseline ---------------------------------------------------


def reprefill_beam_search(config: engine.SearchConfig, models: engine.Models, prompt: list[int],
                          key: jax.Array, answer_of, sampler: Sampler,
                          scorer: scoring.Scorer) -> dict:
  """One problem's beam search, every round from scratch: live beams' full prefixes prefilled
  into a fresh proposer cache, one step sampled, full prefixes re-scored by the PRM."""
  n, m = config.n, config.beam_width
  beams: list[list[int]] = [[] for _ in range(n)]  # completion ids so far
  scores: list[list[float]] = [[] for _ in range(n)]  # PRM score (sigmoid) at each step end
  done = np.zeros(n, bool)
  proposer_tokens = verifier_tokens = 0
  rounds = 0
  for r in range(config.max_rounds):
    rounds = r + 1
    live = [i for i in range(n) if not done[i]]
    prefixes = [prompt + beams[i] for i in live]
    pad = -len(prefixes) % ROW_QUANTUM
    out = sampler.sample(models.proposer_params, prefixes + [prefixes[0]] * pad,
                         key=jax.random.fold_in(key, r), max_new_tokens=config.max_step_tokens,
                         stop_tokens=[models.delimiter_id, models.eos_id],
                         temperature=config.temperature)
    steps = out.sequences()[:len(live)]
    proposer_tokens += sum(len(p) + len(s) for p, s in zip(prefixes, steps))
    for i, s in zip(live, steps):
      beams[i] = beams[i] + s
    full = [beams[i] for i in live]
    logits = scorer.step_logits(models.verifier_params, [prompt] * len(live), full)
    verifier_tokens += sum(len(prompt) + len(c) for c in full)
    value = np.zeros(n, np.float32)
    for i, s, x in zip(live, steps, logits):
      value[i] = x[-1]
      scores[i] = scores[i] + [float(scoring.sigmoid(x[-1]))]
      cut = len(s) >= config.max_step_tokens and s[-1] != models.delimiter_id
      if s[-1] == models.eos_id or len(beams[i]) >= config.max_new_tokens or cut:
        done[i] = True
    if done.all() or r + 1 == config.max_rounds:
      break
    source = np.asarray(search_rows.plan_sources(jnp.asarray(value), jnp.asarray(done), n, m))
    beams = [beams[s] for s in source]
    scores = [scores[s] for s in source]
    done = done[source]
  answers = [answer_of(c) for c in beams]
  final = np.array([s[-1] if s else 0.0 for s in scores], np.float64)
  ids = selection.answer_ids(answers)
  pick = int(selection.select_index(ids[None], final[None], config.selection)[0])
  return {'answer': None if pick < 0 else answers[pick], 'rounds': rounds,
          'proposer_tokens': proposer_tokens, 'verifier_tokens': verifier_tokens}


# --- runs -------------------------------------------------------------------------------------


def run_system(name: str, n: int, models: engine.Models, prompts, problems, key, answer_of,
               sampler: Sampler, scorer: scoring.Scorer) -> dict:
  """One warm-up and one timed run of `name` at budget n; wall times, tokens and accuracy."""
  if name == 'reprefill':
    config = engine.SearchConfig(method='beam', n=n, beam_width=BEAM_WIDTH,
                                 max_new_tokens=MAX_NEW_TOKENS)

    def run():
      return [reprefill_beam_search(config, models, p, jax.random.fold_in(key, i), answer_of,
                                    sampler, scorer) for i, p in enumerate(prompts)]
  else:
    if name == 'beam':
      config = engine.SearchConfig(method='beam', n=n, beam_width=BEAM_WIDTH,
                                   max_new_tokens=MAX_NEW_TOKENS)
    else:
      config = engine.SearchConfig(method='best_of_n', n=n, max_new_tokens=MAX_NEW_TOKENS)

    def run():
      return [{'answer': r.answer, 'rounds': r.rounds,
               'proposer_tokens': r.prompt_tokens + r.proposer_tokens,
               'verifier_tokens': r.verifier_tokens}
              for r in engine.search(config, models, prompts, key, answer_of)]

  t0 = time.perf_counter()
  run()
  warmup = time.perf_counter() - t0
  t0, c0 = time.perf_counter(), time.process_time()
  res = run()
  wall, cpu = time.perf_counter() - t0, time.process_time() - c0
  count = len(prompts)
  correct = [bool(arith.grade(r['answer'], p.answer)) for r, p in zip(res, problems)]
  return {
      'problems': count, 'problem_ids': [p.id for p in problems],
      'warmup_s': warmup, 'wall_s': wall, 'cpu_s': cpu, 'compile_s_estimate': max(warmup - wall, 0.0),
      'problems_per_s': count / wall, 's_per_problem': wall / count,
      'proposer_tokens_per_problem': float(np.mean([r['proposer_tokens'] for r in res])),
      'verifier_tokens_per_problem': float(np.mean([r['verifier_tokens'] for r in res])),
      'proposer_tokens': [r['proposer_tokens'] for r in res],
      'verifier_tokens': [r['verifier_tokens'] for r in res],
      'rounds': [r['rounds'] for r in res], 'correct': correct,
      'accuracy': float(np.mean(correct)), 'loadavg_after': os.getloadavg(),
  }


def main(argv=None):
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument('--workdir', default=None,
                  help='a workdir with a finished default `--mode=all` run (at least up to '
                       'train_prm: tokenizer, data, models base and the prm)')
  ap.add_argument('--problems', type=int, default=16,
                  help='test problems, spread over difficulty (every k-th by (num_ops, id))')
  ap.add_argument('--n', type=int, nargs='+', default=[16, 64], help='budgets N')
  ap.add_argument('--baseline_problems', type=int, default=4,
                  help='run the reprefill baseline on this many of the problems (spread over '
                       'them); its ratio uses per-problem wall time')
  ap.add_argument('--systems', default=','.join(SYSTEMS))
  ap.add_argument('--seed', type=int, default=0)
  ap.add_argument('--json', default=None, help='write the results here')
  args = ap.parse_args(argv)
  if not args.workdir:
    ap.error('--workdir is required: a workdir with a finished default --mode=all run '
             '(up to train_prm)')
  if not os.path.isdir(args.workdir):
    ap.error(f'--workdir {args.workdir} does not exist; expected a workdir with a finished '
             'default --mode=all run (up to train_prm)')
  systems = [s for s in args.systems.split(',') if s]
  if unknown := set(systems) - set(SYSTEMS):
    ap.error(f'unknown systems {sorted(unknown)}; expected some of {SYSTEMS}')

  config = get_config(None)
  stage = 'benchmark'
  try:
    model, params = train_base.load_model(config, args.workdir, 'base', stage)
    vmodel, vparams = train_prm.load_verifier(config, args.workdir, 'prm', stage)
    tok = common.load_tokenizer(config, args.workdir, stage)
    problems = pick_problems(common.load_problems(config, args.workdir, 'test', stage),
                             args.problems)
  except UserError as e:
    sys.exit(f'error: {e}')
  prompts = [common.encode_example(tok, p)[0] for p in problems]
  delim = tok.id_of(arith.STEP_DELIMITER)
  models = engine.Models(model, params, vmodel, vparams, delim, tok.eos_id)
  sampler = Sampler(model, eos_id=tok.eos_id)
  scorer = scoring.Scorer(vmodel, delimiter_id=delim, eos_id=tok.eos_id)
  answer_of = lambda ids: arith.extract_answer(tok.decode(ids))
  subset = spread(list(range(len(problems))), args.baseline_problems)
  key = jax.random.key(args.seed)
  load_before = os.getloadavg()
  print(f'{len(problems)} test problems (num_ops {problems[0].num_ops}..{problems[-1].num_ops}); '
        f'reprefill on {len(subset)} of them (num_ops {[problems[i].num_ops for i in subset]}); '
        f'{jax.default_backend()}, {os.cpu_count()} cpus, load {load_before[0]:.2f}', flush=True)

  by_n = {}
  for n in args.n:
    out = {}
    for name in systems:
      idx = subset if name == 'reprefill' else list(range(len(problems)))
      out[name] = run_system(name, n, models, [prompts[i] for i in idx],
                             [problems[i] for i in idx], key, answer_of, sampler, scorer)
      print(f'  N={n} {name}: {out[name]["wall_s"]:.1f}s timed, {out[name]["warmup_s"]:.1f}s '
            f'warm-up', flush=True)
    if 'beam' in out and 'reprefill' in out:
      # ours on the baseline's problems (accuracy side by side; time is of the whole batch).
      beam = out['beam']
      beam['on_baseline_problems'] = {
          'accuracy': float(np.mean([beam['correct'][i] for i in subset])),
          'proposer_tokens_per_problem': float(np.mean([beam['proposer_tokens'][i]
                                                        for i in subset])),
          'verifier_tokens_per_problem': float(np.mean([beam['verifier_tokens'][i]
                                                        for i in subset]))}
    by_n[n] = out

  print(f'\n{"N":>3} {"system":<10}{"problems":>9}{"wall s":>9}{"cpu s":>8}{"compile s":>10}'
        f'{"problems/s":>11}'
        f'{"prop tok/pb":>12}{"ver tok/pb":>12}{"rounds":>8}{"accuracy":>9}')
  ratios = {}
  for n, out in by_n.items():
    for name, r in out.items():
      print(f'{n:>3} {name:<10}{r["problems"]:>9}{r["wall_s"]:>9.2f}{r["cpu_s"]:>8.1f}'
            f'{r["compile_s_estimate"]:>10.1f}'
            f'{r["problems_per_s"]:>11.3f}{r["proposer_tokens_per_problem"]:>12.0f}'
            f'{r["verifier_tokens_per_problem"]:>12.0f}{np.mean(r["rounds"]):>8.1f}'
            f'{r["accuracy"]:>9.3f}')
    rat = {}
    if 'beam' in out and 'best_of_n' in out:
      rat['beam_over_best_of_n_wall'] = out['beam']['wall_s'] / out['best_of_n']['wall_s']
      rat['beam_over_best_of_n_cpu'] = out['beam']['cpu_s'] / out['best_of_n']['cpu_s']
    if 'beam' in out and 'reprefill' in out:
      rat['reprefill_over_beam_per_problem_wall'] = (out['reprefill']['s_per_problem']
                                                     / out['beam']['s_per_problem'])
      rat['reprefill_over_beam_per_problem_cpu'] = (
          out['reprefill']['cpu_s'] / out['reprefill']['problems']
          / (out['beam']['cpu_s'] / out['beam']['problems']))
      # Tokens on the same problems (the baseline's subset).
      for which in ('proposer', 'verifier'):
        rat[f'reprefill_over_beam_{which}_tokens'] = (
            out['reprefill'][f'{which}_tokens_per_problem']
            / out['beam']['on_baseline_problems'][f'{which}_tokens_per_problem'])
    ratios[n] = rat
  print()
  for n, rat in ratios.items():
    out = by_n[n]
    if 'beam_over_best_of_n_wall' in rat:
      print(f'N={n}: beam / best_of_n wall time {rat["beam_over_best_of_n_wall"]:.2f}x '
            f'(target <= 1.25; CPU time {rat["beam_over_best_of_n_cpu"]:.2f}x)')
    if 'reprefill_over_beam_per_problem_wall' in rat:
      sub = (f'reprefill on {out["reprefill"]["problems"]} of {out["beam"]["problems"]} '
             'problems, per-problem wall time' if out['reprefill']['problems']
             != out['beam']['problems'] else 'same problems')
      print(f'N={n}: reprefill / beam wall time {rat["reprefill_over_beam_per_problem_wall"]:.2f}x'
            f' (target >= 5; {sub}; CPU time '
            f'{rat["reprefill_over_beam_per_problem_cpu"]:.2f}x); tokens on the same problems: '
            f'proposer {rat["reprefill_over_beam_proposer_tokens"]:.2f}x, verifier '
            f'{rat["reprefill_over_beam_verifier_tokens"]:.2f}x; beam accuracy on them '
            f'{out["beam"]["on_baseline_problems"]["accuracy"]:.3f}')
  load_after = os.getloadavg()
  print(f'load average before/after: {load_before[0]:.2f} / {load_after[0]:.2f}')

  if args.json:
    atomic_write_json(args.json, {
        'date': datetime.datetime.now().isoformat(timespec='seconds'),
        'command': ' '.join(['python', 'benchmarks/search.py'] + list(
            sys.argv[1:] if argv is None else argv)),
        'machine': {'platform': platform.platform(), 'cpus': os.cpu_count(),
                    'device': str(jax.devices()[0]), 'jax': jax.__version__,
                    'loadavg_before': load_before, 'loadavg_after': load_after},
        'sources_sha256': SOURCES,
        'models': {'proposer': 'base', 'verifier': 'prm', 'proposer_embed_dim': model.embed_dim,
                   'proposer_layers': model.num_layers, 'verifier_embed_dim': vmodel.embed_dim,
                   'verifier_layers': vmodel.num_layers},
        'workload': {'problems': [p.id for p in problems],
                     'num_ops': [p.num_ops for p in problems],
                     'baseline_problems': [problems[i].id for i in subset],
                     'beam_width': BEAM_WIDTH, 'max_new_tokens': MAX_NEW_TOKENS,
                     'max_step_tokens': 48, 'max_rounds': 40, 'selection': 'weighted',
                     'aggregation': 'last', 'temperature': 1.0, 'seed': args.seed,
                     'baseline_row_quantum': ROW_QUANTUM,
                     'tokens': ('proposer: prefilled + sampled (ours: prompt once + sampled; '
                                'reprefill: every round each live beam`s prefix + its step); '
                                'verifier: tokens read (reprefill: every live beam`s full '
                                'prefix every round); padding not counted')},
        'results': {str(n): out for n, out in by_n.items()},
        'ratios': {str(n): r for n, r in ratios.items()},
    })
    print(f'wrote {args.json}')


if __name__ == '__main__':
  main()
