"""Options and value types shared by several sub-commands.

Numeric options use the types below, so a bad value (``--stride -5``, ``--tile 0``,
``--lr nan``) is refused while the command line is parsed, in one line naming the option.
"""

from __future__ import annotations

import importlib
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import click


class FiniteFloatRange(click.FloatRange):
    """A :class:`click.FloatRange` that also refuses NaN and infinities.

    (``click.FloatRange(min=0, min_open=True)`` accepts ``nan``: every comparison with NaN is
    false, so no bound is ever violated.)
    """

    name = "finite float range"

    def convert(self, value: Any, param: click.Parameter | None,
                ctx: click.Context | None) -> Any:
        """Parse ``value`` as a float, refuse NaN and infinities, then check the range."""
        number = click.FLOAT.convert(value, param, ctx)
        if not math.isfinite(number):
            self.fail(f"{value!r} is not a finite number.", param, ctx)
        return super().convert(number, param, ctx)


POSITIVE_INT = click.IntRange(min=1)
"""Whole numbers >= 1 (sizes, counts, epochs, batch sizes)."""
POSITIVE_FLOAT = FiniteFloatRange(min=0, min_open=True)
"""Finite numbers > 0 (learning rates, λ, time limits)."""
FRACTION = FiniteFloatRange(min=0, max=1, max_open=True)
"""Finite numbers in [0, 1) (shares such as ``--test-fraction``)."""

force_option = click.option(
    "--force", is_flag=True,
    help="Replace existing output files (never the inputs). Without it, an existing file is "
         "an error and nothing is written.",
)

model_option = click.option(
    "--model",
    "-m",
    "model_path",
    type=click.Path(path_type=Path, dir_okay=False),
    default=None,
    help="A bundled model's name (see 'microcae models': study, study-steel, rd-study, rd-wide, "
         "codec-1..6) or a model file (.safetensors) written by 'microcae train'. Default: the "
         "study CAE "
         "(encode: the codec; decode: the model the file names).",
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
