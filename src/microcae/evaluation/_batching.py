"""Apply a torch module to a numpy array in chunks, without gradients (shared by evaluation)."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn


def run_batched(module: nn.Module, inputs: np.ndarray, chunk: int = 8) -> np.ndarray:
    """Apply ``module`` without gradients to (N, ...) float32 ``inputs``, ``chunk`` at a time.

    Returns
    -------
    np.ndarray
        (N, ...) outputs, concatenated in input order.
    """
    with torch.no_grad():
        return np.concatenate([module(torch.from_numpy(inputs[i:i + chunk])).numpy()
                               for i in range(0, len(inputs), chunk)])
