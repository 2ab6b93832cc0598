"""Saliency figures like the study's Fig. 11 (drawing only).

The input beside its relevance map smoothed with a Gaussian (σ = 1 px), drawn with the
blue-white-red colour map (red = high relevance) and a colour bar.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from scipy.ndimage import gaussian_filter

from microcae.figures.style import new_figure, save_figure

SMOOTHING_SIGMA = 1.0
"""Gaussian σ in pixels applied before drawing (the study's choice)."""


def smooth(relevance: np.ndarray, sigma: float = SMOOTHING_SIGMA) -> np.ndarray:
    """Gaussian-smooth an (H, W) relevance map (σ in pixels, reflected borders); float32."""
    return gaussian_filter(np.asarray(relevance, dtype=np.float32), sigma=sigma, mode="reflect")


def plot_saliency(pixels: np.ndarray, relevance: np.ndarray, path: str | Path, title: str = "",
                  sigma: float = SMOOTHING_SIGMA) -> Path:
    """Draw the input beside its smoothed relevance map (``bwr``, colour bar) and save a PNG.

    Parameters
    ----------
    pixels
        (H, W) input image in [0, 1].
    relevance
        (H, W) raw relevance of the same shape (units: latent units per unit intensity).
    path
        PNG file to write (atomically).
    title
        Figure title (e.g. the image name).
    sigma
        Gaussian smoothing σ in pixels.

    Returns
    -------
    Path
        ``path``.
    """
    if pixels.shape != relevance.shape:
        raise ValueError(f"image {pixels.shape} and relevance {relevance.shape} differ in shape")
    shown = smooth(relevance, sigma)
    height, width = pixels.shape
    panel = 3.2
    figure = new_figure(2 * panel + 0.8, panel * height / width + 0.6)
    left, right = figure.subplots(1, 2)
    left.imshow(pixels, cmap="gray", vmin=0, vmax=1, interpolation="nearest")
    left.set_title("input")
    image = right.imshow(shown, cmap="bwr", vmin=float(shown.min()), vmax=float(shown.max()),
                         interpolation="nearest")
    right.set_title(f"relevance (Gaussian σ = {sigma:g} px)")
    for axis in (left, right):
        axis.set_xticks([])
        axis.set_yticks([])
    figure.colorbar(image, ax=right, fraction=0.046, pad=0.04,
                    label=r"$\|\partial f/\partial x_{ij}\|$")
    if title:
        figure.suptitle(title)
    return save_figure(figure, path)
