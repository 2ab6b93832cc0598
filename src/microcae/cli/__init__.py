"""The ``microcae`` command line: a thin layer of argument parsing over the Python API.

Every sub-command lives in a module ``cmd_<name>.py`` of this package that defines ``command``
(a :class:`click.Command`); ``cmd_train_rd.py`` is the command ``train-rd``. The group finds the
modules by name without importing them and imports one only when click asks for that command,
so ``microcae --help`` and ``microcae CMD --help`` start in a fraction of a second. Errors the
user can fix are printed as one line on stderr with exit status 2; warnings as
``microcae: warning: ...``.

The lazy pattern every ``cmd_*.py`` follows
-------------------------------------------
``microcae --help`` imports every command module (click asks each for its short help), so at
module level a command module imports only light modules: the standard library, ``click``,
:mod:`microcae.cli.options`, :mod:`microcae.cli.secret_options` and
:mod:`microcae.util.errors`. Everything that pulls in torch, numpy, Pillow, Dask, Zarr,
matplotlib, Captum or Zennit (``microcae.models``, ``.pipelines``, ``.evaluation``, ``.saliency``,
``.codec``, ``.training``, ``.data``, ``.figures``, ...) is imported inside the command function::

    from microcae.cli.options import LazyChoice, model_option

    METHOD_CHOICE = LazyChoice(("vjp", "complex-step", ...), "microcae.saliency:METHODS")

    @click.command("saliency")
    @model_option
    @click.option("--method", type=METHOD_CHOICE, default="vjp")
    def command(model_path: Path | None, method: str) -> None:
        \"\"\"Map ... (the first docstring line is the short help of 'microcae --help').\"\"\"
        from microcae.models.registry import load_model
        from microcae.saliency import relevance

        ...

Types used only in annotations are imported under ``if TYPE_CHECKING:``. A choice list that
comes from a registry (``--method``, ``--arch``, ``--dtype``) is a
:class:`microcae.cli.options.LazyChoice`: its help shows the names written beside it, a value is
checked against the live registry when the command runs, and ``tests/test_cli_startup.py``
checks that both lists agree. The same test fails for a command module that imports a heavy
package at import time (drop a module from its ``PENDING`` once it follows the pattern).
"""

from __future__ import annotations

import importlib
import pkgutil
import sys
import warnings
from collections.abc import Sequence
from typing import TextIO

import click

from microcae import __version__
from microcae.util.errors import MicrocaeError
from microcae.util.runtime import configure_allocator

EXIT_USAGE = 2


def command_modules() -> dict[str, str]:
    """Map every sub-command name to the module that defines it, without importing any.

    Returns
    -------
    dict of str to str
        ``{"train-rd": "microcae.cli.cmd_train_rd", ...}``, sorted by command name.
    """
    names = sorted(m.name for m in pkgutil.iter_modules(__path__) if m.name.startswith("cmd_"))
    return {name.removeprefix("cmd_").replace("_", "-"): f"{__name__}.{name}" for name in names}


class LazyGroup(click.Group):
    """A click group whose sub-commands are imported the first time click asks for them."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        """Names of every sub-command, sorted (imports nothing)."""
        return sorted({*command_modules(), *self.commands})

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        """Import ``cmd_<name>`` and return its ``command`` (None for an unknown name)."""
        if cmd_name not in self.commands:
            module = command_modules().get(cmd_name)
            if module is None:
                return None
            self.add_command(importlib.import_module(module).command, cmd_name)
        return self.commands[cmd_name]


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="microcae")
def cli() -> None:
    """Compress micrographs, map what their latent code depends on, and share latents safely.

    microcae compresses greyscale micrographs with a convolutional autoencoder, computes exact
    complex-step relevance maps of its encoder, and encrypts latents for sharing.
    """


def _show_warning(message: Warning | str, category: type[Warning], filename: str,
                  lineno: int, file: TextIO | None = None, line: str | None = None) -> None:
    print(f"microcae: warning: {message}", file=sys.stderr)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line with ``argv`` (default ``sys.argv[1:]``); return the exit status.

    0 on success, 2 for bad input or usage (one line on stderr), 130 when interrupted.
    """
    configure_allocator()
    previous = warnings.showwarning
    warnings.showwarning = _show_warning
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("default")
            cli.main(args=list(argv) if argv is not None else None, prog_name="microcae",
                     standalone_mode=False)
        return 0
    except MicrocaeError as exc:
        print(f"microcae: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except click.exceptions.Exit as exc:
        return int(exc.exit_code)
    except click.exceptions.Abort:
        print("microcae: error: aborted", file=sys.stderr)
        return 130
    except click.ClickException as exc:
        print(f"microcae: error: {exc.format_message()}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("microcae: error: interrupted", file=sys.stderr)
        return 130
    finally:
        warnings.showwarning = previous
