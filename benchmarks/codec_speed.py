"""Encode and decode time of a whole micrograph with microcae's codec, against the matmul floor.

Prints a Markdown table: the median wall time (``--repeats`` runs after a warm-up) of
``compress_whole`` and ``decompress_whole`` (float64 synthesis, what ``microcae decode`` runs,
and float32) on a 2080×1542 image (the study's micrograph size; a real micrograph cropped or
tiled to it), and each time's ratio to a 2048² float32 matmul timed in the same run. The
project's goals: decode within 25× and encode within 50× the matmul time.

Usage: ``python benchmarks/codec_speed.py [--model codec-2] [--threads 2]``.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from microcae.data.images import read_micrograph
from microcae.models import load_model
from microcae.models.inference import compress_whole, decompress_whole
from microcae.util.runtime import configure_allocator

SAMPLE = Path(__file__).parents[1] / "src" / "microcae" / "assets" / "samples" / "aisi1045_core.png"
SHAPE = (1542, 2080)


def median_seconds(step: Callable[[], object], repeats: int) -> float:
    """Median wall seconds of ``step()`` over ``repeats`` calls after one warm-up."""
    step()
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        step()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def study_sized_image() -> np.ndarray:
    """(1542, 2080) float32 image: the bundled sample, mirrored to the study's size."""
    pixels = read_micrograph(SAMPLE).pixels
    reps = (-(-SHAPE[0] // pixels.shape[0]), -(-SHAPE[1] // pixels.shape[1]))
    tiled = np.pad(pixels, [(0, (r - 1) * s) for r, s in zip(reps, pixels.shape, strict=True)],
                   mode="symmetric")
    return np.ascontiguousarray(tiled[: SHAPE[0], : SHAPE[1]])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="codec-2", help="bundled name or model file")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    configure_allocator()
    model = load_model(args.model)
    image = study_sized_image()
    a, b = torch.rand(2048, 2048), torch.rand(2048, 2048)
    floor = median_seconds(lambda: torch.mm(a, b), 7)
    stream = compress_whole(model, image)
    rows = [
        ("encode (compress_whole)", median_seconds(lambda: compress_whole(model, image),
                                                   args.repeats), 50),
        ("decode, float64 synthesis (microcae decode)",
         median_seconds(lambda: decompress_whole(model, stream, SHAPE), args.repeats), 25),
        ("decode, float32 synthesis",
         median_seconds(lambda: decompress_whole(model, stream, SHAPE, torch.float32),
                        args.repeats), 25),
    ]
    print(f"{args.model} on a {SHAPE[1]}x{SHAPE[0]} image, {args.threads} threads, "
          f"{8 * len(stream) / image.size:.3f} bpp; 2048² matmul {floor * 1e3:.1f} ms\n")
    print("| step | seconds | × matmul | goal |")
    print("|---|---:|---:|---:|")
    for name, seconds, goal in rows:
        print(f"| {name} | {seconds:.2f} | {seconds / floor:.0f} | ≤ {goal} |")


if __name__ == "__main__":
    main()
