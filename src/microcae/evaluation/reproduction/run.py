"""Re-run every number of the reproduction report from a model and a folder of micrographs.

:func:`measure` prepares the micrographs (non-overlapping 256×256 tiles, split by source image),
then measures each claim of the study with the package's own tools: parameter count and latent
shape, latent file sizes, train/test MSE, the literal complex step against autograd, the
measured comparison with GBP and LRP, and the decoder attack. :func:`write_report` renders
the numbers and figures; nothing is written until every measurement has succeeded.
"""

from __future__ import annotations

import json
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from matplotlib.figure import Figure

from microcae import __version__
from microcae.codec import encode_image
from microcae.data.dataset import PreparedSet, input_root, prepare_dataset
from microcae.data.images import round_to_8bit, to_uint8, uint8_tile
from microcae.evaluation.attack import NO_LEAK_SCENARIOS, decoder_attack, run_batched
from microcae.evaluation.comparison import FIGURE_METHODS, Comparison, compare_images
from microcae.evaluation.rate_distortion import cae_configurations
from microcae.evaluation.reproduction import claims
from microcae.evaluation.reproduction.document import render
from microcae.evaluation.reproduction.exactness import exactness_check
from microcae.figures.comparison import comparison_grid
from microcae.figures.reconstruction import reconstruction_figure
from microcae.figures.style import save_figure
from microcae.metrics.reconstruction import reconstruction_scores
from microcae.models.cae import CAE
from microcae.models.registry import BUNDLED_MODEL, load_model
from microcae.saliency.registry import title
from microcae.training.objectives import evaluate_mse
from microcae.util.atomic import write_text_atomic
from microcae.util.errors import MicrocaeError

REPORT_NAME = "REPRODUCTION.md"
ASSET_DIR = "reproduction"
"""Sub-folder of the output for the figures and the JSON of every number."""
COMPARED_METHODS = (*FIGURE_METHODS, "random")
SUMMARY_COLUMNS = ("tiles", "dark_auroc", "boundary_auroc", "noise_rho", "sanity_pass",
                   "deletion_latent_auc", "insertion_latent_auc", "seconds_per_tile")
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


@dataclass
class Measured:
    """Every number of a report run and the figures drawn from them."""

    numbers: dict
    fig10: Figure
    fig11: Figure


def _reconstruct(model: CAE, tiles: np.ndarray) -> np.ndarray:
    """(T, H, W) -> (T, H, W) reconstructions in float32."""
    return run_batched(torch.nn.Sequential(model.encoder, model.decoder), tiles[:, None])[:, 0]


def _reconstruction(model: CAE, data: PreparedSet) -> dict:
    test = round_to_8bit(data.tiles[data.indices("test")])
    rebuilt = round_to_8bit(_reconstruct(model, test))
    rows = [reconstruction_scores(o, r).as_dict() for o, r in zip(test, rebuilt, strict=True)]
    return {"train_mse": evaluate_mse(model, data.tiles, data.indices("train")),
            "test_mse": evaluate_mse(model, data.tiles, data.indices("test")),
            "test_psnr_db": float(np.mean([r["psnr_db"] for r in rows])),
            "test_ssim": float(np.mean([r["ssim"] for r in rows]))}


def _storage(model: CAE, tiles: np.ndarray) -> list[dict]:
    """Mean latent file size per storage configuration over 8-bit tiles (header included)."""
    rows = []
    for dtype, compress in cae_configurations():
        sizes = [len(encode_image(model, uint8_tile(to_uint8(tile)), dtype, compress,
                                  tile=tile.shape[0])) for tile in tiles]
        size = float(np.mean(sizes))
        rows.append({"label": dtype + (" + zstd" if compress else ""), "bytes": size,
                     "ratio": tiles[0].size / size, "bpp": 8.0 * size / tiles[0].size})
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


def _method_summary(comparison: Comparison, images: set[str] | None) -> dict[str, dict]:
    """Summarise each method for the claims over tiles (of ``images`` if given).

    Means of :data:`SUMMARY_COLUMNS`, plus the shares of tiles whose dark-phase and boundary
    AUROC exceed 0.5.
    """
    summary = {}
    for entry in comparison.summary(images):
        method = entry["method"]
        rows = [r for r in comparison.rows if r["method"] == method
                and (images is None or r["image"] in images)]
        summary[method] = {
            **{key: entry[key] for key in SUMMARY_COLUMNS},
            "dark_share": float(np.mean([r["dark_auroc"] > 0.5 for r in rows])),
            "boundary_share": float(np.mean([r["boundary_auroc"] > 0.5 for r in rows])),
        }
    return summary


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
            progress: bool = True) -> Measured:
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
    Measured
        The numbers (JSON-ready) and the two figures.
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
        data_summary = {
            "manifest_sha256": data.manifest_sha256, "images": len(data.manifest["sources"]),
            "groups": sorted(groups), "train_tiles": int(len(data.indices("train"))),
            "test_tiles": int(len(data.indices("test"))), "tile": tile_side,
        }
    all_tiles = _method_summary(comparison, None)
    steel_tiles = _method_summary(comparison, steel) if steel else {}
    scope = ("study-like groups " + ", ".join(study_like)) if steel_tiles else "all compared tiles"
    claim_rows = [
        claims.parameters_claim(sum(p.numel() for p in model.parameters())),
        claims.latent_claim(latent, tile_side * tile_side),
        claims.bytes_claim(storage),
        claims.mse_claim(reconstruction["train_mse"], reconstruction["test_mse"]),
        claims.exactness_claim(exactness),
        claims.microstructure_claim((steel_tiles or all_tiles)["complex-step"], scope),
        claims.consistency_claim(all_tiles),
        claims.key_claim(attack["results"], NO_LEAK_SCENARIOS),
    ]
    rows = comparison.panels[: settings.figure_rows]
    fig11 = comparison_grid([(name, tile, {title(m): maps[m] for m in FIGURE_METHODS})
                             for name, tile, maps in rows])
    seconds["total"] = time.perf_counter() - started
    numbers = {
        "settings": asdict(settings), "microcae": __version__, "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "model": {"path": str(model_path) if model_path else
                  f"bundled ({BUNDLED_MODEL.parent.parent.name}/{BUNDLED_MODEL.parent.name}/"
                  f"{BUNDLED_MODEL.name})", "fingerprint": model.fingerprint()},
        "data": data_summary, "study_like_groups": list(study_like),
        "claims": [c.as_dict() for c in claim_rows],
        "reconstruction": reconstruction, "storage": storage, "exactness": exactness,
        "comparison": {"images": [str(p) for p in images], "tile": settings.compare_tile,
                       "all": all_tiles, "study_like": steel_tiles},
        "attack": attack, "fig10_columns": fig10_titles,
        "fig11_rows": [name for name, _, _ in rows],
        "seconds": {k: round(v, 1) for k, v in seconds.items()},
        "generated": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
    }
    return Measured(numbers, fig10, fig11)


def write_report(measured: Measured, out_dir: str | Path, command: str) -> dict[str, Path]:
    """Write ``REPRODUCTION.md``, its two figures and ``report.json`` (each atomically).

    Parameters
    ----------
    measured
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
    save_figure(measured.fig10, paths["fig10"])
    save_figure(measured.fig11, paths["fig11"])
    numbers = {**measured.numbers, "command": command}
    write_text_atomic(paths["json"], json.dumps(numbers, indent=1) + "\n")
    write_text_atomic(paths["report"], render(numbers, {k: p.relative_to(out_dir).as_posix()
                                                        for k, p in paths.items()}))
    return paths
