"""Large greyscale TIFFs built from the real micrograph tiles bundled with microcae.

Shared by ``tests/test_batch.py`` and ``benchmarks/scale.py``. The image is written tile by tile
(never whole in memory), each 256×256 tile a real sample tile turned and flipped by its position.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import tifffile

from microcae.models.registry import BUNDLED_MODEL

SAMPLES = BUNDLED_MODEL.parent / "samples"
TILE = 256


def real_tiles() -> list[np.ndarray]:
    """Every whole 256×256 uint8 tile of the bundled sample micrographs."""
    from microcae.data.images import read_micrograph

    tiles = []
    for path in sorted(SAMPLES.glob("*.png")):
        pixels = read_micrograph(path).as_uint8()
        for top in range(0, pixels.shape[0] - TILE + 1, TILE):
            for left in range(0, pixels.shape[1] - TILE + 1, TILE):
                tiles.append(pixels[top : top + TILE, left : left + TILE])
    return tiles


def _mosaic_tiles(shape: tuple[int, int]) -> Iterator[np.ndarray]:
    tiles = real_tiles()
    rows, cols = -(-shape[0] // TILE), -(-shape[1] // TILE)
    for r in range(rows):
        for c in range(cols):
            tile = np.rot90(tiles[(r * 7 + c * 3) % len(tiles)], k=(r + c) % 4)
            yield np.ascontiguousarray(tile[:, ::-1] if (r * c) % 2 else tile)


def write_mosaic_tiff(path: Path, shape: tuple[int, int]) -> Path:
    """Write an (H, W) uint8 TIFF stored in 256×256 TIFF tiles, zlib-compressed."""
    tifffile.imwrite(path, _mosaic_tiles(shape), shape=shape, dtype=np.uint8,
                     tile=(TILE, TILE), compression="zlib")
    return path
