"""``microcae decode``: latent files -> ``<stem>.png`` images of the original shape."""

from __future__ import annotations

from pathlib import Path

import click

from microcae.cli.options import model_option, out_dir_option, progress_option
from microcae.cli.secret_options import passphrase_option, resolve_secret


@click.command("decode")
@click.argument("files", nargs=-1, required=True, type=click.Path(path_type=Path))
@model_option
@out_dir_option
@click.option("--key", "key_file", type=click.Path(path_type=Path, dir_okay=False), default=None,
              help="Key file for encrypted latent files.")
@passphrase_option
@progress_option
def command(files: tuple[Path, ...], model_path: Path | None, out_dir: Path,
            key_file: Path | None, passphrase: bool, progress: bool) -> None:
    """Decode latent FILES (or folders of .mcl files) into PNGs in OUT; nothing on error."""
    from microcae.models.rdcae import load_codec_model
    from microcae.pipelines.latent_files import decode_files

    secret = resolve_secret(key_file, passphrase, confirm=False)
    model = load_codec_model(model_path)
    written = decode_files(model, list(files), out_dir, secret, progress)
    click.echo(f"{out_dir}: {len(written)} images decoded")
