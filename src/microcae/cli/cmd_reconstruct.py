"""``microcae reconstruct``: images -> reconstructions, metrics table and Fig. 10-style figure."""

from __future__ import annotations

import functools
from pathlib import Path

import click

from microcae.cli.options import (
    force_option,
    images_argument,
    model_option,
    out_dir_option,
    progress_option,
)
from microcae.data.images import find_images
from microcae.figures.reconstruction import plot_reconstructions
from microcae.models.registry import load_model
from microcae.pipelines.batch.scheduling import run_tasks
from microcae.pipelines.reconstruct import reconstruct_files, reconstruction_targets
from microcae.util.atomic import check_output_files
from microcae.util.table_writer import write_table

FIGURE_COLUMNS = 6
FIGURE_NAME = "reconstructions.png"
TABLE_STEM = "metrics"
TABLE_FORMATS = ("csv", "md", "json")  # what write_table writes


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
    paths = find_images(images)
    tables = [out_dir / f"{TABLE_STEM}.{ext}" for ext in TABLE_FORMATS]
    outputs = [*reconstruction_targets(paths, out_dir), *tables, out_dir / FIGURE_NAME]
    check_output_files(outputs, force, protected=paths)
    model = load_model(model_path)
    if scheduler is None:
        results = reconstruct_files(paths, model, out_dir, progress=progress)
    else:
        tasks = [functools.partial(reconstruct_files, [p], out_dir=out_dir, progress=False)
                 for p in paths]
        results = [r for rs in run_tasks(tasks, model, scheduler, progress=progress) for r in rs]
    rows = [{"image": str(r.path), "height": r.original.shape[0], "width": r.original.shape[1],
             **r.scores.as_dict()} for r in results]
    tables = write_table(rows, out_dir, TABLE_STEM)
    shown = results[:FIGURE_COLUMNS]
    figure = plot_reconstructions(
        [r.original for r in shown], [r.reconstruction for r in shown],
        [r.path.stem for r in shown], Path(out_dir) / FIGURE_NAME,
        [f"PSNR {r.scores.psnr_db:.1f} dB, SSIM {r.scores.ssim:.3f}" for r in shown],
    )
    for row in rows:
        click.echo(f"{row['image']}: MSE {row['mse']:.5f}, PSNR {row['psnr_db']:.2f} dB, "
                   f"SSIM {row['ssim']:.4f}")
    click.echo(f"reconstructions and metrics ({tables['csv'].name}, {tables['md'].name}, "
               f"{tables['json'].name}) in {out_dir}; figure: {figure}")
