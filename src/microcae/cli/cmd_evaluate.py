"""``microcae evaluate``: microcae's models against JPEG, WebP, JPEG 2000, JPEG XL and AVIF."""

from __future__ import annotations

from pathlib import Path

import click

from microcae.cli.options import (
    POSITIVE_FLOAT,
    POSITIVE_INT,
    LazyChoice,
    images_argument,
    out_dir_option,
    progress_option,
)
from microcae.util.errors import MicrocaeError

CODEC_CHOICE = LazyChoice(("jpeg", "webp", "jpeg2000", "jpegxl", "avif"),
                          "microcae.evaluation.codec_comparison:CLASSICAL_CODECS")
DEFAULT_MODELS = ("study", "rd-study", "rd-wide")
"""Models measured without ``--model``, after the bundled codec levels that exist."""


def _model_name(name_or_path: str) -> str:
    """How a ``--model`` value is labelled in the tables: the bundled name or the file stem."""
    from microcae.models.registry import BUNDLED

    return name_or_path if name_or_path in BUNDLED else Path(name_or_path).stem


@click.command("evaluate")
@images_argument
@out_dir_option
@click.option("--model", "-m", "models", multiple=True, metavar="NAME_OR_PATH",
              help="Model to measure (repeatable): a bundled name or a model file "
                   "[default: the bundled codec levels, study, rd-study, rd-wide].")
@click.option("--codec", "codecs", type=CODEC_CHOICE, multiple=True,
              help="Classical codecs to compare with (repeatable) [default: all].")
@click.option("--bpp", "bpp_targets", type=POSITIVE_FLOAT, multiple=True,
              help="Rates of the classical codecs' own curves (repeatable) "
                   "[default: 0.1 to 1.5 bpp].")
@click.option("--crop", type=POSITIVE_INT, default=None,
              help="Centre-crop each image to at most this many pixels a side [default: "
                   "whole images].")
@click.option("--refine", "refine_steps", type=click.IntRange(0), default=0, show_default=True,
              help="Encode microcae's codec levels with this many latent refinement steps "
                   "(as 'microcae encode --refine'; rows named <level>+refine<steps>).")
@progress_option
def command(images: tuple[Path, ...], out_dir: Path, models: tuple[str, ...],
            codecs: tuple[str, ...], bpp_targets: tuple[float, ...], crop: int | None,
            refine_steps: int, progress: bool) -> None:
    """Rate–distortion against classical codecs on IMAGES (codecs.json, codecs.md, rd.png).

    Every rate is a real file's size, headers included; each classical codec is run at its
    best setting whose file is no larger than each microcae file, and at fixed bpp targets.
    """
    from microcae.codec import STREAM, check_refinable
    from microcae.data.images import find_images, read_micrograph
    from microcae.evaluation.codec_comparison import (
        BPP_TARGETS,
        CLASSICAL_CODECS,
        compare_codecs,
        markdown_report,
        write_comparison,
    )
    from microcae.models.refinement import Refinement
    from microcae.models.registry import codec_levels, load_model

    names = models or (*codec_levels(), *DEFAULT_MODELS)
    labels = [_model_name(name) for name in names]
    if len(set(labels)) != len(labels):
        raise MicrocaeError(f"--model values need different names, got {', '.join(labels)}")
    loaded = [(label, load_model(name)) for label, name in zip(labels, names, strict=True)]
    micrographs = [read_micrograph(path) for path in find_images(list(images))]
    refine = Refinement(steps=refine_steps, progress=progress) if refine_steps else None
    if refine is not None:
        codecs_to_refine = [model for _, model in loaded if model.latent_coding == STREAM]
        if not codecs_to_refine:
            raise MicrocaeError("--refine applies to microcae's codec, and no --model is one")
        check_refinable(codecs_to_refine)
    comparison = compare_codecs(micrographs, loaded, bpp_targets or BPP_TARGETS,
                                codecs or tuple(CLASSICAL_CODECS), crop, progress, refine)
    write_comparison(comparison, out_dir)
    click.echo(markdown_report(comparison), nl=False)
