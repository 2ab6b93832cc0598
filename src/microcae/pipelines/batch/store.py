"""The Zarr store a batch run writes: one group per image, chunked by tile, with done markers.

Layout (Zarr format 3)::

    STORE.zarr/                 attrs["microcae"]: job, options, model fingerprint, tile, block
      <image key>/              attrs["source"]: path, shape, value range, file size and mtime
        <job array>             "image" jobs: (H, W) float32, chunks (tile, tile)
                                "tile" jobs: (rows, cols, *result) float32, chunks (1, 1, *result)
        done                    (block rows, block cols) uint8, chunks (1, 1): 1 once a block's
                                results are all written

A block's results are written before its marker, and Zarr replaces each chunk file atomically,
so after an interruption every block marked done is complete and any other is recomputed.
Different blocks never share a chunk, so workers on several machines may write concurrently.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import zarr

from microcae.pipelines.batch.jobs import TileJob
from microcae.pipelines.batch.sources import TileSource
from microcae.util.errors import MicrocaeError

STORE_FORMAT = "microcae.pipelines.batch/1"
DONE = "done"


def store_identity(job: TileJob, model_fingerprint: str, tile: int, block: int) -> dict[str, Any]:
    """Describe what a store must share with a run that continues it (JSON-ready)."""
    return {"format": STORE_FORMAT, "job": job.name, "options": job.options,
            "model": model_fingerprint, "tile": tile, "block": block}


def open_store(path: Path, identity: dict[str, Any]) -> zarr.Group:
    """Open (or create) a store for a run; refuse one written by a different run.

    Raises
    ------
    MicrocaeError
        If ``path`` holds something other than a store of this job, model and tiling.
    """
    if path.exists() and not (path / "zarr.json").exists():
        raise MicrocaeError(f"{path}: exists and is not a Zarr store")
    try:
        root = zarr.open_group(str(path), mode="a", zarr_format=3)
    except (ValueError, OSError, json.JSONDecodeError) as exc:
        raise MicrocaeError(f"{path}: not a readable Zarr store ({exc})") from None
    found = root.attrs.get("microcae")
    if found is None:
        root.attrs["microcae"] = identity
    elif found != identity:
        raise MicrocaeError(f"{path}: store was written by another run (job, options, model or "
                            f"tiling differ); choose a new --out")
    return root


def source_record(source: TileSource) -> dict[str, Any]:
    """JSON-ready description of an input image, including what identifies its file version."""
    stat = source.path.stat()
    return {"path": str(source.path.resolve()), "shape": list(source.shape),
            "dtype": source.source_dtype, "scaling": source.scaling,
            "value_range": list(source.value_range), "bytes": stat.st_size,
            "mtime_ns": stat.st_mtime_ns}


def block_counts(source: TileSource, tile: int, block: int) -> tuple[int, int]:
    """Count block rows and columns (a block is up to ``block`` × ``block`` tiles)."""
    rows, cols = source.grid(tile).counts
    return (math.ceil(rows / block), math.ceil(cols / block))


def prepare_image(root: zarr.Group, key: str, source: TileSource, job: TileJob,
                  result_shape: tuple[int, ...], tile: int, block: int) -> np.ndarray:
    """Create (or reopen) an image's group and arrays; return its (rows, cols) done markers.

    Raises
    ------
    MicrocaeError
        If the group exists but was made from another version of the image file.
    """
    record = source_record(source)
    if key in root:
        group = root[key]
        if group.attrs.get("source") != record:
            raise MicrocaeError(f"{source.path}: changed since it was first processed into this "
                                f"store; choose a new --out")
        return np.asarray(group[DONE][...])
    group = root.create_group(key, attributes={"source": record})
    rows, cols = source.grid(tile).counts
    if job.layout == "image":
        shape, chunks = source.shape, (tile, tile)
    else:
        shape, chunks = (rows, cols, *result_shape), (1, 1, *result_shape)
    group.create_array(job.array, shape=shape, chunks=chunks, dtype="float32", fill_value=np.nan)
    markers = block_counts(source, tile, block)
    group.create_array(DONE, shape=markers, chunks=(1, 1), dtype="uint8", fill_value=0)
    return np.zeros(markers, dtype=np.uint8)


def write_block(store: Path, key: str, job: TileJob, source: TileSource, tile: int,
                block_index: tuple[int, int], block: int, results: np.ndarray) -> None:
    """Write one block's per-tile results, then mark the block done.

    Parameters
    ----------
    results
        (tiles in the block, *result) float32, the block's tiles in row-major order.
    """
    group = zarr.open_group(str(store), path=key, mode="r+")
    array = group[job.array]
    rows, cols = block_tiles(source, tile, block_index, block)
    height, width = source.shape
    for result, (row, col) in zip(results, ((r, c) for r in rows for c in cols), strict=True):
        if job.layout == "tile":
            array[row, col] = result
        else:
            top, left = row * tile, col * tile
            bottom, right = min(top + tile, height), min(left + tile, width)
            array[top:bottom, left:right] = result[: bottom - top, : right - left]
    group[DONE][block_index] = 1


def block_tiles(source: TileSource, tile: int, block_index: tuple[int, int],
                block: int) -> tuple[range, range]:
    """Tile rows and columns of one block of the image's grid."""
    rows, cols = source.grid(tile).counts
    r0, c0 = block_index[0] * block, block_index[1] * block
    return range(r0, min(r0 + block, rows)), range(c0, min(c0 + block, cols))
