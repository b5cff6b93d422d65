"""8 simulated CPU devices give the same search as one: tokens, scores and picks (a subprocess,
since the device count is fixed when JAX starts)."""

import os
import subprocess
import sys
import textwrap

SCRIPT = textwrap.dedent('''
    import jax
    jax.config.update('jax_num_cpu_devices', 8)
    import numpy as np
    from jax.sharding import AxisType
    sys_path = None
    from tests import test_search as t
    from ttc_jax.search import engine
    mesh = jax.make_mesh((8,), ('data',), axis_types=(AxisType.Auto,))
    prompts = t.PROMPTS + [[2, 9, 4], [2, 6, 6, 4]]  # 5 problems: padded to 8 on the mesh
    for method, k in (('best_of_n', 0), ('beam', 0), ('dvts', 0), ('lookahead', 1)):
      c = t._config(method, n=4, m=2, lookahead=k)
      one = engine.search(c, t.MODELS, prompts, jax.random.key(7), t._answer)
      eight = engine.search(c, t.MODELS, prompts, jax.random.key(7), t._answer, mesh=mesh)
      assert len(one) == len(eight) == len(prompts)
      for a, b in zip(one, eight):
        assert a.completions == b.completions, method
        assert a.pick == b.pick, method
        assert (a.proposer_tokens, a.verifier_tokens) == (b.proposer_tokens, b.verifier_tokens)
        for x, y in zip(a.step_scores, b.step_scores):
          np.testing.assert_allclose(x, y, atol=1e-5)
      print(method, 'ok', sum(map(len, one[0].completions)))
''')


def test_eight_devices_equal_one():
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  env = dict(os.environ, PYTHONPATH=root + os.pathsep + os.environ.get('PYTHONPATH', ''))
  out = subprocess.run([sys.executable, '-c', SCRIPT], cwd=root, env=env, capture_output=True,
                       text=True, timeout=600)
  assert out.returncode == 0, out.stderr[-3000:]
  for method in ('best_of_n', 'beam', 'dvts', 'lookahead'):
    assert f'{method} ok' in out.stdout
