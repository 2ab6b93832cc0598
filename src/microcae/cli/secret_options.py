"""Options and helpers that turn key files and passphrases into a ``Secret``."""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

import click

from microcae.util.errors import MicrocaeError

if TYPE_CHECKING:
    from microcae.codec import Secret

PASSPHRASE_ENV = "MICROCAE_PASSPHRASE"

passphrase_option = click.option(
    "--passphrase",
    is_flag=True,
    help=f"Use a passphrase (scrypt): read from ${PASSPHRASE_ENV} if set, otherwise prompted "
    "for without echo. Never given on the command line, where other users could see it.",
)


def resolve_secret(key_file: Path | None, passphrase: bool, confirm: bool) -> Secret | None:
    """Return the secret chosen by ``--key``/``--encrypt`` or ``--passphrase`` (None if neither).

    Parameters
    ----------
    key_file
        Key file written by ``microcae keygen``.
    passphrase
        Whether ``--passphrase`` was given.
    confirm
        Ask twice when prompting (when encrypting, a typo would lock the files).
    """
    from microcae.codec import Secret, read_key_file

    if key_file is not None and passphrase:
        raise MicrocaeError("give a key file or --passphrase, not both")
    if key_file is not None:
        return Secret(key=read_key_file(key_file))
    if not passphrase:
        return None
    text = os.environ.get(PASSPHRASE_ENV)
    if text is None:
        text = click.prompt("Passphrase", hide_input=True, confirmation_prompt=confirm)
    return Secret(passphrase=text)
