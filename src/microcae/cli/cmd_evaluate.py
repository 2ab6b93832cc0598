"""``microcae evaluate``: rate–distortion of latent files against JPEG, WebP and JPEG 2000."""

from __future__ import annotations

from pathlib import Path

import click

from microcae.cli.options import LazyChoice, model_option, out_dir_option, progress_option
from microcae.util.errors import MicrocaeError

CODEC_CHOICE = LazyChoice(("jpeg", "webp", "jpeg2000"),
                          "microcae.evaluation.rate_distortion:CLASSICAL_CODECS")


@click.command("evaluate")
@click.argument("data", type=click.Path(path_type=Path, file_okay=False))
@model_option
@out_dir_option
@click.option("--split", type=click.Choice(["test", "train"]), default="test", show_default=True,
              help="Which tiles of the prepared set to measure.")
@click.option("--max-tiles", type=click.IntRange(min=1), default=None,
              help="Use at most this many tiles, evenly spaced over the split [default: all].")
@click.option("--codec", "codecs", type=CODEC_CHOICE, multiple=True,
              help="Classical codecs to compare with (repeatable) [default: all].")
@click.option("--rd-model", "rd_paths", type=click.Path(path_type=Path, dir_okay=False),
              multiple=True,
              help="RD model from 'microcae train --arch rd-*' to add, entropy-coded (repeatable).")
@progress_option
def command(data: Path, model_path: Path | None, out_dir: Path, split: str,
            max_tiles: int | None, codecs: tuple[str, ...], rd_paths: tuple[Path, ...],
            progress: bool) -> None:
    """Rate–distortion table (rd.json, rd.md) and plot (rd.png) on the tiles of DATA.

    DATA is a set written by 'microcae prepare'; its test split holds whole held-out images.
    """
    from microcae.evaluation.rate_distortion import (
        CLASSICAL_CODECS,
        markdown_table,
        rate_distortion_on_set,
        write_rate_distortion,
    )
    from microcae.models.registry import load_model

    rd_models = [(path.name.removesuffix(".safetensors"), load_model(path)) for path in rd_paths]
    for path, (_, rd_model) in zip(rd_paths, rd_models, strict=True):
        if rd_model.latent_coding != "entropy":
            raise MicrocaeError(f"{path}: not a microcae RD model (--rd-model needs an "
                                f"entropy-coded model kind, this is {rd_model.kind})")
    if len({name for name, _ in rd_models}) != len(rd_models):
        raise MicrocaeError("--rd-model files must have different names")
    model = load_model(model_path)
    report = rate_distortion_on_set(model, data, split, max_tiles,
                                    codecs or tuple(CLASSICAL_CODECS), rd_models, progress)
    write_rate_distortion(report, out_dir)
    click.echo(markdown_table(report), nl=False)
