"""The registry of relevance methods and the ``relevance()`` entry point."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from microcae.util.errors import MicrocaeError

RelevanceMethod = Callable[..., torch.Tensor]
"""``method(encoder, x, **options) -> (N, H, W)`` relevance for a batch ``x`` of (N, 1, H, W)."""

METHODS: dict[str, RelevanceMethod] = {}


def register(name: str) -> Callable[[RelevanceMethod], RelevanceMethod]:
    """Return a decorator that adds a relevance method to :data:`METHODS` under ``name``."""

    def add(function: RelevanceMethod) -> RelevanceMethod:
        if name in METHODS:
            raise ValueError(f"relevance method {name!r} registered twice")
        METHODS[name] = function
        return function

    return add


def relevance(
    encoder: nn.Module, x: torch.Tensor, method: str = "complex-step", **options: Any
) -> torch.Tensor:
    """Relevance of every input pixel to the encoder's output.

    Parameters
    ----------
    encoder
        A torch module mapping (N, 1, H, W) to a latent tensor (e.g. ``CAE().encoder``).
    x
        (N, 1, H, W) float tensor, pixel values in [0, 1].
    method
        A key of :data:`METHODS`, e.g. ``"complex-step"`` (fast exact),
        ``"complex-step-naive"`` (the study's literal one pass per pixel), ``"jvp"``, ``"vjp"``,
        ``"gbp"``, ``"lrp-w2"``, ``"lrp-zbeta"``.
    **options
        Passed to the method (e.g. ``h``, ``dtype``, ``progress``).

    Returns
    -------
    torch.Tensor
        (N, H, W) raw, unsmoothed relevance. For the complex-step family,
        r_ij = ||∂f(x)/∂x_ij||_F over all latent values (units: latent units per unit intensity).
    """
    if method not in METHODS:
        raise MicrocaeError(f"unknown relevance method {method!r}; choose from {sorted(METHODS)}")
    if x.dim() != 4 or x.shape[1] != 1:
        raise MicrocaeError(f"expected input of shape (N, 1, H, W), got {tuple(x.shape)}")
    return METHODS[method](encoder, x, **options)
