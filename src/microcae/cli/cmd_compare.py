"""``microcae compare``: map micrographs with every relevance method and measure the maps."""

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

ENGINE_CHOICE = LazyChoice(("vjp", "complex-step-coloured", "jvp", "complex-step-naive",
                           "patches"),
                          "microcae.evaluation.comparison:EXACT_ENGINES")


@click.command("compare")
@images_argument
@model_option
@out_dir_option
@click.option("--method", "methods", multiple=True,
              help="Method or control to include (repeatable). Default: every registered "
                   "method defined for the model's encoder (GBP and LRP need a ReLU network, "
                   "so the codec's GDN encoder leaves them out) plus the controls "
                   "'sobel-edges' and 'random'.")
@click.option("--tile", default=256, show_default=True, help="Tile side in pixels.")
@click.option("--tiles-per-image", default=1, show_default=True,
              help="Tiles measured per image, spread evenly over it.")
@click.option("--sanity/--no-sanity", default=True, show_default=True,
              help="Run the model-randomisation test (one extra map per encoder layer).")
@click.option("--seed", default=0, show_default=True,
              help="Seed of the random control and of the layer randomisation.")
@click.option("--exact-engine", type=ENGINE_CHOICE, default=ENGINE_CHOICE.names[0],
              show_default=True,
              help="Engine that computes the complex-step row (all agree to float precision).")
@progress_option
def command(images: tuple[Path, ...], model_path: Path | None, out_dir: Path,
            methods: tuple[str, ...], tile: int, tiles_per_image: int, sanity: bool, seed: int,
            exact_engine: str, progress: bool) -> None:
    """Compare relevance methods on IMAGE files or folders; write tables and figures to OUT."""
    from microcae.data.images import find_images
    from microcae.evaluation.comparison import compare_images, write_comparison
    from microcae.models.registry import load_model

    model = load_model(model_path)
    comparison = compare_images(model, find_images(list(images)), methods=methods or None,
                                tile=tile, tiles_per_image=tiles_per_image, sanity_check=sanity,
                                seed=seed, exact_engine=exact_engine, progress=progress)
    written = write_comparison(comparison, out_dir)
    click.echo(comparison.to_table().markdown(), nl=False)
    for path in written.values():
        click.echo(f"wrote {path}")
