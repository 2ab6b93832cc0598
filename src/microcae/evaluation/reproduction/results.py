"""Typed measurements of the reproduction report: what :mod:`.claims` judges and it shows."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from microcae.evaluation.comparison import Comparison, TileResult
from microcae.metrics.bootstrap import Estimate, cluster_bootstrap
from microcae.util.table_writer import Column, Table


@dataclass(frozen=True)
class StorageRow:
    """Size of the latent files of one storage configuration.

    Attributes
    ----------
    label
        Storage, e.g. ``"uint8 + zstd"``.
    bytes
        Mean file size over tiles, header included.
    ratio
        8-bit tile bytes over file bytes, mean over tiles with its interval over micrographs.
    bpp
        Bits per pixel of the mean file.
    """

    label: str
    bytes: float
    ratio: Estimate
    bpp: float

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready copy."""
        return {**asdict(self), "ratio": self.ratio.as_dict()}


def storage_table(rows: Sequence[StorageRow]) -> Table:
    """Label, mean bytes, ratio (with interval) and bpp per storage configuration."""
    return Table.of([{"storage": r.label, "bytes": r.bytes, "ratio [95 % CI]": r.ratio.text(".1f"),
                      "bpp": r.bpp} for r in rows],
                    [Column("storage"), Column("bytes", spec=".0f"), Column("ratio [95 % CI]"),
                     Column("bpp", spec=".3f")])


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


@dataclass(frozen=True)
class MseEstimate:
    """Reconstruction MSE of one model (or set of fold models) on its train and test tiles.

    Attributes
    ----------
    label
        Which model and split, e.g. ``"steel CAE, tile split (the study's)"``.
    train, test
        Mean per-tile MSE (float tiles in [0, 1]) with the interval over micrographs.
    """

    label: str
    train: Estimate
    test: Estimate

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready copy."""
        return {"label": self.label, "train": self.train.as_dict(), "test": self.test.as_dict()}


def mse_table(rows: Sequence[MseEstimate]) -> Table:
    """One row per model and split: train and test MSE with intervals, tiles and micrographs."""
    return Table.of([{"model and split": r.label, "train MSE [95 % CI]": r.train.text(".4f"),
                      "train tiles": r.train.values, "test MSE [95 % CI]": r.test.text(".4f"),
                      "test tiles": r.test.values, "test micrographs": r.test.clusters}
                     for r in rows])


SALIENCY_MEASURES = ("dark_auroc", "boundary_auroc", "dark_mass_ratio", "label_auroc")
"""Per-tile measures summarised with intervals on every tile."""


@dataclass(frozen=True)
class SaliencyEstimates:
    """One method on every tile of some micrographs: means with intervals over micrographs.

    Attributes
    ----------
    tiles, images
        Tiles and micrographs scored.
    measures
        :data:`SALIENCY_MEASURES` name -> estimate (``label_auroc``: tiles with a label mask).
    dark_share, boundary_share
        Share of tiles whose dark-phase / boundary AUROC exceeds 0.5, with its interval.
    per_image
        Micrograph -> tile count and mean of each measure over its tiles.
    """

    tiles: int
    images: int
    measures: dict[str, Estimate]
    dark_share: Estimate
    boundary_share: Estimate
    per_image: dict[str, dict[str, float]] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready copy."""
        return {"tiles": self.tiles, "images": self.images,
                **{k: v.as_dict() for k, v in self.measures.items()},
                "dark_share": self.dark_share.as_dict(),
                "boundary_share": self.boundary_share.as_dict(), "per_image": self.per_image}

    def per_image_table(self) -> Table:
        """One row per micrograph: its tiles and the mean of each measure over them."""
        return Table.of([{"micrograph": Path(name).name, **values}
                         for name, values in self.per_image.items()],
                        [Column("micrograph"), Column("tiles"),
                         *(Column(k, spec=".3f") for k in SALIENCY_MEASURES)])


def _estimates(tiles: Sequence[TileResult]) -> SaliencyEstimates:
    """Summarise one method's tiles (clusters: their images)."""
    images = np.array([t.image for t in tiles])
    values = {k: np.array([t.scores[k] for t in tiles], dtype=np.float64)
              for k in SALIENCY_MEASURES}
    shares = [np.where(np.isfinite(values[k]), values[k] > 0.5, np.nan)
              for k in ("dark_auroc", "boundary_auroc")]
    per_image = {}
    for name in dict.fromkeys(images.tolist()):
        own = images == name
        per_image[name] = {"tiles": int(own.sum()), **{
            k: float(np.nanmean(v[own])) if np.isfinite(v[own]).any() else float("nan")
            for k, v in values.items()}}
    return SaliencyEstimates(len(tiles), len(set(images)),
                             {k: cluster_bootstrap(v, images) for k, v in values.items()},
                             cluster_bootstrap(shares[0], images),
                             cluster_bootstrap(shares[1], images), per_image)


def saliency_estimates(tiles: Sequence[TileResult]) -> dict[str, SaliencyEstimates]:
    """Map each method of ``tiles`` to its :class:`SaliencyEstimates` (clusters: images)."""
    methods = dict.fromkeys(t.method for t in tiles)
    return {m: _estimates([t for t in tiles if t.method == m]) for m in methods}


def saliency_table(stats: dict[str, SaliencyEstimates]) -> Table:
    """One row per method: tiles, micrographs, each measure and share with its interval."""
    rows = []
    for method, s in stats.items():
        rows.append({"method": method, "tiles": s.tiles, "micrographs": s.images,
                     **{k: s.measures[k].text() for k in SALIENCY_MEASURES[:3]},
                     "dark_share": s.dark_share.text(), "boundary_share": s.boundary_share.text(),
                     "label_auroc": (s.measures["label_auroc"].text()
                                     if s.measures["label_auroc"].values else None)})
    return Table.of(rows)
