"""``microcae keygen``: write a new random 256-bit key file for ``encode --encrypt``."""

from __future__ import annotations

from pathlib import Path

import click


@click.command("keygen")
@click.argument("keyfile", type=click.Path(path_type=Path, dir_okay=False))
@click.option("--force", is_flag=True, help="Replace an existing key file (old files are lost).")
def command(keyfile: Path, force: bool) -> None:
    """Write a new secret key to KEYFILE (mode 0600). Keep it private; back it up."""
    from microcae.codec import generate_key, write_key_file

    write_key_file(keyfile, generate_key(), overwrite=force)
    click.echo(f"{keyfile}: new 256-bit key written")
