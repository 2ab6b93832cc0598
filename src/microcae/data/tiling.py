"""Cut micrographs into square tiles and stitch per-tile results back together."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import numpy as np

Remainder = Literal["drop", "pad"]


@dataclass(frozen=True)
class TileGrid:
    """Where the tiles of one image lie.

    Attributes
    ----------
    image_shape
        (H, W) of the original image in pixels.
    tile
        Tile side in pixels.
    stride
        Step between tile origins in pixels (``stride == tile``: no overlap).
    remainder
        ``"drop"``: border pixels that do not fill a whole tile are left out; ``"pad"``: the image
        is extended at the bottom and right by reflection so that every pixel is covered.
    """

    image_shape: tuple[int, int]
    tile: int = 256
    stride: int = 256
    remainder: Remainder = "pad"

    def __post_init__(self) -> None:
        if self.tile <= 0 or self.stride <= 0:
            raise ValueError("tile and stride must be positive")
        if self.remainder not in ("drop", "pad"):
            raise ValueError(f"remainder must be 'drop' or 'pad', not {self.remainder!r}")

    def _count(self, size: int) -> int:
        if self.remainder == "drop":
            return 0 if size < self.tile else (size - self.tile) // self.stride + 1
        return 1 if size <= self.tile else math.ceil((size - self.tile) / self.stride) + 1

    @property
    def counts(self) -> tuple[int, int]:
        """Number of tile rows and columns."""
        return (self._count(self.image_shape[0]), self._count(self.image_shape[1]))

    @property
    def padded_shape(self) -> tuple[int, int]:
        """(H, W) of the canvas the tiles cover (after reflect padding in ``"pad"`` mode)."""
        rows, cols = self.counts
        if self.remainder == "drop":
            return self.image_shape
        return ((rows - 1) * self.stride + self.tile, (cols - 1) * self.stride + self.tile)

    @property
    def positions(self) -> list[tuple[int, int]]:
        """Top-left (row, column) of every tile, row-major."""
        rows, cols = self.counts
        return [(r * self.stride, c * self.stride) for r in range(rows) for c in range(cols)]

    def __len__(self) -> int:
        rows, cols = self.counts
        return rows * cols


def pad_to_grid(pixels: np.ndarray, grid: TileGrid) -> np.ndarray:
    """Reflect-pad (H, W) ``pixels`` at the bottom and right to ``grid.padded_shape``."""
    height, width = grid.image_shape
    target_h, target_w = grid.padded_shape
    if (target_h, target_w) == (height, width):
        return pixels
    return np.pad(pixels, ((0, target_h - height), (0, target_w - width)), mode="symmetric")


def extract_tiles(pixels: np.ndarray, grid: TileGrid) -> np.ndarray:
    """Cut an (H, W) image into tiles.

    Returns
    -------
    np.ndarray
        (T, tile, tile) array of the image's dtype, T = ``len(grid)``, in ``grid.positions`` order.
    """
    if pixels.shape != grid.image_shape:
        raise ValueError(f"image shape {pixels.shape} does not match grid {grid.image_shape}")
    canvas = pad_to_grid(pixels, grid)
    size = grid.tile
    tiles = [canvas[y : y + size, x : x + size] for y, x in grid.positions]
    if not tiles:
        return np.empty((0, size, size), dtype=pixels.dtype)
    return np.stack(tiles)


def stitch_tiles(tiles: np.ndarray, grid: TileGrid) -> np.ndarray:
    """Put per-tile results back into image coordinates, averaging where tiles overlap.

    Parameters
    ----------
    tiles
        (T, tile, tile) array in ``grid.positions`` order.

    Returns
    -------
    np.ndarray
        (H, W) float64 array of the original ``grid.image_shape``; pixels no tile covers
        (``"drop"`` mode borders) are NaN. Without overlap (stride == tile) the only array
        allocated is the padded canvas (8 bytes per pixel).
    """
    if tiles.shape != (len(grid), grid.tile, grid.tile):
        raise ValueError(f"expected {(len(grid), grid.tile, grid.tile)} tiles, got {tiles.shape}")
    height, width = grid.image_shape
    size = grid.tile
    if grid.stride == grid.tile:  # no overlap: place the tiles, no sum and weight arrays
        placed = np.full(grid.padded_shape, np.nan, dtype=np.float64)
        for (y, x), tile in zip(grid.positions, tiles, strict=True):
            placed[y : y + size, x : x + size] = tile
        placed += 0.0  # -0.0 becomes 0.0, as in the sum below: the same bits either way
        return placed[:height, :width]
    total = np.zeros(grid.padded_shape, dtype=np.float64)
    weight = np.zeros(grid.padded_shape, dtype=np.float64)
    for (y, x), tile in zip(grid.positions, tiles, strict=True):
        total[y : y + size, x : x + size] += tile
        weight[y : y + size, x : x + size] += 1.0
    with np.errstate(invalid="ignore"):
        merged = total / weight
    return merged[:height, :width]
