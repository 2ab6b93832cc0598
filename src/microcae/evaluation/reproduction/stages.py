"""The measurements of a report run, one function per stage (no rendering, no files written).

Each stage takes models and prepared sets and returns typed results of
:mod:`microcae.evaluation.reproduction.results` (or of the evaluation module it runs).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from torch import nn

from microcae.codec import LATENT_DTYPES, encode_image
from microcae.data.dataset import PreparedSet
from microcae.data.images import round_to_8bit, to_uint8, uint8_tile
from microcae.evaluation._batching import run_batched
from microcae.evaluation.attack import AttackResult
from microcae.evaluation.comparison import TileResult, compare_images
from microcae.evaluation.fidelity import FidelityResult, code_tiles
from microcae.evaluation.reproduction.results import (
    MseEstimate,
    ReconstructionSummary,
    StorageRow,
)
from microcae.evaluation.reproduction.steel import SteelModels
from microcae.metrics.bootstrap import cluster_bootstrap
from microcae.metrics.reconstruction import reconstruction_scores
from microcae.models.cae import CAE
from microcae.util.errors import MicrocaeError

EVERY_TILE_METHODS = ("complex-step", "gbp", "lrp-w2", "lrp-zbeta", "sobel-edges", "random")
"""Methods and controls mapped on every tile of the study-like micrographs."""
STORAGES = tuple((dtype, compress) for dtype in LATENT_DTYPES for compress in (False, True))
"""(latent dtype, zstd) of each storage row: every dtype of the CAE, without and with zstd."""



def _autoencoder(model: CAE) -> nn.Module:
    """Return ``encoder`` then ``decoder`` as one module (tiles to reconstructions)."""
    return nn.Sequential(model.encoder, model.decoder)

def tile_sources(data: PreparedSet) -> np.ndarray:
    """(T,) source file (relative, as in the manifest) of every tile of ``data``."""
    return np.array([t["source"] for t in data.manifest["tiles"]])


def per_tile_mse(model: CAE, data: PreparedSet, indices: np.ndarray) -> np.ndarray:
    """(len(indices),) MSE of each float tile of ``data`` against its reconstruction."""
    tiles = np.ascontiguousarray(data.tiles[indices], dtype=np.float32)
    if len(tiles) == 0:
        return np.zeros(0)
    rebuilt = run_batched(_autoencoder(model), tiles[:, None])[:, 0]
    return ((rebuilt.astype(np.float64) - tiles) ** 2).mean(axis=(1, 2))


def mse_estimate(label: str, train: np.ndarray, train_sources: np.ndarray, test: np.ndarray,
                 test_sources: np.ndarray) -> MseEstimate:
    """Per-tile MSEs and their micrographs -> means with intervals over micrographs."""
    return MseEstimate(label, cluster_bootstrap(train, train_sources),
                       cluster_bootstrap(test, test_sources))


def general_reconstruction(model: CAE, data: PreparedSet
                           ) -> tuple[ReconstructionSummary, MseEstimate]:
    """Train/test MSE of ``model`` on ``data`` (split by image) and 8-bit test PSNR/SSIM."""
    sources = tile_sources(data)
    train, test = data.indices("train"), data.indices("test")
    errors = {split: per_tile_mse(model, data, idx) for split, idx in (("train", train),
                                                                       ("test", test))}
    tiles = round_to_8bit(data.tiles[test])
    rebuilt = round_to_8bit(run_batched(_autoencoder(model), tiles[:, None])[:, 0])
    rows = [reconstruction_scores(o, r) for o, r in zip(tiles, rebuilt, strict=True)]
    summary = ReconstructionSummary(
        float(errors["train"].mean()) if len(train) else float("nan"),
        float(errors["test"].mean()), float(np.mean([r.psnr_db for r in rows])),
        float(np.mean([r.ssim for r in rows])))
    estimate = mse_estimate("general model (every group), split by image", errors["train"],
                            sources[train], errors["test"], sources[test])
    return summary, estimate


def steel_mse(steel: SteelModels, data: PreparedSet) -> list[MseEstimate]:
    """MSE of the study-like models: the study's tile split, and every micrograph held out once.

    The held-out row pools every tile, each reconstructed by the model that did not train on
    its micrograph (and, for train, every fold's training tiles).
    """
    sources = tile_sources(data)
    every = np.arange(len(sources))
    split = steel.tile_split
    train = split.train_tiles(len(sources))
    epochs = int(split.provenance.get("epochs_completed", 0))
    batch = int(split.provenance.get("settings", {}).get("batch_size", 32))
    rows = [mse_estimate(f"steel CAE, random tile split (the study's; {len(train)} train / "
                         f"{len(split.test_tiles)} test tiles, {epochs} epochs = "
                         f"{epochs * -(-len(train) // batch)} Adam steps)",
                         per_tile_mse(split.model, data, train), sources[train],
                         per_tile_mse(split.model, data, split.test_tiles),
                         sources[split.test_tiles])]
    train_errors, train_sources, test_errors, test_sources = [], [], [], []
    for source in dict.fromkeys(sources):
        fold = steel.fold(source)
        held = every[sources == source]
        kept = every[sources != source]
        test_errors.append(per_tile_mse(fold.model, data, held))
        test_sources.append(sources[held])
        train_errors.append(per_tile_mse(fold.model, data, kept))
        train_sources.append(sources[kept])
    rows.append(mse_estimate(f"steel CAE, split by image (each of {len(test_errors)} "
                             "micrographs held out by one model)",
                             np.concatenate(train_errors), np.concatenate(train_sources),
                             np.concatenate(test_errors), np.concatenate(test_sources)))
    return rows


def storage(model: CAE, tiles: np.ndarray, sources: np.ndarray) -> list[StorageRow]:
    """Latent file sizes per storage configuration over (T, S, S) [0, 1] tiles of ``sources``.

    One row per :data:`STORAGES` entry; each tile is its own latent file (header included).
    """
    rows = []
    for dtype, compress in STORAGES:
        sizes = np.array([len(encode_image(model, uint8_tile(to_uint8(tile)), dtype, compress,
                                           tile=tile.shape[0])) for tile in tiles], dtype=float)
        size = float(sizes.mean())
        rows.append(StorageRow(dtype + (" + zstd" if compress else ""), size,
                               cluster_bootstrap(tiles[0].size / sizes, sources),
                               8.0 * size / tiles[0].size))
    return rows


@dataclass(frozen=True)
class Assignment:
    """Which model maps and codes which micrograph in the study-like scope.

    Attributes
    ----------
    model
        The model.
    path
        The micrograph file.
    tiles
        Tile indices of the micrograph in its prepared set.
    """

    model: CAE
    path: Path
    tiles: np.ndarray


def every_tile_saliency(assignments: Sequence[Assignment], tile: int,
                        tiles_per_micrograph: int | None, progress: bool) -> list[TileResult]:
    """Map every tile (or the first ``tiles_per_micrograph``) of each micrograph by its model."""
    out: list[TileResult] = []
    for a in assignments:
        comparison = compare_images(a.model, [a.path], EVERY_TILE_METHODS, tile,
                                    tiles_per_micrograph, sanity_check=False, progress=progress,
                                    measures="microstructure")
        out += comparison.tiles
    return out


def fidelity(assignments: Sequence[Assignment], data: PreparedSet,
             tiles_per_micrograph: int | None, note: str) -> FidelityResult:
    """Code every tile of each micrograph with its model and the classical codecs; score them.

    With ``tiles_per_micrograph``, that many tiles spread evenly over each micrograph's tiles.
    """
    result = FidelityResult(note=note)
    for a in assignments:
        count = min(tiles_per_micrograph or len(a.tiles), len(a.tiles))
        chosen = a.tiles[((np.arange(count) + 0.5) * len(a.tiles) / count).astype(int)]
        result.tiles += code_tiles(a.model, to_uint8(np.asarray(data.tiles[chosen])), str(a.path))
    return result


@dataclass(frozen=True)
class StoredAttack:
    """A decoder attack run stored by ``benchmarks/attack_decoder.py``.

    Attributes
    ----------
    result
        The run.
    path
        Where it was read from.
    budget
        ``"owner"`` (the owner's training budget) or ``"fixed"``.
    threads
        Threads it ran with.
    """

    result: AttackResult
    path: str
    budget: str
    threads: int


def load_stored_attack(path: str | Path, owner: CAE, data: PreparedSet) -> StoredAttack:
    """Read a stored attack run and check it attacked ``owner`` on ``data``.

    Raises
    ------
    MicrocaeError
        If the file is unreadable or belongs to another owner model or data set.
    """
    try:
        raw = json.loads(Path(path).read_text())
        result = AttackResult.from_json(raw)
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise MicrocaeError(f"{path}: not a readable stored attack run ({exc})") from None
    if result.owner_model_fingerprint != owner.fingerprint():
        raise MicrocaeError(f"{path}: attacks another owner model than the report's")
    if result.data_manifest_sha256 != data.manifest_sha256:
        raise MicrocaeError(f"{path}: attacks other micrographs than the report's")
    return StoredAttack(result, str(path), raw.get("budget", "fixed"), int(raw.get("threads", 0)))
