"""Run a per-tile job over a collection of micrographs on local threads or a Dask cluster.

Work is cut into blocks of up to ``block`` × ``block`` tiles of one image. Each block is one task:
it reads its tiles from disk (see :mod:`microcae.pipelines.batch.sources`), runs the job in
batches, writes the results into the Zarr store and marks the block done (see
:mod:`microcae.pipelines.batch.store`). A
task holds one block of tiles and results, whatever the image size, and a restarted run skips
the blocks already marked done. Each block is computed the same way on every run, so a run
interrupted and restarted writes the same bytes as an uninterrupted one.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from microcae.data.images import find_images
from microcae.models.base import WHOLE_MODEL, MicrocaeModel
from microcae.models.inference import inference_copy
from microcae.pipelines.batch.jobs import TileJob
from microcae.pipelines.batch.scheduling import run_tasks
from microcae.pipelines.batch.sources import TileSource, open_source
from microcae.pipelines.batch.store import (
    block_tiles,
    open_store,
    prepare_image,
    store_identity,
    write_block,
)
from microcae.util.errors import MicrocaeError


@dataclass(frozen=True)
class BatchSettings:
    """How a batch run cuts and schedules its work.

    Attributes
    ----------
    tile
        Tile side in pixels (a multiple of the model's downsampling factor).
    block
        A task covers up to ``block`` × ``block`` tiles of one image; it holds that many tiles
        (and results) in memory at a time.
    batch_size
        Tiles per model call inside a task.
    workers
        Threads of the local scheduler (ignored with a Dask cluster: it has its own workers).
    torch_threads
        If set, torch's intra-op threads in every process that runs tasks.
    """

    tile: int = 256
    block: int = 4
    batch_size: int = 8
    workers: int = 2
    torch_threads: int | None = None


@dataclass(frozen=True)
class BatchReport:
    """What a run did: images and blocks seen, blocks skipped as done, tiles computed."""

    store: Path
    images: int
    blocks: int
    skipped: int
    tiles: int
    seconds: float

    @property
    def tiles_per_second(self) -> float:
        """Tiles computed per second of wall time (0 if nothing was computed)."""
        return self.tiles / self.seconds if self.tiles and self.seconds > 0 else 0.0


def image_keys(inputs: Sequence[str | Path]) -> dict[str, Path]:
    """Name every input image by its path relative to the folder given (or its file name).

    Raises
    ------
    MicrocaeError
        If inputs are missing, hold no images, or two images would get the same name.
    """
    keys: dict[str, Path] = {}
    for item in inputs:
        item = Path(item)
        for path in find_images([item]):
            key = path.relative_to(item).as_posix() if item.is_dir() else path.name
            if key in keys:
                raise MicrocaeError(f"{path} and {keys[key]} would share the name {key!r} in "
                                    f"the store; pass their folder instead")
            keys[key] = path
    return keys


def run_block(model: MicrocaeModel, job: TileJob, source: TileSource, store: Path, key: str,
              block_index: tuple[int, int], settings: BatchSettings) -> int:
    """Compute and store one block of tiles (the unit of work sent to a worker).

    Parameters
    ----------
    model
        Eval-mode, channels-last autoencoder (shared; not modified).
    job
        What to compute; it receives (B, 1, tile, tile) float32 tiles in [0, 1],
        B ≤ ``settings.batch_size``.
    source
        The image the block belongs to.
    store, key
        Zarr store path and the image's group name in it.
    block_index
        (row, column) of the block in the image's grid of blocks.
    settings
        Tiling and batch sizes of the run.

    Returns
    -------
    int
        Number of tiles computed (at most ``settings.block ** 2``).
    """
    if settings.torch_threads:
        torch.set_num_threads(settings.torch_threads)
    rows, cols = block_tiles(source, settings.tile, block_index, settings.block)
    positions = [(r * settings.tile, c * settings.tile) for r in rows for c in cols]
    tiles = source.read_tiles(positions, settings.tile)
    parts = []
    for start in range(0, len(tiles), settings.batch_size):
        batch = torch.from_numpy(tiles[start : start + settings.batch_size])[:, None]
        parts.append(job.compute(model, batch))
    write_block(store, key, job, source, settings.tile, block_index, settings.block,
                np.concatenate(parts))
    return len(positions)


def run_batch(
    inputs: Sequence[str | Path],
    job: TileJob,
    model: MicrocaeModel,
    out: str | Path,
    settings: BatchSettings | None = None,
    scheduler: str | None = None,
    progress: bool = True,
) -> BatchReport:
    """Run ``job`` on every tile of every input image and store the results in a Zarr store.

    Parameters
    ----------
    inputs
        Image files and/or folders (searched recursively); each image becomes a group named by
        its path relative to the folder given (or its file name).
    job
        What to compute per tile (:data:`microcae.pipelines.batch.jobs.JOBS`).
    model
        The autoencoder; put in eval mode and channels-last memory format (values unchanged)
        and sent to each Dask worker once.
    out
        Zarr store ``NAME.zarr`` (created, or continued if an earlier run of the same job, model
        and tiling was interrupted). Inputs, model and store must be on a file system every
        worker sees.
    settings
        Tiling and scheduling (default :class:`BatchSettings`).
    scheduler
        ``None``: threads of this process; otherwise the address of a Dask scheduler
        (``tcp://host:8786``).
    progress
        Show a progress bar of blocks on stderr.

    Returns
    -------
    BatchReport
        Counts and wall time of this run (skipped blocks were done by an earlier run).

    Raises
    ------
    MicrocaeError
        Bad inputs, a tile size the model cannot take, a store of another run, an input file
        changed since it entered the store, an unreachable scheduler.
    """
    settings = settings or BatchSettings()
    if settings.tile % model.downsample:
        raise MicrocaeError(f"tile side {settings.tile} is not a multiple of the model's "
                            f"downsampling factor {model.downsample}")
    started = time.perf_counter()
    out = Path(out)
    model = inference_copy(model)
    root = open_store(out, store_identity(job, model.fingerprint(WHOLE_MODEL), settings.tile,
                                          settings.block))
    result_shape = job.result_shape(model, settings.tile)
    keys = image_keys(inputs)
    tasks: list[Callable[[MicrocaeModel], int]] = []
    blocks = 0
    for key, path in keys.items():
        source = open_source(path)
        done = prepare_image(root, key, source, job, result_shape, settings.tile, settings.block)
        blocks += done.size
        for index in zip(*np.nonzero(done == 0), strict=True):
            block_index = (int(index[0]), int(index[1]))
            tasks.append(functools.partial(run_block, job=job, source=source, store=out, key=key,
                                           block_index=block_index, settings=settings))
    tiles = run_tasks(tasks, model, scheduler, settings.workers, progress, f"{job.name} blocks")
    return BatchReport(out, len(keys), blocks, blocks - len(tasks), sum(tiles),
                       time.perf_counter() - started)
