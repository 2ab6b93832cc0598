"""Batch processing of large micrograph collections: per-tile jobs, Zarr output, Dask workers.

``run_batch(inputs, JOBS[name](...), model, "out.zarr", scheduler=None | "tcp://host:8786")``
computes latents, relevance maps or reconstructions of every tile, with memory bounded by a
block of tiles per worker, and continues an interrupted run where it stopped.
"""

from microcae.pipelines.batch.engine import BatchReport, BatchSettings, run_batch
from microcae.pipelines.batch.jobs import JOBS, TileJob

__all__ = ["JOBS", "BatchReport", "BatchSettings", "TileJob", "run_batch"]
