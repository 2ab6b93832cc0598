"""Consistency of a saliency map under imperceptible input noise.

A map that explains how the encoder sees a micrograph should not reorder its pixels when the
micrograph changes by less than one grey level in 8 bits: the map of ``x`` and of
``x + noise`` are compared by Spearman rank correlation of their magnitudes. Model-free maps
(a fixed random order) are trivially stable, so this is read beside the sanity check.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from microcae.metrics.metric import Metric
from microcae.metrics.sanity import MapFunction, spearman

NOISE_SIGMA = 0.5 / 255
"""Standard deviation of the added Gaussian noise, in units of the [0, 1] intensity scale
(half a grey level of an 8-bit micrograph)."""

METRICS = (
    Metric("noise_rho", "higher",
           "Alvarez-Melis & Jaakkola (2018), On the robustness of interpretability methods, "
           "ICML WHI",
           "Spearman rho of |map| between a tile and the same tile plus Gaussian noise of half "
           "an 8-bit grey level: consistency of the explanation"),
)


def noise_stability(map_fn: MapFunction, encoder: nn.Module, x: torch.Tensor,
                    maps: torch.Tensor, sigma: float = NOISE_SIGMA, seed: int = 0) -> np.ndarray:
    """Rank correlation of each tile's map with the map of a slightly noisy copy.

    Parameters
    ----------
    map_fn
        ``map_fn(encoder, x) -> (N, H, W)`` relevance.
    encoder
        The encoder explained.
    x
        (N, 1, H, W) tiles in [0, 1].
    maps
        (N, H, W) maps of ``x`` already computed with ``map_fn``.
    sigma
        Noise standard deviation (intensity units, [0, 1] scale).
    seed
        Seed of the noise.

    Returns
    -------
    np.ndarray
        (N,) float64 Spearman rho of ``|maps|`` against ``|map_fn(encoder, x + noise)|``.
    """
    generator = torch.Generator().manual_seed(seed)
    noise = torch.randn(x.shape, generator=generator, dtype=torch.float64) * sigma
    noisy = map_fn(encoder, (x.to(torch.float64) + noise).to(x.dtype)).detach().cpu()
    return np.array([spearman(np.abs(a.numpy()), np.abs(b.numpy()))
                     for a, b in zip(maps, noisy, strict=True)])
