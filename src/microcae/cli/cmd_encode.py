"""``microcae encode``: micrographs -> latent files (``<stem>.mcl``), optionally encrypted."""

from __future__ import annotations

from pathlib import Path

import click

from microcae.cli.options import (
    LazyChoice,
    images_argument,
    model_option,
    out_dir_option,
    progress_option,
)
from microcae.cli.secret_options import passphrase_option, resolve_secret

DTYPE_CHOICE = LazyChoice(("float32", "float16", "uint8", "entropy"),
                          "microcae.codec:LATENT_DTYPES", "microcae.codec:ENTROPY")


@click.command("encode")
@images_argument
@model_option
@out_dir_option
@click.option("--dtype", "latent_dtype", type=DTYPE_CHOICE,
              default=None,
              help="Latent storage: uint8 (per-channel scale/offset), float16, float32, or "
                   "entropy (RD models: range-coded integers). Default: entropy for an RD "
                   "model, uint8 for a CAE.")
@click.option("--zstd/--no-zstd", "compress", default=True, show_default=True,
              help="Lossless zstd stage on the stored latents (not used with entropy).")
@click.option("--encrypt", "key_file", type=click.Path(path_type=Path, dir_okay=False),
              default=None, help="Encrypt (AES-256-GCM) with this key file from 'microcae keygen'.")
@passphrase_option
@progress_option
def command(images: tuple[Path, ...], model_path: Path | None, out_dir: Path,
            latent_dtype: str | None,
            compress: bool, key_file: Path | None, passphrase: bool, progress: bool) -> None:
    """Encode IMAGES (files or folders) into one latent file per image in OUT."""
    from microcae.models.rdcae import load_codec_model
    from microcae.pipelines.latent_files import encode_files

    secret = resolve_secret(key_file, passphrase, confirm=True)
    model = load_codec_model(model_path)
    written = encode_files(model, list(images), out_dir, latent_dtype, compress, secret, progress)
    total = sum(path.stat().st_size for path in written)
    click.echo(f"{out_dir}: {len(written)} latent files, {total} bytes"
               f"{' (encrypted)' if secret else ''}")
