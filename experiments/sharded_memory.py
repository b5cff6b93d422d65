"""Per-device parameter bytes of the official configs under the pod axis rules, from shapes alone.

    python experiments/sharded_memory.py [--rules=fsdp_tensor]

No device is needed: `jax.eval_shape` gives the parameter shapes, an abstract mesh the layout.
Prints, per config and mesh shape, fp32 parameter GiB per device and with AdamW's two moments.
"""

import argparse

from ttc_jax.model import config as cfg_lib
from ttc_jax.model import transformer
from ttc_jax.parallel import sharding

GiB = 2**30
MESHES = ({'data': 1, 'fsdp': 8, 'tensor': 1}, {'data': 1, 'fsdp': 4, 'tensor': 2},
          {'data': 2, 'fsdp': 16, 'tensor': 1})


def main() -> None:
  parser = argparse.ArgumentParser()
  parser.add_argument('--rules', default='fsdp_tensor', choices=sorted(sharding.RULES))
  args = parser.parse_args()
  for name in ('gemma3_270m', 'gemma3_1b', 'gemma2_2b', 'gemma3_4b'):
    config = cfg_lib.get_config(name)
    shapes = transformer.param_shapes(config)
    total = 4 * transformer.count_params(shapes)
    for shape in MESHES:
      mesh = sharding.abstract_mesh(shape)
      per = sharding.per_device_bytes(
          shapes, sharding.param_shardings(mesh, sharding.RULES[args.rules], shapes, config))
      mesh_name = ' x '.join(f'{k}={v}' for k, v in shape.items())
      print(f'{name:12s} {mesh_name:26s} params {per / GiB:6.3f} GiB/device '
            f'(of {total / GiB:6.2f}), with AdamW moments {3 * per / GiB:6.3f} GiB')


if __name__ == '__main__':
  main()
