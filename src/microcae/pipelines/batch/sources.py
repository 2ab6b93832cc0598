"""Read micrographs tile by tile without loading whole images (large TIFFs stay on disk).

A greyscale TIFF is opened lazily: uncompressed contiguous data as a memory map, tiled or
striped (compressed) data through tifffile's Zarr view, so reading one tile touches only the
strips or TIFF tiles under it. Other files (PNG, JPEG, colour TIFF) are read whole by
:func:`microcae.data.images.read_micrograph`; they are the size of one camera frame.
Either way a tile comes out exactly as :func:`microcae.data.tiling.extract_tiles` would cut it
from the image read whole and scaled to [0, 1].
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import tifffile
import zarr

from microcae.data.images import TIFF_MAGIC, read_micrograph
from microcae.data.tiling import TileGrid
from microcae.util.errors import MicrocaeError

_SCAN_ROWS = 256
"""Rows per band of the streaming minimum/maximum pass over 16-bit and float images."""


@dataclass(frozen=True)
class TileSource:
    """One micrograph, described well enough to read any of its tiles in another process.

    Attributes
    ----------
    path
        The image file.
    shape
        (H, W) in pixels.
    source_dtype
        NumPy dtype name of the stored samples (``"uint8"``, ``"uint16"``, ...).
    scaling
        ``"full"`` (the dtype's range) or ``"range"`` (the image's minimum and maximum).
    value_range
        ``(low, high)`` in stored units mapped to ``(0, 1)`` (the rule of
        :func:`microcae.data.images.micrograph_from_array`).
    lazy
        True if tiles are read from disk one by one (a greyscale TIFF); otherwise each read
        loads the file whole with ``read_micrograph``.
    """

    path: Path
    shape: tuple[int, int]
    source_dtype: str
    scaling: str
    value_range: tuple[float, float]
    lazy: bool

    def grid(self, tile: int) -> TileGrid:
        """Non-overlapping ``tile``-sided grid covering the image (reflect-padded border)."""
        return TileGrid(self.shape, tile=tile, stride=tile, remainder="pad")

    def read_tiles(self, positions: list[tuple[int, int]], tile: int) -> np.ndarray:
        """Read the tiles whose top-left corners are ``positions``.

        Returns
        -------
        np.ndarray
            (len(positions), tile, tile) float32 in [0, 1]; pixels beyond the bottom and right
            edges are mirrored as in :func:`microcae.data.tiling.pad_to_grid`.
        """
        out = np.empty((len(positions), tile, tile), dtype=np.float32)
        if not self.lazy:
            pixels = read_micrograph(self.path).pixels
            for i, (top, left) in enumerate(positions):
                out[i] = _mirrored_window(pixels, top, left, tile)
            return out
        low, high = self.value_range
        with _open_lazy(self.path) as pixels:
            for i, (top, left) in enumerate(positions):
                window = _mirrored_window(pixels, top, left, tile).astype(np.float64)
                out[i] = np.clip((window - low) / (high - low), 0.0, 1.0)
        return out


def _mirror(indices: np.ndarray, size: int) -> np.ndarray:
    """Map canvas indices to source indices of a symmetric (edge-repeating) extension."""
    folded = indices % (2 * size)
    return np.where(folded < size, folded, 2 * size - 1 - folded)


def _mirrored_window(pixels: Any, top: int, left: int, tile: int) -> np.ndarray:
    """Read a (tile, tile) window of a 2-D array-like, mirrored past its bottom/right edges."""
    rows = _mirror(np.arange(top, top + tile), pixels.shape[0])
    cols = _mirror(np.arange(left, left + tile), pixels.shape[1])
    box = np.asarray(pixels[rows.min() : rows.max() + 1, cols.min() : cols.max() + 1])
    return box[np.ix_(rows - rows.min(), cols - cols.min())]


def _is_tiff(path: Path) -> bool:
    with open(path, "rb") as handle:
        return handle.read(4) in TIFF_MAGIC


@contextlib.contextmanager
def _open_lazy(path: Path) -> Iterator[Any]:
    """Yield the first image of a TIFF as a 2-D array-like that reads from disk on slicing."""
    with tifffile.TiffFile(path) as tiff:
        memmappable = tiff.pages[0].is_memmappable
    if memmappable:
        yield tifffile.memmap(path, mode="r")
        return
    store = tifffile.imread(path, aszarr=True)
    try:
        yield zarr.open_array(store, mode="r")
    finally:
        store.close()


def _lazy_shape(path: Path) -> tuple[int, ...] | None:
    """Shape of a TIFF's first series if it is a 2-D greyscale image, else ``None``."""
    try:
        with tifffile.TiffFile(path) as tiff:
            series = tiff.series[0]
            return tuple(series.shape) if len(series.shape) == 2 else None
    except (tifffile.TiffFileError, OSError, ValueError, IndexError):
        return None


def _value_range(path: Path, dtype: np.dtype, shape: tuple[int, int]) -> tuple[float, float]:
    """Scaling of ``micrograph_from_array(..., scaling="auto")``, found by streaming bands."""
    if dtype == np.uint8:
        return (0.0, 255.0)
    if dtype == np.bool_:
        return (0.0, 1.0)
    low, high = np.inf, -np.inf
    with _open_lazy(path) as pixels:
        for top in range(0, shape[0], _SCAN_ROWS):
            band = np.asarray(pixels[top : top + _SCAN_ROWS], dtype=np.float64)
            if not np.all(np.isfinite(band)):
                raise MicrocaeError(f"{path}: the image contains NaN or infinite values")
            low, high = min(low, float(band.min())), max(high, float(band.max()))
    if low == high:
        raise MicrocaeError(f"{path}: the image is constant (every pixel is {low:g})")
    return (low, high)


def open_source(path: str | Path) -> TileSource:
    """Describe an image for tile-wise reading (greyscale TIFFs lazily, others whole).

    Parameters
    ----------
    path
        Micrograph file in any format :func:`microcae.data.images.read_micrograph` reads.

    Returns
    -------
    TileSource
        Shape and scaling; for a 16-bit or float TIFF this streams the image once (a band of
        rows at a time) to find its minimum and maximum.

    Raises
    ------
    MicrocaeError
        For missing or unreadable files and the content errors of ``read_micrograph``.
    """
    path = Path(path)
    if path.is_file() and _is_tiff(path):
        shape = _lazy_shape(path)
        if shape is not None:
            with tifffile.TiffFile(path) as tiff:
                dtype = tiff.series[0].dtype
            size = (int(shape[0]), int(shape[1]))
            scaling = "full" if dtype in (np.uint8, np.bool_) else "range"
            return TileSource(path, size, np.dtype(dtype).name, scaling,
                              _value_range(path, dtype, size), lazy=True)
    image = read_micrograph(path)
    return TileSource(path, image.shape, image.source_dtype, image.scaling, image.value_range,
                      lazy=False)
