"""Reconstruct micrographs with a CAE and measure how close the reconstructions are."""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm import tqdm

from microcae.data.images import read_micrograph, to_uint8
from microcae.figures.reconstruction import plot_reconstructions
from microcae.metrics.reconstruction import ReconstructionScores, reconstruction_scores
from microcae.models.cae import CAE
from microcae.models.inference import reconstruct_micrograph
from microcae.util.atomic import atomic_path, output_names
from microcae.util.limits import memory_guard
from microcae.util.table_writer import write_table

FIGURE_COLUMNS = 6
"""Most reconstructions drawn in the summary figure (the first images given)."""


@dataclass(frozen=True)
class Reconstruction:
    """One reconstructed micrograph: (H, W) original and reconstruction in [0, 1], and scores."""

    path: Path
    original: np.ndarray
    reconstruction: np.ndarray
    scores: ReconstructionScores


def save_png(pixels: np.ndarray, path: str | Path) -> Path:
    """Write an (H, W) [0, 1] image as an 8-bit greyscale PNG, atomically."""
    path = Path(path)
    with atomic_path(path) as tmp:
        Image.fromarray(to_uint8(pixels), mode="L").save(tmp, format="PNG")
    return path


RECONSTRUCTION_SUFFIX = ".reconstruction.png"


def reconstruction_targets(paths: Sequence[Path], out_dir: str | Path) -> list[Path]:
    """List the ``<stem>.reconstruction.png`` files :func:`reconstruct_files` writes, in order.

    Raises
    ------
    MicrocaeError
        If two inputs share a stem (their reconstructions would overwrite each other).
    """
    return output_names(paths, out_dir, RECONSTRUCTION_SUFFIX)


def reconstruct_files(
    paths: Sequence[Path], model: CAE, out_dir: str | Path, progress: bool = True
) -> list[Reconstruction]:
    """Reconstruct every image, writing ``<stem>.reconstruction.png`` for each into ``out_dir``.

    Images of any size are tiled 256×256 (border reflect-padded), reconstructed and stitched
    back to their exact shape. Scores compare the reconstruction with the input as read
    (before 8-bit rounding of the written PNG).
    """
    results = []
    targets = reconstruction_targets(paths, out_dir)
    for path, target in tqdm(list(zip(paths, targets, strict=True)), desc="reconstruct",
                             unit="image", disable=not progress):
        with memory_guard(str(path)):
            micrograph = read_micrograph(path)
            rebuilt = reconstruct_micrograph(model, micrograph.pixels)
        save_png(rebuilt, target)
        scores = reconstruction_scores(micrograph.pixels, rebuilt)
        results.append(Reconstruction(Path(path), micrograph.pixels, rebuilt, scores))
    return results


def reconstruct_images(paths: Sequence[Path], model: CAE, out_dir: str | Path,
                       progress: bool = True, scheduler: str | None = None) -> list[Reconstruction]:
    """:func:`reconstruct_files` here, or on a Dask cluster with one task per image.

    Parameters
    ----------
    scheduler
        ``None``: reconstruct in this process; otherwise a Dask scheduler address
        (``tcp://host:8786``) that receives the model once and one task per image.

    Returns
    -------
    list of Reconstruction
        In the order of ``paths``.
    """
    if scheduler is None:
        return reconstruct_files(paths, model, out_dir, progress=progress)
    from microcae.pipelines.batch.scheduling import run_tasks  # loads Dask and Zarr

    tasks = [functools.partial(reconstruct_files, [p], out_dir=out_dir, progress=False)
             for p in paths]
    return [r for rs in run_tasks(tasks, model, scheduler, progress=progress) for r in rs]


def metric_rows(results: Sequence[Reconstruction]) -> list[dict[str, object]]:
    """One row per image: path, height and width in pixels, MSE, PSNR (dB) and SSIM."""
    return [{"image": str(r.path), "height": r.original.shape[0], "width": r.original.shape[1],
             **r.scores.as_dict()} for r in results]


SUMMARY_FILES = ("metrics.csv", "metrics.md", "metrics.json", "reconstructions.png")
"""What :func:`write_summary` writes into the output folder."""


def summary_targets(out_dir: str | Path) -> list[Path]:
    """Return the files :func:`write_summary` writes into ``out_dir`` (checked beforehand)."""
    return [Path(out_dir) / name for name in SUMMARY_FILES]


def write_summary(results: Sequence[Reconstruction], out_dir: str | Path) -> dict[str, Path]:
    """Write the metrics table and the figure of the first :data:`FIGURE_COLUMNS` images.

    Returns
    -------
    dict of str to Path
        ``csv``, ``md`` and ``json`` (``metrics.*``: :func:`metric_rows`) and ``figure``
        (``reconstructions.png``: inputs above reconstructions, PSNR and SSIM in the titles).
    """
    written = write_table(metric_rows(results), out_dir, "metrics")
    shown = results[:FIGURE_COLUMNS]
    written["figure"] = plot_reconstructions(
        [r.original for r in shown], [r.reconstruction for r in shown],
        [r.path.stem for r in shown], Path(out_dir) / "reconstructions.png",
        [f"PSNR {r.scores.psnr_db:.1f} dB, SSIM {r.scores.ssim:.3f}" for r in shown],
    )
    return written
