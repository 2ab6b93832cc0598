"""Encode and decode time and memory of a whole micrograph with microcae's codec, in strips or not.

Prints a Markdown table: the median wall time (``--repeats`` runs after a warm-up) of
``compress_whole`` and ``decompress_whole`` (float64 synthesis, what ``microcae decode`` runs,
and float32) on a 2080×1542 image (the study's micrograph size; a real micrograph mirrored to
it), each in one pass and in the automatic strips (:func:`~microcae.models.inference.
strip_rows_for`), with each time's ratio to a 2048² float32 matmul timed in the same run and
the rise of the peak resident set during the warm-up run (Linux: the peak is reset through
``/proc/self/clear_refs`` before each step). ``--unchunked`` adds the float64 synthesis as it
ran before strips (the whole decoder in one call: whole-layer im2col matrices); ``--refine N``
adds ``compress_whole`` with N steps of latent refinement (opt-in, no goal; the table then also
gives the time per step). The project's goals: decode within 25× and encode within 50× the
matmul time.

Usage: ``python benchmarks/codec_speed.py [--model codec-2] [--threads 1] [--unchunked]
[--refine 10]``.
"""

from __future__ import annotations

import argparse
import ctypes
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from microcae.data.images import read_micrograph
from microcae.models import load_model
from microcae.models.hyperprior import STRIDE
from microcae.models.inference import (
    compress_whole,
    decompress_whole,
    inference_copy,
    strip_rows_for,
)
from microcae.models.refinement import Refinement
from microcae.util.runtime import configure_allocator
from microcae_testing.timing import matmul_seconds, median_seconds

SAMPLE = Path(__file__).parents[1] / "src" / "microcae" / "assets" / "samples" / "aisi1045_core.png"
SHAPE = (1542, 2080)
CLEAR_REFS = Path("/proc/self/clear_refs")


def _resident(field: str) -> int:
    """``VmRSS`` or ``VmHWM`` of this process in bytes."""
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) * 1024 for line in status if line.startswith(field))


def peak_rise(step: Callable[[], object]) -> float:
    """Run ``step()`` once; return how far the peak resident set rose above its start (bytes).

    Freed heap is handed back first (``malloc_trim``), so the step's pages are its own. NaN
    where ``/proc/self/clear_refs`` is missing (not Linux).
    """
    if not CLEAR_REFS.exists():
        step()
        return float("nan")
    ctypes.CDLL(None).malloc_trim(0)
    CLEAR_REFS.write_text("5")  # reset VmHWM to the current resident set
    before = _resident("VmRSS")
    step()
    return float(_resident("VmHWM") - before)


def study_sized_image() -> np.ndarray:
    """(1542, 2080) float32 image: the bundled sample, mirrored to the study's size."""
    pixels = read_micrograph(SAMPLE).pixels
    reps = (-(-SHAPE[0] // pixels.shape[0]), -(-SHAPE[1] // pixels.shape[1]))
    tiled = np.pad(pixels, [(0, (r - 1) * s) for r, s in zip(reps, pixels.shape, strict=True)],
                   mode="symmetric")
    return np.ascontiguousarray(tiled[: SHAPE[0], : SHAPE[1]])


def unchunked_decode(model: torch.nn.Module, stream: bytes) -> np.ndarray:
    """The float64 decoding before strips: the whole decoder in one call (whole-layer im2col)."""
    decoding = inference_copy(model, torch.float64, channels_last=False)
    grid = tuple(-(-side // STRIDE) for side in SHAPE)
    with torch.no_grad():
        decoded = decoding.decode_symbols(stream, grid)
        y_hat = decoded["y"].double() + decoded["mean"].double() / 16
        x_hat = decoding.decoder(y_hat)[0, 0, : SHAPE[0], : SHAPE[1]].clamp(0.0, 1.0)
    return x_hat.contiguous().numpy()


def steps(model: torch.nn.Module, image: np.ndarray, stream: bytes, unchunked: bool,
          refine: int) -> list[tuple[str, int, Callable[[], object], int | None]]:
    """(name, strip rows, call, goal or None) of every measured step."""
    whole = -(-SHAPE[0] // STRIDE) * STRIDE  # the padded height: one pass
    strips = strip_rows_for(SHAPE)
    rows = [
        ("encode (compress_whole)", whole, lambda: compress_whole(model, image, whole), 50),
        ("encode (compress_whole)", strips, lambda: compress_whole(model, image, strips), 50),
    ]
    if refine:
        rows.append((f"encode with {refine} refinement steps", strips,
                     lambda: compress_whole(model, image, strips, Refinement(steps=refine)),
                     None))
    if unchunked:
        rows.append(("decode, float64, whole layers (before strips)", whole,
                     lambda: unchunked_decode(model, stream), 25))
    for dtype, name in ((torch.float64, "decode, float64 synthesis (microcae decode)"),
                        (torch.float32, "decode, float32 synthesis")):
        for rows_per_strip in (whole, strips):
            rows.append((name, rows_per_strip, lambda d=dtype, r=rows_per_strip:
                         decompress_whole(model, stream, SHAPE, d, strip_rows=r), 25))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="codec-2", help="bundled name or model file")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--unchunked", action="store_true",
                        help="also time the float64 decoding as it ran before strips")
    parser.add_argument("--refine", type=int, default=0,
                        help="also time encoding with this many refinement steps")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    configure_allocator()
    model = load_model(args.model)
    image = study_sized_image()
    floor = matmul_seconds()
    stream = compress_whole(model, image)
    print(f"{args.model} on a {SHAPE[1]}x{SHAPE[0]} image, {args.threads} thread(s), "
          f"{8 * len(stream) / image.size:.3f} bpp; 2048² matmul {floor * 1e3:.1f} ms\n")
    print("| step | rows per strip | seconds | × matmul | peak RSS rise (MB) | goal |")
    print("|---|---:|---:|---:|---:|---:|")
    times: dict[tuple[str, int], float] = {}
    for name, strip, step, goal in steps(model, image, stream, args.unchunked, args.refine):
        rise = peak_rise(step)
        seconds = median_seconds(step, args.repeats, warm_up=False)  # peak_rise ran it
        times[name, strip] = seconds
        print(f"| {name} | {strip} | {seconds:.2f} | {seconds / floor:.0f} | "
              f"{rise / 2**20:.0f} | {'—' if goal is None else f'≤ {goal}'} |", flush=True)
    if args.refine:
        strips = strip_rows_for(SHAPE)  # both timed in the automatic strips
        per_step = (times[f"encode with {args.refine} refinement steps", strips]
                    - times["encode (compress_whole)", strips]) / args.refine
        print(f"\none refinement step: {per_step:.2f} s = {per_step / floor:.1f}× the matmul, "
              f"{per_step / (image.size / 1e6):.3f} s per Mpx")


if __name__ == "__main__":
    main()
