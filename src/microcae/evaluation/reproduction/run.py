"""Re-run every number of the reproduction report from models and folders of micrographs.

:func:`measure` prepares the micrographs (non-overlapping 256×256 tiles, split by source image),
then measures each claim of the study with the package's own tools (the stages of
:mod:`microcae.evaluation.reproduction.stages`): parameter count and latent shape, latent file
sizes, train/test MSE, the literal complex step against autograd, the measured comparison with
GBP and LRP on central tiles and on every tile of the study-like micrographs, microstructure
fidelity against classical codecs at the same bytes, and the decoder attack. With study-like
models (``steel_models``, see :mod:`microcae.evaluation.reproduction.steel`) the study's claims
are judged on them, each micrograph mapped by the model that held it out. :func:`write_report`
renders the numbers and figures; nothing is written until every measurement has succeeded.
"""

from __future__ import annotations

import os
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from matplotlib.figure import Figure

from microcae import __version__
from microcae.data.dataset import PreparedSet, input_root, prepare_dataset
from microcae.data.images import round_to_8bit
from microcae.evaluation._batching import run_batched
from microcae.evaluation.attack import AttackResult, decoder_attack, owner_budget_steps
from microcae.evaluation.comparison import FIGURE_METHODS, compare_images
from microcae.evaluation.fidelity import FidelityResult
from microcae.evaluation.reproduction import claims, stages
from microcae.evaluation.reproduction.document import read_readme, render, update_readme
from microcae.evaluation.reproduction.exactness import ExactnessCheck, exactness_check
from microcae.evaluation.reproduction.results import (
    MethodStats,
    MseEstimate,
    ReconstructionSummary,
    SaliencyEstimates,
    StorageRow,
    method_stats,
    saliency_estimates,
)
from microcae.evaluation.reproduction.stages import Assignment, StoredAttack
from microcae.evaluation.reproduction.steel import SteelModels, load_steel_models
from microcae.figures.comparison import comparison_grid
from microcae.figures.reconstruction import reconstruction_figure
from microcae.figures.style import save_figure
from microcae.metrics.reconstruction import reconstruction_scores
from microcae.models.cae import CAE
from microcae.models.registry import BUNDLED_MODEL, ModelFile, read_model_file
from microcae.util.atomic import write_text_atomic
from microcae.util.errors import MicrocaeError
from microcae.util.table_writer import json_text

REPORT_NAME = "REPRODUCTION.md"
ASSET_DIR = "reproduction"
"""Sub-folder of the output for the figures and the JSON of every number."""
COMPARED_METHODS = (*FIGURE_METHODS, "random")
ATTACK_BATCH = 16
"""Crops per step of the report's decoder attack (the default of ``decoder_attack``)."""
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
        Images in the central-tile comparison (None: every image of the study-like groups and
        every test image of the others).
    sanity_check
        Run the model-randomisation check in the central-tile comparison.
    exact_tiles, exact_pixels
        Test tiles and pixels per tile of the literal complex step.
    code_tiles
        Test tiles encoded to latent files (None: all).
    tiles_per_micrograph
        Tiles per study-like micrograph mapped for the saliency claim and coded for the
        fidelity claim (None: every tile).
    attack_steps, attack_eval_tiles, attack_leaks
        Settings of this run's :func:`microcae.evaluation.attack.decoder_attack` (a short
        budget; the owner-budget run is read from a stored file).
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
    tiles_per_micrograph: int | None = None
    attack_steps: int = 100
    attack_eval_tiles: int = 24
    attack_leaks: tuple[int, ...] = (1, 4, 16)
    figure_rows: int = 3


FULL = ReportSettings("full")
QUICK = ReportSettings("quick", compare_tile=64, max_compare_images=2, sanity_check=False,
                       exact_tiles=1, exact_pixels=8, code_tiles=2, tiles_per_micrograph=2,
                       attack_steps=2, attack_eval_tiles=2, attack_leaks=(1,), figure_rows=2)


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


@dataclass(frozen=True)
class SteelSummary:
    """Where the study-like models came from.

    Attributes
    ----------
    folder
        Their folder.
    runs
        Per run: name, split, held-out micrographs, epochs, training seconds, threads and note.
    standard_fingerprint
        Decoder fingerprint of the run holding out the standard split's test image (the
        bundled ``cae_steel``).
    """

    folder: str
    runs: list[dict[str, Any]]
    standard_fingerprint: str


@dataclass
class Reproduction:
    """Every measurement of a report run, the claims judged from them and the two figures.

    Attributes
    ----------
    settings
        How much work was done.
    environment
        ``microcae`` and ``torch`` versions, ``threads`` and the machine's ``load`` (1-minute
        load average at the start).
    model
        ``path`` (as given, or the bundled file) and decoder ``fingerprint`` of the general model.
    data
        The prepared micrographs.
    study_like_groups
        Groups judged as the study's kind of material (all groups if none were named).
    steel
        The study-like models, if given.
    claims
        The claims table, in order.
    reconstruction, mse, storage, exactness
        The compact-representation measurements.
    comparison
        Central tiles of every micrograph, every method (the general model).
    every_tile
        Scope label -> method -> estimates on every tile of the study-like micrographs.
    fidelity
        Microstructure fidelity at matched bytes (the study-like models, else the general one).
    attack, stored_attack
        This run's short attack, and the stored owner-budget run if given.
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
    steel: SteelSummary | None
    claims: list[claims.Claim]
    reconstruction: ReconstructionSummary
    mse: list[MseEstimate]
    storage: list[StorageRow]
    exactness: ExactnessCheck
    comparison: SaliencyScope
    every_tile: dict[str, dict[str, SaliencyEstimates]]
    fidelity: FidelityResult
    attack: AttackResult
    stored_attack: StoredAttack | None
    fig10_columns: list[str]
    fig11_rows: list[str]
    seconds: dict[str, float]
    generated: str
    fig10: Figure = field(repr=False)
    fig11: Figure = field(repr=False)

    def to_json(self) -> dict[str, Any]:
        """Every number, JSON-ready (the layout of ``report.json``)."""
        comparison = self.comparison
        stored = self.stored_attack
        return {
            "settings": asdict(self.settings), **self.environment, "model": self.model,
            "data": asdict(self.data), "study_like_groups": self.study_like_groups,
            "steel": asdict(self.steel) if self.steel else None,
            "claims": [c.as_dict() for c in self.claims],
            "reconstruction": asdict(self.reconstruction),
            "mse": [m.as_dict() for m in self.mse],
            "storage": [r.as_dict() for r in self.storage], "exactness": self.exactness.as_dict(),
            "comparison": {"images": comparison.images, "tile": comparison.tile,
                           "all": {m: s.as_dict() for m, s in comparison.all.items()},
                           "study_like": {m: s.as_dict() for m, s in
                                          comparison.study_like.items()}},
            "every_tile": {scope: {m: s.as_dict() for m, s in per.items()}
                           for scope, per in self.every_tile.items()},
            "fidelity": self.fidelity.to_json(),
            "attack": self.attack.to_json(),
            "stored_attack": None if stored is None else {
                "path": stored.path, "budget": stored.budget, "threads": stored.threads,
                **stored.result.to_json()},
            "fig10_columns": self.fig10_columns, "fig11_rows": self.fig11_rows,
            "seconds": self.seconds, "generated": self.generated,
        }


def _compared_images(data: PreparedSet, root: Path, study_like: set[str],
                     limit: int | None) -> tuple[list[Path], set[str]]:
    """Pick every image of the study-like groups, then the others' test images (first ``limit``).

    Also return the set of chosen paths that are study-like.
    """
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
    rebuilt = run_batched(torch.nn.Sequential(model.encoder, model.decoder), tiles[:, None])[:, 0]
    captions = []
    for original, result in zip(tiles, rebuilt, strict=True):
        score = reconstruction_scores(original, round_to_8bit(result))
        captions.append(f"PSNR {score.psnr_db:.1f} dB, SSIM {score.ssim:.2f}")
    titles = [group or "test tile" for group in picked]
    figure = reconstruction_figure(list(tiles), list(rebuilt), titles, captions)
    return figure, titles


class _Clock:
    """Wall time per stage."""

    def __init__(self) -> None:
        self.started = time.perf_counter()
        self.seconds: dict[str, float] = {}
        self.tick = self.started

    def lap(self, stage: str) -> None:
        now = time.perf_counter()
        self.seconds[stage] = round(self.seconds.get(stage, 0.0) + now - self.tick, 1)
        self.tick = now

    def total(self) -> dict[str, float]:
        return {**self.seconds, "total": round(time.perf_counter() - self.started, 1)}


@dataclass
class _Scope:
    """The study-like micrographs of a run and who maps them."""

    data: PreparedSet
    root: Path
    assignments: list[Assignment]
    general: list[Assignment]
    steel: SteelModels | None
    label: str


def _scope(data: PreparedSet, root: Path, model: CAE, study_like: Sequence[str],
           steel_folder: str | Path | None, scratch: Path, progress: bool) -> _Scope:
    """Prepare the study-like micrographs; assign each to the model that held it out."""
    groups = list(study_like) or sorted({s["group"] for s in data.manifest["sources"]})
    test_files = {s["file"] for s in data.manifest["sources"] if s["split"] == "test"}
    general = [Assignment(model, root / s["file"], np.array(
        [t["index"] for t in data.manifest["tiles"] if t["source"] == s["file"]]))
        for s in data.manifest["sources"] if s["group"] in groups and s["file"] in test_files]
    if steel_folder is None:
        return _Scope(data, root, general, general, None,
                      "general model, test micrographs of " + ", ".join(groups))
    inputs = [root / g for g in groups] if study_like else [root]
    steel_data = prepare_dataset(inputs, scratch / "steel", progress=progress)
    steel = load_steel_models(steel_folder, steel_data)
    steel_root = input_root(inputs)
    sources = stages.tile_sources(steel_data)
    assignments = [Assignment(steel.fold(s).model, steel_root / s,
                              np.flatnonzero(sources == s)) for s in dict.fromkeys(sources)]
    return _Scope(steel_data, steel_root, assignments, general, steel,
                  "steel CAE, every micrograph held out once")


def _steel_summary(steel: SteelModels) -> SteelSummary:
    runs = [{"name": r.name, "split": r.split, "held_out": list(r.held_out),
             "epochs": r.provenance.get("epochs_completed"), "seconds": r.seconds,
             "train_tiles": r.provenance.get("data", {}).get("train_tiles"),
             "threads": r.provenance.get("threads"), "note": r.provenance.get("note", "")}
            for r in steel.runs.values()]
    return SteelSummary(str(steel.folder), runs, steel.standard.model.fingerprint())


def _budget(provenance: dict[str, Any], tile: int) -> int | None:
    """Return the steps per stage of an attack at this owner's budget (None if not known)."""
    try:
        return owner_budget_steps(provenance, tile, ATTACK_BATCH)
    except MicrocaeError:
        return None


def _check_inputs(data: PreparedSet, study_like: Sequence[str]) -> None:
    groups = {s["group"] for s in data.manifest["sources"]}
    unknown = set(study_like) - groups
    if unknown:
        raise MicrocaeError(f"study-like group(s) {sorted(unknown)} not among the inputs' "
                            f"sub-folders {sorted(groups)}")
    if len(data.indices("test")) == 0:
        raise MicrocaeError("the micrographs give no test tiles: add images")


def _attacks(model: CAE, data: PreparedSet, scope: _Scope, settings: ReportSettings,
             stored_path: str | Path | None) -> tuple[AttackResult, StoredAttack | None]:
    """Run the short attack on the study-like owner (else the general model); read the stored run.

    The stored owner-budget run must attack the same owner on the same data.
    """
    owner, owned = ((scope.steel.standard.model, scope.steel.owner_set(scope.data))
                    if scope.steel else (model, data))
    stored = (None if stored_path is None
              else stages.load_stored_attack(stored_path, owner, owned))
    attack = decoder_attack(owner, owned, settings.attack_eval_tiles, settings.attack_leaks,
                            settings.attack_steps, ATTACK_BATCH)
    return attack, stored


def _every_tile(scope: _Scope, settings: ReportSettings, progress: bool
                ) -> dict[str, dict[str, SaliencyEstimates]]:
    """Saliency estimates on every tile: the study-like models' scope, then the general model's."""
    runs = {scope.label: scope.assignments}
    if scope.steel is not None and scope.general:
        runs["general model, test micrographs of the same groups"] = scope.general
    return {label: saliency_estimates(stages.every_tile_saliency(
        assignments, settings.compare_tile, settings.tiles_per_micrograph, progress))
        for label, assignments in runs.items()}


def _claim_rows(model: CAE, tile_side: int, storage: list[StorageRow], mse: list[MseEstimate],
                exactness: ExactnessCheck, every: dict[str, dict[str, SaliencyEstimates]],
                central: dict[str, MethodStats], fidelity: FidelityResult, scope: _Scope,
                attacks: tuple[AttackResult, StoredAttack | None]) -> list[claims.Claim]:
    """Judge every claim of the study from this run's measurements (rules: :mod:`.claims`)."""
    with torch.no_grad():
        latent = tuple(model.encoder(torch.zeros(1, 1, tile_side, tile_side)).shape[1:])
    attack, stored = attacks
    budget = (f"owner's budget, {stored.result.steps} steps per stage (stored run "
              f"{Path(stored.path).name})" if stored else f"{attack.steps} steps per stage")
    return [
        claims.parameters_claim(sum(p.numel() for p in model.parameters())),
        claims.latent_claim(latent, tile_side * tile_side),
        claims.bytes_claim(storage),
        claims.mse_claim(mse[0], mse[1:]),
        claims.exactness_claim(exactness),
        claims.microstructure_claim(every[scope.label]["complex-step"], scope.label),
        claims.consistency_claim(central),
        claims.fidelity_claim(fidelity, scope.label),
        claims.key_claim(stored.result if stored else attack, budget,
                         attack if stored else None),
    ]


def _data_summary(data: PreparedSet) -> DataSummary:
    """Return the prepared set's identity and size."""
    return DataSummary(data.manifest_sha256, len(data.manifest["sources"]),
                       sorted({s["group"] for s in data.manifest["sources"]}),
                       int(len(data.indices("train"))), int(len(data.indices("test"))),
                       int(data.tiles.shape[1]))


def _model_record(model_path: str | Path | None, general: ModelFile, tile: int
                  ) -> dict[str, Any]:
    """Return where the general model came from, its fingerprint and its attack budget."""
    path = (str(model_path) if model_path else f"bundled ({BUNDLED_MODEL.parent.parent.name}/"
            f"{BUNDLED_MODEL.parent.name}/{BUNDLED_MODEL.name})")
    return {"path": path, "fingerprint": general.model.fingerprint(),
            "attack_budget_steps": _budget(general.provenance, tile)}


def measure(inputs: Sequence[str | Path], model_path: str | Path | None = None,
            settings: ReportSettings = FULL, study_like: Sequence[str] = (),
            progress: bool = True, steel_models: str | Path | None = None,
            stored_attack: str | Path | None = None) -> Reproduction:
    """Measure every claim on the micrographs ``inputs``.

    Longer than 60 lines on purpose: it is the report's stage sequence, flat, in one temporary
    folder with the clock lapping after each stage (each stage one call into :mod:`.stages` or a
    helper above), then the one :class:`Reproduction` built from the results.

    Parameters
    ----------
    inputs
        Micrograph files and folders (sub-folders are the groups, as in ``microcae prepare``).
    model_path
        The general model (default: the bundled model).
    settings
        :data:`FULL` or :data:`QUICK`.
    study_like
        Groups (sub-folder names) of the study's kind of material (ferrite-pearlite steels);
        the study's claims are judged on them (on every group if none is named).
    progress
        Show progress bars on stderr.
    steel_models
        Folder of study-like models (``train_steel_models`` of
        :mod:`microcae.evaluation.reproduction.steel`, on the study-like groups); the claims
        on MSE, saliency, fidelity and the key are then judged with them.
    stored_attack
        JSON of a stored owner-budget attack run (``benchmarks/attack_decoder.py``) on the
        same owner and data; the key claim is then judged on it.

    Returns
    -------
    Reproduction
        The measurements, the claims and the two figures.
    """
    clock, load = _Clock(), os.getloadavg()[0]
    general = read_model_file(model_path)
    model = general.model
    with tempfile.TemporaryDirectory(prefix="microcae-report-") as tmp:
        data = prepare_dataset(list(inputs), Path(tmp) / "set", progress=progress)
        _check_inputs(data, study_like)
        root = input_root(list(inputs))
        scope = _scope(data, root, model, study_like, steel_models, Path(tmp), progress)
        clock.lap("prepare")
        reconstruction, general_mse = stages.general_reconstruction(model, data)
        mse = ([*stages.steel_mse(scope.steel, scope.data), general_mse] if scope.steel
               else [general_mse])
        test = data.indices("test")[: settings.code_tiles]
        storage = stages.storage(model, round_to_8bit(data.tiles[test]),
                                 stages.tile_sources(data)[test])
        clock.lap("reconstruction_and_files")
        exactness = exactness_check(model.encoder, round_to_8bit(data.tiles[test])[
            : settings.exact_tiles], settings.exact_pixels)
        clock.lap("exactness")
        images, steel = _compared_images(data, root, set(study_like), settings.max_compare_images)
        comparison = compare_images(model, images, COMPARED_METHODS, settings.compare_tile,
                                    sanity_check=settings.sanity_check, progress=progress)
        clock.lap("comparison")
        every = _every_tile(scope, settings, progress)
        clock.lap("every_tile")
        fidelity = stages.fidelity(scope.assignments, scope.data, settings.tiles_per_micrograph,
                                   scope.label)
        clock.lap("fidelity")
        attacks = _attacks(model, data, scope, settings, stored_attack)
        clock.lap("attack")
        fig10, fig10_titles = _fig10(model, data)
        data_summary = _data_summary(data)
    central = method_stats(comparison, None)
    rows = comparison.panels[: settings.figure_rows]
    return Reproduction(
        settings=settings,
        environment={"microcae": __version__, "torch": torch.__version__,
                     "threads": torch.get_num_threads(), "load": round(load, 2)},
        model=_model_record(model_path, general, data_summary.tile),
        data=data_summary, study_like_groups=list(study_like),
        steel=_steel_summary(scope.steel) if scope.steel else None,
        claims=_claim_rows(model, data_summary.tile, storage, mse, exactness, every, central,
                           fidelity, scope, attacks),
        reconstruction=reconstruction, mse=mse, storage=storage, exactness=exactness,
        comparison=SaliencyScope([str(p) for p in images], settings.compare_tile, central,
                                 method_stats(comparison, steel) if steel else {}),
        every_tile=every, fidelity=fidelity, attack=attacks[0], stored_attack=attacks[1],
        fig10_columns=fig10_titles, fig11_rows=[name for name, _, _ in rows],
        seconds=clock.total(), generated=time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        fig10=fig10, fig11=comparison_grid([(name, tile, {m: maps[m] for m in FIGURE_METHODS})
                                            for name, tile, maps in rows]))


def write_report(result: Reproduction, out_dir: str | Path, command: str,
                 readme: str | Path | None = None) -> dict[str, Path]:
    """Write ``REPRODUCTION.md``, its two figures and ``report.json`` (each atomically).

    Parameters
    ----------
    result
        Result of :func:`measure`.
    out_dir
        Folder of ``REPRODUCTION.md``; figures and JSON go to its ``reproduction/`` sub-folder.
    command
        The command line that regenerates the report (quoted in it).
    readme
        A README whose verdict table (between the markers of
        :func:`~microcae.evaluation.reproduction.document.update_readme`) is regenerated.

    Returns
    -------
    dict
        ``report``, ``fig10``, ``fig11``, ``json`` (and ``readme``) paths.

    Raises
    ------
    MicrocaeError
        If ``readme`` is unreadable or lacks the markers (checked before anything is written).
    """
    out_dir = Path(out_dir)
    assets = out_dir / ASSET_DIR
    paths = {"fig10": assets / "fig10_reconstructions.png", "fig11": assets / "fig11_saliency.png",
             "json": assets / "report.json", "report": out_dir / REPORT_NAME}
    readme_text = None
    if readme is not None:
        paths["readme"] = Path(readme)
        link = os.path.relpath(paths["report"], Path(readme).parent)
        readme_text = update_readme(read_readme(readme), result.claims,
                                    Path(link).as_posix())
    assets.mkdir(parents=True, exist_ok=True)
    save_figure(result.fig10, paths["fig10"])
    save_figure(result.fig11, paths["fig11"])
    write_text_atomic(paths["json"], json_text({**result.to_json(), "command": command}))
    write_text_atomic(paths["report"], render(result, command, {
        k: p.relative_to(out_dir).as_posix() for k, p in paths.items() if k != "readme"}))
    if readme_text is not None:
        write_text_atomic(paths["readme"], readme_text)
    return paths
