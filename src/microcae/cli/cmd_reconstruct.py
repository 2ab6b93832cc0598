"""``microcae reconstruct``: images -> reconstructions, metrics table and Fig. 10-style figure."""

from __future__ import annotations

from pathlib import Path

import click

from microcae.cli.options import (
    force_option,
    images_argument,
    model_option,
    out_dir_option,
    progress_option,
)


@click.command("reconstruct")
@images_argument
@model_option
@out_dir_option
@force_option
@progress_option
@click.option("--scheduler", default=None, metavar="ADDRESS",
              help="Reconstruct the images on this Dask cluster (tcp://host:8786), one task each.")
def command(images: tuple[Path, ...], model_path: Path | None, out_dir: Path, force: bool,
            progress: bool, scheduler: str | None) -> None:
    """Reconstruct IMAGES (files or folders) and report MSE, PSNR and SSIM per image."""
    from microcae.data.images import find_images
    from microcae.models.registry import load_model
    from microcae.pipelines.reconstruct import (
        metric_rows,
        reconstruct_images,
        reconstruction_targets,
        summary_targets,
        write_summary,
    )
    from microcae.util.atomic import check_output_files

    paths = find_images(images)
    outputs = [*reconstruction_targets(paths, out_dir), *summary_targets(out_dir)]
    check_output_files(outputs, force, protected=paths)
    model = load_model(model_path)
    results = reconstruct_images(paths, model, out_dir, progress=progress, scheduler=scheduler)
    written = write_summary(results, out_dir)
    for row in metric_rows(results):
        click.echo(f"{row['image']}: MSE {row['mse']:.5f}, PSNR {row['psnr_db']:.2f} dB, "
                   f"SSIM {row['ssim']:.4f}")
    click.echo(f"reconstructions and metrics ({written['csv'].name}, {written['md'].name}, "
               f"{written['json'].name}) in {out_dir}; figure: {written['figure']}")
