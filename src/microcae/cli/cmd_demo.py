"""``microcae demo``: the main job on the bundled samples and model."""

from __future__ import annotations

import time
from pathlib import Path

import click

from microcae.cli.options import model_option, progress_option


@click.command("demo")
@click.option("--out", "-o", "out_dir", type=click.Path(path_type=Path, file_okay=False),
              default=Path("microcae-demo"), show_default=True, help="Output folder.")
@model_option
@progress_option
def command(out_dir: Path, model_path: Path | None, progress: bool) -> None:
    """Reconstruct the bundled sample micrographs and map their relevance."""
    from microcae.pipelines.demo import run_demo

    started = time.perf_counter()
    written = run_demo(out_dir, model_path, progress=progress)
    click.echo(f"demo finished in {time.perf_counter() - started:.0f} s; wrote:")
    for name, path in written.items():
        click.echo(f"  {name}: {path}")
