"""The ``microcae`` command line: a thin layer of argument parsing over the Python API.

Every sub-command lives in a module ``cmd_<name>.py`` of this package that defines ``command``
(a :class:`click.Command`); :func:`main` finds and registers them. Errors the user can fix are
printed as one line on stderr with exit status 2; warnings as ``microcae: warning: ...``.
"""

from __future__ import annotations

import importlib
import pkgutil
import sys
import warnings
from collections.abc import Sequence

import click

from microcae import __version__
from microcae.util.errors import MicrocaeError
from microcae.util.runtime import configure_allocator

EXIT_USAGE = 2


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="microcae")
def cli() -> None:
    """Compress micrographs, map what their latent code depends on, and share latents safely.

    microcae compresses greyscale micrographs with a convolutional autoencoder, computes exact
    complex-step relevance maps of its encoder, and encrypts latents for sharing.
    """


def _register_commands() -> None:
    for info in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
        if info.name.startswith("cmd_"):
            module = importlib.import_module(f"{__name__}.{info.name}")
            cli.add_command(module.command)


_register_commands()


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:  # noqa: ANN001
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
