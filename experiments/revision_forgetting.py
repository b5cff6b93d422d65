"""How much the revision SFT costs the model as a solver, and how well it reads earlier attempts.

On a workdir whose `train_revision` is done (under the config values given as flags), for the
base model and the revision model:
  * the loss (mean NLL per target token) of every 20th revision trajectory's correct attempt,
    by the number of incorrect attempts in its context (0 = the plain task);
  * the loss of the reference solutions of 100 validation problems (the plain task);
  * first-attempt accuracy at temperature 1 on 200 training problems neither was fine-tuned on
    (those after revision_data's).
Writes experiments/results/revision_forgetting.json (or --out).

  python experiments/revision_forgetting.py --workdir WD \
      [--steps 600 --learning_rate 2e-4 --replay 1.0]
"""

from __future__ import annotations

import argparse
import json
import os
import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from configs.arith import get_config  # noqa: E402
from ttc_jax.model.transformer import Transformer  # noqa: E402
from ttc_jax.pipeline import common, revision_data, train_base, train_revision  # noqa: E402
from ttc_jax.sampling.sampler import Sampler  # noqa: E402
from ttc_jax.tasks import arith  # noqa: E402
from ttc_jax.workdir import atomic_write_json  # noqa: E402


def _rows(pairs, width):
  tokens = np.zeros((len(pairs), width), np.int32)
  mask = np.zeros((len(pairs), width), np.float32)
  for i, (context, target) in enumerate(pairs):
    seq = (context + target)[:width]
    tokens[i, :len(seq)] = seq
    mask[i, len(context):len(seq)] = 1.0
  return jnp.asarray(tokens), jnp.asarray(mask)


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--workdir', required=True)
  parser.add_argument('--steps', type=int, default=None)
  parser.add_argument('--learning_rate', type=float, default=None)
  parser.add_argument('--replay', type=float, default=None)
  parser.add_argument('--out', default='experiments/results/revision_forgetting.json')
  args = parser.parse_args()
  config, wd = get_config(), args.workdir
  for key in ('steps', 'learning_rate', 'replay'):
    if getattr(args, key) is not None:
      config.train_revision[key] = getattr(args, key)
  tok = common.load_tokenizer(config, wd, 'experiment')
  models = {'base': train_base.load_model(config, wd, config.model_name, 'experiment'),
            'revision': train_revision.load_revision_model(config, wd, 'experiment')}
  model = models['base'][0]

  @jax.jit
  def nll(params, tokens, mask):
    logits = Transformer(model).apply({'params': params}, tokens[:, :-1]).logits
    loss = optax.softmax_cross_entropy_with_integer_labels(logits, tokens[:, 1:])
    return (loss * mask[:, 1:]).sum(1) / jnp.maximum(mask[:, 1:].sum(1), 1.0)

  trajs = revision_data.load_trajectories(config, wd, 'experiment')[::20]
  ks = np.array([len(t.incorrect) for t in trajs])
  traj_rows = _rows([t.example(tok.eos_id, config.revision.window) for t in trajs],
                    config.train_revision.max_len)
  plain = common.load_problems(config, wd, 'validation', 'experiment')[:100]
  plain_rows = _rows([common.encode_example(tok, p) for p in plain], config.train.max_len)
  start = config.revision_data.problems
  fresh = common.load_problems(config, wd, 'train', 'experiment')[start:start + 200]
  prompts = [common.encode_example(tok, p)[0] for p in fresh]
  out = {'config': {k: config.train_revision[k] for k in ('steps', 'learning_rate', 'replay')},
         'trajectories': len(trajs)}
  for name, (m, params) in models.items():
    loss = np.asarray(nll(params, *traj_rows))
    sample = Sampler(m, eos_id=tok.eos_id).sample(
        params, prompts, key=jax.random.key(0), max_new_tokens=config.revision.max_new_tokens,
        temperature=1.0)
    out[name] = {
        'trajectory_loss_by_incorrect_attempts': {
            str(k): float(loss[ks == k].mean()) for k in np.unique(ks)},
        'plain_validation_loss': float(np.asarray(nll(params, *plain_rows)).mean()),
        'first_attempt_accuracy_t1': float(np.mean([
            arith.grade(tok.decode(s), p.answer) for s, p in zip(sample.sequences(), fresh)]))}
    print(name, json.dumps(out[name]))
  atomic_write_json(args.out, out)
  print(f'wrote {args.out}')


if __name__ == '__main__':
  main()
