"""Comparison figures: the study's Fig. 11 layout and deletion/insertion curves per method."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
from matplotlib.figure import Figure

from microcae.figures.saliency import (
    CLIP_PERCENTILES,
    COLOUR_MAP,
    clip_note,
    robust_limits,
    saturation_arrows,
    smooth,
)
from microcae.figures.style import new_figure

_TITLES = {
    "complex-step": "complex-step",
    "gbp": "GBP",
    "lrp-w2": "LRP-w²",
    "lrp-zbeta": "LRP-β",
    "gradient": "gradient",
    "integrated-gradients": "integrated gradients",
    "sobel-edges": "Sobel edges (control)",
    "random": "random (control)",
}


def comparison_figure(
    tile: np.ndarray, maps: Mapping[str, np.ndarray], title: str | None = None
) -> Figure:
    """Fig. 11 layout: the input tile, then one panel per method with its own colour scale.

    Parameters
    ----------
    tile
        (H, W) input intensities in [0, 1].
    maps
        Method name -> (H, W) raw relevance, drawn in the given order (the study's order:
        complex-step, GBP, LRP-w², LRP-β) after Gaussian smoothing with σ = 1 px.
    title
        Optional figure title (e.g. the image name).

    Returns
    -------
    Figure
        A row of ``1 + len(maps)`` panels with a colour bar under every map.

    References
    ----------
    Arumugam & Kiran (2023), complex-step CAE study, Fig. 11.
    """
    figure = comparison_grid([("", tile, maps)])
    if title:
        figure.suptitle(title)
    return figure


def comparison_grid(
    rows: Sequence[tuple[str, np.ndarray, Mapping[str, np.ndarray]]],
) -> Figure:
    """Several Fig. 11 rows in one figure: per row the input tile, then one panel per method.

    Parameters
    ----------
    rows
        ``(label, tile, maps)`` per row: a label written beside the input (may be empty), the
        (H, W) tile in [0, 1] and method name -> (H, W) raw relevance, as in
        :func:`comparison_figure`. Every row must have the same methods.

    Returns
    -------
    Figure
        ``len(rows)`` rows of ``1 + len(maps)`` panels, a colour bar under every map.
    """
    if not rows:
        raise ValueError("need at least one row")
    columns = 1 + len(rows[0][2])
    figure = new_figure(2.6 * columns, 3.2 * len(rows))
    axes = figure.subplots(len(rows), columns, squeeze=False)
    for row_axes, (label, tile, maps) in zip(axes, rows, strict=True):
        row_axes[0].imshow(tile, cmap="gray", vmin=0.0, vmax=1.0)
        row_axes[0].set_title("input")
        row_axes[0].set_ylabel(label, fontsize=8)
        for axis, (name, raw) in zip(row_axes[1:], maps.items(), strict=True):
            smoothed = smooth(raw)
            vmin, vmax = robust_limits(smoothed)
            image = axis.imshow(smoothed, cmap=COLOUR_MAP, vmin=vmin, vmax=vmax)
            axis.set_title(_TITLES.get(name, name))
            bar = figure.colorbar(image, ax=axis, orientation="horizontal", fraction=0.05,
                                  pad=0.04, extend=saturation_arrows(smoothed, (vmin, vmax)))
            bar.set_label(clip_note(CLIP_PERCENTILES), fontsize=6)
            bar.ax.tick_params(labelsize=6)
            bar.ax.locator_params(nbins=4)
        for axis in row_axes:
            axis.set_xticks([])
            axis.set_yticks([])
    return figure


def curves_figure(fractions: np.ndarray, curves: Mapping[str, Mapping[str, np.ndarray]]) -> Figure:
    """Mean deletion and insertion curves of every method, latent change and reconstruction MSE.

    Parameters
    ----------
    fractions
        (S + 1,) share of pixels changed.
    curves
        Method -> ``{"deletion_latent", "insertion_latent", "deletion_mse", "insertion_mse"}`` ->
        (T, S + 1) curves over T tiles; the mean over tiles is drawn (methods without curves
        are left out).

    Returns
    -------
    Figure
        2 × 2 panels (rows: latent change, reconstruction MSE; columns: deletion, insertion).

    References
    ----------
    Samek et al. (2017), IEEE TNNLS 28(11); Petsiuk, Das & Saenko (2018), RISE, BMVC.
    """
    figure = new_figure(9.0, 7.0)
    figure.set_layout_engine("constrained")
    axes = figure.subplots(2, 2, sharex=True)
    panels = (
        ("deletion_latent", "deletion (higher area better)", "||f(x')-f(x)|| / ||f(x)||"),
        ("insertion_latent", "insertion (lower area better)", "||f(x')-f(x)|| / ||f(x)||"),
        ("deletion_mse", "deletion (higher area better)", "reconstruction MSE vs original"),
        ("insertion_mse", "insertion (lower area better)", "reconstruction MSE vs original"),
    )
    for axis, (key, title, label) in zip(axes.ravel(), panels, strict=True):
        for method, per_method in curves.items():
            if key not in per_method:  # measured without curves
                continue
            style = ":" if method in ("random", "sobel-edges") else "-"
            axis.plot(fractions, np.mean(per_method[key], axis=0), style,
                      label=_TITLES.get(method, method))
        axis.set_title(title, fontsize=9)
        axis.set_ylabel(label, fontsize=8)
        axis.grid(alpha=0.3)
    for axis in axes[1]:
        axis.set_xlabel("fraction of pixels changed (most relevant first)")
    axes[0, 0].legend(fontsize=7)
    return figure
