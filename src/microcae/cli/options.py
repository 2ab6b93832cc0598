"""Options shared by several sub-commands."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import click

model_option = click.option(
    "--model",
    "-m",
    "model_path",
    type=click.Path(path_type=Path, dir_okay=False),
    default=None,
    help="Model file (.safetensors) written by 'microcae train' (or 'microcae train-rd' for "
         "encode/decode). Default: the bundled model.",
)
out_dir_option = click.option(
    "--out",
    "-o",
    "out_dir",
    type=click.Path(path_type=Path, file_okay=False),
    required=True,
    help="Output folder (created if missing).",
)
images_argument = click.argument(
    "images", nargs=-1, required=True, type=click.Path(path_type=Path)
)
progress_option = click.option(
    "--progress/--no-progress", default=True, show_default=True, help="Show progress bars."
)


def training_options(command: Callable) -> Callable:
    """Add the options ``train`` and ``train-rd`` share to a click command.

    They are epochs, batch size, learning rate, seed, augmentation, resume and device; the
    command receives them as keyword arguments named like the options.
    """
    options = [
        click.option("--epochs", default=50, show_default=True, type=click.IntRange(1)),
        click.option("--batch-size", default=32, show_default=True, type=click.IntRange(1)),
        click.option("--lr", default=1e-3, show_default=True,
                     type=click.FloatRange(min=0, min_open=True)),
        click.option("--seed", default=0, show_default=True),
        click.option("--augment/--no-augment", default=False, show_default=True,
                     help="Random flips and 90° rotations of training tiles."),
        click.option("--resume", is_flag=True,
                     help="Continue from NAME.checkpoint.safetensors after an interrupted run."),
        click.option("--device", default="cpu", show_default=True,
                     help="cpu or cuda (single process; torchrun picks each process's GPU)."),
    ]
    for option in reversed(options):
        command = option(command)
    return command
