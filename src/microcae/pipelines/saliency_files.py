"""The saliency file job: images -> ``<stem>.relevance.npy`` and ``<stem>.saliency.png``.

For each micrograph the raw relevance map (float32, the image's shape, unsmoothed) is written as
``<stem>.relevance.npy`` and the Fig. 11-style figure as ``<stem>.saliency.png``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from torch import nn
from tqdm import tqdm

from microcae.data.images import read_micrograph
from microcae.figures.saliency import CLIP_PERCENTILES, Style, plot_saliency
from microcae.saliency.maps import Mode, micrograph_relevance
from microcae.saliency.registry import STUDY_METHOD
from microcae.util.atomic import atomic_path
from microcae.util.errors import MicrocaeError


@dataclass(frozen=True)
class SaliencyOutput:
    """What was written for one image."""

    image: Path
    relevance_file: Path
    figure: Path
    max_relevance: float
    kink_pixels: int
    mode: str


def _save_npy(array: np.ndarray, path: Path) -> None:
    with atomic_path(path) as tmp, open(tmp, "wb") as handle:
        np.save(handle, array)


def saliency_files(paths: Sequence[Path], encoder: nn.Module, out_dir: str | Path,
                   method: str = STUDY_METHOD, mode: Mode = "auto", progress: bool = True,
                   percentiles: tuple[float, float] = CLIP_PERCENTILES, style: Style = "side",
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
        See :func:`microcae.saliency.maps.micrograph_relevance` (``mode="auto"``: the whole
        image's latent for images larger than a tile, the study's tiles otherwise).
    progress
        Show progress bars over images and tiles.
    percentiles, style
        Colour limits and layout of the figure, see :func:`microcae.figures.saliency.
        plot_saliency`.

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
                               title=f"{Path(path).name}: {method} ({result.mode} mode)",
                               percentiles=percentiles, style=style)
        written.append(SaliencyOutput(Path(path), npy, figure, float(result.relevance.max()),
                                      result.kink_pixels, result.mode))
    return written
