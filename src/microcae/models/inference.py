"""Run a trained CAE over whole micrographs of any size, tile by tile, with bounded memory."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch

from microcae.data.tiling import TileGrid, extract_tiles, stitch_tiles
from microcae.models.cae import CAE
from microcae.util.runtime import to_channels_last

DEFAULT_BATCH = 8


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
    model: CAE, pixels: np.ndarray, tile: int = 256, batch_size: int = DEFAULT_BATCH
) -> tuple[np.ndarray, TileGrid]:
    """Encode an (H, W) image in [0, 1] tile by tile.

    Returns
    -------
    latents, grid
        (T, C, tile/16, tile/16) float32 latents in ``grid.positions`` order, and the grid.
    """
    grid = micrograph_grid(pixels.shape, tile)
    encoder = to_channels_last(model.encoder.eval())
    side = tile // model.config.downsample
    latents = np.empty((len(grid), model.config.latent_channels, side, side), dtype=np.float32)
    for chunk, batch in tile_batches(pixels, grid, batch_size):
        latents[chunk] = encoder(to_channels_last(batch)).contiguous().numpy()
    return latents, grid


@torch.no_grad()
def decode_latents(
    model: CAE, latents: np.ndarray, grid: TileGrid, batch_size: int = DEFAULT_BATCH
) -> np.ndarray:
    """Decode (T, C, h, w) latents and stitch them into the (H, W) float32 image of ``grid``."""
    decoder = to_channels_last(model.decoder.eval())
    tiles = np.empty((len(grid), grid.tile, grid.tile), dtype=np.float32)
    for start in range(0, len(grid), batch_size):
        chunk = slice(start, min(start + batch_size, len(grid)))
        batch = torch.from_numpy(np.ascontiguousarray(latents[chunk], dtype=np.float32))
        tiles[chunk] = decoder(to_channels_last(batch))[:, 0].contiguous().numpy()
    return stitch_tiles(tiles, grid).astype(np.float32)


def reconstruct_micrograph(
    model: CAE, pixels: np.ndarray, tile: int = 256, batch_size: int = DEFAULT_BATCH
) -> np.ndarray:
    """Encode and decode an (H, W) image in [0, 1]; returns the (H, W) float32 reconstruction."""
    latents, grid = encode_micrograph(model, pixels, tile, batch_size)
    return decode_latents(model, latents, grid, batch_size)
