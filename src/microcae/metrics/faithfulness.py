"""Faithfulness of relevance maps: deletion and insertion curves with blurred replacement.

Pixels are ranked by relevance (most relevant first). *Deletion* replaces the top fraction of
pixels of ``x`` by a blurred copy of ``x``; *insertion* starts from the blurred copy and puts the
top fraction of original pixels back. At every 5 % step the curve records how far the latent has
moved, ``||f(x') - f(x)||_F / ||f(x)||_F``, and (given a decoder) the reconstruction error
``mean((g(f(x')) - x)^2)`` against the original image. A faithful map moves the latent fastest
under deletion (high area) and restores it fastest under insertion (low area).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from scipy.ndimage import gaussian_filter
from torch import nn

from microcae.metrics.metric import Metric

STEPS = 20
"""Curve points after the start: 20 steps of 5 % of the pixels each."""
BLUR_SIGMA = 5.0
"""Standard deviation (px) of the Gaussian blur that makes the replacement image (as in RISE)."""

_FLIPPING = (
    "Samek et al. (2017), IEEE TNNLS 28(11), 2660-2673; Petsiuk, Das & Saenko (2018), RISE, BMVC"
)
METRICS = (
    Metric("deletion_latent_auc", "higher", _FLIPPING,
           "area under ||f(x')-f(x)||/||f(x)|| as the most relevant pixels are blurred first"),
    Metric("deletion_mse_auc", "higher", _FLIPPING,
           "area under the reconstruction MSE (vs the original) under the same deletion"),
    Metric("insertion_latent_auc", "lower", _FLIPPING,
           "area under ||f(x')-f(x)||/||f(x)|| as the most relevant pixels are restored first "
           "into the blurred image"),
    Metric("insertion_mse_auc", "lower", _FLIPPING,
           "area under the reconstruction MSE (vs the original) under the same insertion"),
)


@dataclass(frozen=True)
class Curves:
    """Deletion or insertion curves of a batch.

    Attributes
    ----------
    fractions
        (S + 1,) float64 share of pixels changed, 0 to 1.
    latent_change
        (N, S + 1) float64 ``||f(x') - f(x)||_F / ||f(x)||_F``.
    reconstruction_mse
        (N, S + 1) float64 ``mean((g(f(x')) - x)^2)``, or ``None`` without a decoder.
    """

    fractions: np.ndarray
    latent_change: np.ndarray
    reconstruction_mse: np.ndarray | None

    def auc(self) -> dict[str, np.ndarray]:
        """Trapezoidal areas over ``fractions``: ``{"latent": (N,), "mse": (N,)}`` (mse if any)."""
        areas = {"latent": np.trapezoid(self.latent_change, self.fractions, axis=1)}
        if self.reconstruction_mse is not None:
            areas["mse"] = np.trapezoid(self.reconstruction_mse, self.fractions, axis=1)
        return areas


def blurred_copy(x: torch.Tensor, sigma: float = BLUR_SIGMA) -> torch.Tensor:
    """Gaussian-blurred replacement image.

    Parameters
    ----------
    x
        (N, 1, H, W) float tensor.
    sigma
        Blur standard deviation in pixels (per spatial axis; reflected borders).

    Returns
    -------
    torch.Tensor
        (N, 1, H, W), same dtype and device as ``x``.
    """
    array = x.detach().cpu().double().numpy()
    smooth = gaussian_filter(array, sigma=(0, 0, sigma, sigma), mode="reflect")
    return torch.from_numpy(smooth).to(dtype=x.dtype, device=x.device)


def random_order_map(shape: tuple[int, ...], seed: int = 0) -> torch.Tensor:
    """Random-order control: i.i.d. uniform "relevance", float32, of the given shape."""
    generator = torch.Generator().manual_seed(seed)
    return torch.rand(shape, generator=generator)


def pixel_counts(n_pixels: int, steps: int = STEPS) -> np.ndarray:
    """Pixels changed at each of ``steps + 1`` points: ``round(k / steps * n_pixels)``."""
    return np.rint(np.arange(steps + 1) / steps * n_pixels).astype(np.int64)


@torch.no_grad()
def perturbation_curves(
    encoder: nn.Module,
    x: torch.Tensor,
    maps: torch.Tensor,
    mode: str = "deletion",
    decoder: nn.Module | None = None,
    replacement: torch.Tensor | None = None,
    steps: int = STEPS,
    batch_size: int = 8,
) -> Curves:
    """Compute deletion or insertion curves of relevance maps.

    Parameters
    ----------
    encoder
        f: (N, 1, H, W) -> latent.
    x
        (N, 1, H, W) images.
    maps
        (N, H, W) relevance; pixels are ranked by value, highest first (ties: lower flat index
        first). Pass ``maps.abs()`` to rank by magnitude.
    mode
        ``"deletion"`` or ``"insertion"``.
    decoder
        g: latent -> (N, 1, H, W); if given, reconstruction MSE curves are recorded too.
    replacement
        (N, 1, H, W) values that stand in for removed pixels; default :func:`blurred_copy`.
    steps
        Number of equal steps from 0 to all pixels (20: steps of 5 %).
    batch_size
        Perturbed images per forward pass (bounds memory).

    Returns
    -------
    Curves
        Curves with ``steps + 1`` points each.

    References
    ----------
    Samek, Binder, Montavon, Lapuschkin & Müller (2017), "Evaluating the visualization of what a
    deep neural network has learned", IEEE TNNLS 28(11). Petsiuk, Das & Saenko (2018), "RISE:
    randomized input sampling for explanation of black-box models", BMVC (blurred insertion).
    """
    if mode not in ("deletion", "insertion"):
        raise ValueError(f"mode must be 'deletion' or 'insertion', not {mode!r}")
    n, _, height, width = x.shape
    if maps.shape != (n, height, width):
        raise ValueError(f"maps of shape {tuple(maps.shape)} do not match images {tuple(x.shape)}")
    replacement = blurred_copy(x) if replacement is None else replacement
    counts = pixel_counts(height * width, steps)
    order = torch.argsort(-maps.reshape(n, -1).to(x.device), dim=1, stable=True)
    rank = torch.empty_like(order)
    rank.scatter_(1, order, torch.arange(height * width, device=x.device).expand(n, -1))
    reference = encoder(x).flatten(1).double()
    perturbed = []
    for count in counts:
        changed = (rank < int(count)).reshape(n, 1, height, width)
        if mode == "deletion":
            perturbed.append(torch.where(changed, replacement, x))
        else:
            perturbed.append(torch.where(changed, x, replacement))
    stack = torch.stack(perturbed, dim=1).reshape(-1, 1, height, width)  # (N·(S+1), 1, H, W)
    latent, mse = [], []
    for chunk in torch.split(stack, batch_size):
        code = encoder(chunk)
        latent.append(code.flatten(1).double())
        if decoder is not None:
            mse.append(decoder(code).double().flatten(1))
    codes = torch.cat(latent).reshape(n, steps + 1, -1)
    distance = (codes - reference[:, None]).norm(dim=2) / reference.norm(dim=1, keepdim=True)
    errors = None
    if decoder is not None:
        outputs = torch.cat(mse).reshape(n, steps + 1, -1)
        errors = ((outputs - x.double().flatten(1)[:, None]) ** 2).mean(dim=2).cpu().numpy()
    return Curves(counts / (height * width), distance.cpu().numpy(), errors)
