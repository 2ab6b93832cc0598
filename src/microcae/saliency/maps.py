"""Relevance maps of whole micrographs of any size, with bounded memory.

Modes:

- ``"tile"`` (the study's): the micrograph is cut into non-overlapping 256 × 256 tiles
  (reflect-padded at the bottom and right), each tile is encoded on its own and its relevance
  computed; the maps are put back together and cropped to the image.
- ``"whole"``: the relevance for the latent of the *whole* image (padded to a multiple of the
  latent stride), without tiles. The encoder is fully convolutional, so this is exact in
  pieces. Engines that work per latent unit (``vjp``, ``patches``: their records' ``by_units``)
  map the image in blocks of latent units: each block's window holds the receptive fields of
  its units, each unit counts once, and the blocks' squared derivatives add up to r². Other
  local engines map windows of pixels with a halo wider than the farthest reach of any unit a
  core pixel feeds.
- ``"auto"`` (the default): ``"whole"`` for images larger than a tile (with a local method),
  else ``"tile"``.

Memory is that of one tile or window at a time (about :data:`WHOLE_PIXELS` pixels per window).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from microcae.data.tiling import stitch_tiles
from microcae.models.inference import micrograph_grid, tile_batches
from microcae.saliency.footprint import Footprint, alignment, encoder_footprint, unit_window
from microcae.saliency.kinks import kink_pixels
from microcae.saliency.registry import (
    STUDY_METHOD,
    Method,
    fastest_exact,
    lookup,
    names,
    relevance,
)
from microcae.util.errors import MicrocaeError

Mode = Literal["auto", "tile", "whole"]
WHOLE_PIXELS = 2**19
"""Pixels per band or strip window in ``"whole"`` mode (bounds memory; about 0.5 Mpx)."""
MIN_BAND = 16
"""Fewest latent rows (and columns) per block of units (its window adds about 3 of receptive
field)."""
MIN_CORE = 256
"""Fewest pixel rows (and columns) in a window's core (the window adds a halo around it)."""


@dataclass(frozen=True)
class MicrographRelevance:
    """Relevance of one micrograph.

    Attributes
    ----------
    relevance
        (H, W) float32 raw (unsmoothed) relevance, the image's shape.
    kink_pixels
        Number of pixels whose value depends on a one-sided derivative convention
        (see :func:`microcae.saliency.kinks.kink_pixels`).
    mode
        ``"tile"`` or ``"whole"``: how it was computed.
    """

    relevance: np.ndarray
    kink_pixels: int
    mode: str


def _weights(encoder: nn.Module) -> tuple[torch.dtype, torch.device]:
    weights = next(encoder.parameters(), None)
    if weights is None:
        return torch.float32, torch.device("cpu")
    return weights.dtype, weights.device


def _tiles(encoder: nn.Module, pixels: np.ndarray, method: str, tile: int, progress: bool,
           options: dict[str, Any]) -> MicrographRelevance:
    dtype, device = _weights(encoder)
    probe = torch.zeros(1, 1, tile, tile, dtype=dtype)
    step = alignment(encoder_footprint(encoder, probe), (tile, tile))
    if tile % step:
        raise MicrocaeError(f"tile {tile} is not a multiple of the latent stride {step}")
    grid = micrograph_grid(pixels.shape, tile)
    maps = np.empty((len(grid), tile, tile), dtype=np.float32)
    kinks = np.zeros((len(grid), tile, tile), dtype=bool)
    batches = tile_batches(pixels, grid, batch_size=1)
    for chunk, batch in tqdm(batches, total=len(grid), desc="tiles", unit="tile",
                             disable=not progress, leave=False):
        batch = batch.to(device=device, dtype=dtype)
        maps[chunk] = relevance(encoder, batch, method, **options).float().cpu().numpy()
        kinks[chunk] = kink_pixels(encoder, batch).numpy()
    stitched = stitch_tiles(kinks.astype(np.float32), grid) > 0
    return MicrographRelevance(stitch_tiles(maps, grid).astype(np.float32), int(stitched.sum()),
                               "tile")


@dataclass(frozen=True)
class _Canvas:
    """The image padded to the latent grid, with the geometry every window needs."""

    pixels: torch.Tensor  # (Hp, Wp) on the encoder's device, its dtype
    footprint: Footprint
    step: int
    halo: int


def latent_stride(encoder: nn.Module, probe: int = 1024) -> int:
    """Return the pixel stride of the encoder's latent grid (16 for the study), from a probe.

    Raises
    ------
    MicrocaeError
        For an encoder with a global layer (no latent grid).
    """
    dtype = _weights(encoder)[0]
    footprint = encoder_footprint(encoder, torch.zeros(1, 1, probe, probe, dtype=dtype))
    if footprint.flat:
        raise MicrocaeError("--mode whole needs a convolutional encoder (no global layers)")
    return alignment(footprint, (probe, probe))


def _canvas(encoder: nn.Module, pixels: np.ndarray) -> _Canvas:
    """Pad ``pixels`` (symmetric) to a multiple of the latent stride and derive the geometry."""
    dtype, device = _weights(encoder)
    step = latent_stride(encoder)
    height, width = (-(-n // step) * step for n in pixels.shape)
    padded = np.pad(pixels, ((0, height - pixels.shape[0]), (0, width - pixels.shape[1])),
                    mode="symmetric")
    footprint = encoder_footprint(encoder, torch.zeros(1, 1, height, width, dtype=dtype))
    halo = -(-(footprint.reach() + step) // step) * step
    tensor = torch.from_numpy(np.ascontiguousarray(padded)).to(device=device, dtype=dtype)
    return _Canvas(tensor, footprint, step, halo)


def _sides(canvas: _Canvas, margin: int, least: int, budget: int) -> tuple[int, int]:
    """Core (rows, cols) of windows of about ``budget`` pixels with ``margin`` px around.

    Cores are multiples of the latent stride and at least ``least`` (capped at the image);
    narrow images get full-width windows.
    """
    step = canvas.step
    height, width = canvas.pixels.shape

    def fit(size: float, limit: int) -> int:
        core = max(int(size) - margin, least) // step * step
        return min(max(core, step), limit)

    cols = fit(budget**0.5, width)
    if cols + margin >= width:  # the whole width fits
        cols = width
    rows = fit(budget / min(cols + margin, width), height)
    return rows, cols


def _by_windows(canvas: _Canvas, compute: Callable[[torch.Tensor], torch.Tensor],
                progress: bool, label: str, budget: int) -> torch.Tensor:
    """Apply ``compute`` ((1, 1, h, w) -> (1, h, w)) on windows with halos; keep each core."""
    halo, (height, width) = canvas.halo, canvas.pixels.shape
    rows, cols = _sides(canvas, 2 * halo, MIN_CORE, budget)
    out = torch.empty(canvas.pixels.shape, dtype=canvas.pixels.dtype)
    cores = [(y, x) for y in range(0, height, rows) for x in range(0, width, cols)]
    for y, x in tqdm(cores, desc=label, unit="window", disable=not progress, leave=False):
        top, left = max(y - halo, 0), max(x - halo, 0)
        bottom, right = min(y + rows + halo, height), min(x + cols + halo, width)
        window = canvas.pixels[top:bottom, left:right][None, None]
        core = compute(window)[0, y - top : min(y + rows, height) - top,
                               x - left : min(x + cols, width) - left]
        out[y : y + rows, x : x + cols] = core.cpu()
    return out


def _by_units(encoder: nn.Module, canvas: _Canvas, record: Method, progress: bool,
              options: dict[str, Any]) -> torch.Tensor:
    """Sum the squared derivatives of blocks of latent units, each on its units' window; sqrt.

    Each block's window holds its units' receptive fields (aligned to the latent grid); only the
    block's units are seeded, so every unit is pulled back once and the parts add up to r².
    """
    step, (height, width) = canvas.step, canvas.pixels.shape
    first_r, last_r = canvas.footprint.rows.supports()  # pixel rows each latent row reads
    first_c, last_c = canvas.footprint.cols.supports()
    field = int(max((last_r - first_r).max(), (last_c - first_c).max())) + 1  # receptive field
    margin = -(-(field - step) // step) * step  # beyond a block (study: 46 - 16 -> 48 px)
    rows, cols = (n // step for n in _sides(canvas, margin, MIN_BAND * step, WHOLE_PIXELS))
    r2 = torch.zeros(canvas.pixels.shape, dtype=canvas.pixels.dtype)
    blocks = [(range(u, min(u + rows, len(first_r))), range(v, min(v + cols, len(first_c))))
              for u in range(0, len(first_r), rows) for v in range(0, len(first_c), cols)]
    for unit_rows, unit_cols in tqdm(blocks, desc="unit blocks", unit="block",
                                     disable=not progress, leave=False):
        top, bottom = unit_window(first_r, last_r, unit_rows, step, height)
        left, right = unit_window(first_c, last_c, unit_cols, step, width)
        local = (range(unit_rows.start - top // step, unit_rows.stop - top // step),
                 range(unit_cols.start - left // step, unit_cols.stop - left // step))
        window = canvas.pixels[top:bottom, left:right][None, None]
        r2[top:bottom, left:right] += record.by_units(encoder, window, *local,
                                                      **options)[0].cpu()
    return r2.sqrt()


def _whole(encoder: nn.Module, pixels: np.ndarray, method: str, progress: bool,
           options: dict[str, Any]) -> MicrographRelevance:
    probe = torch.zeros(1, 1, *pixels.shape, dtype=_weights(encoder)[0])
    record = lookup(fastest_exact(encoder, probe) if method == STUDY_METHOD else method)
    if not record.local:
        raise MicrocaeError(f"--mode whole needs a local exact method {names(local=True)}, "
                            f"not {method!r}; use --mode tile")
    canvas = _canvas(encoder, pixels)
    height, width = pixels.shape
    if record.by_units is not None:
        maps = _by_units(encoder, canvas, record, progress, options)
    else:
        maps = _by_windows(canvas, lambda x: record.function(encoder, x, **options), progress,
                           "windows", WHOLE_PIXELS)
    kinks = _by_windows(canvas, lambda x: kink_pixels(encoder, x).to(x.dtype), progress,
                        "kink windows", WHOLE_PIXELS) > 0
    return MicrographRelevance(maps[:height, :width].float().numpy(),
                               int(kinks[:height, :width].sum()), "whole")


def resolve_mode(mode: Mode, method: str, shape: tuple[int, int], tile: int) -> str:
    """Return ``"tile"`` or ``"whole"`` for ``mode`` (``"auto"``: whole if larger than a tile).

    Raises
    ------
    MicrocaeError
        For an unknown mode.
    """
    if mode not in ("auto", "tile", "whole"):
        raise MicrocaeError(f"mode must be 'auto', 'tile' or 'whole', not {mode!r}")
    if mode != "auto":
        return mode
    local = lookup(method).local
    return "whole" if local and (shape[0] > tile or shape[1] > tile) else "tile"


@torch.no_grad()
def micrograph_relevance(encoder: nn.Module, pixels: np.ndarray, method: str = STUDY_METHOD,
                         mode: Mode = "auto", tile: int = 256, progress: bool = False,
                         **options: Any) -> MicrographRelevance:
    """Relevance map of a whole micrograph, with bounded memory.

    Parameters
    ----------
    encoder
        The encoder (e.g. ``load_model().encoder``), in eval mode; its weights' dtype and
        device are used.
    pixels
        (H, W) float image in [0, 1], any size.
    method
        A key of :data:`microcae.saliency.METHODS`; the default ``"complex-step"`` is the
        study's relevance by the fastest exact engine.
    mode
        ``"tile"``: per ``tile`` × ``tile`` tile as in the study; ``"whole"``: the whole image's
        latent, exact, in windows; ``"auto"``: whole for images larger than a tile.
    tile
        Tile side in pixels (tile mode), a multiple of the latent stride (16 for the study).
    progress
        Show a progress bar over tiles or windows.
    **options
        Passed to the method (e.g. ``chunk``, ``precision``).

    Returns
    -------
    MicrographRelevance
        (H, W) float32 raw relevance, the number of kink-affected pixels and the mode used.

    Raises
    ------
    MicrocaeError
        For an unknown method or mode, or ``"whole"`` with a non-local method.
    """
    lookup(method)
    if pixels.ndim != 2:
        raise MicrocaeError(f"expected an (H, W) image, got shape {pixels.shape}")
    if resolve_mode(mode, method, pixels.shape, tile) == "whole":
        return _whole(encoder, pixels, method, progress, options)
    return _tiles(encoder, pixels, method, tile, progress, options)
