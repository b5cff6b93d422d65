"""The sample pool on disk, shared by the arith and real-task stages: shard names, and the one
checked reader (every shard present, one record per problem, the fields each stage reads)."""

from __future__ import annotations

import os

from ttc_jax import manifest
from ttc_jax import workdir as wd

FIELDS = ('id', 'answer', 'completions', 'correct', 'num_tokens')


def shard_path(directory: str, index: int) -> str:
  return os.path.join(directory, f'shard_{index:05d}.jsonl')


def num_shards(num_problems: int, per_shard: int) -> int:
  return -(-num_problems // per_shard)


def read(a: manifest.Artifact, num_problems: int, per_shard: int, stage: str,
         fields: tuple[str, ...] = FIELDS) -> list[dict]:
  """Every record of a finished samples artifact, in shard order; one-line errors naming the file
  when it is not done, a shard is damaged, or a shard holds other than its problems' records."""
  manifest.require(a, stage)
  out = []
  for shard in range(num_shards(num_problems, per_shard)):
    path = shard_path(a.path, shard)
    count = min(per_shard, num_problems - shard * per_shard)
    recs = wd.read_jsonl(path, stage=a.stage, fields=fields, count=count)
    for line, r in enumerate(recs, start=1):
      if not len(r['completions']) == len(r['correct']) == len(r['num_tokens']) > 0:
        raise wd.damaged(path, f'record {line} has {len(r["completions"])} completions, '
                         f'{len(r["correct"])} grades and {len(r["num_tokens"])} token counts; '
                         'expected as many of each', a.stage)
    out.extend(recs)
  return out
