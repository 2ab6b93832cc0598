"""``microcae train``: fit the CAE to a prepared set."""

from __future__ import annotations

from pathlib import Path

import click

from microcae.cli.options import progress_option, training_options
from microcae.data.dataset import load_dataset
from microcae.models.cae import CAEConfig
from microcae.training.distributed import single_device
from microcae.training.loop import TrainSettings, train


def _report_epoch(row: dict[str, float]) -> None:
    click.echo(f"epoch {row['epoch']:.0f}: train MSE {row['train_mse']:.5f}, "
               f"test MSE {row['test_mse']:.5f} ({row['tiles_per_second']:.1f} tiles/s)")


@click.command("train")
@click.argument("data", type=click.Path(path_type=Path))
@click.option("--out", "-o", "out", type=click.Path(path_type=Path, dir_okay=False),
              required=True, help="Model file to write (NAME.safetensors).")
@training_options
@click.option("--channels", default="64,32,16,8", show_default=True,
              help="Encoder widths, comma-separated (decoder mirrors them).")
@click.option("--note", default=None,
              help="Free text kept in the model's provenance (e.g. how earlier epochs ran).")
@progress_option
def command(data: Path, out: Path, epochs: int, batch_size: int, lr: float, seed: int,
            augment: bool, channels: str, resume: bool, note: str | None, device: str,
            progress: bool) -> None:
    """Train the autoencoder on DATA (a folder written by 'microcae prepare')."""
    try:
        widths = tuple(int(c) for c in channels.split(","))
        architecture = CAEConfig(channels=widths)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--channels") from None
    single_device(device)  # refuse a bad --device before reading the data
    settings = TrainSettings(epochs=epochs, batch_size=batch_size, lr=lr, seed=seed,
                             augment=augment, model=architecture)
    result = train(load_dataset(data), out, settings, resume=resume, progress=progress,
                   on_epoch=_report_epoch, device=device, note=note)
    if result.rank != 0:  # under torchrun, rank 0 reports
        return
    last = result.history[-1]
    click.echo(f"trained {len(result.history)} epochs: train MSE {last['train_mse']:.5f}, "
               f"test MSE {last['test_mse']:.5f}")
    for name, path in result.files.items():
        click.echo(f"{name}: {path}")
