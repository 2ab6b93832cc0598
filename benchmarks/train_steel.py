"""Train the study CAE the study's way on the steel micrographs only (for the reproduction report).

See :mod:`microcae.evaluation.reproduction.steel`: one model on the study's random tile split and
one per held-out micrograph, 50 epochs, batch 32, Adam 1e-3, seed 0. The run holding out the test
image of ``microcae prepare``'s own split is the bundled ``cae_steel`` model. Run from the
repository root (1 thread; resumable: a killed run continues from its last epoch)::

    python benchmarks/train_steel.py ../shared/micrographs/aisi1045_decarb_optical \\
        ../shared/micrographs/nist_lowcarbon_steel_optical --out benchmarks/results/steel
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from microcae.data.dataset import load_dataset, prepare_dataset
from microcae.evaluation.reproduction.steel import train_steel_models
from microcae.training.settings import TrainSettings


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("inputs", nargs="+", type=Path, help="steel micrograph folders")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--data", type=Path, default=Path("runs/steel"),
                        help="prepared steel set (made if missing)")
    parser.add_argument("--epochs", type=int, default=50)
    parser.add_argument("--only", default=None, help="train only this run")
    args = parser.parse_args()
    torch.set_num_threads(1)
    data = (load_dataset(args.data) if args.data.exists()
            else prepare_dataset(list(args.inputs), args.data, progress=False))
    index = train_steel_models(data, args.out, TrainSettings(epochs=args.epochs), args.only)
    for name, run in index["runs"].items():
        print(f"{name}: train MSE {run['train_mse']:.5f}, test MSE {run['test_mse']:.5f}, "
              f"{run['seconds']:.0f} s")


if __name__ == "__main__":
    main()
