"""Time, passes and peak memory of every exact relevance engine on one 256x256 micrograph tile.

Each engine runs in its own subprocess so that its peak resident memory (``ru_maxrss``) is its
own. The literal complex step (65,536 passes) is timed on its first ``--naive-pixels`` pixels and
extrapolated; the obvious peer a user would write, ``torch.func.jacrev`` then column norms, is
timed on ``--jacrev-rows`` of the 2,048 latent values and extrapolated. Both are said so in the
table. Every map is compared with the ``vjp`` map (computed pixels only for the partial runs).

    .venv/bin/python benchmarks/saliency.py [--model M] [--image PNG] [--micrograph]

``--micrograph`` also runs ``microcae saliency`` on the whole micrograph (tile mode, vjp) and
reports its wall time and peak memory.
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
from microcae.saliency.engines import passes
from microcae.util.runtime import configure_allocator

DEFAULT_IMAGE = (Path(__file__).resolve().parents[2] / "shared" / "micrographs"
                 / "aisi1045_decarb_optical" / "1a1str.png")
ENGINES = ["vjp", "complex-step", "jvp", "complex-step-naive", "jacrev"]


def load_tile(image: Path, top: int, left: int) -> torch.Tensor:
    pixels = read_micrograph(image).pixels
    tile = np.ascontiguousarray(pixels[top : top + 256, left : left + 256])
    return torch.from_numpy(tile)[None, None]


def encoder_for(model: str | None) -> torch.nn.Module:
    if model is None and not BUNDLED_MODEL.is_file():
        torch.manual_seed(0)
        return CAE().encoder.eval()
    return load_model(model).encoder


def jacrev_rows(encoder: torch.nn.Module, x: torch.Tensor, rows: int) -> torch.Tensor:
    """Column norms of the first ``rows`` latent values' Jacobian rows (the obvious peer)."""

    def first_values(z: torch.Tensor) -> torch.Tensor:
        return encoder(z).flatten()[:rows]

    jac = torch.func.jacrev(first_values, chunk_size=32)(x)  # (rows, 1, 1, H, W)
    return jac.reshape(rows, -1).norm(dim=0).view(x.shape[2:])


def child(args: argparse.Namespace) -> None:
    configure_allocator()
    if args.threads:
        torch.set_num_threads(args.threads)
    encoder = encoder_for(args.model)
    x = load_tile(args.image, args.top, args.left)
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    times, cpu, result = [], [], None
    for _ in range(args.repeats):
        start, start_cpu = time.perf_counter(), time.process_time()
        if args.engine == "jacrev":
            result = jacrev_rows(encoder, x, args.jacrev_rows)
        elif args.engine == "complex-step-naive":
            result = relevance(encoder, x, args.engine, limit=args.naive_pixels)[0]
        else:
            result = relevance(encoder, x, args.engine)[0]
        times.append(time.perf_counter() - start)
        cpu.append(time.process_time() - start_cpu)
    np.save(args.save, result.detach().numpy())
    print(json.dumps({
        "seconds": statistics.median(times),
        "cpu_seconds": statistics.median(cpu),
        "runs": len(times),
        "rss_before_mb": rss_before / 1024,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "threads": torch.get_num_threads(),
    }))


def run_child(args: argparse.Namespace, engine: str, save: Path, repeats: int) -> dict:
    command = [sys.executable, __file__, "--child", engine, "--save", str(save),
               "--repeats", str(repeats), "--image", str(args.image), "--top", str(args.top),
               "--left", str(args.left), "--naive-pixels", str(args.naive_pixels),
               "--jacrev-rows", str(args.jacrev_rows), "--threads", str(args.threads)]
    if args.model:
        command += ["--model", args.model]
    done = subprocess.run(command, check=True, capture_output=True, text=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def full_micrograph(args: argparse.Namespace, out: Path) -> dict:
    command = [sys.executable, "-c",
               "import resource, sys; from microcae.cli import main; rc = main(sys.argv[1:]); "
               "print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024); sys.exit(rc)",
               "saliency", str(args.image), "--out", str(out), "--no-progress"]
    if args.model:
        command += ["--model", args.model]
    start = time.perf_counter()
    done = subprocess.run(command, check=True, capture_output=True, text=True)
    return {"seconds": time.perf_counter() - start,
            "peak_rss_mb": float(done.stdout.strip().splitlines()[-1])}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None, help="model file (default: bundled)")
    parser.add_argument("--image", type=Path, default=DEFAULT_IMAGE)
    parser.add_argument("--top", type=int, default=640)
    parser.add_argument("--left", type=int, default=512)
    parser.add_argument("--repeats", type=int, default=5, help="runs of the fast engine")
    parser.add_argument("--naive-pixels", type=int, default=256)
    parser.add_argument("--jacrev-rows", type=int, default=128)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: default)")
    parser.add_argument("--micrograph", action="store_true")
    parser.add_argument("--child", dest="engine", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--save", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.engine:
        child(args)
        return

    encoder = encoder_for(args.model)
    x = load_tile(args.image, args.top, args.left)
    pixels = x.shape[2] * x.shape[3]
    counts = {engine: passes(encoder, x, engine) for engine in ENGINES[:4]}
    counts["jacrev"] = encoder(x).numel()
    scale = {"complex-step-naive": pixels / args.naive_pixels,
             "jacrev": counts["jacrev"] / args.jacrev_rows}
    rows = {}
    with tempfile.TemporaryDirectory() as tmp:
        maps = {}
        for engine in ENGINES:
            repeats = args.repeats if engine == "vjp" else 1
            save = Path(tmp) / f"{engine}.npy"
            rows[engine] = run_child(args, engine, save, repeats)
            rows[engine]["seconds_tile"] = rows[engine]["seconds"] * scale.get(engine, 1.0)
            rows[engine]["cpu_tile"] = rows[engine]["cpu_seconds"] * scale.get(engine, 1.0)
            maps[engine] = np.load(save)
            print(f"{engine}: {rows[engine]}", file=sys.stderr)
        reference = maps["vjp"].astype(np.float64)
        for engine in ENGINES:
            computed = np.isfinite(maps[engine])  # the computed pixels of the partial naive run
            diff = np.abs(maps[engine][computed] - reference[computed]).max() / reference.max()
            # jacrev's partial rows give a partial map: checked against vjp in the tests instead
            rows[engine]["max_rel_diff"] = None if engine == "jacrev" else float(diff)
        micrograph = full_micrograph(args, Path(tmp) / "out") if args.micrograph else None

    naive = rows["complex-step-naive"]["cpu_tile"]
    peer = rows["jacrev"]["cpu_tile"]
    threads = args.threads or torch.get_num_threads()
    print(f"One 256x256 tile of {args.image.name} (rows {args.top}.., cols {args.left}..), "
          f"{threads} thread(s), float32, {'bundled' if args.model is None else args.model} "
          f"model; median of {args.repeats} runs for vjp, 1 run otherwise; load average "
          f"{os.getloadavg()[0]:.1f} on {os.cpu_count()} cores at the end. Speed-ups use CPU "
          "time, which other jobs on the machine disturb less than wall time.\n")
    print("| engine | passes | wall s per tile | CPU s per tile | vs literal complex step "
          "| vs jacrev | peak RSS (MB) | max rel. diff vs vjp |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for engine in ENGINES:
        row = rows[engine]
        note = {"complex-step-naive": f" (timed on {args.naive_pixels} px, extrapolated)",
                "jacrev": f" (timed on {args.jacrev_rows} of {counts['jacrev']} rows, "
                          "extrapolated)"}.get(engine, "")
        diff = "n/a" if row["max_rel_diff"] is None else f"{row['max_rel_diff']:.1e}"
        print(f"| {engine}{note} | {counts[engine]:,} | {row['seconds_tile']:.3g} "
              f"| {row['cpu_tile']:.3g} | {naive / row['cpu_tile']:.0f}x "
              f"| {peer / row['cpu_tile']:.1f}x | {row['peak_rss_mb']:.0f} | {diff} |")
    print(f"\nRSS after imports and loading: {rows['vjp']['rss_before_mb']:.0f} MB.")
    if micrograph:
        print(f"\nWhole micrograph ({args.image.name}, tile mode, vjp, CLI): "
              f"{micrograph['seconds']:.0f} s, peak RSS {micrograph['peak_rss_mb']:.0f} MB.")


if __name__ == "__main__":
    main()
