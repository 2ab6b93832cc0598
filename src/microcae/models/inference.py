"""Run any model over whole micrographs tile by tile, with bounded memory, never changing it.

Every function here works on a private copy of the model's modules in eval mode (optionally in
another dtype or memory layout), so the caller's model keeps its mode, dtype, layout and hooks.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator

import numpy as np
import torch
from torch import nn

from microcae.data.tiling import TileGrid, extract_tiles, stitch_tiles
from microcae.models.base import MicrocaeModel
from microcae.models.hyperprior import STRIDE
from microcae.models.refinement import Refinement
from microcae.util.runtime import configure_allocator, to_channels_last

DEFAULT_BATCH = 8
STRIP_PIXELS = 1 << 21
"""Whole-image coding splits images of more (padded) pixels into horizontal strips of at most
about this many pixels (2 Mpixel: two strips of 800 rows for a 2080×1542 micrograph), so that
the transforms' memory follows the strip, not the image; the result is that of one pass."""
LATENT_STRIDE = STRIDE // 4
"""Strips are whole rows of the latent ``y`` (16 image rows)."""


def inference_copy(module: nn.Module, dtype: torch.dtype | None = None,
                   channels_last: bool = True) -> nn.Module:
    """Return a deep copy of ``module`` in eval mode, cast to ``dtype``, channels-last if asked.

    The caller's module is left exactly as it was (mode, parameters, memory layout). Sets
    microcae's allocator (:func:`~microcae.util.runtime.configure_allocator`) first, so the
    Python API runs as fast as the command line.
    """
    configure_allocator()
    private = copy.deepcopy(module).eval()
    if dtype is not None:
        private = private.to(dtype)
    return to_channels_last(private) if channels_last else private


def micrograph_grid(shape: tuple[int, int], tile: int = 256) -> TileGrid:
    """Non-overlapping grid that covers every pixel of an (H, W) image (reflect-padded border)."""
    return TileGrid(shape, tile=tile, stride=tile, remainder="pad")


def tile_batches(
    pixels: np.ndarray, grid: TileGrid, batch_size: int = DEFAULT_BATCH
) -> Iterator[tuple[slice, torch.Tensor]]:
    """Yield ``(slice of tile indices, (B, 1, tile, tile) float32 tensor)`` over an image's grid."""
    tiles = extract_tiles(np.asarray(pixels, dtype=np.float32), grid)
    for start in range(0, len(tiles), batch_size):
        chunk = slice(start, min(start + batch_size, len(tiles)))
        yield chunk, torch.from_numpy(np.ascontiguousarray(tiles[chunk]))[:, None]


@torch.no_grad()
def encode_micrograph(
    model: MicrocaeModel, pixels: np.ndarray, tile: int = 256, batch_size: int = DEFAULT_BATCH
) -> tuple[np.ndarray, TileGrid]:
    """Encode an (H, W) image in [0, 1] tile by tile with the model's encoder (float32).

    Returns
    -------
    latents, grid
        (T, C, tile/d, tile/d) float32 real-valued latents in ``grid.positions`` order, and the
        grid (d = ``model.downsample``).
    """
    grid = micrograph_grid(pixels.shape, tile)
    encoder = inference_copy(model.encoder)
    side = tile // model.downsample
    latents = np.empty((len(grid), model.latent_channels, side, side), dtype=np.float32)
    for chunk, batch in tile_batches(pixels, grid, batch_size):
        latents[chunk] = encoder(to_channels_last(batch)).contiguous().numpy()
    return latents, grid


@torch.no_grad()
def decode_latents(
    model: MicrocaeModel, latents: np.ndarray, grid: TileGrid,
    dtype: torch.dtype = torch.float32, batch_size: int = DEFAULT_BATCH,
) -> np.ndarray:
    """Decode (T, C, h, w) latents with ``model.decompress`` and stitch the (H, W) image.

    This is the one decode path of tiled models (reconstruction, latent files, batch jobs).

    Parameters
    ----------
    model
        Any tiled model kind.
    latents
        (T, C, h, w) latents (real-valued, dequantised or integer symbols) in grid order.
    grid
        The image's tile grid.
    dtype
        Decoder precision. ``torch.float64`` runs on contiguous NCHW tensors, whose output bits
        do not depend on thread count or batch size (what latent files decode with);
        ``torch.float32`` runs channels-last (fast).
    batch_size
        Tiles per decoder call.

    Returns
    -------
    np.ndarray
        (H, W) image in ``dtype``'s NumPy type (unclipped).
    """
    fast = dtype == torch.float32
    decoding = inference_copy(model, dtype, channels_last=fast)
    out_dtype = np.float32 if fast else np.float64
    tiles = np.empty((len(grid), grid.tile, grid.tile), dtype=out_dtype)
    for start in range(0, len(grid), batch_size):
        chunk = slice(start, min(start + batch_size, len(grid)))
        batch = torch.from_numpy(np.ascontiguousarray(latents[chunk], dtype=out_dtype))
        batch = to_channels_last(batch) if fast else batch
        tiles[chunk] = decoding.decompress(batch)["x_hat"][:, 0].contiguous().numpy()
    return stitch_tiles(tiles, grid).astype(out_dtype, copy=False)


def reconstruct_micrograph(
    model: MicrocaeModel, pixels: np.ndarray, tile: int = 256, batch_size: int = DEFAULT_BATCH
) -> np.ndarray:
    """Encode and decode an (H, W) image in [0, 1]; returns the (H, W) float32 reconstruction.

    The latents pass through the model's own coding (:meth:`~MicrocaeModel.compress` output:
    real-valued for the CAE, rounded integers for entropy-coded kinds).
    """
    grid = micrograph_grid(pixels.shape, tile)
    coding = inference_copy(model)
    parts = []
    for _, batch in tile_batches(pixels, grid, batch_size):
        coded = coding.compress(to_channels_last(batch))["latents"]
        parts.append(coded.float().contiguous().numpy())
    return decode_latents(model, np.concatenate(parts), grid, batch_size=batch_size)


def strip_rows_for(shape: tuple[int, int], strip_rows: int | None = None,
                   strip_pixels: int | None = None) -> int:
    """Image rows per strip for whole-image coding of an (H, W) image.

    Parameters
    ----------
    shape
        (H, W) of the image.
    strip_rows
        The caller's choice (returned as is) or None: one strip if the image, padded to
        multiples of 64, has at most ``strip_pixels`` pixels, else ``ceil(pixels /
        strip_pixels)`` strips of equal height, rounded up to a multiple of 16 (the last may
        be shorter).
    strip_pixels
        The budget; None: :data:`STRIP_PIXELS`.

    Returns
    -------
    int
        Rows per strip, a positive multiple of 16 (the padded height for one strip).
    """
    if strip_rows is not None:
        return strip_rows
    strip_pixels = STRIP_PIXELS if strip_pixels is None else strip_pixels
    height, width = (-(-side // STRIDE) * STRIDE for side in shape)
    count = -(-height * width // strip_pixels)
    return LATENT_STRIDE * -(-height // (LATENT_STRIDE * count))


@torch.no_grad()
def compress_whole(model: MicrocaeModel, pixels: np.ndarray, strip_rows: int | None = None,
                   refine: Refinement | None = None) -> bytes:
    """Code a whole (H, W) image in [0, 1] with a stream model (no tiles, no seams).

    The analysis transform runs in float32 channels-last on a private copy, in horizontal
    strips with exact halos when the image is large (:func:`strip_rows_for`); the coded stream
    depends only on the integers it produces, which are those of one whole pass.

    Parameters
    ----------
    model
        A stream model (:class:`~microcae.models.hyperprior.HyperpriorCodec`).
    pixels
        (H, W) image in [0, 1].
    strip_rows
        Image rows per strip (a positive multiple of 16; at least the padded height: one pass);
        None: chosen by :func:`strip_rows_for`.
    refine
        Optimise the image's latents for its own rate–distortion cost first
        (:mod:`microcae.models.refinement`: a smaller cost, the same decoder; each step costs
        about one synthesis forward and backward); None: the analysis transform's latents.

    Returns
    -------
    bytes
        The coded stream.
    """
    coding = inference_copy(model)
    x = torch.from_numpy(np.ascontiguousarray(pixels, dtype=np.float32))[None, None]
    rows = strip_rows_for(pixels.shape, strip_rows)
    return coding.compress(to_channels_last(x), strip_rows=rows, refine=refine)["strings"]


@torch.no_grad()
def decompress_whole(model: MicrocaeModel, stream: bytes, shape: tuple[int, int],
                     dtype: torch.dtype = torch.float64,
                     strip_rows: int | None = None) -> np.ndarray:
    """Decode a stream model's coded whole image of shape (H, W) = ``shape``.

    The entropy decoding uses integers only; the synthesis runs in ``dtype`` (float64 on NCHW
    tensors by default: bits independent of thread count, as for tiled files), in horizontal
    strips with exact halos when the image is large (:func:`strip_rows_for`).

    Parameters
    ----------
    model
        A stream model.
    stream
        :func:`compress_whole` output.
    shape
        (H, W) of the image.
    dtype
        Synthesis precision (``torch.float32`` runs channels-last: faster, bits depend on the
        layout).
    strip_rows
        Image rows per strip (a positive multiple of 16); None: :func:`strip_rows_for`.

    Returns
    -------
    np.ndarray
        (H, W) image in [0, 1], ``dtype``'s NumPy type: the same 8- and 16-bit pixels for any
        ``strip_rows`` (tested); for float64 equal to one pass to ≈1e-16, bitwise on some CPUs
        (see :mod:`microcae.models.strips`).
    """
    fast = dtype == torch.float32
    decoding = inference_copy(model, dtype, channels_last=fast)
    side = model.downsample * 4
    grid = (-(-shape[0] // side), -(-shape[1] // side))
    rows = strip_rows_for(tuple(shape), strip_rows)
    x_hat = decoding.decompress(stream, grid, tuple(shape), strip_rows=rows)["x_hat"]
    return x_hat[0, 0].contiguous().numpy()
