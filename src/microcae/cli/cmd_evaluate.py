"""``microcae evaluate``: rate–distortion of latent files against JPEG, WebP and JPEG 2000."""

from __future__ import annotations

import json
from pathlib import Path

import click
import numpy as np

from microcae.cli.options import model_option, out_dir_option, progress_option
from microcae.data.dataset import load_dataset
from microcae.data.images import to_uint8
from microcae.evaluation.rate_distortion import CLASSICAL_CODECS, markdown_table, rate_distortion
from microcae.figures.rate_distortion import plot_rate_distortion
from microcae.models.registry import load_model
from microcae.models.registry import load_model as load_any_model
from microcae.util.atomic import write_text_atomic
from microcae.util.errors import MicrocaeError


@click.command("evaluate")
@click.argument("data", type=click.Path(path_type=Path, file_okay=False))
@model_option
@out_dir_option
@click.option("--split", type=click.Choice(["test", "train"]), default="test", show_default=True,
              help="Which tiles of the prepared set to measure.")
@click.option("--max-tiles", type=click.IntRange(min=1), default=None,
              help="Use at most this many tiles, evenly spaced over the split [default: all].")
@click.option("--codec", "codecs", type=click.Choice(list(CLASSICAL_CODECS)), multiple=True,
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
    rd_models = [(path.name.removesuffix(".safetensors"), load_any_model(path))
                 for path in rd_paths]
    for path, (_, rd_model) in zip(rd_paths, rd_models, strict=True):
        if rd_model.latent_coding != "entropy":
            raise MicrocaeError(f"{path}: not a microcae RD model (--rd-model needs an "
                                f"entropy-coded model kind, this is {rd_model.kind})")
    if len({name for name, _ in rd_models}) != len(rd_models):
        raise MicrocaeError("--rd-model files must have different names")
    prepared = load_dataset(data)
    indices = prepared.indices(split)
    if len(indices) == 0:
        raise MicrocaeError(f"{data}: the {split} split has no tiles")
    if max_tiles is not None and max_tiles < len(indices):
        indices = indices[np.unique(np.linspace(0, len(indices) - 1, max_tiles).round()
                                    .astype(int))]
    tiles = to_uint8(np.asarray(prepared.tiles[indices]))
    model = load_model(model_path)
    report = rate_distortion(model, tiles, codecs or tuple(CLASSICAL_CODECS), progress=progress,
                             rd_models=rd_models)
    report["data"] = {"path": str(data), "manifest_sha256": prepared.manifest_sha256,
                      "split": split, "tile_indices": [int(i) for i in indices]}
    table = markdown_table(report)
    write_text_atomic(out_dir / "rd.json", json.dumps(report, indent=1) + "\n")
    write_text_atomic(out_dir / "rd.md", table)
    plot_rate_distortion(report, out_dir / "rd.png")
    click.echo(table, nl=False)
