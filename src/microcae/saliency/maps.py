"""Relevance maps of whole micrographs of any size, with bounded memory.

Two modes:

- ``"tile"`` (the study's): the micrograph is cut into non-overlapping 256 × 256 tiles
  (reflect-padded at the bottom and right), each tile is encoded on its own and its relevance
  computed; the maps are put back together and cropped to the image.
- ``"whole"``: the relevance of the latent of the *whole* image (padded to a multiple of the
  latent stride). Because a latent unit only sees its receptive field, this is computed exactly
  window by window: each core block is extended by a halo wider than the farthest reach of any
  of its pixels' latent units, so every unit that touches the core is computed as in the whole
  image. Only for the exact Jacobian engines, whose r_ij is local.

Memory is that of one tile or window at a time (well under 2 GB for 256-pixel blocks).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from microcae.data.tiling import stitch_tiles
from microcae.models.inference import micrograph_grid, tile_batches
from microcae.saliency.footprint import alignment, encoder_footprint
from microcae.saliency.kinks import kink_pixels
from microcae.saliency.registry import STUDY_METHOD, lookup, names, relevance
from microcae.util.errors import MicrocaeError

Mode = Literal["tile", "whole"]


@dataclass(frozen=True)
class MicrographRelevance:
    """Relevance of one micrograph.

    Attributes
    ----------
    relevance
        (H, W) float32 raw (unsmoothed) relevance, the image's shape.
    kink_pixels
        Number of pixels whose value depends on a one-sided derivative convention
        (see :func:`microcae.saliency.engines.kink_pixels`).
    """

    relevance: np.ndarray
    kink_pixels: int


def _weights_dtype(encoder: nn.Module) -> torch.dtype:
    weights = next(encoder.parameters(), None)
    return weights.dtype if weights is not None else torch.float32


def _tiles(encoder: nn.Module, pixels: np.ndarray, method: str, tile: int, progress: bool,
           options: dict[str, Any]) -> MicrographRelevance:
    grid = micrograph_grid(pixels.shape, tile)
    maps = np.empty((len(grid), tile, tile), dtype=np.float32)
    kinks = np.zeros((len(grid), tile, tile), dtype=bool)
    batches = tile_batches(pixels, grid, batch_size=1)
    for chunk, batch in tqdm(batches, total=len(grid), desc="tiles", unit="tile",
                             disable=not progress, leave=False):
        batch = batch.to(_weights_dtype(encoder))
        maps[chunk] = relevance(encoder, batch, method, **options).float().numpy()
        kinks[chunk] = kink_pixels(encoder, batch).numpy()
    stitched = stitch_tiles(kinks.astype(np.float32), grid) > 0
    return MicrographRelevance(stitch_tiles(maps, grid).astype(np.float32), int(stitched.sum()))


def _windows(encoder: nn.Module, pixels: np.ndarray, method: str, block: int, progress: bool,
             options: dict[str, Any]) -> MicrographRelevance:
    if not lookup(method).local:
        raise MicrocaeError(f"--mode whole needs a local exact method {names(local=True)}, "
                            f"not {method!r}; use --mode tile")
    dtype = _weights_dtype(encoder)
    probe = torch.zeros(1, 1, block, block, dtype=dtype)
    footprint = encoder_footprint(encoder, probe)
    if footprint.flat:
        raise MicrocaeError("--mode whole needs a convolutional encoder (no global layers)")
    step = alignment(footprint, (block, block))
    if block % step:
        raise MicrocaeError(f"tile {block} is not a multiple of the latent stride {step}")
    halo = -(-(footprint.reach() + step) // step) * step
    height, width = pixels.shape
    padded_h, padded_w = -(-height // step) * step, -(-width // step) * step
    canvas = np.pad(pixels, ((0, padded_h - height), (0, padded_w - width)), mode="symmetric")
    out = np.zeros((padded_h, padded_w), dtype=np.float32)
    kinks = np.zeros((padded_h, padded_w), dtype=bool)
    cores = [(y, x) for y in range(0, padded_h, block) for x in range(0, padded_w, block)]
    for y, x in tqdm(cores, desc="windows", unit="window", disable=not progress, leave=False):
        top, left = max(y - halo, 0), max(x - halo, 0)
        bottom, right = min(y + block + halo, padded_h), min(x + block + halo, padded_w)
        window = torch.from_numpy(np.ascontiguousarray(canvas[top:bottom, left:right]))
        window = window.to(dtype)[None, None]
        core = (slice(y - top, min(y + block, padded_h) - top),
                slice(x - left, min(x + block, padded_w) - left))
        place = (slice(y, y + block), slice(x, x + block))
        out[place] = relevance(encoder, window, method, **options)[0][core].float().numpy()
        kinks[place] = kink_pixels(encoder, window)[0][core].numpy()
    return MicrographRelevance(out[:height, :width], int(kinks[:height, :width].sum()))


@torch.no_grad()
def micrograph_relevance(encoder: nn.Module, pixels: np.ndarray, method: str = STUDY_METHOD,
                         mode: Mode = "tile", tile: int = 256, progress: bool = False,
                         **options: Any) -> MicrographRelevance:
    """Relevance map of a whole micrograph, one tile or window at a time.

    Parameters
    ----------
    encoder
        The encoder (e.g. ``load_model().encoder``), in eval mode; its weights' dtype is used.
    pixels
        (H, W) float image in [0, 1], any size.
    method
        A key of :data:`microcae.saliency.METHODS`; the default ``"complex-step"`` is the
        study's relevance by the fastest exact engine.
    mode
        ``"tile"``: per ``tile`` × ``tile`` tile as in the study; ``"whole"``: the whole image's
        latent, computed exactly in windows with ``tile``-sized cores.
    tile
        Tile (or window core) side in pixels; a multiple of the latent stride (16).
    progress
        Show a progress bar over tiles or windows.
    **options
        Passed to the method (e.g. ``chunk``, ``precision``).

    Returns
    -------
    MicrographRelevance
        (H, W) float32 raw relevance and the number of kink-affected pixels.

    Raises
    ------
    MicrocaeError
        For an unknown method or mode, or ``"whole"`` with a non-local method.
    """
    lookup(method)
    if pixels.ndim != 2:
        raise MicrocaeError(f"expected an (H, W) image, got shape {pixels.shape}")
    if mode == "tile":
        return _tiles(encoder, pixels, method, tile, progress, options)
    if mode == "whole":
        return _windows(encoder, pixels, method, tile, progress, options)
    raise MicrocaeError(f"mode must be 'tile' or 'whole', not {mode!r}")
