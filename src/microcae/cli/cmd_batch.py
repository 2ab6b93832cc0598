"""``microcae batch``: encode, map relevance or reconstruct large collections into a Zarr store."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import click

from microcae.cli.options import images_argument, model_option, progress_option

if TYPE_CHECKING:
    from microcae.models.base import MicrocaeModel
    from microcae.pipelines.batch import BatchReport
    from microcae.pipelines.batch.jobs import TileJob

_out_option = click.option(
    "--out", "-o", "out", type=click.Path(path_type=Path, file_okay=False), required=True,
    help="Zarr store to write (NAME.zarr); an interrupted run continues where it stopped.")
_scheduler_option = click.option(
    "--scheduler", default=None, metavar="ADDRESS",
    help="Dask scheduler address (tcp://host:8786). Default: threads of this process.")
_tile_option = click.option("--tile", default=256, show_default=True, type=click.IntRange(16),
                            help="Tile side in pixels.")
_block_option = click.option("--block", default=4, show_default=True, type=click.IntRange(1),
                             help="Tiles per task side (a task holds block² tiles).")
_batch_option = click.option("--batch-size", default=8, show_default=True,
                             type=click.IntRange(1), help="Tiles per model call.")
_workers_option = click.option("--workers", default=2, show_default=True,
                               type=click.IntRange(1), help="Threads without --scheduler.")
_export_option = click.option(
    "--export", "export_dir", type=click.Path(path_type=Path, file_okay=False), default=None,
    help="Also write the per-file outputs (.mcl, .relevance.npy, .reconstruction.png) here.")


def _options(function):  # noqa: ANN001, ANN202 - click decorator stack
    for option in reversed((images_argument, model_option, _out_option, _scheduler_option,
                            _tile_option, _block_option, _batch_option, _workers_option,
                            _export_option, progress_option)):
        function = option(function)
    return function


def _run(make_job: Callable[[MicrocaeModel, int], TileJob], images: tuple[Path, ...],
         model_path: Path | None, out: Path, scheduler: str | None, tile: int, block: int,
         batch_size: int, workers: int, export_dir: Path | None, progress: bool) -> None:
    """Load the model, run the job ``make_job(model, tile)`` over the images, then export."""
    from microcae.models.registry import load_model
    from microcae.pipelines.batch import BatchSettings, run_batch
    from microcae.pipelines.batch.export import export_store

    settings = BatchSettings(tile=tile, block=block, batch_size=batch_size, workers=workers)
    model = load_model(model_path)
    job = make_job(model, tile)
    report = run_batch(images, job, model, out, settings, scheduler, progress)
    _echo(report, job)
    if export_dir is not None:
        files = export_store(out, model, export_dir, progress)
        click.echo(f"exported {len(files)} files to {export_dir}")


def _echo(report: BatchReport, job: TileJob) -> None:
    click.echo(f"{job.name}: {report.images} images, {report.blocks} blocks "
               f"({report.skipped} already done), {report.tiles} tiles computed in "
               f"{report.seconds:.1f} s ({report.tiles_per_second:.1f} tiles/s)")
    click.echo(f"store: {report.store} (array '{job.array}' in one group per image)")


@click.group("batch")
def command() -> None:
    """Process large collections or huge images tile by tile into a Zarr store (Dask-ready)."""


@command.command("encode")
@_options
def encode(**arguments) -> None:  # noqa: ANN003
    """Store latents of every tile: (rows, cols, C, h, w) float32 per image."""
    from microcae.pipelines.batch import JOBS

    _run(lambda model, tile: JOBS["encode"](), **arguments)


@command.command("saliency")
@_options
@click.option("--method", default=None,
              help="Relevance method (a 'microcae saliency --method' choice). Default: the "
                   "cheapest exact engine for the model (vjp for the study CAE, patches for the "
                   "codec).")
def saliency(method: str | None, **arguments) -> None:  # noqa: ANN003
    """Store raw relevance maps r_ij: (H, W) float32 per image, chunked by tile."""
    from microcae.pipelines.batch import JOBS

    _run(lambda model, tile: JOBS["saliency"](method=method, encoder=model.encoder, tile=tile),
         **arguments)


@command.command("reconstruct")
@_options
def reconstruct(**arguments) -> None:  # noqa: ANN003
    """Store reconstructions: (H, W) float32 per image in [0, 1] units, chunked by tile."""
    from microcae.pipelines.batch import JOBS

    _run(lambda model, tile: JOBS["reconstruct"](), **arguments)
