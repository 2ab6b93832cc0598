"""Scaling of ``microcae batch``: tiles/s on 1 vs 2 Dask workers, peak memory vs image size.

Prints two Markdown tables:

* throughput: the study's encoder (bundled model) over a mosaic of real 256×256 tiles, on a Dask
  ``LocalCluster`` of 1 and 2 worker processes (1 thread each, torch 1 thread each); median
  tiles/s over ``--repeats`` runs, each into a fresh Zarr store;
* memory: peak resident memory (``ru_maxrss``) of a fresh process that encodes, and of one that
  maps relevance (the study's complex-step relevance by its fastest exact engine, per 256² tile
  as the batch job stores it), both with the study's encoder (bundled model), square TIFFs of
  growing side, next to the size of the image as float32 and the process's memory after imports
  (baseline). Images are read tile by tile, so the peak should not follow the image size.
  Relevance takes about a second per tile on 2 cores, so it is measured up to
  ``--saliency-max-side`` (default 4000 px; larger sides print "—").

Usage: ``python benchmarks/scale.py [--tiles 128] [--repeats 3] [--sides 1000 2000 4000 8000]
[--saliency-max-side 4000] [--full]`` (``--full`` adds the 20,000 × 20,000 image; about 15
minutes on 2 cores, plus the relevance maps).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from microcae_testing.mosaic import write_mosaic_tiff

MEASURE = """
import json, resource, sys, time
from pathlib import Path
import torch
from microcae.pipelines.batch import JOBS, BatchSettings, run_batch
from microcae.models.registry import load_model
name, image, out = sys.argv[1], Path(sys.argv[2]), Path(sys.argv[3])
model = load_model(None)  # the study's encoder for both jobs
settings = BatchSettings(tile=256, block=2, batch_size=4, workers=2)
baseline = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
started = time.perf_counter()
run_batch([image], JOBS[name](), model, out / f"{name}.zarr", settings, progress=False)
seconds = time.perf_counter() - started
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
print(json.dumps({"baseline_mb": baseline, "peak_mb": peak, "seconds": seconds}))
"""


def throughput(workers: int, tiles: int, repeats: int, work: Path) -> float:
    """Median tiles/s of encoding ``tiles`` real tiles on a LocalCluster of ``workers``."""
    from distributed import LocalCluster

    from microcae.models.registry import load_model
    from microcae.pipelines.batch import JOBS, BatchSettings, run_batch

    side = 256 * math.isqrt(tiles)
    image = write_mosaic_tiff(work / f"mosaic-{side}.tif", (side, side))
    model = load_model(None)
    settings = BatchSettings(tile=256, block=2, batch_size=4, torch_threads=1)
    rates = []
    with LocalCluster(n_workers=workers, threads_per_worker=1, processes=True,
                      dashboard_address=None) as cluster:
        for repeat in range(repeats + 1):  # the first run warms the workers up
            out = work / f"throughput-{workers}-{repeat}.zarr"
            report = run_batch([image], JOBS["encode"](), model, out, settings,
                               scheduler=cluster.scheduler_address, progress=False)
            if repeat:
                rates.append(report.tiles_per_second)
    return statistics.median(rates)


def memory(side: int, work: Path, saliency: bool) -> dict[str, dict[str, float]]:
    """Peak RSS of encoding, and of mapping, a ``side`` × ``side`` TIFF (a fresh process each)."""
    image = write_mosaic_tiff(work / f"square-{side}.tif", (side, side))
    rows = {}
    for name in ("encode", "saliency") if saliency else ("encode",):
        out = work / f"memory-{side}-{name}"
        out.mkdir()
        done = subprocess.run([sys.executable, "-c", MEASURE, name, str(image), str(out)],
                              capture_output=True, text=True, check=True)
        rows[name] = json.loads(done.stdout.splitlines()[-1])
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tiles", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--sides", type=int, nargs="+", default=[1000, 2000, 4000, 8000])
    parser.add_argument("--saliency-max-side", type=int, default=4000,
                        help="largest side whose relevance maps are measured")
    parser.add_argument("--full", action="store_true", help="add the 20,000 px square image")
    args = parser.parse_args()
    sides = [*args.sides, 20000] if args.full else args.sides
    with tempfile.TemporaryDirectory() as folder:
        work = Path(folder)
        started = time.perf_counter()
        rates = {n: throughput(n, args.tiles, args.repeats, work) for n in (1, 2)}
        print(f"\n### Throughput: study encoder, {math.isqrt(args.tiles) ** 2} tiles of 256², "
              f"Dask LocalCluster (median of {args.repeats}; {os.cpu_count()} cores, load "
              f"average {os.getloadavg()[0]:.1f} at the start)\n")
        print("| workers | tiles/s | speed-up |\n|---:|---:|---:|")
        for n, rate in rates.items():
            print(f"| {n} | {rate:.1f} | {rate / rates[1]:.2f} |")
        print("\n### Peak memory vs image size (fresh process per job; study encoder, bundled "
              "model; tile 256, block 2×2, 2 threads)\n")
        print("| image | float32 image MB | encode: peak MB (over baseline) | encode s "
              "| complex-step relevance (study encoder): peak MB (over baseline) | relevance s "
              "|\n|---|---:|---:|---:|---:|---:|")
        for side in sides:
            rows = memory(side, work, side <= args.saliency_max_side)
            cells = [f"{r['peak_mb']:.0f} (+{r['peak_mb'] - r['baseline_mb']:.0f}) "
                     f"| {r['seconds']:.1f}" if r else "— | —"
                     for r in (rows["encode"], rows.get("saliency"))]
            print(f"| {side}×{side} | {side * side * 4 / 2**20:.0f} | {cells[0]} | {cells[1]} |")
        print(f"\n(total {time.perf_counter() - started:.0f} s)")


if __name__ == "__main__":
    main()
