"""Shared matplotlib set-up for publication figures (non-interactive back end, atomic saving)."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
from matplotlib.figure import Figure

from microcae.util.atomic import atomic_path

DPI = 200


def new_figure(width_in: float, height_in: float) -> Figure:
    """Create a matplotlib figure of the given size in inches, not attached to any GUI."""
    return plt.figure(figsize=(width_in, height_in), dpi=DPI)


def save_figure(figure: Figure, path: str | Path) -> Path:
    """Save ``figure`` as PNG to ``path`` atomically and release its memory."""
    path = Path(path)
    try:
        with atomic_path(path) as tmp:
            figure.savefig(tmp, format="png", dpi=DPI, bbox_inches="tight")
    finally:
        plt.close(figure)
    return path
