"""Pixels whose relevance depends on a one-sided derivative convention (a kink).

Every engine and torch's autograd use the same conventions: a ReLU (or LeakyReLU) whose input is
exactly 0 takes the slope of its negative side; a max-pool window with tied maxima sends the
derivative to the first maximal element in row-major order. Where each layer kind is kinked is
its ``kinks`` rule in :data:`microcae.saliency.layers.LAYERS`.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from microcae.saliency.footprint import encoder_footprint
from microcae.saliency.layers import layer_kind, leaves


def _mark(marks: np.ndarray, encoder: nn.Module, x: torch.Tensor, where: torch.Tensor) -> None:
    """Add +1/-1 corners of the input support of every marked unit (2-D prefix sums later)."""
    if where.dim() == 1:  # past a global layer every pixel reaches every unit
        marks[:, 0, 0] += where.cpu().numpy()
        return
    footprint = encoder_footprint(encoder, x[:1])
    first_r, last_r = footprint.rows.supports()
    first_c, last_c = footprint.cols.supports()
    image, rows, cols = (t.cpu().numpy() for t in where.nonzero(as_tuple=True))
    for dr, dc, sign in ((0, 0, 1), (1, 0, -1), (0, 1, -1), (1, 1, 1)):
        np.add.at(marks, (image, (last_r[rows] + 1) if dr else first_r[rows],
                          (last_c[cols] + 1) if dc else first_c[cols]), sign)


@torch.no_grad()
def kink_pixels(encoder: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Pixels whose relevance may depend on the one-sided convention at a kink.

    A kink is a ReLU or LeakyReLU input exactly 0, an ELU input exactly 0 with α ≠ 1, or a
    max-pool window whose maximum is tied (windows of zeros right after a ReLU are smooth and not
    counted). A pixel is marked if it lies in the input support of a kinked unit.

    Parameters
    ----------
    encoder
        ``nn.Sequential`` of layers with complex twins.
    x
        (N, 1, H, W) input.

    Returns
    -------
    torch.Tensor
        (N, H, W) bool on the CPU; ``.sum((1, 2))`` is the number of affected pixels per image.
    """
    layers = leaves(encoder)
    n, _, height, width = x.shape
    marks = np.zeros((n, height + 1, width + 1), dtype=np.int64)
    value, previous = x.contiguous(memory_format=torch.channels_last), None  # fast pools
    for position, (path, layer) in enumerate(layers):
        rule, output = layer_kind(layer, path).kinks, layer(value)
        found = rule(layer, value, output, previous) if rule is not None else None
        if found is not None and found[0].any():
            where, on_output = found
            prefix = nn.Sequential(*[module for _, module in layers[:position + on_output]])
            _mark(marks, prefix, x, where)
        previous, value = layer, output
    return torch.from_numpy(marks.cumsum(1).cumsum(2)[:, :height, :width] > 0)
