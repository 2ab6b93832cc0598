"""Loss curves of a training run."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from microcae.figures.style import new_figure, save_figure


def plot_loss_curve(history: Sequence[dict[str, float]], path: str | Path) -> Path:
    """Plot train and test MSE per epoch (log scale) to a PNG.

    Parameters
    ----------
    history
        Rows with ``epoch``, ``train_mse`` and ``test_mse`` (NaN test MSE is left out).
    path
        Output PNG, written atomically.
    """
    figure = new_figure(4.5, 3.2)
    axes = figure.add_subplot()
    epochs = [row["epoch"] for row in history]
    axes.plot(epochs, [row["train_mse"] for row in history], "o-", ms=3, label="train")
    test = np.array([row["test_mse"] for row in history], dtype=float)
    if np.isfinite(test).any():
        axes.plot(epochs, test, "s-", ms=3, label="test")
    axes.set_yscale("log")
    axes.set_xlabel("epoch")
    axes.set_ylabel("MSE (intensity in [0, 1])")
    axes.grid(alpha=0.3)
    axes.legend()
    return save_figure(figure, path)
