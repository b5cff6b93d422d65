"""The embedded default: the synthetic `arith` task, its tokenizer, a base and a ~14x larger model.

Variants (`--config=configs/arith.py:VARIANT`):
  (none)  the CPU default: the `base` model, the README's main job.
  large   the same data and tokenizer, the `large` model (~14x base parameters).
  tiny    seconds-long runs for tests.
  gpu     more data, longer training and bigger batches for an accelerator.
  tpu     gpu's settings on one Cloud TPU VM of 8 chips (v5litepod-8): data-parallel, mesh data=8.
  tpu_pod gpu's settings on a 4-host v4-32 slice (16 chips), run as one job of 4 processes
          (`--distributed`): FSDP over 4 chips x data-parallel over 4, mesh data=4 fsdp=4.
"""

import ml_collections

from ttc_jax.training import trainer


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  variant = arg or 'default'
  if variant not in ('default', 'large', 'tiny', 'gpu', 'tpu', 'tpu_pod'):
    raise ValueError(f'unknown arith variant {variant!r}; expected default, large, tiny, gpu, '
                     'tpu or tpu_pod')
  c = ml_collections.ConfigDict()
  c.seed = 0
  c.model_name = 'large' if variant == 'large' else 'base'
  c.task = ml_collections.ConfigDict(dict(
      name='arith', seed=0, train_size=20_000, validation_size=500, test_size=500,
      num_ops_min=1, num_ops_max=12, max_operand=20, max_value=99))
  c.tokenizer = ml_collections.ConfigDict(dict(vocab_size=32))
  c.models = ml_collections.ConfigDict(dict(
      base=dict(generation='gemma3', embed_dim=128, hidden_dim=512, num_heads=4, head_dim=32,
                num_kv_heads=1, num_layers=4, sliding_window_size=128),
      large=dict(generation='gemma3', embed_dim=352, hidden_dim=1408, num_heads=4,
                 head_dim=64, num_kv_heads=2, num_layers=8, sliding_window_size=128),
  ))
  # The verifiers' backbone: the base architecture trained on from the base model's weights
  # (stage train_verifier_backbone), so it knows more arithmetic than the proposer it judges.
  c.models.base_long = dict(c.models.base)
  # train_base starts from this trained model's final weights ('' = random init).
  c.train_init = ''
  c.train = trainer.default_config()
  c.train.update(dict(steps=2000, batch_size=32, learning_rate=2e-3, warmup_steps=100,
                      log_every=100, checkpoint_every=500))
  c.train.max_len = 320
  c.sample = ml_collections.ConfigDict(dict(
      split='test', num_samples=64, temperature=1.0, top_k=0, top_p=1.0, max_new_tokens=256,
      problems_per_batch=16, max_problems=0))
  c.calibrate = ml_collections.ConfigDict(dict(ks=(1, 4, 16, 64), num_bins=5, error_sample=300))
  # PRM labels: K samples per problem, M rollouts per step prefix (stage prm_data).
  c.prm_data = ml_collections.ConfigDict(dict(
      # 256 problems x 8 samples x 4 rollouts: 4x the problems of 64 x 16 x 16 (the paper's
      # counts) with 60% of its rollouts, labelled in a quarter of the time; verifier accuracy
      # was the same (docs/verifier.md, sections 1-2).
      train_problems=256, validation_problems=16, num_samples=8, num_rollouts=4,
      temperature=1.0, max_new_tokens=256, problems_per_shard=4, prefixes_per_call=16))
  # The model the PRM and ORM sit on ('' = the proposer, config.model_name). Stage
  # train_verifier_backbone trains it (when it is not the proposer): train_base from the trained
  # model `init` ('' = random) with these settings. A head on the proposer itself ties majority
  # vote: the proposer is sure of its own errors (docs/verifier.md, sections 4-5).
  c.verifier_backbone = 'base_long'
  c.train_verifier_backbone = ml_collections.ConfigDict(dict(
      init='base', steps=2000, learning_rate=1e-3, warmup_steps=50))
  # PRM and ORM value-head training (stages train_prm, train_orm), from that backbone.
  c.train_prm = trainer.default_config()
  c.train_prm.update(dict(steps=1000, batch_size=32, learning_rate=1e-2, warmup_steps=20,
                          log_every=100, checkpoint_every=250))
  c.train_prm.max_len = 320
  # Train only the value head: the backbone (and so the likelihood the head reads) stays as
  # trained. Fine-tuning it on the value labels costs most of what it knows (docs/verifier.md, 5). The head
  # then trains on the backbone's step-end inputs, computed once (seconds, not minutes).
  c.train_prm.freeze_backbone = True
  c.eval_verifiers = ml_collections.ConfigDict(dict(
      ns=(1, 2, 4, 8, 16, 32, 64), num_draws=200, seed=0, batch_tokens=8192, calibration_bins=10))
  # PRM-guided search (stage eval_search) on the sample split: every method at every budget
  # (generations per problem; lookahead_k<K> runs budget / (K + 1) beams) and seed. The CPU
  # default: 100 problems, 20 per oracle bin (docs/search.md, the sweep's time).
  c.search = ml_collections.ConfigDict(dict(
      methods=('best_of_n', 'beam_m4', 'beam_msqrt', 'lookahead_k1_m4', 'dvts_m4'),
      budgets=(4, 16, 64), seeds=(0,), max_problems=100, rows_per_batch=1024, max_rounds=40,
      max_step_tokens=48, max_new_tokens=256, temperature=1.0, top_k=0, top_p=1.0))
  # Revisions (Section 6). revision_data: K samples per training problem at a higher
  # temperature; each distinct correct one (up to max_per_problem) becomes a trajectory with
  # 0..max_incorrect incorrect attempts before it, the closest by edit distance last (the paper
  # samples 64 per question; 16 here keeps the stage near 3 minutes on 2 cores). use_gold: a
  # problem no sample solves ends its trajectory in the reference solution (off: the paper's).
  c.revision_data = ml_collections.ConfigDict(dict(
      problems=2000, num_samples=16, temperature=1.2, max_new_tokens=256, max_incorrect=4,
      max_per_problem=2, problems_per_shard=125, use_gold=False))
  # train_revision: SFT of models/revision_<model> from the proposer's weights; loss on the final
  # (correct) attempt only; rows packed to max_len (the longest possible trajectory: a prompt
  # and 5 attempts of revision_data.max_new_tokens, plus their separators).
  c.train_revision = trainer.default_config()
  c.train_revision.update(dict(steps=600, batch_size=4, learning_rate=2e-4, warmup_steps=20,
                               log_every=50, checkpoint_every=100))
  c.train_revision.max_len = 1536
  c.train_revision.packing = True
  c.train_revision.pack_len = 512  # how full a packed row is filled (docs/revisions.md)
  # Plain base-task examples mixed in, as a fraction of the trajectories (docs/revisions.md).
  c.train_revision.replay = 1.0
  # Chains of the revision model (train_revision_orm's samples, eval_revisions): each attempt
  # sees the `window` most recent earlier ones.
  c.revision = ml_collections.ConfigDict(dict(
      window=4, max_new_tokens=256, temperature=1.0, top_k=0, top_p=1.0, rows_per_batch=1024))
  # train_revision_orm: an ORM head (config.train_prm's settings, on the verifier backbone)
  # trained on the revision model's own attempts: `chains` chains of `length` attempts on
  # `problems` training problems after revision_data's; `context` puts the earlier attempts of
  # the chain in the ORM's context (the paper's Appendix J).
  c.revision_orm = ml_collections.ConfigDict(dict(
      problems=500, validation_problems=50, chains=2, length=4, context=False))
  # eval_revisions on the sample split: chains nested so one run covers every budget and every
  # (chains x length) split of `budget` (chain i runs budget / 2**ceil(log2(i + 1)) attempts).
  c.eval_revisions = ml_collections.ConfigDict(dict(
      budget=64, budgets=(4, 8, 16, 32, 64), ratio_budgets=(16, 64), max_problems=100,
      seed=0))
  # The devices every training stage shards over: data x fsdp x tensor must be the device count
  # (all 1: one device); `rules` names a preset of ttc_jax/parallel/sharding.RULES (replicated,
  # data, fsdp, fsdp_tensor). Results equal one device's up to rounding, so the models'
  # artifacts do not record it.
  c.mesh = ml_collections.ConfigDict(dict(data=1, fsdp=1, tensor=1, rules='data'))
  # Difficulty bins (stage difficulty): oracle, predicted (the mean PRM final-answer score over
  # the sample pool) and deployable (that mean over the first deploy_k samples only; its cost is
  # charged to the budget).
  c.difficulty = ml_collections.ConfigDict(dict(deploy_k=4))
  # The compute-optimal policy (stage policy): per bin and budget the best strategy on one of
  # `folds` folds of the problems, scored on the others (seeded); the exchange against `large`
  # run greedily, at R = D_inference / D_pretrain of the paper's Figure 9.
  c.policy = ml_collections.ConfigDict(dict(folds=2, seed=0, large='large',
                                            ratios=(0.16, 0.79, 22.0)))

  if variant == 'large':
    c.train.update(dict(learning_rate=1e-3))
    # The exchange compares the small model's test-time compute with one greedy answer each.
    c.sample.update(dict(num_samples=1, temperature=0.0))
    c.difficulty.update(dict(deploy_k=1))  # at most the samples drawn (its policy is not used)
  elif variant == 'tiny':
    c.task.update(dict(train_size=400, validation_size=20, test_size=20, num_ops_max=4))
    c.models.base.update(dict(embed_dim=32, hidden_dim=64, num_heads=2, head_dim=16,
                              num_layers=2))
    c.models.base_long = dict(c.models.base)
    c.train_verifier_backbone.update(dict(steps=30, learning_rate=1e-3, warmup_steps=2))
    # 300 steps (1 s): the shortest run whose samples carry answer lines for prm_data to keep.
    c.train.update(dict(steps=300, batch_size=16, warmup_steps=2, log_every=50,
                        checkpoint_every=10))
    c.train.max_len = 96
    c.sample.update(dict(num_samples=4, max_new_tokens=64, problems_per_batch=8))
    c.calibrate.update(dict(ks=(1, 2, 4), error_sample=20))
    c.prm_data.update(dict(train_problems=8, validation_problems=4, num_samples=4,
                           num_rollouts=4, max_new_tokens=64, problems_per_shard=4,
                           prefixes_per_call=4))
    c.train_prm.update(dict(steps=10, batch_size=8, warmup_steps=2, log_every=5,
                            checkpoint_every=5))
    c.train_prm.max_len = 96
    c.eval_verifiers.update(dict(ns=(1, 2, 4), num_draws=20))
    c.search.update(dict(methods=('best_of_n', 'beam_m2', 'dvts_m2'),
                         budgets=(4,), max_problems=10, rows_per_batch=64, max_new_tokens=64,
                         max_step_tokens=16))
    # The tiny model solves nothing: the reference solution ends each trajectory.
    c.revision_data.update(dict(problems=40, num_samples=4, max_new_tokens=64,
                                problems_per_shard=20, use_gold=True))
    c.train_revision.update(dict(steps=10, batch_size=2, warmup_steps=2, log_every=5,
                                 checkpoint_every=5))
    c.train_revision.max_len = 384
    c.train_revision.pack_len = 128
    # Window 2: the window slides (a fresh prefill) at attempt 4, the longest tiny chain.
    c.revision.update(dict(window=2, max_new_tokens=64, rows_per_batch=20))
    c.revision_orm.update(dict(problems=16, validation_problems=4, chains=2, length=2))
    c.eval_revisions.update(dict(budget=4, budgets=(2, 4), ratio_budgets=(4,), max_problems=10))
    c.difficulty.update(dict(deploy_k=2))
  elif variant in ('gpu', 'tpu', 'tpu_pod'):
    c.task.update(dict(train_size=200_000))
    c.train.update(dict(steps=20_000, batch_size=256))
    c.sample.update(dict(problems_per_batch=64))
    c.search.update(dict(budgets=(4, 16, 64, 256), seeds=(0, 1, 2), max_problems=0,
                         rows_per_batch=4096))
    c.revision_data.update(dict(problems=10_000, num_samples=64))
    c.train_revision.update(dict(steps=3000, batch_size=32))
    c.revision.update(dict(rows_per_batch=8192))
    c.revision_orm.update(dict(problems=4000, validation_problems=200, chains=4))
    c.eval_revisions.update(dict(budget=128, budgets=(4, 8, 16, 32, 64, 128),
                                 ratio_budgets=(16, 64, 128), max_problems=0))
    # Training batches 256 (LM), 32 (PRM/ORM heads, revision SFT): multiples of 8 and 16.
    if variant == 'tpu':
      c.mesh.update(dict(data=8))
    elif variant == 'tpu_pod':
      c.mesh.update(dict(data=4, fsdp=4, rules='fsdp'))
  return c
