"""Reconstruct micrographs with a CAE and measure how close the reconstructions are."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm import tqdm

from microcae.data.images import read_micrograph, to_uint8
from microcae.metrics.reconstruction import ReconstructionScores, reconstruction_scores
from microcae.models.cae import CAE
from microcae.models.inference import reconstruct_micrograph
from microcae.util.atomic import atomic_path, output_names
from microcae.util.limits import memory_guard


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
