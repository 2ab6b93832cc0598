"""``microcae train``: fit the study's CAE or a rate–distortion coding model to a prepared set."""

from __future__ import annotations

from pathlib import Path

import click

from microcae.cli.options import POSITIVE_FLOAT, FiniteFloatRange, LazyChoice, progress_option

ARCH_CHOICE = LazyChoice(("study", "rd-study", "rd-wide", "codec"),
                         "microcae.training.architectures:ARCHITECTURES")
ARCH_HELP = ("study: the paper's CAE, MSE (latent 16×16×8 per 256² tile); rd-study, rd-wide: "
             "the CAE + a factorized entropy model (rd-wide: 64-channel stages, 16×16×32 "
             "latent), rate–distortion; codec: microcae's codec (GDN transforms, mean-scale "
             "hyperprior with an integer hyper-synthesis, whole images), rate–distortion.")
_LABELS = {"mse": "MSE"}


def _columns(row: dict[str, float], names: list[str]) -> str:
    return ", ".join(f"{split} {_LABELS.get(name, name)} {row[f'{split}_{name}']:.5g}"
                     for split, name in (n.split("_", 1) for n in names))


def _widths(channels: str) -> tuple[int, ...]:
    try:
        return tuple(int(c) for c in channels.split(","))
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--channels") from None


@click.command("train")
@click.argument("data", type=click.Path(path_type=Path))
@click.option("--out", "-o", "out", type=click.Path(path_type=Path, dir_okay=False),
              required=True, help="Model file to write (NAME.safetensors).")
@click.option("--arch", default="study", show_default=True, type=ARCH_CHOICE, help=ARCH_HELP)
@click.option("--lmbda", default=None, type=POSITIVE_FLOAT,
              help="Rate–distortion trade-off of coding architectures: loss = lmbda·255²·MSE + "
                   "bpp (larger: more bits, higher quality). Default 0.01.")
@click.option("--channels", default=None,
              help="Encoder widths, comma-separated (the decoder mirrors them); overrides "
                   "the architecture's.")
@click.option("--epochs", default=50, show_default=True, type=click.IntRange(1))
@click.option("--batch-size", default=32, show_default=True, type=click.IntRange(1))
@click.option("--lr", default=1e-3, show_default=True, type=POSITIVE_FLOAT)
@click.option("--seed", default=0, show_default=True, type=click.IntRange(0, 2**63 - 1))
@click.option("--augment/--no-augment", default=False, show_default=True,
              help="Random flips and 90° rotations of training tiles.")
@click.option("--grad-clip", default=None, type=POSITIVE_FLOAT,
              help="Clip the gradient norm to this (default: none for study, 1 for rd-*).")
@click.option("--lr-drop", default=None, type=FiniteFloatRange(0, 1, min_open=True),
              help="Divide the learning rate by 10 after this fraction of the epochs or of "
                   "--max-seconds (default: never for study, 0.8 for rd-*).")
@click.option("--max-seconds", default=None, type=POSITIVE_FLOAT,
              help="Stop after the epoch in which this much training time has passed.")
@click.option("--resume", is_flag=True,
              help="Continue from NAME.checkpoint.safetensors after an interrupted run (with "
                   "--force: extend a finished run to more --epochs).")
@click.option("--force", is_flag=True,
              help="Replace an existing --out (latent files made with it no longer decode); "
                   "without --resume, start afresh over an earlier run's checkpoint.")
@click.option("--device", default="cpu", show_default=True,
              help="cpu or cuda (single process; torchrun picks each process's GPU).")
@click.option("--init", "init", default=None,
              help="Start from this model's weights (a file or bundled name of the same kind and "
                   "configuration) instead of a fresh initialisation: fine-tune it, e.g. at "
                   "another --lmbda. Recorded in the new model's provenance.")
@click.option("--note", default=None,
              help="Free text kept in the model's provenance (e.g. how earlier epochs ran).")
@progress_option
def command(data: Path, out: Path, arch: str, lmbda: float | None, channels: str | None,
            resume: bool, force: bool, device: str, init: str | None, note: str | None,
            progress: bool,
            **loop: float | int | bool | None) -> None:
    """Train a model on DATA (a folder written by 'microcae prepare').

    The study's CAE (--arch study) is trained with MSE; the coding architectures (rd-*, codec) with
    the rate–distortion loss, and their files hold the code tables 'microcae encode' uses to
    range-code latents. NAME.checkpoint.safetensors is written every epoch, NAME.train.csv,
    NAME.train.json and NAME.loss.png at the end.
    """
    from microcae.data.dataset import load_dataset
    from microcae.figures.training import plot_loss_curve
    from microcae.training.architectures import ARCHITECTURES
    from microcae.training.distributed import single_device
    from microcae.training.loop import train
    from microcae.training.outputs import side_file

    architecture = ARCHITECTURES[arch]
    if channels is not None:
        try:
            architecture = architecture.with_channels(_widths(channels))
        except ValueError as exc:
            raise click.BadParameter(str(exc), param_hint="--channels") from None
    objective = architecture.objective(lmbda)
    settings = architecture.settings(**{k: v for k, v in loop.items() if v is not None})
    single_device(device)  # refuse a bad --device before reading the data
    result = train(load_dataset(data), out, settings, build_model=architecture.build,
                   objective=objective, resume=resume, overwrite=force, progress=progress,
                   on_epoch=lambda row: _report_epoch(row, objective.columns()), device=device,
                   note=note, init=init)
    if result.rank != 0:  # under torchrun, rank 0 reports
        return
    result.files["loss_png"] = plot_loss_curve(result.history, side_file(out, ".loss.png"))
    click.echo(f"trained {len(result.history)} epochs: "
               f"{_columns(result.history[-1], objective.columns())}")
    for name, path in result.files.items():
        click.echo(f"{name}: {path}")


def _report_epoch(row: dict[str, float], names: list[str]) -> None:
    click.echo(f"epoch {row['epoch']:.0f}: {_columns(row, names)} "
               f"({row['tiles_per_second']:.1f} tiles/s)")
