"""Model-randomisation sanity check of saliency methods (Adebayo et al. 2018).

The layers of the trained encoder are re-initialised one at a time from the top (the layer
nearest the latent) down, cumulatively; after each step the map is recomputed and compared with
the trained encoder's map by Spearman rank correlation of the magnitudes. A map that explains
the model must change when the model is destroyed; one that stays put (an edge detector, a
constant) explains the image, not the model, and fails.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from scipy.stats import rankdata
from torch import nn

from microcae.metrics.metric import Metric

SANITY_THRESHOLD = 0.5
"""A method passes when the map of the fully randomised encoder has Spearman rho below this."""

_ADEBAYO = ("Adebayo, Gilmer, Muelly, Goodfellow, Hardt & Kim (2018), Sanity checks for saliency "
            "maps, NeurIPS")
METRICS = (
    Metric("sanity_rho_top", "lower", _ADEBAYO,
           "Spearman rho of |map| between the trained encoder and the one with its top layer "
           "re-initialised"),
    Metric("sanity_rho_all", "lower", _ADEBAYO,
           "Spearman rho of |map| between the trained encoder and a fully re-initialised one; "
           f"the method passes below {SANITY_THRESHOLD}"),
)

MapFunction = Callable[[nn.Module, torch.Tensor], torch.Tensor]
"""``map_fn(encoder, x) -> (N, H, W)`` for a batch ``x`` of (N, 1, H, W)."""


@dataclass(frozen=True)
class RandomisationResult:
    """Rank correlations along the cascade.

    Attributes
    ----------
    layers
        Names of the re-initialised layers, top first; step k has ``layers[: k + 1]`` random.
    rho
        (N, L) float64 Spearman correlation of each image's map with its trained-encoder map.
    """

    layers: tuple[str, ...]
    rho: np.ndarray

    @property
    def passed(self) -> np.ndarray:
        """(N,) bool: the fully randomised map's rho is below :data:`SANITY_THRESHOLD`."""
        return self.rho[:, -1] < SANITY_THRESHOLD


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    """Spearman rank correlation of two equally shaped arrays (ties get average ranks).

    Returns
    -------
    float
        Pearson correlation of the ranks; exactly 1.0 for equal arrays (the map did not change),
        and 0.0 when only one of them is constant (the rank correlation is undefined).

    References
    ----------
    Spearman (1904), "The proof and measurement of association between two things",
    Am. J. Psychol. 15(1), 72-101.
    """
    a, b = np.asarray(a, dtype=np.float64).ravel(), np.asarray(b, dtype=np.float64).ravel()
    if np.array_equal(a, b):
        return 1.0
    if np.ptp(a) == 0 or np.ptp(b) == 0:
        return 0.0
    return float(np.corrcoef(rankdata(a), rankdata(b))[0, 1])


def cascading_randomisations(encoder: nn.Module, seed: int = 0) -> list[tuple[str, nn.Module]]:
    """Copy ``encoder`` with its parameterised layers re-initialised top-down, cumulatively.

    Parameters
    ----------
    encoder
        The trained encoder; it is not modified.
    seed
        Seed of the re-initialisation (the global RNG state is restored afterwards).

    Returns
    -------
    list[tuple[str, nn.Module]]
        ``(layer name, copy)`` per step: step k re-initialises the k + 1 layers nearest the
        output with their default initialisation (``reset_parameters``).
    """
    layers = [
        name for name, module in encoder.named_modules()
        if hasattr(module, "reset_parameters") and any(True for _ in module.parameters(False))
    ]
    current = copy.deepcopy(encoder)
    steps = []
    with torch.random.fork_rng(devices=[]):
        for k, name in enumerate(reversed(layers)):
            torch.manual_seed(seed + k)
            current.get_submodule(name).reset_parameters()
            steps.append((name, copy.deepcopy(current)))
    return steps


def randomisation_test(
    map_fn: MapFunction, encoder: nn.Module, x: torch.Tensor, seed: int = 0
) -> RandomisationResult:
    """Cascading model-randomisation test of a saliency method.

    Parameters
    ----------
    map_fn
        The method, ``map_fn(encoder, x) -> (N, H, W)``.
    encoder
        The trained encoder (not modified).
    x
        (N, 1, H, W) images.
    seed
        Seed of the re-initialisation.

    Returns
    -------
    RandomisationResult
        Spearman rho of |map| per image and step.

    References
    ----------
    Adebayo, Gilmer, Muelly, Goodfellow, Hardt & Kim (2018), "Sanity checks for saliency maps",
    NeurIPS 31 (cascading randomisation, Spearman rank correlation of absolute maps).
    """
    trained = map_fn(encoder, x).detach().abs().cpu().numpy()
    steps = cascading_randomisations(encoder, seed)
    rho = np.zeros((x.shape[0], len(steps)))
    for k, (_, randomised) in enumerate(steps):
        maps = map_fn(randomised, x).detach().abs().cpu().numpy()
        rho[:, k] = [spearman(trained[n], maps[n]) for n in range(x.shape[0])]
    return RandomisationResult(tuple(name for name, _ in steps), rho)
