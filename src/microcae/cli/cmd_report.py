"""``microcae report``: re-measure every claim of the study and write REPRODUCTION.md."""

from __future__ import annotations

import shlex
from pathlib import Path

import click

from microcae.cli.options import images_argument, model_option, out_dir_option, progress_option


@click.command("report")
@images_argument
@out_dir_option
@model_option
@click.option("--study-like", "study_like", multiple=True, metavar="GROUP",
              help="Sub-folder of ferrite-pearlite steels like the study's (repeatable); the "
                   "dark-phase claim is judged on them.")
@click.option("--steel-models", type=click.Path(path_type=Path, file_okay=False), default=None,
              help="Folder of study-like models (benchmarks/train_steel.py on the study-like "
                   "groups): the study's claims are judged with them.")
@click.option("--attack-run", type=click.Path(path_type=Path, dir_okay=False), default=None,
              help="Stored owner-budget attack run (benchmarks/attack_decoder.py) of the same "
                   "owner and data: the key claim is judged on it.")
@click.option("--readme", type=click.Path(path_type=Path, dir_okay=False), default=None,
              help="Regenerate the verdict table between the markers of this README.")
@click.option("--quick", is_flag=True,
              help="Tiny settings that check the pipeline in seconds (numbers not quotable).")
@progress_option
def command(images: tuple[Path, ...], out_dir: Path, model_path: Path | None,
            study_like: tuple[str, ...], steel_models: Path | None, attack_run: Path | None,
            readme: Path | None, quick: bool, progress: bool) -> None:
    """Re-measure the study's claims on IMAGES (files or folders) and write OUT/REPRODUCTION.md.

    Folders are tiled and split by source image as 'microcae prepare' does; the report, its two
    figures and report.json (every number) are written only once every measurement succeeded.
    """
    from microcae.evaluation.reproduction import FULL, QUICK, measure, write_report
    from microcae.evaluation.reproduction.document import read_readme

    if readme is not None:
        read_readme(readme)  # fail before the measurements, not after
    result = measure(images, model_path, QUICK if quick else FULL, study_like, progress,
                     steel_models, attack_run)
    words = ["microcae", "report", *map(str, images), "--out", str(out_dir)]
    words += ["--model", str(model_path)] if model_path else []
    for group in study_like:
        words += ["--study-like", group]
    for flag, value in (("--steel-models", steel_models), ("--attack-run", attack_run),
                        ("--readme", readme)):
        words += [flag, str(value)] if value else []
    words += ["--quick"] if quick else []
    command_line = " ".join(shlex.quote(w) for w in words)
    paths = write_report(result, out_dir, command_line, readme)
    click.echo(f"report written in {result.seconds['total']:.0f} s:")
    for claim in result.claims:
        click.echo(f"  {claim.verdict:>13}  {claim.claim}")
    for name, path in paths.items():
        click.echo(f"{name}: {path}")
