"""Rate–distortion plots: quality against bits per pixel, microcae points over codec curves."""

from __future__ import annotations

from pathlib import Path

from microcae.figures.style import new_figure, save_figure


def plot_codec_curves(curves: dict[str, list[dict]], learned: dict[str, dict],
                      path: str | Path, title: str = "Codec comparison",
                      groups: dict[str, list[str]] | None = None) -> Path:
    """Draw PSNR and MS-SSIM against bpp: classical codecs as lines, microcae's models on top.

    Parameters
    ----------
    curves
        Codec name -> points sorted by bpp, each with ``bpp``, ``psnr_db`` and ``ms_ssim``
        (:meth:`microcae.evaluation.codec_comparison.CodecComparison.curve`).
    learned
        Model name -> one point with the same keys.
    path
        Output PNG, written atomically.
    title
        Figure title.
    groups
        Label -> names in ``learned`` drawn as one curve (points joined in order of bpp, e.g.
        the quality levels of one codec); every other model is drawn as a star.

    Returns
    -------
    Path
        ``path``. Two panels on a logarithmic bpp axis, the legend to their right.
    """
    groups = groups or {}
    grouped = {name for members in groups.values() for name in members}
    singles = sorted((item for item in learned.items() if item[0] not in grouped),
                     key=lambda item: item[1]["bpp"])
    figure = new_figure(10.0, 3.8)
    for column, (key, label) in enumerate((("psnr_db", "PSNR (dB)"), ("ms_ssim", "MS-SSIM"))):
        axes = figure.add_subplot(1, 2, column + 1)
        for name, points in curves.items():
            axes.plot([p["bpp"] for p in points], [p[key] for p in points], "-", lw=1.2,
                      label=name)
        for name, members in groups.items():
            points = sorted((learned[m] for m in members), key=lambda p: p["bpp"])
            axes.plot([p["bpp"] for p in points], [p[key] for p in points], "o-", lw=2.0,
                      ms=4, label=f"microcae {name}")
        for index, (name, point) in enumerate(singles):
            axes.plot(point["bpp"], point[key], "*^sDvP"[index % 6], ms=7,
                      label=f"microcae {name}")
        axes.set_xscale("log")
        axes.set_xlabel("bits per pixel (file size, headers included)")
        axes.set_ylabel(label)
        axes.grid(alpha=0.3)
        if column == 1:
            axes.legend(fontsize=6, loc="upper left", bbox_to_anchor=(1.02, 1.0))
    figure.suptitle(title, fontsize=9)
    figure.tight_layout()
    return save_figure(figure, path)
