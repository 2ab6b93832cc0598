"""Start-up time of the command line: ``microcae --help`` and ``microcae encode --help``.

Each command runs ``--repeats`` times in a fresh interpreter (``sys.executable -m microcae``);
the table gives the median wall time, its ratio to ``python -c pass`` (the interpreter alone)
and the heavy packages the command imported (``-X importtime``, one extra run).

    .venv/bin/python benchmarks/cli_startup.py [--repeats 5]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time

COMMANDS = {
    "python -c pass": ["-c", "pass"],
    "microcae --help": ["-m", "microcae", "--help"],
    "microcae encode --help": ["-m", "microcae", "encode", "--help"],
    "microcae saliency --help": ["-m", "microcae", "saliency", "--help"],
}
HEAVY = ("torch", "numpy", "scipy", "PIL", "matplotlib", "captum", "zennit", "dask", "zarr")


def wall_seconds(args: list[str], repeats: int) -> float:
    """Median wall time in seconds of ``python ARGS`` over ``repeats`` fresh runs."""
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        subprocess.run([sys.executable, *args], check=True, capture_output=True)
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def heavy_imports(args: list[str]) -> list[str]:
    """Heavy top-level packages that ``python -X importtime ARGS`` reports importing."""
    run = subprocess.run([sys.executable, "-X", "importtime", *args], check=True,
                         capture_output=True, text=True)
    names = {line.rsplit("|", 1)[1].strip().split(".")[0] for line in run.stderr.splitlines()
             if line.startswith("import time:")}
    return [name for name in HEAVY if name in names]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    print("| command | median wall time (s) | × python -c pass | heavy packages imported |")
    print("|---|---|---|---|")
    baseline = None
    for label, command in COMMANDS.items():
        seconds = wall_seconds(command, args.repeats)
        baseline = baseline or seconds
        heavy = ", ".join(heavy_imports(command)) or "none"
        print(f"| `{label}` | {seconds:.3f} | {seconds / baseline:.1f} | {heavy} |")


if __name__ == "__main__":
    main()
