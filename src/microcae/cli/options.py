"""Options shared by several sub-commands."""

from __future__ import annotations

import importlib
from collections.abc import Callable, Sequence
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


class LazyChoice(click.Choice):
    """A choice among a registry's names that imports the registry only to check a value.

    Help and shell completion show ``names``, written beside the option so that ``--help``
    imports nothing heavy; converting a value imports every ``"module:attribute"`` source and
    checks the value against the registry's names at that moment (a method registered at run
    time is accepted). ``tests/test_cli_startup.py`` checks that ``names`` match the sources.

    Parameters
    ----------
    names
        The registry's names as help shows them.
    *sources
        ``"module:attribute"`` of a mapping or sequence of names, or of one name (a str).
    """

    def __init__(self, names: Sequence[str], *sources: str) -> None:
        super().__init__(names)
        self.names, self.sources = tuple(names), sources

    def registry_names(self) -> tuple[str, ...]:
        """Import the sources and return their names, in order."""
        names: list[str] = []
        for source in self.sources:
            module, _, attribute = source.partition(":")
            registry = getattr(importlib.import_module(module), attribute)
            names += [registry] if isinstance(registry, str) else list(registry)
        return tuple(names)

    def convert(self, value: object, param: click.Parameter | None,
                ctx: click.Context | None) -> str:
        """Return ``value`` if the registry holds it; fail with the registry's names if not."""
        self.choices = self.registry_names()
        return super().convert(value, param, ctx)
