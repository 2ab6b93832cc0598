"""Model-free control maps, measured like relevance methods: Sobel edges and uniform noise.

A relevance method should beat both: the Sobel edge map shows how much of a map is "edges in the
input" (it ignores the model), and i.i.d. noise is the random-order baseline of deletion and
insertion curves. Both are registered with role ``"control"`` and take a ``seed`` (unused by the
Sobel map), so a comparison passes its seed to every control alike.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from microcae.metrics.faithfulness import random_order_map
from microcae.metrics.microstructure import sobel_map
from microcae.saliency.registry import register


@register("sobel-edges", "Sobel edges (control)", "control", preference=0)
def sobel_edges(encoder: nn.Module, x: torch.Tensor, seed: int = 0) -> torch.Tensor:
    """Sobel gradient magnitude of each input image (the encoder is not used).

    Parameters
    ----------
    encoder
        Ignored (kept for the common signature).
    x
        (N, 1, H, W) input in [0, 1].
    seed
        Ignored (the map is deterministic).

    Returns
    -------
    torch.Tensor
        (N, H, W) float64 on the CPU.
    """
    tiles = x[:, 0].detach().cpu().double().numpy()
    return torch.from_numpy(np.stack([sobel_map(tile) for tile in tiles]))


@register("random", "random (control)", "control", preference=1)
def random_control(encoder: nn.Module, x: torch.Tensor, seed: int = 0) -> torch.Tensor:
    """I.i.d. uniform "relevance" of the input's shape, seeded (the encoder is not used).

    Parameters
    ----------
    encoder
        Ignored (kept for the common signature).
    x
        (N, 1, H, W) input; only its shape is used.
    seed
        Seed of the generator: the same seed gives the same map.

    Returns
    -------
    torch.Tensor
        (N, H, W) float32 on the CPU, uniform in [0, 1).
    """
    return random_order_map((x.shape[0], *x.shape[2:]), seed)
