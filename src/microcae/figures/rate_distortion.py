"""Rate–distortion plots: quality against bits per pixel, microcae points over codec curves."""

from __future__ import annotations

from pathlib import Path

from microcae.figures.style import new_figure, save_figure


def plot_codec_curves(curves: dict[str, list[dict]], learned: dict[str, dict],
                      path: str | Path, title: str = "Codec comparison") -> Path:
    """Draw PSNR and MS-SSIM against bpp: one line per classical codec, microcae as points.

    Parameters
    ----------
    curves
        Codec name -> points sorted by bpp, each with ``bpp``, ``psnr_db`` and ``ms_ssim``
        (:meth:`microcae.evaluation.codec_comparison.CodecComparison.curve`).
    learned
        Model name -> one point with the same keys (drawn as stars).
    path
        Output PNG, written atomically.
    title
        Figure title.

    Returns
    -------
    Path
        ``path``. Two panels on a logarithmic bpp axis.
    """
    figure = new_figure(9.0, 3.8)
    ordered = sorted(learned.items(), key=lambda item: item[1]["bpp"])
    for column, (key, label) in enumerate((("psnr_db", "PSNR (dB)"), ("ms_ssim", "MS-SSIM"))):
        axes = figure.add_subplot(1, 2, column + 1)
        for name, points in curves.items():
            axes.plot([p["bpp"] for p in points], [p[key] for p in points], "-", lw=1.2,
                      label=name)
        for name, point in ordered:
            axes.plot(point["bpp"], point[key], "*", ms=9, label=f"microcae {name}")
        axes.set_xscale("log")
        axes.set_xlabel("bits per pixel (file size, headers included)")
        axes.set_ylabel(label)
        axes.grid(alpha=0.3)
        if column == 0:
            axes.legend(fontsize=6, loc="upper left")
    figure.suptitle(title, fontsize=9)
    return save_figure(figure, path)
