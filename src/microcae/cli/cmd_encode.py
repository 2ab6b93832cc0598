"""``microcae encode``: micrographs -> latent files (``<stem>.mcl``), optionally encrypted."""

from __future__ import annotations

from pathlib import Path

import click

from microcae.cli.options import (
    LazyChoice,
    force_option,
    images_argument,
    model_option,
    out_dir_option,
    progress_option,
)
from microcae.cli.secret_options import passphrase_option

DTYPE_CHOICE = LazyChoice(("float32", "float16", "uint8", "entropy"),
                          "microcae.codec:LATENT_DTYPES", "microcae.codec:ENTROPY")


@click.command("encode")
@images_argument
@model_option
@out_dir_option
@click.option("--quality", "-q", type=click.IntRange(1), default=None,
              help="Quality level of microcae's codec (1 = smallest files; see 'microcae "
                   "models'). Default: level 3 (the level the others were fine-tuned from).")
@click.option("--bpp", type=click.FloatRange(min=0, min_open=True), default=None,
              help="Pick the codec level whose measured rate (bits per pixel on the test "
                   "micrographs) is closest to this target.")
@click.option("--dtype", "latent_dtype", type=DTYPE_CHOICE, default=None,
              help="Latent storage of tiled models (--model study, rd-*): uint8 (per-channel "
                   "scale/offset), float16, float32, or entropy (RD models). Default: the "
                   "model's own coding.")
@click.option("--zstd/--no-zstd", "compress", default=True, show_default=True,
              help="Lossless zstd stage on stored tiled latents (not used with entropy coding).")
@click.option("--encrypt", "key_file", type=click.Path(path_type=Path, dir_okay=False),
              default=None, help="Encrypt (AES-256-GCM) with this key file from 'microcae keygen'.")
@passphrase_option
@force_option
@progress_option
def command(images: tuple[Path, ...], model_path: Path | None, out_dir: Path,
            quality: int | None, bpp: float | None, latent_dtype: str | None, compress: bool,
            key_file: Path | None, passphrase: bool, force: bool, progress: bool) -> None:
    """Encode IMAGES (files or folders) into one latent file per image in OUT.

    By default the images are coded whole with microcae's learned codec; --model study keeps
    the study's CAE (256×256 tiles, 16×16×8 latents).
    """
    from microcae.cli.secret_options import resolve_secret
    from microcae.models.registry import codec_level, load_model
    from microcae.pipelines.latent_files import encode_files, encode_targets

    encode_targets(list(images), out_dir, force)  # refuse bad outputs before any prompt
    model = load_model(codec_level(model_path, quality, bpp))
    secret = resolve_secret(key_file, passphrase, confirm=True)
    written = encode_files(model, list(images), out_dir, latent_dtype, compress, secret, progress,
                           force)
    total = sum(path.stat().st_size for path in written)
    click.echo(f"{out_dir}: {len(written)} latent files, {total} bytes"
               f"{' (encrypted)' if secret else ''}")
