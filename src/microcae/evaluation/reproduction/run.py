"""Re-run every number of the reproduction report from a model and a folder of micrographs.

:func:`measure` prepares the micrographs (non-overlapping 256×256 tiles, split by source image),
then measures each claim of the study with the package's own tools: parameter count and latent
shape, latent file sizes, train/test MSE, the literal complex step against autograd, the
measured comparison with GBP and LRP, and the decoder attack. :func:`write_report` renders
the numbers and figures; nothing is written until every measurement has succeeded.
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from matplotlib.figure import Figure

from microcae import __version__
from microcae.codec import encode_image
from microcae.data.dataset import PreparedSet, input_root, prepare_dataset
from microcae.data.images import round_to_8bit, to_uint8, uint8_tile
from microcae.evaluation._batching import run_batched
from microcae.evaluation.attack import AttackResult, decoder_attack
from microcae.evaluation.comparison import FIGURE_METHODS, compare_images
from microcae.evaluation.rate_distortion import cae_configurations
from microcae.evaluation.reproduction import claims
from microcae.evaluation.reproduction.document import render
from microcae.evaluation.reproduction.exactness import ExactnessCheck, exactness_check
from microcae.evaluation.reproduction.results import (
    MethodStats,
    ReconstructionSummary,
    StorageRow,
    method_stats,
)
from microcae.figures.comparison import comparison_grid
from microcae.figures.reconstruction import reconstruction_figure
from microcae.figures.style import save_figure
from microcae.metrics.reconstruction import reconstruction_scores
from microcae.models.cae import BUNDLED_MODEL, CAE, decoder_fingerprint, load_model
from microcae.training.loop import evaluate_mse
from microcae.util.atomic import write_text_atomic
from microcae.util.errors import MicrocaeError
from microcae.util.table_writer import json_text

REPORT_NAME = "REPRODUCTION.md"
ASSET_DIR = "reproduction"
"""Sub-folder of the output for the figures and the JSON of every number."""
COMPARED_METHODS = (*FIGURE_METHODS, "random")
FIG10_COLUMNS = 4


@dataclass(frozen=True)
class ReportSettings:
    """How much work the report does (the full report or the ``--quick`` one CI runs).

    Attributes
    ----------
    name
        ``"full"`` or ``"quick"``.
    compare_tile
        Tile side of the saliency comparison, pixels.
    max_compare_images
        Images in the comparison (None: every image of the study-like groups and every test
        image of the others).
    sanity_check
        Run the model-randomisation check in the comparison.
    exact_tiles, exact_pixels
        Test tiles and pixels per tile of the literal complex step.
    code_tiles
        Test tiles encoded to latent files (None: all).
    attack_steps, attack_eval_tiles, attack_leaks
        Settings of :func:`microcae.evaluation.attack.decoder_attack`.
    figure_rows
        Rows of the Fig. 11 equivalent.
    """

    name: str
    compare_tile: int = 256
    max_compare_images: int | None = None
    sanity_check: bool = True
    exact_tiles: int = 2
    exact_pixels: int = 128
    code_tiles: int | None = None
    attack_steps: int = 200
    attack_eval_tiles: int = 24
    attack_leaks: tuple[int, ...] = (1, 4)
    figure_rows: int = 3


FULL = ReportSettings("full")
QUICK = ReportSettings("quick", compare_tile=64, max_compare_images=2, sanity_check=False,
                       exact_tiles=1, exact_pixels=8, code_tiles=2, attack_steps=2,
                       attack_eval_tiles=2, attack_leaks=(1,), figure_rows=2)


@dataclass(frozen=True)
class DataSummary:
    """The prepared micrographs of a report run.

    Attributes
    ----------
    manifest_sha256
        Identifies the prepared set.
    images, groups
        Number of micrographs and their groups (sub-folders).
    train_tiles, test_tiles, tile
        Tiles per split (split by source image) and the tile side (px).
    """

    manifest_sha256: str
    images: int
    groups: list[str]
    train_tiles: int
    test_tiles: int
    tile: int


@dataclass(frozen=True)
class SaliencyScope:
    """The saliency comparison of a report run, summarised for the claims.

    Attributes
    ----------
    images
        Compared micrographs (paths).
    tile
        Tile side (px).
    all
        Method -> stats over every compared tile.
    study_like
        Method -> stats over the tiles of the study-like groups (empty if none were named).
    """

    images: list[str]
    tile: int
    all: dict[str, MethodStats]
    study_like: dict[str, MethodStats]


@dataclass
class Reproduction:
    """Every measurement of a report run, the claims judged from them and the two figures.

    Attributes
    ----------
    settings
        How much work was done.
    environment
        ``microcae`` and ``torch`` versions and ``threads``.
    model
        ``path`` (as given, or the bundled file) and decoder ``fingerprint``.
    data
        The prepared micrographs.
    study_like_groups
        Groups judged as the study's kind of material.
    claims
        The claims table, in order.
    reconstruction, storage, exactness, comparison, attack
        The measurements behind the claims.
    fig10_columns, fig11_rows
        What the figures show.
    seconds
        Wall time per stage and ``total``.
    generated
        UTC time of the run.
    fig10, fig11
        The figures.
    """

    settings: ReportSettings
    environment: dict[str, Any]
    model: dict[str, str]
    data: DataSummary
    study_like_groups: list[str]
    claims: list[claims.Claim]
    reconstruction: ReconstructionSummary
    storage: list[StorageRow]
    exactness: ExactnessCheck
    comparison: SaliencyScope
    attack: AttackResult
    fig10_columns: list[str]
    fig11_rows: list[str]
    seconds: dict[str, float]
    generated: str
    fig10: Figure
    fig11: Figure

    def to_json(self) -> dict[str, Any]:
        """Every number, JSON-ready (the layout of ``report.json``)."""
        comparison = self.comparison
        return {
            "settings": asdict(self.settings), **self.environment, "model": self.model,
            "data": asdict(self.data), "study_like_groups": self.study_like_groups,
            "claims": [c.as_dict() for c in self.claims],
            "reconstruction": asdict(self.reconstruction),
            "storage": [asdict(r) for r in self.storage], "exactness": self.exactness.as_dict(),
            "comparison": {"images": comparison.images, "tile": comparison.tile,
                           "all": {m: s.as_dict() for m, s in comparison.all.items()},
                           "study_like": {m: s.as_dict() for m, s in
                                          comparison.study_like.items()}},
            "attack": self.attack.to_json(), "fig10_columns": self.fig10_columns,
            "fig11_rows": self.fig11_rows, "seconds": self.seconds, "generated": self.generated,
        }


def _reconstruct(model: CAE, tiles: np.ndarray) -> np.ndarray:
    """(T, H, W) -> (T, H, W) reconstructions in float32."""
    return run_batched(model, tiles[:, None])[:, 0]


def _reconstruction(model: CAE, data: PreparedSet) -> ReconstructionSummary:
    test = round_to_8bit(data.tiles[data.indices("test")])
    rebuilt = round_to_8bit(_reconstruct(model, test))
    rows = [reconstruction_scores(o, r) for o, r in zip(test, rebuilt, strict=True)]
    return ReconstructionSummary(evaluate_mse(model, data.tiles, data.indices("train")),
                                 evaluate_mse(model, data.tiles, data.indices("test")),
                                 float(np.mean([r.psnr_db for r in rows])),
                                 float(np.mean([r.ssim for r in rows])))


def _storage(model: CAE, tiles: np.ndarray) -> list[StorageRow]:
    """Mean latent file size per storage configuration over 8-bit tiles (header included)."""
    rows = []
    for dtype, compress in cae_configurations():
        sizes = [len(encode_image(model, uint8_tile(to_uint8(tile)), dtype, compress,
                                  tile=tile.shape[0])) for tile in tiles]
        size = float(np.mean(sizes))
        rows.append(StorageRow(dtype + (" + zstd" if compress else ""), size,
                               tiles[0].size / size, 8.0 * size / tiles[0].size))
    return rows


def _compared_images(data: PreparedSet, inputs: Sequence[str | Path], study_like: set[str],
                     limit: int | None) -> tuple[list[Path], set[str]]:
    """Pick every image of the study-like groups, then the others' test images (first ``limit``).

    Also return the set of chosen paths that are study-like.
    """
    root = input_root(list(inputs))
    sources = data.manifest["sources"]
    chosen = [s for s in sources if s["group"] in study_like]
    chosen += [s for s in sources if s["group"] not in study_like and s["split"] == "test"]
    chosen = chosen[:limit] if limit is not None else chosen
    paths = [root / s["file"] for s in chosen]
    return paths, {str(root / s["file"]) for s in chosen if s["group"] in study_like}


def _fig10(model: CAE, data: PreparedSet) -> tuple[Figure, list[str]]:
    """Draw inputs over reconstructions: the middle test tile of each group (up to four)."""
    by_group: dict[str, list[int]] = {}
    group_of = {s["file"]: s["group"] for s in data.manifest["sources"]}
    for record in data.manifest["tiles"]:
        if record["split"] == "test":
            by_group.setdefault(group_of[record["source"]], []).append(record["index"])
    picked = {group: indices[len(indices) // 2]
              for group, indices in list(by_group.items())[:FIG10_COLUMNS]}
    tiles = round_to_8bit(data.tiles[list(picked.values())])
    rebuilt = _reconstruct(model, tiles)
    captions = []
    for original, result in zip(tiles, rebuilt, strict=True):
        score = reconstruction_scores(original, round_to_8bit(result))
        captions.append(f"PSNR {score.psnr_db:.1f} dB, SSIM {score.ssim:.2f}")
    titles = [group or "test tile" for group in picked]
    figure = reconstruction_figure(list(tiles), list(rebuilt), titles, captions)
    return figure, titles


def measure(inputs: Sequence[str | Path], model_path: str | Path | None = None,
            settings: ReportSettings = FULL, study_like: Sequence[str] = (),
            progress: bool = True) -> Reproduction:
    """Measure every claim on the micrographs ``inputs`` with the model at ``model_path``.

    Parameters
    ----------
    inputs
        Micrograph files and folders (sub-folders are the groups, as in ``microcae prepare``).
    model_path
        Model file (default: the bundled model).
    settings
        :data:`FULL` or :data:`QUICK`.
    study_like
        Groups (sub-folder names) of the study's kind of material (ferrite-pearlite steels):
        the dark-phase claim is judged on them when given.
    progress
        Show progress bars on stderr.

    Returns
    -------
    Reproduction
        The measurements, the claims and the two figures.
    """
    started = time.perf_counter()
    seconds: dict[str, float] = {}
    model = load_model(model_path)
    with tempfile.TemporaryDirectory(prefix="microcae-report-") as scratch:
        data = prepare_dataset(list(inputs), Path(scratch) / "set", progress=progress)
        groups = {s["group"] for s in data.manifest["sources"]}
        unknown = set(study_like) - groups
        if unknown:
            raise MicrocaeError(f"study-like group(s) {sorted(unknown)} not among the inputs' "
                                f"sub-folders {sorted(groups)}")
        if len(data.indices("test")) == 0:
            raise MicrocaeError("the micrographs give no test tiles: add images")
        tile_side = data.tiles.shape[1]
        test = round_to_8bit(data.tiles[data.indices("test")])
        with torch.no_grad():
            latent = tuple(model.encoder(torch.zeros(1, 1, tile_side, tile_side)).shape[1:])
        tick = time.perf_counter()
        reconstruction = _reconstruction(model, data)
        storage = _storage(model, test[: settings.code_tiles])
        seconds["reconstruction_and_files"] = time.perf_counter() - tick

        tick = time.perf_counter()
        exactness = exactness_check(model.encoder, test[: settings.exact_tiles],
                                    settings.exact_pixels)
        seconds["exactness"] = time.perf_counter() - tick

        tick = time.perf_counter()
        images, steel = _compared_images(data, inputs, set(study_like),
                                         settings.max_compare_images)
        comparison = compare_images(model, images, COMPARED_METHODS, settings.compare_tile,
                                    sanity_check=settings.sanity_check, progress=progress)
        seconds["comparison"] = time.perf_counter() - tick

        tick = time.perf_counter()
        attack = decoder_attack(model, data, settings.attack_eval_tiles, settings.attack_leaks,
                                settings.attack_steps)
        seconds["attack"] = time.perf_counter() - tick
        fig10, fig10_titles = _fig10(model, data)
        data_summary = DataSummary(data.manifest_sha256, len(data.manifest["sources"]),
                                   sorted(groups), int(len(data.indices("train"))),
                                   int(len(data.indices("test"))), tile_side)
    all_tiles = method_stats(comparison, None)
    steel_tiles = method_stats(comparison, steel) if steel else {}
    scope = ("study-like groups " + ", ".join(study_like)) if steel_tiles else "all compared tiles"
    claim_rows = [
        claims.parameters_claim(sum(p.numel() for p in model.parameters())),
        claims.latent_claim(latent, tile_side * tile_side),
        claims.bytes_claim(storage),
        claims.mse_claim(reconstruction.train_mse, reconstruction.test_mse),
        claims.exactness_claim(exactness),
        claims.microstructure_claim((steel_tiles or all_tiles)["complex-step"], scope),
        claims.consistency_claim(all_tiles),
        claims.key_claim(attack),
    ]
    rows = comparison.panels[: settings.figure_rows]
    fig11 = comparison_grid([(name, tile, {m: maps[m] for m in FIGURE_METHODS})
                             for name, tile, maps in rows])
    seconds["total"] = time.perf_counter() - started
    return Reproduction(
        settings=settings,
        environment={"microcae": __version__, "torch": torch.__version__,
                     "threads": torch.get_num_threads()},
        model={"path": str(model_path) if model_path else
               f"bundled ({BUNDLED_MODEL.parent.parent.name}/{BUNDLED_MODEL.parent.name}/"
               f"{BUNDLED_MODEL.name})", "fingerprint": decoder_fingerprint(model)},
        data=data_summary, study_like_groups=list(study_like), claims=claim_rows,
        reconstruction=reconstruction, storage=storage, exactness=exactness,
        comparison=SaliencyScope([str(p) for p in images], settings.compare_tile, all_tiles,
                                 steel_tiles),
        attack=attack, fig10_columns=fig10_titles, fig11_rows=[name for name, _, _ in rows],
        seconds={k: round(v, 1) for k, v in seconds.items()},
        generated=time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), fig10=fig10, fig11=fig11)


def write_report(result: Reproduction, out_dir: str | Path, command: str) -> dict[str, Path]:
    """Write ``REPRODUCTION.md``, its two figures and ``report.json`` (each atomically).

    Parameters
    ----------
    result
        Result of :func:`measure`.
    out_dir
        Folder of ``REPRODUCTION.md``; figures and JSON go to its ``reproduction/`` sub-folder.
    command
        The command line that regenerates the report (quoted in it).

    Returns
    -------
    dict
        ``report``, ``fig10``, ``fig11`` and ``json`` paths.
    """
    out_dir = Path(out_dir)
    assets = out_dir / ASSET_DIR
    assets.mkdir(parents=True, exist_ok=True)
    paths = {"fig10": assets / "fig10_reconstructions.png", "fig11": assets / "fig11_saliency.png",
             "json": assets / "report.json", "report": out_dir / REPORT_NAME}
    save_figure(result.fig10, paths["fig10"])
    save_figure(result.fig11, paths["fig11"])
    write_text_atomic(paths["json"], json_text({**result.to_json(), "command": command}))
    write_text_atomic(paths["report"], render(result, command, {
        k: p.relative_to(out_dir).as_posix() for k, p in paths.items()}))
    return paths
