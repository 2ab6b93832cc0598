"""Options shared by several sub-commands."""

from __future__ import annotations

from pathlib import Path

import click

model_option = click.option(
    "--model",
    "-m",
    "model_path",
    type=click.Path(path_type=Path, dir_okay=False),
    default=None,
    help="Model file (.safetensors) written by 'microcae train'. Default: the bundled model.",
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
