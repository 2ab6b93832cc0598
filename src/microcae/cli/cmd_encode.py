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
from microcae.util.errors import MicrocaeError

DTYPE_CHOICE = LazyChoice(("float32", "float16", "uint8", "entropy"),
                          "microcae.codec:LATENT_DTYPES", "microcae.codec:ENTROPY")


@click.command("encode")
@images_argument
@model_option
@out_dir_option
@click.option("--quality", "-q", type=click.IntRange(1), default=None,
              help="Quality level of microcae's codec (1 = smallest files; see 'microcae "
                   "models'). Default: level 4 (λ 0.01, the λ of the base run).")
@click.option("--bpp", type=click.FloatRange(min=0, min_open=True), default=None,
              help="Rate budget in bits per pixel of the written file: each image gets the "
                   "best codec level whose file is no larger (the smallest level if none "
                   "fits; up to 4 encodes of each image).")
@click.option("--refine", "refine_steps", type=click.IntRange(0), default=0, show_default=True,
              help="Optimise each image's latents with this many gradient steps before coding "
                   "(microcae's codec only; 200 steps: about 30 % fewer bytes at equal PSNR "
                   "on the test micrographs, each step costing about one decode; the decoder "
                   "is unchanged). 0: off.")
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
            quality: int | None, bpp: float | None, refine_steps: int,
            latent_dtype: str | None, compress: bool, key_file: Path | None, passphrase: bool,
            force: bool, progress: bool) -> None:
    """Encode IMAGES (files or folders) into one latent file per image in OUT.

    By default the images are coded whole with microcae's learned codec; --model study keeps
    the study's CAE (256×256 tiles, 16×16×8 latents).
    """
    from microcae.cli.secret_options import resolve_secret
    from microcae.codec import RateBudget, check_refinable
    from microcae.models.refinement import Refinement
    from microcae.models.registry import encode_models, load_model
    from microcae.pipelines.latent_files import encode_files, encode_targets

    names = encode_models(model_path, quality, bpp)
    if bpp is not None and latent_dtype is not None:
        raise MicrocaeError("--dtype does not apply with --bpp (the codec levels code streams)")
    encode_targets(list(images), out_dir, force)  # refuse bad outputs before any prompt
    models = [load_model(name) for name in names]
    refine = Refinement(steps=refine_steps, progress=progress) if refine_steps else None
    if refine is not None:
        check_refinable(models)
    secret = resolve_secret(key_file, passphrase, confirm=True)
    encoder = RateBudget(models, bpp) if bpp is not None else models[0]
    written = encode_files(encoder, list(images), out_dir, latent_dtype, compress, secret,
                           progress, force, refine)
    if bpp is not None:
        _report_levels(written, dict(zip((m.fingerprint() for m in models), names, strict=True)),
                       bpp)
    total = sum(path.stat().st_size for path in written)
    click.echo(f"{out_dir}: {len(written)} latent files, {total} bytes"
               f"{' (encrypted)' if secret else ''}")


def _report_levels(written: list[Path], names: dict[str, str], bpp: float) -> None:
    """Say which codec level each file of a ``--bpp`` run got, and which exceed the budget."""
    from microcae.codec import parse_header

    for path in written:
        data = path.read_bytes()
        header = parse_header(data, str(path))
        rate = 8 * len(data) / (header.source.shape[0] * header.source.shape[1])
        over = " (over the budget: the smallest file of this image)" if rate > bpp else ""
        click.echo(f"{path.name}: {names[header.fingerprint]}, {rate:.3f} bpp{over}")
