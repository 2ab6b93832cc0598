"""``microcae decode``: latent files -> ``<stem>.png`` images of the original shape."""

from __future__ import annotations

from pathlib import Path

import click

from microcae.cli.options import force_option, model_option, out_dir_option, progress_option
from microcae.cli.secret_options import passphrase_option


@click.command("decode")
@click.argument("files", nargs=-1, required=True, type=click.Path(path_type=Path))
@model_option
@out_dir_option
@click.option("--key", "key_file", type=click.Path(path_type=Path, dir_okay=False), default=None,
              help="Key file for encrypted latent files.")
@passphrase_option
@force_option
@progress_option
def command(files: tuple[Path, ...], model_path: Path | None, out_dir: Path,
            key_file: Path | None, passphrase: bool, force: bool, progress: bool) -> None:
    """Decode latent FILES (or folders of .mcl files) into PNGs in OUT; nothing on error.

    An existing PNG in OUT (such as the original micrograph) is replaced only with --force.
    Each file names its model by fingerprint: a bundled model is found without --model.
    """
    from microcae.cli.secret_options import resolve_secret
    from microcae.models.registry import load_model
    from microcae.pipelines.latent_files import decode_files, decode_targets

    decode_targets(list(files), out_dir, force)  # refuse bad outputs before any prompt
    secret = resolve_secret(key_file, passphrase, confirm=False)
    model = load_model(model_path) if model_path is not None else None
    written = decode_files(model, list(files), out_dir, secret, progress, force)
    click.echo(f"{out_dir}: {len(written)} images decoded")
