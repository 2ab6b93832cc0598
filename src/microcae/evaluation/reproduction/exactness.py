"""Is the complex-step relevance exact? The study's literal method against torch's autograd.

On a few real tiles, in float64, the literal complex step (one complex pass per pixel,
h = 1e-24) is computed for the first pixels of each tile and compared with two independent
computations of the same Jacobian column norms: torch's forward-mode autodiff (``torch.func.jvp``
with the pixel's unit tangent) and microcae's fast reverse-mode engine (``vjp``, whole tile).
"""

from __future__ import annotations

import copy
import warnings
from dataclasses import asdict, dataclass

import numpy as np
import torch
from torch import nn

from microcae.saliency import relevance
from microcae.saliency.kinks import kink_pixels

AUTOGRAD_CHUNK = 16
"""Tangents pushed through torch's forward mode together."""


def autograd_columns(encoder: nn.Module, x: torch.Tensor, pixels: int) -> torch.Tensor:
    """Relevance of the first ``pixels`` pixels (row-major) by torch forward-mode autodiff.

    Parameters
    ----------
    encoder
        The encoder, in the dtype of ``x``.
    x
        (1, 1, H, W) tile.
    pixels
        How many pixels, from the top-left in row-major order.

    Returns
    -------
    torch.Tensor
        (pixels,) ``||∂f(x)/∂x_ij||_F`` over all latent values.
    """
    flat = x.flatten()

    def column(tangent: torch.Tensor) -> torch.Tensor:
        _, derivative = torch.func.jvp(lambda v: encoder(v.view_as(x)), (flat,), (tangent,))
        return derivative.flatten().norm()

    tangents = torch.eye(pixels, flat.numel(), dtype=x.dtype)
    with torch.no_grad(), warnings.catch_warnings():  # forward mode only: no backward graph
        # torch's forward AD loads its decompositions through the deprecated torch.jit.script
        warnings.filterwarnings("ignore", message=".*torch.jit.script.*", category=FutureWarning)
        return torch.func.vmap(column, chunk_size=AUTOGRAD_CHUNK)(tangents)


@dataclass(frozen=True)
class ExactnessCheck:
    """The literal complex step and the fast engine against torch's forward-mode autodiff.

    Attributes
    ----------
    tiles, pixels_per_tile
        Tiles compared and pixels per tile (the first ones in row-major order).
    precision
        ``"float64"``.
    max_rel_diff_literal_vs_autograd, max_rel_diff_vjp_vs_autograd
        Largest absolute difference over the tile's largest relevance (autograd's).
    kink_pixels
        Compared pixels that feed a ReLU or max-pool sitting exactly on a tie, where every
        method takes torch's one-sided derivative.
    """

    tiles: int
    pixels_per_tile: int
    precision: str
    max_rel_diff_literal_vs_autograd: float
    max_rel_diff_vjp_vs_autograd: float
    kink_pixels: int

    def as_dict(self) -> dict[str, object]:
        """JSON-ready copy."""
        return asdict(self)


def exactness_check(encoder: nn.Module, tiles: np.ndarray, pixels: int) -> ExactnessCheck:
    """Compare the literal complex step with autograd and the fast engine on real tiles.

    Parameters
    ----------
    encoder
        Trained encoder (copied and cast to float64 here; the original is left alone).
    tiles
        (T, H, W) float tiles in [0, 1].
    pixels
        Pixels per tile computed by the literal method (first ones in row-major order).

    Returns
    -------
    ExactnessCheck
        The largest differences over the compared pixels, and the ties among them.
    """
    encoder = copy.deepcopy(encoder).double().eval()
    literal_diff, fast_diff, kinks = 0.0, 0.0, 0
    for tile in tiles:
        x = torch.from_numpy(np.asarray(tile, dtype=np.float64))[None, None]
        reference = autograd_columns(encoder, x, pixels)
        literal = relevance(encoder, x, "complex-step-naive", limit=pixels)[0].flatten()[:pixels]
        fast = relevance(encoder, x, "vjp")[0].flatten()[:pixels]
        scale = float(reference.abs().max())
        literal_diff = max(literal_diff, float((literal - reference).abs().max()) / scale)
        fast_diff = max(fast_diff, float((fast - reference).abs().max()) / scale)
        kinks += int(kink_pixels(encoder, x)[0].flatten()[:pixels].sum())
    return ExactnessCheck(int(len(tiles)), int(pixels), "float64", literal_diff, fast_diff, kinks)
