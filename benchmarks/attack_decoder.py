"""Attack experiment on "the decoder is the key": see :mod:`microcae.evaluation.attack`.

``--steps owner`` gives every training stage the owner's budget (as many pixels as the owner's
training saw, from the owner model's provenance). The study-like run stored for the report
(hours on 2 shared CPU cores; one thread)::

    python benchmarks/attack_decoder.py runs/steel --steel-models benchmarks/results/steel \\
        --steps owner --threads 1 --state runs/attack_steel --out benchmarks/results/attack \\
        --name attack_steel

``runs/steel`` is the steel set of ``benchmarks/train_steel.py``; with ``--steel-models`` the owner
is the run that held out the set's test micrograph (the bundled ``cae_steel``), the owner's
micrograph is that one and the public micrographs are the others
(:meth:`~microcae.evaluation.reproduction.steel.SteelModels.owner_set`). Without it, the
prepared set's test split is the owner's and ``--model`` the owner.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from microcae.data.dataset import load_dataset
from microcae.evaluation.attack import decoder_attack, owner_budget_steps
from microcae.evaluation.reproduction.steel import load_steel_models
from microcae.models.registry import BUNDLED_MODEL, read_model_file
from microcae.util.atomic import write_text_atomic
from microcae.util.table_writer import json_text


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("data", type=Path, help="prepared set (test = owner, train = public)")
    parser.add_argument("--model", type=Path, default=BUNDLED_MODEL, help="owner model")
    parser.add_argument("--steel-models", type=Path, default=None,
                        help="study-like models of the set: the owner is their standard run")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--name", default="attack", help="stem of the output files")
    parser.add_argument("--eval-tiles", type=int, default=24)
    parser.add_argument("--leaks", type=int, nargs="+", default=[1, 4, 16])
    parser.add_argument("--steps", default="400",
                        help="Adam steps per stage, or 'owner' for the owner's budget")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--state", type=Path, default=None,
                        help="folder that keeps finished stages: a killed run restarted with it "
                             "continues")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    data = load_dataset(args.data)
    if args.steel_models:
        steel = load_steel_models(args.steel_models, data, complete=False)
        owner, provenance, data = steel.standard.model, steel.standard.provenance, \
            steel.owner_set(data)
        owner_name = f"{args.steel_models}: run {steel.standard.name}"
    else:
        file = read_model_file(args.model)
        owner, provenance, owner_name = file.model, file.provenance, str(args.model)
    steps = (owner_budget_steps(provenance, data.manifest["tile"], args.batch)
             if args.steps == "owner" else int(args.steps))
    report = decoder_attack(owner, data, args.eval_tiles, args.leaks, steps, args.batch,
                            args.seed, log=lambda line: print(line, flush=True),
                            state=args.state)
    summary = {**report.to_json(), "owner_model": owner_name,
               "budget": "owner" if args.steps == "owner" else "fixed",
               "threads": torch.get_num_threads()}
    table = report.to_table().markdown()
    write_text_atomic(args.out / f"{args.name}.json", json_text(summary))
    write_text_atomic(args.out / f"{args.name}.md", table)
    write_text_atomic(args.out / f"{args.name}_curves.md", report.curve_table().markdown())
    print(table, end="")
    print(json.dumps({"steps": steps, "seconds": report.seconds}))


if __name__ == "__main__":
    main()
