"""The λ sweep behind the bundled RD models: 7 rate–distortion runs side by side on one GPU.

Runs (architecture, λ): study (64,32,16,8) at 0.005 and 0.05; wide (64,64,64,32) at 0.002,
0.006 and 0.02; one pooling stage fewer (64,64,32) at 0.006 and 0.02. Each run has its own
process (2 CPU threads), ``--augment``, batch 32, Adam 1e-3, seed 0, and stops after
``--seconds`` of training (learning rate /10 after 80 % of it), so the epochs each run gets
depend on the GPU and on how many runs share it. Models and logs go to ``--out``.

The bundled ``rd_study`` and ``rd_wide`` are the λ = 0.05 and λ = 0.02 runs of
``python benchmarks/rd_sweep.py runs/shared128 --out runs/rd_sweep --seconds 380`` on one
H100 (the tiles travelled to it as uint8). Imports only torch-side modules of microcae (no
``constriction``), so it runs where the codec's dependencies are not installed.

Usage: ``python benchmarks/rd_sweep.py DATA --out DIR [--seconds 380] [--device cuda]``.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
from pathlib import Path

RUNS = [
    ("study_l0.005", (64, 32, 16, 8), 0.005),
    ("study_l0.05", (64, 32, 16, 8), 0.05),
    ("wide_l0.002", (64, 64, 64, 32), 0.002),
    ("wide_l0.006", (64, 64, 64, 32), 0.006),
    ("wide_l0.02", (64, 64, 64, 32), 0.02),
    ("wide8_l0.006", (64, 64, 32), 0.006),
    ("wide8_l0.02", (64, 64, 32), 0.02),
]


def run(job: tuple[str, tuple[int, ...], float, str, str, float, str]) -> str:
    """Train one model; return a one-line JSON summary."""
    name, channels, lmbda, data, out, seconds, device = job
    import torch

    torch.set_num_threads(2)
    from microcae.data.dataset import load_dataset
    from microcae.training.architectures import ARCHITECTURES
    from microcae.training.loop import train

    architecture = ARCHITECTURES["rd-study"].with_channels(channels)
    settings = architecture.settings(epochs=100_000, augment=True, max_seconds=seconds)
    result = train(load_dataset(data), Path(out) / f"{name}.safetensors", settings,
                   build_model=architecture.build, objective=architecture.objective(lmbda),
                   progress=False, device=device)
    last = result.history[-1]
    return json.dumps({"run": name, "epochs": len(result.history), "test_mse": last["test_mse"],
                       "test_bpp_estimate": last["test_bpp"]})


def main() -> None:
    """Parse arguments and run the sweep, one process per run."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("data", help="prepared set (microcae prepare)")
    parser.add_argument("--out", required=True, help="folder for the models")
    parser.add_argument("--seconds", type=float, default=380.0, help="training time per run")
    parser.add_argument("--device", default="cuda")
    args = parser.parse_args()
    jobs = [(*spec, args.data, args.out, args.seconds, args.device) for spec in RUNS]
    with mp.get_context("spawn").Pool(len(jobs)) as pool:
        for line in pool.imap_unordered(run, jobs):
            print(line, flush=True)


if __name__ == "__main__":
    main()
