"""Saliency figures like the study's Fig. 11, readable (drawing only).

The input beside its relevance map smoothed with a Gaussian (σ = 1 px) and drawn with the
blue-white-red colour map (red = high relevance), the study's look. Two changes make the maps
readable: the colour limits are robust percentiles of the drawn map (0.5 % and 99.5 % by
default, as Captum's ``visualize_image_attr`` clips outliers), so that a handful of outlier
pixels no longer squeeze everything else into one colour, and the colour bar says so; and an
overlay style blends the map over the micrograph, so the structure under high relevance can be
seen.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import numpy as np
from matplotlib import colormaps
from matplotlib.colors import Normalize
from scipy.ndimage import gaussian_filter

from microcae.figures.style import new_figure, save_figure

SMOOTHING_SIGMA = 1.0
"""Gaussian σ in pixels applied before drawing (the study's choice)."""
CLIP_PERCENTILES = (0.5, 99.5)
"""Default colour limits: these percentiles of the drawn map (outliers saturate)."""
COLOUR_MAP = "bwr"
"""Blue-white-red, the study's colour map: red = high relevance."""
OVERLAY_ALPHA = 0.6
"""Opacity of the relevance colours over the micrograph in the overlay style."""
Style = Literal["side", "overlay"]


def smooth(relevance: np.ndarray, sigma: float = SMOOTHING_SIGMA) -> np.ndarray:
    """Gaussian-smooth an (H, W) relevance map (σ in pixels, reflected borders); float32."""
    return gaussian_filter(np.asarray(relevance, dtype=np.float32), sigma=sigma, mode="reflect")


def robust_limits(shown: np.ndarray, percentiles: tuple[float, float] = CLIP_PERCENTILES
                  ) -> tuple[float, float]:
    """Colour limits of a drawn map from robust percentiles.

    Parameters
    ----------
    shown
        (H, W) map as drawn (e.g. smoothed relevance).
    percentiles
        (low, high) in percent, 0 ≤ low < high ≤ 100; (0, 100) gives the map's min and max.

    Returns
    -------
    tuple[float, float]
        ``(vmin, vmax)``: the low and high percentiles of the map; for a map with both signs,
        ``(-m, m)`` with m the high percentile of ``|map|`` (white stays at 0). Never empty:
        a constant map gets ``(v, v + 1)``.

    Raises
    ------
    ValueError
        For percentiles outside 0..100 or not increasing.
    """
    low, high = percentiles
    if not 0 <= low < high <= 100:
        raise ValueError(f"percentiles must satisfy 0 <= low < high <= 100, got {percentiles}")
    values = np.asarray(shown, dtype=np.float64)
    if values.min() < 0 < values.max():
        bound = float(np.percentile(np.abs(values), high))
        return (-bound, bound) if bound > 0 else (-1.0, 1.0)
    vmin, vmax = (float(v) for v in np.percentile(values, [low, high]))
    return (vmin, vmax) if vmax > vmin else (vmin, vmin + 1.0)


def saturation_arrows(shown: np.ndarray, limits: tuple[float, float]) -> str:
    """Matplotlib colour-bar ``extend``: arrows where ``shown`` saturates below/above ``limits``."""
    low, high = bool(shown.min() < limits[0]), bool(shown.max() > limits[1])
    return {(False, False): "neither", (True, False): "min", (False, True): "max",
            (True, True): "both"}[(low, high)]


def clip_note(percentiles: tuple[float, float]) -> str:
    """Colour-bar text that states the clipping (empty for the full range)."""
    if tuple(percentiles) == (0, 100):
        return "full range"
    return f"colours clipped to percentiles {percentiles[0]:g}–{percentiles[1]:g}"


def overlay(pixels: np.ndarray, shown: np.ndarray, limits: tuple[float, float],
            alpha: float = OVERLAY_ALPHA) -> np.ndarray:
    """Blend a relevance map's colours over a greyscale micrograph.

    Parameters
    ----------
    pixels
        (H, W) micrograph in [0, 1].
    shown
        (H, W) map as drawn.
    limits
        (vmin, vmax) colour limits (values outside saturate).
    alpha
        Opacity of the relevance colours, 0..1.

    Returns
    -------
    np.ndarray
        (H, W, 3) float RGB in [0, 1]: ``(1 − α)·grey + α·colour``.
    """
    colours = colormaps[COLOUR_MAP](Normalize(*limits, clip=True)(shown))[..., :3]
    grey = np.repeat(np.clip(np.asarray(pixels, dtype=np.float64), 0, 1)[..., None], 3, axis=2)
    return (1 - alpha) * grey + alpha * colours


def plot_saliency(pixels: np.ndarray, relevance: np.ndarray, path: str | Path, title: str = "",
                  sigma: float = SMOOTHING_SIGMA,
                  percentiles: tuple[float, float] = CLIP_PERCENTILES,
                  style: Style = "side") -> Path:
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
    percentiles
        Colour limits as percentiles of the smoothed map (see :func:`robust_limits`); the
        colour bar states them and shows arrows where values saturate.
    style
        ``"side"``: the map on its own beside the input (the study's look); ``"overlay"``:
        the map blended over the micrograph beside the input.

    Returns
    -------
    Path
        ``path``.
    """
    if pixels.shape != relevance.shape:
        raise ValueError(f"image {pixels.shape} and relevance {relevance.shape} differ in shape")
    if style not in ("side", "overlay"):
        raise ValueError(f"style must be 'side' or 'overlay', not {style!r}")
    shown = smooth(relevance, sigma)
    limits = robust_limits(shown, percentiles)
    height, width = pixels.shape
    panel = 3.2
    figure = new_figure(2 * panel + 0.8, panel * height / width + 0.9)
    left, right = figure.subplots(1, 2)
    left.imshow(pixels, cmap="gray", vmin=0, vmax=1, interpolation="nearest")
    left.set_title("input")
    image = right.imshow(shown, cmap=COLOUR_MAP, vmin=limits[0], vmax=limits[1],
                         interpolation="nearest")
    if style == "overlay":
        right.imshow(overlay(pixels, shown, limits), interpolation="nearest")
    right.set_title(f"relevance{' over the input' if style == 'overlay' else ''} "
                    f"(Gaussian σ = {sigma:g} px)", fontsize=9)
    for axis in (left, right):
        axis.set_xticks([])
        axis.set_yticks([])
    bar = figure.colorbar(image, ax=right, fraction=0.046, pad=0.04,
                          extend=saturation_arrows(shown, limits))
    bar.set_label(r"$\|\partial f/\partial x_{ij}\|$" + f" ({clip_note(percentiles)})",
                  fontsize=8)
    if title:
        figure.suptitle(title)
    return save_figure(figure, path)
