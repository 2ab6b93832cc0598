"""``microcae train-rd``: rate–distortion training of a CAE with a learned entropy model."""

from __future__ import annotations

from pathlib import Path

import click

from microcae.cli.options import progress_option, training_options
from microcae.data.dataset import load_dataset
from microcae.models.cae import CAEConfig
from microcae.models.rdcae import ARCHITECTURES
from microcae.training.distributed import single_device
from microcae.training.loop import TrainSettings
from microcae.training.rd import RDTrainSettings, train_rd


def _report_epoch(row: dict[str, float]) -> None:
    click.echo(f"epoch {row['epoch']:.0f}: loss {row['train_loss']:.4f}, "
               f"train MSE {row['train_mse']:.5f} at {row['train_bpp']:.4f} bpp, "
               f"test MSE {row['test_mse']:.5f} at {row['test_bpp']:.4f} bpp (estimated)")


@click.command("train-rd")
@click.argument("data", type=click.Path(path_type=Path))
@click.option("--out", "-o", "out", type=click.Path(path_type=Path, dir_okay=False),
              required=True, help="RD model file to write (NAME.safetensors).")
@click.option("--lmbda", default=0.01, show_default=True,
              type=click.FloatRange(min=0, min_open=True),
              help="Rate–distortion trade-off: loss = lmbda·255²·MSE + bpp (larger: more bits, "
                   "higher quality).")
@click.option("--arch", default="study", show_default=True, type=click.Choice(list(ARCHITECTURES)),
              help="study: the paper's CAE (latent 16×16×8); wide: 64-channel stages, "
                   "latent 16×16×32.")
@click.option("--channels", default=None,
              help="Encoder widths, comma-separated; overrides --arch.")
@training_options
@click.option("--max-seconds", default=None, type=click.FloatRange(min=0, min_open=True),
              help="Stop after the epoch in which this much training time has passed.")
@progress_option
def command(data: Path, out: Path, lmbda: float, arch: str, channels: str | None, epochs: int,
            batch_size: int, lr: float, seed: int, augment: bool, max_seconds: float | None,
            resume: bool, device: str, progress: bool) -> None:
    """Train an RD model (CAE + factorized entropy model) on DATA from 'microcae prepare'.

    The model file holds the integer code tables that 'microcae encode' uses to range-code
    the latents; 'microcae encode/decode --model' accept it like a CAE.
    """
    architecture = ARCHITECTURES[arch]
    if channels is not None:
        try:
            architecture = CAEConfig(channels=tuple(int(c) for c in channels.split(",")))
        except ValueError as exc:
            raise click.BadParameter(str(exc), param_hint="--channels") from None
    single_device(device)  # refuse a bad --device before reading the data
    settings = RDTrainSettings(lmbda=lmbda, max_seconds=max_seconds, base=TrainSettings(
        epochs=epochs, batch_size=batch_size, lr=lr, seed=seed, augment=augment,
        model=architecture))
    result = train_rd(load_dataset(data), out, settings, resume=resume, progress=progress,
                      on_epoch=_report_epoch, device=device)
    last = result.history[-1]
    click.echo(f"trained {len(result.history)} epochs: test MSE {last['test_mse']:.5f} at "
               f"{last['test_bpp']:.4f} bpp (estimated)")
    for name, path in result.files.items():
        click.echo(f"{name}: {path}")
