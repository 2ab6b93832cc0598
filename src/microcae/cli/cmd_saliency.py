"""``microcae saliency``: images -> raw relevance maps (.npy) and Fig. 11-style figures."""

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

METHOD_CHOICE = LazyChoice(
    ("complex-step", "complex-step-coloured", "complex-step-naive", "gbp", "gradient",
     "integrated-gradients", "jvp", "lrp-w2", "lrp-zbeta", "patches", "random", "sobel-edges",
     "vjp"),
    "microcae.saliency:METHODS")
PRECISION_CHOICE = LazyChoice(("complex128", "complex64"), "microcae.saliency.engines:PRECISIONS")
CLIP_PERCENTILES = (0.5, 99.5)
"""Default colour limits (percentiles); equal to :data:`microcae.figures.saliency.CLIP_PERCENTILES`
(a test checks it)."""


@click.command("saliency")
@images_argument
@model_option
@click.option("--method", default="complex-step", show_default=True, type=METHOD_CHOICE,
              help="Relevance method. complex-step is the study's relevance by the fastest "
                   "exact engine for the model (vjp for the study's, patches for the codec's); "
                   "the engines vjp, patches, jvp, complex-step-coloured and "
                   "complex-step-naive (literal) give the same numbers.")
@click.option("--mode", type=click.Choice(["auto", "tile", "whole"]), default="auto",
              show_default=True,
              help="tile: each 256x256 tile encoded on its own (the study); whole: the whole "
                   "image's latent, exact, no tiles; auto: whole for images larger than a tile.")
@click.option("--clip", nargs=2, type=float, default=CLIP_PERCENTILES, show_default=True,
              metavar="LOW HIGH",
              help="Colour limits of the figure as percentiles of the smoothed map (0 100: "
                   "min to max).")
@click.option("--overlay", is_flag=True, help="Draw the map blended over the micrograph.")
@click.option("--device", default="cpu", show_default=True, help="cpu or cuda.")
@click.option("--precision", type=PRECISION_CHOICE, default=None,
              help="Arithmetic of the complex-step family (default: the model's, complex64).")
@out_dir_option
@progress_option
def command(images: tuple[Path, ...], model_path: Path | None, method: str, mode: str,
            clip: tuple[float, float], overlay: bool, device: str, precision: str | None,
            out_dir: Path, progress: bool) -> None:
    """Map how much every pixel of IMAGES (files or folders) matters to the latent code.

    Writes <stem>.relevance.npy (raw r_ij = ||df/dx_ij||, float32, image shape) and
    <stem>.saliency.png (input beside the Gaussian-smoothed map) per image into OUT.
    """
    from microcae.data.images import find_images
    from microcae.models.registry import load_model
    from microcae.pipelines.saliency_files import saliency_files
    from microcae.saliency.registry import lookup, names
    from microcae.training.distributed import single_device
    from microcae.util.errors import MicrocaeError

    options = {}
    if precision is not None:
        if not lookup(method).exact:
            raise MicrocaeError(f"--precision applies to {', '.join(names(exact=True))} only")
        options["precision"] = precision
    if not 0 <= clip[0] < clip[1] <= 100:
        raise MicrocaeError(f"--clip needs 0 <= LOW < HIGH <= 100, got {clip[0]:g} {clip[1]:g}")
    target = single_device(device)
    paths = find_images(images)
    encoder = load_model(model_path).encoder.to(target)
    outputs = saliency_files(paths, encoder, out_dir, method, mode, progress, tuple(clip),
                             "overlay" if overlay else "side", **options)
    for output in outputs:
        click.echo(f"{output.image}: max relevance {output.max_relevance:.4g} ({output.mode} "
                   f"mode), {output.kink_pixels} kink-affected pixels -> "
                   f"{output.relevance_file.name}, {output.figure.name}")
