"""Matplotlib for the stages' figures: the Agg backend (no display), imported on first use so
the launcher does not pay its 0.3 s at every start."""

from __future__ import annotations

import functools


@functools.cache
def pyplot():
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  return plt
