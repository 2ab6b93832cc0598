"""Attack experiment on "the decoder is the key": see :mod:`microcae.evaluation.attack`.

Run (about 5 minutes on 2 CPU cores with the defaults)::

    python benchmarks/attack_decoder.py runs/shared_public --out benchmarks/results/attack
"""

from __future__ import annotations

import argparse
from pathlib import Path

from microcae.data.dataset import load_dataset
from microcae.evaluation.attack import decoder_attack
from microcae.models.cae import load_model
from microcae.util.atomic import write_text_atomic
from microcae.util.table_writer import json_text


def main() -> None:  # noqa: D103
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("data", type=Path, help="prepared set (test = owner, train = public)")
    parser.add_argument("--model", type=Path, default=None, help="owner model [bundled]")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--eval-tiles", type=int, default=24)
    parser.add_argument("--leaks", type=int, nargs="+", default=[1, 4])
    parser.add_argument("--steps", type=int, default=400, help="training steps per stage")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    report = decoder_attack(load_model(args.model), load_dataset(args.data), args.eval_tiles,
                            args.leaks, args.steps, args.batch, args.seed)
    table = report.to_table().markdown()
    write_text_atomic(args.out / "attack.json", json_text(report.to_json()))
    write_text_atomic(args.out / "attack.md", table)
    print(table, end="")
    print(f"{report.seconds} s")


if __name__ == "__main__":
    main()
