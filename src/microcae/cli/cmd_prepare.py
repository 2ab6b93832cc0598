"""``microcae prepare``: micrographs -> a tiled, split, manifest-carrying data set."""

from __future__ import annotations

from pathlib import Path

import click

from microcae.cli.options import FRACTION, POSITIVE_INT, progress_option


@click.command("prepare")
@click.argument("inputs", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--out", "-o", "out", type=click.Path(path_type=Path), required=True,
              help="Folder to write the prepared set into.")
@click.option("--tile", default=256, show_default=True, type=POSITIVE_INT,
              help="Tile side in pixels.")
@click.option("--stride", type=POSITIVE_INT, default=None,
              help="Step between tiles [default: tile].")
@click.option("--remainder", type=click.Choice(["drop", "pad"]), default="drop",
              show_default=True, help="Border pixels that do not fill a tile: drop or reflect-pad.")
@click.option("--test-fraction", default=0.2, show_default=True, type=FRACTION,
              help="Share of tiles in the test split (split by source image).")
@click.option("--seed", default=0, show_default=True, help="Seed of the train/test split.")
@click.option("--scaling", type=click.Choice(["auto", "range", "full"]), default="auto",
              show_default=True,
              help="auto: 8-bit by 0..255, 16-bit/float by the image's own range.")
@click.option("--split-like", type=click.Path(path_type=Path), default=None,
              help="Reuse the train/test split of this prepared set (images matched by SHA-256).")
@click.option("--overwrite", is_flag=True,
              help="Replace an existing prepared set at OUT (only a folder holding nothing but "
                   "a prepared set's files; anything else at OUT is never replaced).")
@progress_option
def command(inputs: tuple[Path, ...], out: Path, tile: int, stride: int | None, remainder: str,
            test_fraction: float, seed: int, scaling: str, split_like: Path | None,
            overwrite: bool, progress: bool) -> None:
    """Tile micrographs (files or folders) into a training set at OUT."""
    from microcae.data.dataset import prepare_dataset

    prepared = prepare_dataset(list(inputs), out, tile=tile, stride=stride, remainder=remainder,
                               test_fraction=test_fraction, seed=seed, scaling=scaling,
                               overwrite=overwrite, progress=progress, split_like=split_like)
    manifest = prepared.manifest
    click.echo(
        f"{out}: {len(manifest['sources'])} images -> {len(prepared.tiles)} tiles "
        f"({len(prepared.indices('train'))} train, {len(prepared.indices('test'))} test)"
    )
    for skipped in manifest["skipped_smaller_than_tile"]:
        click.echo(f"skipped (smaller than one tile): {skipped}")
