"""The study's Fig. 10 layout: input micrographs on top, reconstructions below."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure

from microcae.figures.style import new_figure, save_figure


def plot_reconstructions(
    originals: Sequence[np.ndarray],
    reconstructions: Sequence[np.ndarray],
    titles: Sequence[str],
    path: str | Path,
    captions: Sequence[str] | None = None,
) -> Path:
    """Write :func:`reconstruction_figure` to the PNG ``path`` (atomically); return the path."""
    return save_figure(reconstruction_figure(originals, reconstructions, titles, captions), path)


def reconstruction_figure(
    originals: Sequence[np.ndarray],
    reconstructions: Sequence[np.ndarray],
    titles: Sequence[str],
    captions: Sequence[str] | None = None,
) -> Figure:
    """Draw inputs (top row) above their reconstructions (bottom row) in grey, 0..1 fixed scale.

    Parameters
    ----------
    originals, reconstructions
        Equal-length sequences of (H, W) images on the [0, 1] scale.
    titles
        One title per column (e.g. file stems).
    captions
        Optional text under each reconstruction (e.g. its PSNR/SSIM).
    """
    count = len(originals)
    if count == 0 or count != len(reconstructions) or count != len(titles):
        raise ValueError("need equally many originals, reconstructions and titles (at least one)")
    figure = new_figure(2.6 * count, 5.4)
    for column, (original, rebuilt) in enumerate(zip(originals, reconstructions, strict=True)):
        top = figure.add_subplot(2, count, column + 1)
        top.imshow(original, cmap="gray", vmin=0.0, vmax=1.0, interpolation="nearest")
        top.set_title(titles[column], fontsize=8)
        bottom = figure.add_subplot(2, count, count + column + 1)
        bottom.imshow(np.clip(rebuilt, 0, 1), cmap="gray", vmin=0.0, vmax=1.0,
                      interpolation="nearest")
        if captions:
            bottom.set_xlabel(captions[column], fontsize=7)
        for axes in (top, bottom):
            axes.set_xticks([])
            axes.set_yticks([])
        if column == 0:
            top.set_ylabel("input", fontsize=8)
            bottom.set_ylabel("reconstruction", fontsize=8)
    return figure
