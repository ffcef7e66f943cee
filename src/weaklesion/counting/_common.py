"""Checks and constants the counting modules share."""

from __future__ import annotations

import numpy as np
import torch

ArrayLike = np.ndarray | torch.Tensor


# Coefficients of the left factor are taken this many at a time in one matrix product;
# 16 to 32 was fastest on CPU over K = 10 .. 2000 and batches of 1 .. 64.
_BLOCK = 32


_CONNECTIVITY = {2: (4, 8), 3: (6, 18, 26)}


_REDUCTIONS = ("mean", "sum", "none")


# Slack when testing an interval's mass against the credible level, for rounding.
_MASS_SLACK = 1e-9
