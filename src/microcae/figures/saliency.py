"""Saliency figures like the study's Fig. 11, and the per-image saliency outputs.

For each micrograph: the input beside its relevance map smoothed with a Gaussian (σ = 1 px),
drawn with the blue-white-red colour map (red = high relevance) and a colour bar. The raw map is
written beside the figure as ``<stem>.relevance.npy`` (float32, the image's shape, unsmoothed).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from scipy.ndimage import gaussian_filter
from torch import nn
from tqdm import tqdm

from microcae.data.images import read_micrograph
from microcae.figures.style import new_figure, save_figure
from microcae.saliency.maps import Mode, micrograph_relevance
from microcae.util.atomic import atomic_path
from microcae.util.errors import MicrocaeError

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


@dataclass(frozen=True)
class SaliencyOutput:
    """What was written for one image."""

    image: Path
    relevance_file: Path
    figure: Path
    max_relevance: float
    kink_pixels: int


def _save_npy(array: np.ndarray, path: Path) -> None:
    with atomic_path(path) as tmp, open(tmp, "wb") as handle:
        np.save(handle, array)


def saliency_files(paths: Sequence[Path], encoder: nn.Module, out_dir: str | Path,
                   method: str = "vjp", mode: Mode = "tile", progress: bool = True,
                   **options: Any) -> list[SaliencyOutput]:
    """Write ``<stem>.relevance.npy`` and ``<stem>.saliency.png`` for every image.

    All images are read once first, so a bad file stops the job before anything is written;
    every file is written atomically.

    Parameters
    ----------
    paths
        Image files (see :func:`microcae.data.images.find_images`).
    encoder
        The encoder to explain.
    out_dir
        Output folder (created if missing).
    method, mode, options
        See :func:`microcae.saliency.maps.micrograph_relevance`.
    progress
        Show progress bars over images and tiles.

    Returns
    -------
    list of SaliencyOutput
        One per image, in order.

    Raises
    ------
    MicrocaeError
        For unreadable images or two inputs with the same file stem.
    """
    stems: dict[str, Path] = {}
    for path in paths:
        if Path(path).stem in stems:
            raise MicrocaeError(f"{path}: same file name stem as {stems[Path(path).stem]}; "
                                "outputs would collide")
        stems[Path(path).stem] = Path(path)
        read_micrograph(path)
    out_dir = Path(out_dir)
    written = []
    for path in tqdm(paths, desc="saliency", unit="image", disable=not progress):
        pixels = read_micrograph(path).pixels
        result = micrograph_relevance(encoder, pixels, method, mode, progress=progress, **options)
        stem = Path(path).stem
        npy = out_dir / f"{stem}.relevance.npy"
        _save_npy(result.relevance, npy)
        figure = plot_saliency(pixels, result.relevance, out_dir / f"{stem}.saliency.png",
                               title=f"{Path(path).name}: {method}")
        written.append(SaliencyOutput(Path(path), npy, figure, float(result.relevance.max()),
                                      result.kink_pixels))
    return written
