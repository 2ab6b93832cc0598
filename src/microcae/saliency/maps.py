"""Relevance maps of whole micrographs of any size, with bounded memory.

Modes:

- ``"tile"`` (the study's): the micrograph is cut into non-overlapping 256 × 256 tiles
  (reflect-padded at the bottom and right), each tile is encoded on its own and its relevance
  computed; the maps are put back together and cropped to the image.
- ``"whole"``: the relevance for the latent of the *whole* image (padded to a multiple of the
  latent stride), without tiles. The encoder is fully convolutional, so this is exact in
  pieces. Engines that pull back latent units (``vjp``) map the image in bands of latent rows:
  each band's window holds the receptive fields of its units, each unit is pulled back once,
  and the bands' squared derivatives add up to r². Other local engines map full-width strips of
  pixel rows with a halo wider than the farthest reach of any unit a core pixel feeds.
- ``"auto"`` (the default): ``"whole"`` for images larger than a tile (with a local method),
  else ``"tile"``.

Memory is that of one tile, band or strip at a time (:data:`WHOLE_PIXELS` pixels per window).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from microcae.data.tiling import stitch_tiles
from microcae.models.inference import micrograph_grid, tile_batches
from microcae.saliency.footprint import Footprint, alignment, encoder_footprint
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
"""Fewest latent rows per band (the window adds about 3 rows of receptive field to a band)."""
MIN_CORE = 256
"""Fewest pixel rows in a strip's core (the strip adds a halo above and below)."""


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
    step = alignment(encoder_footprint(encoder, torch.zeros(1, 1, tile, tile)), (tile, tile))
    if tile % step:
        raise MicrocaeError(f"tile {tile} is not a multiple of the latent stride {step}")
    grid = micrograph_grid(pixels.shape, tile)
    maps = np.empty((len(grid), tile, tile), dtype=np.float32)
    kinks = np.zeros((len(grid), tile, tile), dtype=bool)
    dtype, device = _weights(encoder)
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

    def window(self, top: int, bottom: int) -> torch.Tensor:
        """(1, 1, bottom − top, Wp): full-width rows ``top:bottom``."""
        return self.pixels[top:bottom][None, None]


def latent_stride(encoder: nn.Module, probe: int = 1024) -> int:
    """Pixel stride of the encoder's latent grid (16 for the study), from a meta-tensor probe.

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


def _strips(canvas: _Canvas, core: int) -> Iterator[tuple[int, int, int, int]]:
    """Yield (top, bottom, core_top, core_bottom) of full-width strips with halos."""
    height = canvas.pixels.shape[0]
    for start in range(0, height, core):
        stop = min(start + core, height)
        yield max(start - canvas.halo, 0), min(stop + canvas.halo, height), start, stop


def _rows_per_window(canvas: _Canvas) -> int:
    """Pixel rows per window for :data:`WHOLE_PIXELS`, a multiple of the latent stride."""
    rows = WHOLE_PIXELS // canvas.pixels.shape[1] // canvas.step * canvas.step
    return max(rows, canvas.step)


def _by_strips(canvas: _Canvas, compute: Callable[[torch.Tensor], torch.Tensor],
               progress: bool, label: str) -> torch.Tensor:
    """Apply ``compute`` ((1, 1, h, Wp) -> (1, h, Wp)) strip by strip; keep each core."""
    core = max(_rows_per_window(canvas) - 2 * canvas.halo, MIN_CORE) // canvas.step * canvas.step
    core = max(core, canvas.step)
    out = []
    for top, bottom, start, stop in tqdm(list(_strips(canvas, core)), desc=label, unit="strip",
                                         disable=not progress, leave=False):
        out.append(compute(canvas.window(top, bottom))[0, start - top : stop - top].cpu())
    return torch.cat(out)


def _by_bands(encoder: nn.Module, canvas: _Canvas, record: Method, progress: bool,
              options: dict[str, Any]) -> torch.Tensor:
    """Sum the squared derivatives of bands of latent rows, each on its units' window; sqrt."""
    first, last = canvas.footprint.rows.supports()  # pixel rows each latent row reads
    step, height = canvas.step, canvas.pixels.shape[0]
    band = max(_rows_per_window(canvas) // step - 3, MIN_BAND)
    r2 = torch.zeros(canvas.pixels.shape, dtype=canvas.pixels.dtype)
    starts = range(0, len(first), band)
    for start in tqdm(starts, desc="bands", unit="band", disable=not progress, leave=False):
        stop = min(start + band, len(first))
        top = int(first[start:stop].min()) // step * step
        bottom = min(-(-(int(last[start:stop].max()) + 1) // step) * step, height)
        rows = range(start - top // step, stop - top // step)
        r2[top:bottom] += record.by_units(encoder, canvas.window(top, bottom), rows,
                                          **options)[0].cpu()
    return r2.sqrt()


def _whole(encoder: nn.Module, pixels: np.ndarray, method: str, progress: bool,
           options: dict[str, Any]) -> MicrographRelevance:
    record = lookup(fastest_exact() if method == STUDY_METHOD else method)
    if not record.local:
        raise MicrocaeError(f"--mode whole needs a local exact method {names(local=True)}, "
                            f"not {method!r}; use --mode tile")
    canvas = _canvas(encoder, pixels)
    height, width = pixels.shape
    if record.by_units is not None:
        maps = _by_bands(encoder, canvas, record, progress, options)
    else:
        maps = _by_strips(canvas, lambda x: record.function(encoder, x, **options), progress,
                          "strips")
    kinks = _by_strips(canvas, lambda x: kink_pixels(encoder, x), progress, "kink strips")
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
        latent, exact, in bands or strips; ``"auto"``: whole for images larger than a tile.
    tile
        Tile side in pixels (tile mode), a multiple of the latent stride (16 for the study).
    progress
        Show a progress bar over tiles, bands or strips.
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
