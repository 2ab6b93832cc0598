"""Training and inference throughput of the study's CAE on this machine.

Prints a Markdown table of median images/s over repeated steps (batch 32, 256×256 tiles):

* ``microcae train`` step (``microcae.training.loop.train_step``, channels-last, tuned
  allocator) against a
  bare PyTorch loop on the same model and the same batch in the same process (target ratio ≥ 0.95);
* the same bare loop with PyTorch's defaults (NCHW, glibc's default malloc; run in a subprocess so
  the allocator setting does not leak) to show what the CPU tuning buys;
* encoder and decoder throughput (inference, no grad).

Usage: ``python benchmarks/train_throughput.py [--steps 7] [--batch 32]``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time

import torch
from torch import nn


def _median_rates(steps: list, batch: int, repeats: int) -> list[float]:
    """Median images/s of each step function, timed in interleaved rounds (fair under noise)."""
    for step in steps:
        step()  # warm-up
    times: list[list[float]] = [[] for _ in steps]
    for _ in range(repeats):
        for step, record in zip(steps, times, strict=True):
            started = time.perf_counter()
            step()
            record.append(time.perf_counter() - started)
    return [batch / statistics.median(record) for record in times]


def bare_loop(channels_last: bool, batch: int):
    """The loop a user would write: forward, MSE, backward, Adam step (returns the step)."""
    from microcae.models.cae import CAE

    torch.manual_seed(0)
    model = CAE()
    x = torch.rand(batch, 1, 256, 256)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)

    def step() -> None:
        optimizer.zero_grad()
        loss = nn.functional.mse_loss(model(x)["x_hat"], x)
        loss.backward()
        optimizer.step()

    return step


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=7)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--defaults-only", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.defaults_only:
        print(json.dumps(_median_rates([bare_loop(False, args.batch)], args.batch, args.steps)[0]))
        return

    from microcae.models.cae import CAE
    from microcae.training.loop import make_optimizer, train_step
    from microcae.training.objectives import MSEObjective
    from microcae.training.settings import TrainSettings
    from microcae.util.runtime import configure_allocator, to_channels_last

    configure_allocator()
    torch.manual_seed(0)
    model = to_channels_last(CAE())
    optimizer = make_optimizer(model, TrainSettings())
    x = to_channels_last(torch.rand(args.batch, 1, 256, 256))
    rows = []
    objective = MSEObjective()
    ours, bare = _median_rates([lambda: train_step(model, optimizer, objective, x),
                                bare_loop(True, args.batch)], args.batch, args.steps)
    defaults = float(subprocess.run(
        [sys.executable, __file__, "--defaults-only", "--steps", str(args.steps),
         "--batch", str(args.batch)], capture_output=True, text=True, check=True).stdout)
    rows.append(("microcae train step", ours, ours / bare))
    rows.append(("bare PyTorch loop, same layout + allocator (baseline)", bare, 1.0))
    rows.append(("bare PyTorch loop, PyTorch defaults (NCHW, glibc malloc)", defaults,
                 defaults / bare))
    with torch.no_grad():
        model.eval()
        latent = model.encoder(x)
        enc, dec = _median_rates([lambda: model.encoder(x), lambda: model.decoder(latent)],
                                 args.batch, args.steps)
    rows.append(("encoder inference", enc, enc / bare))
    rows.append(("decoder inference", dec, dec / bare))
    print(f"CAE (50,353 parameters), batch {args.batch}, 256x256, {torch.get_num_threads()} "
          f"threads, median of {args.steps} steps\n")
    print("| what | images/s | ratio to baseline |")
    print("|---|---|---|")
    for name, rate, ratio in rows:
        print(f"| {name} | {rate:.1f} | {ratio:.2f} |")


if __name__ == "__main__":
    main()
