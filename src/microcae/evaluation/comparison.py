"""Measured comparison of relevance methods: maps, metrics and figures for a set of micrographs.

For every image, tiles are taken from a grid (only tiles a label mask fully covers, where a mask
exists); every method maps every tile; then faithfulness (deletion/insertion), agreement with
microstructure, the model-randomisation sanity check and the time per tile are measured. Two
controls run through the same pipeline: ``sobel-edges`` (an edge detector that ignores the model)
and ``random`` (uniform noise: the random-order baseline of the deletion/insertion curves).

All metrics score the magnitude ``|r|`` of a map: complex-step relevance is itself a magnitude
(a norm of derivatives), so this puts signed maps (GBP, LRP-β, integrated gradients) on the
same footing.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from tqdm import tqdm

from microcae.data.images import read_micrograph
from microcae.data.tiling import TileGrid
from microcae.evaluation.labels import find_label_mask
from microcae.figures.comparison import comparison_figure, curves_figure
from microcae.figures.style import save_figure
from microcae.metrics import faithfulness, microstructure, sanity, stability
from microcae.metrics.metric import Metric
from microcae.models.cae import CAE
from microcae.saliency import METHODS, relevance
from microcae.saliency.registry import STUDY_METHOD, applies, names
from microcae.util.atomic import write_text_atomic
from microcae.util.errors import MicrocaeError
from microcae.util.runtime import to_channels_last
from microcae.util.table_writer import Column, Table, json_text

CONTROLS = names("control")
"""Model-free control maps, measured like methods."""
PREFERRED_METHODS = (STUDY_METHOD, *names("baseline"))
"""Relevance methods compared by default (those registered in METHODS)."""
FIGURE_METHODS = names(study=True)
"""Panels of the study's Fig. 11 after the input."""
EXACT_ENGINES = names("engine", exact=True)
"""Engines that compute the complex-step relevance exactly; the first is the default (fastest
on 256×256 tiles on a CPU: under a second per tile, against minutes for the coloured complex
step)."""
TIME = Metric("seconds_per_tile", "lower", "measured here (wall clock, this machine)",
              "time to map one tile")
METRICS: tuple[Metric, ...] = (
    *faithfulness.METRICS, *microstructure.METRICS, *sanity.METRICS, *stability.METRICS,
    TIME,
)
"""Every declared metric, in table order."""
EXTRA_COLUMNS = {
    "sanity_pass": f"share of tiles whose fully randomised map has rho < {sanity.SANITY_THRESHOLD}",
    "lrp_conservation": "LRP only: sum of input relevance over sum of the latent (the seed); "
                        "1 = conserved",
}


def default_methods(encoder: torch.nn.Module | None = None) -> tuple[str, ...]:
    """List the registered methods of :data:`PREFERRED_METHODS`, then the :data:`CONTROLS`.

    With ``encoder``, only the methods defined for all its layers (e.g. the codec's GDN
    encoder leaves out guided backpropagation and the LRP rules; asking for one of them by
    name still gives their one-line error).
    """
    return tuple(m for m in PREFERRED_METHODS if m in METHODS
                 and (encoder is None or applies(m, encoder))) + CONTROLS


def control_map(name: str, tiles: np.ndarray, seed: int = 0) -> torch.Tensor:
    """Control "relevance" of (T, H, W) tiles: Sobel edges or seeded uniform noise, (T, H, W)."""
    if name == "sobel-edges":
        return torch.from_numpy(np.stack([microstructure.sobel_map(t) for t in tiles]))
    return faithfulness.random_order_map(tiles.shape, seed)


def map_function(
    method: str, seed: int = 0, exact_engine: str = EXACT_ENGINES[0]
) -> Callable[[torch.nn.Module, torch.Tensor], torch.Tensor]:
    """Return ``(encoder, x) -> (N, H, W)`` for a method or control name.

    The ``"complex-step"`` row is computed by ``exact_engine``: every engine of
    :data:`EXACT_ENGINES` gives the same r_ij to floating-point precision.
    """
    if method in CONTROLS:
        return lambda encoder, x: control_map(method, x[:, 0].cpu().numpy(), seed)
    engine = exact_engine if method == "complex-step" else method
    return lambda encoder, x: relevance(encoder, x, engine)


def chosen_positions(
    grid: TileGrid, count: int, labels: np.ndarray | None = None
) -> list[tuple[int, int]]:
    """Up to ``count`` positions of ``grid``, at the centres of equal runs in row-major order.

    Parameters
    ----------
    grid
        Tile grid of the image.
    count
        How many positions at most.
    labels
        Optional (H, W) labels; positions whose tile contains :data:`microstructure.IGNORE`
        are left out.

    Returns
    -------
    list[tuple[int, int]]
        Top-left (row, column) of the chosen tiles; one tile is the middle one of the grid
        (image borders often hold mounts, padding or info bands).
    """
    size = grid.tile
    positions = [
        (y, x) for y, x in grid.positions
        if labels is None or not (labels[y : y + size, x : x + size] == microstructure.IGNORE).any()
    ]
    if not positions:
        return []
    count = min(count, len(positions))
    picks = ((np.arange(count) + 0.5) * len(positions) / count).astype(int)
    return [positions[int(i)] for i in picks]


@dataclass(frozen=True)
class TileResult:
    """Every measurement of one method on one tile.

    Attributes
    ----------
    image
        Path of the micrograph.
    tile_y, tile_x
        Top-left corner of the tile, pixels.
    method
        Method or control name.
    scores
        Metric column (:data:`METRICS` and :data:`EXTRA_COLUMNS`) -> value (NaN where undefined).
    """

    image: str
    tile_y: int
    tile_x: int
    method: str
    scores: dict[str, float]

    def as_dict(self) -> dict[str, object]:
        """Flat row: ``image``, ``tile_y``, ``tile_x``, ``method`` and every score."""
        return {"image": self.image, "tile_y": self.tile_y, "tile_x": self.tile_x,
                "method": self.method, **self.scores}


@dataclass(frozen=True)
class MethodSummary:
    """Means over tiles of one method's scores (NaNs skipped).

    Attributes
    ----------
    method
        Method or control name.
    tiles
        Number of tiles summarised.
    means
        Metric column -> mean over the tiles' finite values (NaN if none).
    """

    method: str
    tiles: int
    means: dict[str, float]

    def as_dict(self) -> dict[str, object]:
        """Flat row: ``method``, ``tiles`` and every mean."""
        return {"method": self.method, "tiles": self.tiles, **self.means}


SUMMARY_COLUMNS: tuple[Column, ...] = (
    Column("method"), Column("tiles"),
    *(Column(m.name, f"{m.name} {'↑' if m.better == 'higher' else '↓'}", ".3g") for m in METRICS),
    *(Column(name, spec=".3g") for name in EXTRA_COLUMNS),
)
"""Columns of the summary table; the arrow marks the better side of each metric."""


@dataclass
class Comparison:
    """Everything measured by :func:`compare_images`.

    Attributes
    ----------
    methods
        Method and control names, in table order.
    tiles
        One :class:`TileResult` per (image, tile, method).
    fractions
        (S + 1,) share of pixels changed along the curves.
    curves
        Method -> curve name (``deletion_latent``, ...) -> (T, S + 1) curves over all tiles.
    panels
        Per image: (name, first tile (H, W), method -> raw map) for the Fig. 11 layout.
    settings
        Tile size, tiles per image, seed, model and conventions, for the JSON report.
    """

    methods: tuple[str, ...]
    tiles: list[TileResult] = field(default_factory=list)
    fractions: np.ndarray = field(default_factory=lambda: np.zeros(0))
    curves: dict[str, dict[str, np.ndarray]] = field(default_factory=dict)
    panels: list[tuple[str, np.ndarray, dict[str, np.ndarray]]] = field(default_factory=list)
    settings: dict = field(default_factory=dict)

    def selected(self, method: str, images: Collection[str] | None = None) -> list[TileResult]:
        """Return the tiles of ``method`` (of the image paths ``images`` if given), in order."""
        return [t for t in self.tiles
                if t.method == method and (images is None or t.image in images)]

    def summary(self, images: Collection[str] | None = None) -> list[MethodSummary]:
        """Per method: tile count and the mean of every column over tiles (NaNs skipped).

        ``images``: only the tiles of these image paths (default: all); methods with no tile
        there are left out.
        """
        columns = [m.name for m in METRICS] + list(EXTRA_COLUMNS)
        table = []
        for method in self.methods:
            chosen = self.selected(method, images)
            if not chosen:
                continue
            means = {}
            for column in columns:
                values = np.array([t.scores[column] for t in chosen], dtype=np.float64)
                finite = values[np.isfinite(values)]
                means[column] = float(finite.mean()) if finite.size else float("nan")
            table.append(MethodSummary(method, len(chosen), means))
        return table

    def rows(self) -> list[dict[str, object]]:
        """Return the summary as plain rows (one per method)."""
        return [entry.as_dict() for entry in self.summary()]

    def to_table(self) -> Table:
        """Return the summary table (:data:`SUMMARY_COLUMNS`)."""
        return Table.of(self.rows(), SUMMARY_COLUMNS)

    def tile_table(self) -> Table:
        """One row per (image, tile, method) with every score."""
        return Table.of([t.as_dict() for t in self.tiles])


def _cut(array: np.ndarray, positions: list[tuple[int, int]], tile: int) -> np.ndarray:
    """(T, tile, tile) stack of the tiles of an (H, W) array at ``positions``."""
    return np.stack([array[y : y + tile, x : x + tile] for y, x in positions])


Measures = Literal["all", "microstructure"]
"""What :func:`compare_images` measures: everything, or the maps' microstructure metrics only."""
TILE_COLUMNS = (
    *(m.name for m in faithfulness.METRICS), *(m.name for m in microstructure.METRICS),
    "sanity_rho_top", "sanity_rho_all", "sanity_pass", "noise_rho", "seconds_per_tile",
    "lrp_conservation",
)
"""Score columns of a tile, in the order of the tile table."""


def _in_order(row: dict[str, float]) -> dict[str, float]:
    """Return ``row`` with every :data:`TILE_COLUMNS` key, in that order (NaN where missing)."""
    return {column: row.get(column, float("nan")) for column in TILE_COLUMNS}


def _measure_tiles(
    model: CAE, fast: CAE, x: torch.Tensor, method: str, dark: np.ndarray, label: np.ndarray | None,
    label_kind: str, sanity_check: bool, seed: int, exact_engine: str, measures: Measures,
) -> tuple[torch.Tensor, list[dict], dict[str, np.ndarray]]:
    """Map (T, 1, H, W) tiles with one method and measure everything per tile.

    ``fast`` is a channels-last copy of ``model`` for the many forward passes of the curves.
    With ``measures="microstructure"`` only the map and its microstructure metrics are made
    (every other column NaN, no curves).
    """
    map_fn = map_function(method, seed, exact_engine)
    started = time.perf_counter()
    maps = map_fn(model.encoder, x).detach().to(torch.float64).cpu()
    seconds = (time.perf_counter() - started) / x.shape[0]
    nan = np.full(x.shape[0], np.nan)
    rows = [microstructure.microstructure_scores(
        maps[n].numpy(), dark[n], None if label is None else label[n], label_kind)
        for n in range(x.shape[0])]
    if measures == "microstructure":
        return maps, [_in_order({**row, "seconds_per_tile": seconds}) for row in rows], {}
    magnitude = maps.abs().to(x.dtype)
    curves, areas = {}, {}
    for mode in ("deletion", "insertion"):
        result = faithfulness.perturbation_curves(
            fast.encoder, to_channels_last(x), magnitude, mode,
            fast.decoder)
        curves[f"{mode}_latent"] = result.latent_change
        curves[f"{mode}_mse"] = result.reconstruction_mse
        for kind, area in result.auc().items():
            areas[f"{mode}_{kind}_auc"] = area
    rho = (sanity.randomisation_test(map_fn, model.encoder, x, seed).rho if sanity_check
           else np.full((x.shape[0], 1), np.nan))
    steady = stability.noise_stability(map_fn, model.encoder, x, maps, seed=seed)
    check = METHODS[method].conservation if method in METHODS else None
    conservation = (check(model.encoder, x, maps.to(x.dtype)).numpy() if check is not None
                    else nan)
    for n, row in enumerate(rows):
        row.update({name: float(area[n]) for name, area in areas.items()})
        row.update(sanity_rho_top=float(rho[n, 0]), sanity_rho_all=float(rho[n, -1]),
                   sanity_pass=float(rho[n, -1] < sanity.SANITY_THRESHOLD)
                   if sanity_check else float("nan"),
                   noise_rho=float(steady[n]), seconds_per_tile=seconds,
                   lrp_conservation=float(conservation[n]))
    return maps, [_in_order(row) for row in rows], curves


CHUNK = 8
"""Tiles of one image mapped together."""


def _checked_options(model: CAE, methods: Sequence[str] | None, tile: int,
                     tiles_per_image: int | None, exact_engine: str) -> tuple[str, ...]:
    """Return ``methods`` (default: :func:`default_methods` of the model's encoder), checked.

    Raises
    ------
    MicrocaeError
        An unknown method, an exact engine that is not a registered one, a tile side that is
        not a positive multiple of the model's downsampling, or fewer than 1 tile per image.
    """
    methods = tuple(methods) if methods else default_methods(model.encoder)
    unknown = [m for m in methods if m not in METHODS and m not in CONTROLS]
    if unknown:
        raise MicrocaeError(f"unknown method(s) {unknown}; choose from "
                            f"{sorted(METHODS) + list(CONTROLS)}")
    if exact_engine not in EXACT_ENGINES or exact_engine not in METHODS:
        raise MicrocaeError(f"exact engine must be one of {list(EXACT_ENGINES)} (registered)")
    if tile <= 0 or tile % model.downsample or (tiles_per_image or 1) < 1:
        raise MicrocaeError(f"tile must be a positive multiple of {model.downsample} and "
                            "tiles per image at least 1")
    return methods


def _empty_comparison(methods: tuple[str, ...], settings: dict[str, object],
                      measures: Measures) -> Comparison:
    """Return a comparison of ``methods`` with no tiles yet, recording the run's settings."""
    comparison = Comparison(methods, fractions=np.arange(faithfulness.STEPS + 1)
                            / faithfulness.STEPS)
    comparison.curves = {m: {} for m in methods}
    comparison.settings = {**settings, "blur_sigma": faithfulness.BLUR_SIGMA,
                           "scores": "|relevance|", "lrp_seed": "the latent f(x) itself",
                           "gbp_gradient_ig_output": "L2 norm of the latent",
                           **({} if measures == "all" else {"measures": measures})}
    return comparison


def compare_images(
    model: CAE,
    images: Sequence[str | Path],
    methods: Sequence[str] | None = None,
    tile: int = 256,
    tiles_per_image: int | None = 1,
    sanity_check: bool = True,
    seed: int = 0,
    exact_engine: str = EXACT_ENGINES[0],
    progress: bool = False,
    measures: Measures = "all",
) -> Comparison:
    """Map and measure every method on tiles of every image.

    Parameters
    ----------
    model
        Trained autoencoder (its encoder is explained, its decoder gives reconstruction MSE).
    images
        Micrograph files. Label masks beside them (``<stem>_labels.png``, ``<stem>_mask.png``,
        ``<stem>_gb_mask.tif``) are used where present.
    methods
        Names from :data:`microcae.saliency.METHODS` or :data:`CONTROLS`; default
        :func:`default_methods` of the model's encoder (the methods defined for its layers).
    tile
        Tile side in pixels (a multiple of the model's downsampling factor).
    tiles_per_image
        Tiles taken per image, evenly spread over its grid; None: every tile of the grid
        (that a label mask covers, where there is one).
    sanity_check
        Run the model-randomisation test (one map per randomised layer: the costliest part).
    seed
        Seed of the random control and of the randomisation.
    exact_engine
        Engine of :data:`EXACT_ENGINES` that computes the ``"complex-step"`` row.
    progress
        Show a progress bar over images.
    measures
        ``"all"``, or ``"microstructure"``: only the maps and their microstructure metrics
        (no curves, sanity or noise check: columns NaN), e.g. for every tile of many images.

    Returns
    -------
    Comparison
        Per-tile rows, curves and figure panels.

    Raises
    ------
    MicrocaeError
        Unknown method, bad tile size, unreadable image, or an image with no usable tile.
    """
    methods = _checked_options(model, methods, tile, tiles_per_image, exact_engine)
    comparison = _empty_comparison(methods, {
        "tile": tile, "tiles_per_image": tiles_per_image, "seed": seed,
        "sanity_check": sanity_check, "complex_step_engine": exact_engine}, measures)
    fast = to_channels_last(copy.deepcopy(model))
    for path in tqdm(list(images), desc="compare", unit="image", disable=not progress):
        _compare_image(comparison, model, fast, path, tile, tiles_per_image,
                       (sanity_check, seed, exact_engine, measures))
    return comparison


def _compare_image(comparison: Comparison, model: CAE, fast: CAE, path: str | Path, tile: int,
                   tiles_per_image: int | None, options: tuple[bool, int, str, Measures]
                   ) -> None:
    """Measure every method of ``comparison`` on the chosen tiles of one image; add the results."""
    micrograph = read_micrograph(path)
    dark_full, _ = microstructure.otsu_dark(micrograph.pixels)
    mask = find_label_mask(path, micrograph.shape)
    grid = TileGrid(micrograph.shape, tile=tile, stride=tile, remainder="drop")
    positions = chosen_positions(grid, tiles_per_image or len(grid.positions),
                                 None if mask is None else mask.labels)
    if not positions:
        raise MicrocaeError(f"{path}: no {tile}×{tile} tile fits inside the image"
                            + ("" if mask is None else " and its label mask"))
    dtype = next(model.parameters()).dtype
    panel: dict[str, np.ndarray] = {}
    for start in range(0, len(positions), CHUNK):
        chunk = positions[start:start + CHUNK]
        tiles = _cut(micrograph.pixels, chunk, tile)
        x = torch.from_numpy(tiles).to(dtype)[:, None]
        dark = _cut(dark_full, chunk, tile)
        label = None if mask is None else _cut(mask.labels, chunk, tile)
        for method in comparison.methods:
            maps, rows, curves = _measure_tiles(
                model, fast, x, method, dark, label, "phase" if mask is None else mask.kind,
                *options)
            comparison.tiles += [TileResult(str(path), y, x0, method, row)
                                 for (y, x0), row in zip(chunk, rows, strict=True)]
            for key, value in curves.items():
                earlier = comparison.curves[method].get(key)
                comparison.curves[method][key] = (
                    value if earlier is None else np.concatenate([earlier, value]))
            panel.setdefault(method, maps[0].numpy())
    name = Path(path).stem
    if any(name == taken for taken, _, _ in comparison.panels):
        name = f"{Path(path).parent.name}_{name}"
    comparison.panels.append((name, _cut(micrograph.pixels, positions[:1], tile)[0], panel))


def write_comparison(comparison: Comparison, out_dir: str | Path) -> dict[str, Path]:
    """Write the tables, the JSON report and the figures of a comparison.

    Parameters
    ----------
    comparison
        Result of :func:`compare_images`.
    out_dir
        Output folder (created if missing). Every file is written atomically.

    Returns
    -------
    dict[str, Path]
        ``summary_csv`` (``comparison.csv``: one row per method), ``tiles_csv``
        (``comparison_tiles.csv``: one row per image, tile and method), ``markdown``
        (``comparison.md``), ``json`` (``comparison.json``: settings, metric declarations,
        summary, rows, mean curves), ``curves`` (``curves.png``) and one
        ``<stem>.comparison.png`` per image (key ``figure:<stem>``).
    """
    out_dir = Path(out_dir)
    written = {
        "summary_csv": out_dir / "comparison.csv",
        "tiles_csv": out_dir / "comparison_tiles.csv",
        "markdown": out_dir / "comparison.md",
        "json": out_dir / "comparison.json",
        "curves": out_dir / "curves.png",
    }
    summary, tiles = comparison.to_table(), comparison.tile_table()
    write_text_atomic(written["summary_csv"], summary.csv())
    write_text_atomic(written["tiles_csv"], tiles.csv())
    legend = "\n".join(f"- `{m.name}` ({m.better} is better): {m.description}. {m.reference}."
                       for m in METRICS)
    extras = "\n".join(f"- `{name}`: {text}." for name, text in EXTRA_COLUMNS.items())
    write_text_atomic(written["markdown"],
                      summary.markdown() + "\n" + legend + "\n" + extras + "\n")
    report = {
        "settings": comparison.settings,
        "metrics": [vars(m) for m in METRICS],
        "extra_columns": EXTRA_COLUMNS,
        "summary": list(summary.rows),
        "rows": list(tiles.rows),
        "fractions": comparison.fractions,
        "mean_curves": {method: {k: v.mean(axis=0) for k, v in curves.items()}
                        for method, curves in comparison.curves.items()},
    }
    write_text_atomic(written["json"], json_text(report))
    save_figure(curves_figure(comparison.fractions, comparison.curves), written["curves"])
    for name, tile, maps in comparison.panels:
        shown = {m: maps[m] for m in FIGURE_METHODS if m in maps}
        path = out_dir / f"{name}.comparison.png"
        save_figure(comparison_figure(tile, shown, title=name), path)
        written[f"figure:{name}"] = path
    return written
