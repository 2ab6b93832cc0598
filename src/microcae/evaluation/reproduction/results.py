"""Typed measurements of the reproduction report: what :mod:`.claims` judges and it shows."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from microcae.evaluation.comparison import Comparison
from microcae.util.table_writer import Column, Table


@dataclass(frozen=True)
class StorageRow:
    """Mean size of the latent files of one storage configuration.

    Attributes
    ----------
    label
        Storage, e.g. ``"uint8 + zstd"``.
    bytes
        Mean file size over tiles, header included.
    ratio
        8-bit tile bytes over ``bytes``.
    bpp
        Bits per pixel of the file.
    """

    label: str
    bytes: float
    ratio: float
    bpp: float


STORAGE_COLUMNS = (Column("label"), Column("bytes"), Column("ratio"), Column("bpp"))


def storage_table(rows: list[StorageRow]) -> Table:
    """Label, bytes, ratio and bpp per storage configuration."""
    return Table.of([asdict(r) for r in rows], STORAGE_COLUMNS)


@dataclass(frozen=True)
class ReconstructionSummary:
    """Reconstruction quality of a model on a prepared set (test tiles rounded to 8 bits).

    Attributes
    ----------
    train_mse, test_mse
        Mean squared error on the [0, 1] scale over the train and test tiles.
    test_psnr_db, test_ssim
        Mean PSNR (dB) and SSIM over the test tiles after rounding to 8 bits.
    """

    train_mse: float
    test_mse: float
    test_psnr_db: float
    test_ssim: float


@dataclass(frozen=True)
class MethodStats:
    """One method's row of the saliency tables: means over tiles and agreeing shares.

    Attributes
    ----------
    tiles
        Tiles summarised.
    dark_auroc, boundary_auroc, noise_rho, sanity_pass, deletion_latent_auc,
    insertion_latent_auc, seconds_per_tile
        Means over tiles of the comparison's columns of these names.
    dark_share, boundary_share
        Shares of tiles whose dark-phase / boundary AUROC exceeds 0.5.
    """

    tiles: int
    dark_auroc: float
    boundary_auroc: float
    noise_rho: float
    sanity_pass: float
    deletion_latent_auc: float
    insertion_latent_auc: float
    seconds_per_tile: float
    dark_share: float
    boundary_share: float

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready copy."""
        return asdict(self)


METHOD_COLUMNS = (Column("method"), *(Column(k) for k in (
    "tiles", "dark_auroc", "dark_share", "boundary_auroc", "boundary_share", "noise_rho",
    "sanity_pass", "deletion_latent_auc", "insertion_latent_auc", "seconds_per_tile")))


def method_stats(comparison: Comparison, images: set[str] | None) -> dict[str, MethodStats]:
    """Map each method to its :class:`MethodStats` over the comparison's tiles (of ``images``)."""
    out = {}
    for entry in comparison.summary(images):
        tiles = comparison.selected(entry.method, images)
        share = {key: float(np.mean([t.scores[key] > 0.5 for t in tiles]))
                 for key in ("dark_auroc", "boundary_auroc")}
        means = {k: entry.means[k] for k in ("dark_auroc", "boundary_auroc", "noise_rho",
                                             "sanity_pass", "deletion_latent_auc",
                                             "insertion_latent_auc", "seconds_per_tile")}
        out[entry.method] = MethodStats(entry.tiles, **means, dark_share=share["dark_auroc"],
                                        boundary_share=share["boundary_auroc"])
    return out


def methods_table(stats: dict[str, MethodStats]) -> Table:
    """One row per method (:data:`METHOD_COLUMNS`)."""
    return Table.of([{"method": m, **s.as_dict()} for m, s in stats.items()], METHOD_COLUMNS)
