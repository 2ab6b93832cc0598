"""Cost of every exact relevance engine on one 256x256 tile, against a matmul floor beside it.

The machine is shared, so absolute times are noisy: every engine runs in its own fresh process
(its peak resident memory ``ru_maxrss`` is its own) and, in that process, a 2048² float32 matrix
product is timed before and after the engine (median of both sets): the engine's time is
printed as a multiple of that floor. Engines go through the Python API (``relevance()``, which
sets up the allocator itself, as the command line does). The literal complex step (65,536
passes) is timed on its first ``--naive-pixels`` pixels and extrapolated; the obvious peer,
``torch.func.jacrev`` then column norms, on ``--jacrev-rows`` of the latent values (2,048 for
the study's encoder) and extrapolated; with ``--forward-classes``, the forward engines on that
many of their colour classes (passes) and extrapolated; all are marked so. Every map is
compared with the ``vjp`` map (float32, on the pixels computed).

    .venv/bin/python benchmarks/saliency.py [--model M] [--image PNG] [--threads 2]
                                            [--repeats R] [--forward-classes K]
                                            [--micrograph] [--profile]

``--model codec-2`` maps the analysis transform of microcae's codec (any bundled name or
model file works: the encoder of any kind).

``--micrograph`` also maps the whole micrograph (2080×1542 by default) in whole mode (the
whole latent, no tiles) and in the study's tile mode, with peak memory; ``--profile`` prints
where ``vjp``'s time goes on a tile (torch profiler, self time per operator).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from microcae.data.images import read_micrograph
from microcae.models.cae import CAE
from microcae.models.registry import BUNDLED_MODEL, load_model
from microcae.saliency import relevance
from microcae.saliency.engines import passes, reverse_macs
from microcae.saliency.footprint import layer_macs
from microcae.saliency.patches import patch_macs
from microcae.saliency.registry import fastest_exact

DEFAULT_IMAGE = (Path(__file__).resolve().parents[2] / "shared" / "micrographs"
                 / "aisi1045_decarb_optical" / "1a1str.png")
ENGINES = ["vjp", "patches", "complex-step-coloured", "jvp", "complex-step-naive", "jacrev"]
FORWARD = ("complex-step-coloured", "jvp")
FLOOR_SIZE = 2048


def load_tile(image: Path, top: int, left: int) -> torch.Tensor:
    pixels = read_micrograph(image).pixels
    tile = np.ascontiguousarray(pixels[top : top + 256, left : left + 256])
    return torch.from_numpy(tile)[None, None]


def encoder_for(model: str | None) -> torch.nn.Module:
    if model is None and not BUNDLED_MODEL.is_file():
        torch.manual_seed(0)
        return CAE().encoder.eval()
    return load_model(model).encoder


def matmul_floor(runs: int = 7) -> list[float]:
    """Times of a 2048² float32 matrix product (the reverse-mode work of a tile, ≈ 8.6 GMAC)."""
    a, b = torch.randn(FLOOR_SIZE, FLOOR_SIZE), torch.randn(FLOOR_SIZE, FLOOR_SIZE)
    a @ b
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        a @ b
        times.append(time.perf_counter() - start)
    return times


def jacrev_rows(encoder: torch.nn.Module, x: torch.Tensor, rows: int) -> torch.Tensor:
    """Column norms of the first ``rows`` latent values' Jacobian rows (the obvious peer)."""

    def first_values(z: torch.Tensor) -> torch.Tensor:
        return encoder(z).flatten()[:rows]

    jac = torch.func.jacrev(first_values, chunk_size=32)(x)  # (rows, 1, 1, H, W)
    return jac.reshape(rows, -1).norm(dim=0).view(x.shape[2:])


def run_engine(args: argparse.Namespace, encoder: torch.nn.Module, x: torch.Tensor
               ) -> torch.Tensor:
    if args.engine == "jacrev":
        return jacrev_rows(encoder, x, args.jacrev_rows)
    if args.engine == "complex-step-naive":
        return relevance(encoder, x, args.engine, limit=args.naive_pixels)[0]
    if args.engine in FORWARD and args.forward_classes:
        return relevance(encoder, x, args.engine, limit=args.forward_classes)[0]
    return relevance(encoder, x, args.engine)[0]


def child(args: argparse.Namespace) -> None:
    if args.threads:
        torch.set_num_threads(args.threads)
    encoder = encoder_for(args.model)
    x = load_tile(args.image, args.top, args.left)
    floor = matmul_floor()
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    times, result = [], None
    for _ in range(args.repeats):
        start = time.perf_counter()
        result = run_engine(args, encoder, x)
        times.append(time.perf_counter() - start)
    floor += matmul_floor()
    np.save(args.save, result.detach().numpy())
    print(json.dumps({
        "seconds": statistics.median(times), "runs": len(times),
        "floor": statistics.median(floor),
        "rss_before_mb": rss_before / 1024,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "threads": torch.get_num_threads(),
    }))


def micrograph_child(args: argparse.Namespace) -> None:
    from microcae.saliency.maps import micrograph_relevance

    if args.threads:
        torch.set_num_threads(args.threads)
    encoder = encoder_for(args.model)
    pixels = read_micrograph(args.image).pixels
    floor = matmul_floor()
    start = time.perf_counter()
    result = micrograph_relevance(encoder, pixels, mode=args.mode)
    seconds = time.perf_counter() - start
    floor += matmul_floor()
    print(json.dumps({"seconds": seconds, "floor": statistics.median(floor),
                      "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                      "shape": list(pixels.shape), "kinks": result.kink_pixels}))


def run_child(args: argparse.Namespace, extra: list[str]) -> dict:
    command = [sys.executable, __file__, "--image", str(args.image), "--top", str(args.top),
               "--left", str(args.left), "--naive-pixels", str(args.naive_pixels),
               "--jacrev-rows", str(args.jacrev_rows), "--threads", str(args.threads),
               "--forward-classes", str(args.forward_classes), *extra]
    if args.model:
        command += ["--model", args.model]
    done = subprocess.run(command, check=True, capture_output=True, text=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def estimates(encoder: torch.nn.Module, x: torch.Tensor, counts: dict[str, int]
              ) -> dict[str, float | None]:
    """Estimated multiply-adds per tile: the engines' own estimates, else passes × one pass."""
    dense = sum(layer_macs(encoder, x))
    guesses: dict[str, float | None] = {engine: count * dense for engine, count in counts.items()}
    guesses.update(vjp=reverse_macs(encoder, x), patches=patch_macs(encoder, x))
    return guesses


def profile(args: argparse.Namespace) -> None:
    """Print the operators that take the fastest engine's time on one tile (self CPU time)."""
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    if args.threads:
        torch.set_num_threads(args.threads)
    encoder = encoder_for(args.model)
    x = load_tile(args.image, args.top, args.left)
    engine = fastest_exact(encoder, x)
    relevance(encoder, x, engine)
    with torch_profile(activities=[ProfilerActivity.CPU]) as prof:
        relevance(encoder, x, engine)
    floor = statistics.median(matmul_floor())
    total = sum(e.self_cpu_time_total for e in prof.key_averages()) / 1e6
    print(f"\nWhere {engine}'s time goes on one tile (torch profiler, self time; total "
          f"{total:.3f} s "
          f"= {total / floor:.2f} matmul floors of {floor:.4f} s):\n")
    print("| operator | calls | self s | share | floors |\n|---|---:|---:|---:|---:|")
    events = sorted(prof.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)
    for event in events[:12]:
        seconds = event.self_cpu_time_total / 1e6
        print(f"| {event.key} | {event.count} | {seconds:.3f} | {seconds / total:.0%} "
              f"| {seconds / floor:.2f} |")


def engine_table(args: argparse.Namespace) -> None:
    encoder = encoder_for(args.model)
    x = load_tile(args.image, args.top, args.left)
    applies = patch_macs(encoder, x) is not None
    engines = [engine for engine in ENGINES if applies or engine != "patches"]
    counts = {engine: passes(encoder, x, engine) for engine in engines[:-1]}
    counts["jacrev"] = encoder(x).numel()
    guesses = estimates(encoder, x, counts)
    scale = {"complex-step-naive": x[0, 0].numel() / args.naive_pixels,
             "jacrev": counts["jacrev"] / args.jacrev_rows}
    if args.forward_classes:
        scale.update({engine: counts[engine] / min(args.forward_classes, counts[engine])
                      for engine in FORWARD})
    rows, maps = {}, {}
    with tempfile.TemporaryDirectory() as tmp:
        for engine in engines:
            save = Path(tmp) / f"{engine}.npy"
            repeats = args.repeats if engine in ("vjp", "patches") else 1
            row = run_child(args, ["--child", engine, "--save", str(save),
                                   "--repeats", str(repeats)])
            row["tile"] = row["seconds"] * scale.get(engine, 1.0)
            rows[engine], maps[engine] = row, np.load(save)
            print(f"{engine}: {row}", file=sys.stderr)
    reference = maps["vjp"].astype(np.float64)

    def floors(engine: str) -> float:
        return rows[engine]["tile"] / rows[engine]["floor"]

    naive, peer = floors("complex-step-naive"), floors("jacrev")
    print("| engine | passes | est. GMAC | s per tile (median) | × matmul floor "
          "| vs literal complex step | vs jacrev | peak RSS (MB) | max rel. diff vs vjp |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for engine in engines:
        row = rows[engine]
        notes = {"complex-step-naive": f" (timed on {args.naive_pixels} px, extrapolated)",
                 "jacrev": f" (timed on {args.jacrev_rows} of {counts['jacrev']:,} rows, "
                           "extrapolated)"}
        if scale.get(engine, 1.0) > 1 and engine in FORWARD:
            notes[engine] = f" (timed on {args.forward_classes:,} passes, extrapolated)"
        note = notes.get(engine, "")
        computed = np.isfinite(maps[engine])
        error = np.abs(maps[engine][computed] - reference[computed]).max() / reference.max()
        diff = "n/a" if engine == "jacrev" else f"{error:.1e}"
        print(f"| {engine}{note} | {counts[engine]:,} | {guesses[engine] / 1e9:,.0f} "
              f"| {row['tile']:.3g} | {floors(engine):,.1f} | {naive / floors(engine):,.0f}× "
              f"| {peer / floors(engine):,.1f}× | {row['peak_rss_mb']:.0f} | {diff} |")
    print(f"\nmatmul floor (2048² float32, median in each engine's process): "
          f"{statistics.median(r['floor'] for r in rows.values()):.4f} s; RSS after imports "
          f"and loading: {rows['vjp']['rss_before_mb']:.0f} MB.")


def micrograph_table(args: argparse.Namespace) -> None:
    print("\n| whole micrograph | s | × matmul floor | peak RSS (MB) | kink pixels |")
    print("|---|---:|---:|---:|---:|")
    for mode in ("whole", "tile"):
        row = run_child(args, ["--micrograph-child", mode])
        height, width = row["shape"]
        print(f"| {args.image.name} {height}×{width}, {mode} mode | {row['seconds']:.1f} "
              f"| {row['seconds'] / row['floor']:.0f} | {row['peak_rss_mb']:.0f} "
              f"| {row['kinks']} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None, help="model file (default: bundled)")
    parser.add_argument("--image", type=Path, default=DEFAULT_IMAGE)
    parser.add_argument("--top", type=int, default=640)
    parser.add_argument("--left", type=int, default=512)
    parser.add_argument("--repeats", type=int, default=5, help="runs of vjp and patches")
    parser.add_argument("--naive-pixels", type=int, default=256)
    parser.add_argument("--jacrev-rows", type=int, default=128)
    parser.add_argument("--forward-classes", type=int, default=0,
                        help="time the forward engines on this many passes (0: all)")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: default)")
    parser.add_argument("--micrograph", action="store_true")
    parser.add_argument("--profile", action="store_true")
    parser.add_argument("--child", dest="engine", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--micrograph-child", dest="mode", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--save", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.engine:
        child(args)
        return
    if args.mode:
        micrograph_child(args)
        return
    threads = args.threads or torch.get_num_threads()
    print(f"One 256x256 tile of {args.image.name} (rows {args.top}.., cols {args.left}..), "
          f"{threads} thread(s), float32, {'bundled' if args.model is None else args.model} "
          f"model; median of {args.repeats} runs for vjp and patches, 1 otherwise; load average "
          f"{os.getloadavg()[0]:.1f} on {os.cpu_count()} cores at the start.\n")
    engine_table(args)
    if args.micrograph:
        micrograph_table(args)
    if args.profile:
        profile(args)
    print(f"\nLoad average at the end: {os.getloadavg()[0]:.1f}.")


if __name__ == "__main__":
    main()
