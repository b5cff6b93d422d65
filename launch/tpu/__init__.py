"""Cloud TPU job scripts: `python -m launch.tpu.job --action=ACTION ...` (see launch/tpu/README.md)."""
