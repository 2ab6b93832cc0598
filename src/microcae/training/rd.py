"""Quantisation-aware rate–distortion training of an :class:`~microcae.models.rdcae.RDCAE`.

Loss per batch: ``lmbda · 255² · MSE + bpp``, where MSE is on the [0, 1] pixel scale (so
``255² · MSE`` is the MSE in 8-bit grey levels, the convention of Ballé et al. and CompressAI)
and bpp is the prior's estimate for latents with additive uniform noise U(-½, ½). The decoder
sees the rounded latents with a straight-through gradient (Minnen & Singh, "Channel-wise
autoregressive entropy models", ICIP 2020, call this mixed quantisation), so training decodes
exactly what the files will hold. The encoder learns the latents' scale itself: there is no
separate quantisation step. One Adam optimiser covers the autoencoder and the prior (the code
tables' ranges come from the learned CDF, so no auxiliary quantile loss is needed). Gradients
are clipped to norm 1; the learning rate drops tenfold for the last part of the run.

Epoch order, augmentation, optimiser and checkpoints are those of
:mod:`microcae.training.loop`, so a
run resumes exactly like ``microcae train --resume``. Imports neither ``constriction`` nor the
codec, so it runs where only torch and numpy are installed.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from microcae import __version__
from microcae.data.dataset import PreparedSet
from microcae.models.rdcae import RDCAE, RDConfig
from microcae.models.registry import save_model
from microcae.training.distributed import single_device
from microcae.training.loop import (
    TrainSettings,
    augment_batch,
    batch_tensor,
    epoch_order,
    load_checkpoint,
    make_optimizer,
    save_checkpoint,
    side_file,
)
from microcae.util.atomic import write_text_atomic
from microcae.util.errors import MicrocaeError
from microcae.util.runtime import configure_allocator, to_channels_last
from microcae.util.table_writer import csv_text

GRAD_CLIP = 1.0


@dataclass(frozen=True)
class RDTrainSettings:
    """Settings of a rate–distortion run.

    Attributes
    ----------
    lmbda
        Weight of the distortion: loss = lmbda · 255² · MSE + bpp. Larger: higher rate and
        quality.
    base
        Epochs, batch size, Adam settings, seed, augmentation and the CAE architecture.
    filters
        Hidden widths of the prior's per-channel networks.
    lr_drop
        Fraction of the run (epochs, or ``max_seconds`` if that comes first) after which the
        learning rate is divided by 10.
    max_seconds
        Stop after the epoch in which this much training time has passed (None: no limit).
    """

    lmbda: float = 0.01
    base: TrainSettings = field(default_factory=TrainSettings)
    filters: tuple[int, ...] = (3, 3, 3)
    lr_drop: float = 0.8
    max_seconds: float | None = None

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dictionary."""
        return asdict(self)


@dataclass
class RDTrainResult:
    """The trained model (eval mode, CPU, with code tables), per-epoch history, written files."""

    model: RDCAE
    history: list[dict[str, float]]
    files: dict[str, Path]


def rd_loss(model: nn.Module, batch: torch.Tensor, lmbda: float) -> tuple[torch.Tensor, float,
                                                                          float]:
    """Loss ``lmbda · 255² · MSE + bpp`` of a (B, 1, H, W) batch; also returns (MSE, bpp)."""
    out = model(batch)
    mse = nn.functional.mse_loss(out["x_hat"], batch)
    loss = lmbda * 255.0**2 * mse + out["bpp"]
    return loss, float(mse.detach()), float(out["bpp"].detach())


@torch.no_grad()
def evaluate_rd(model: RDCAE, tiles: np.ndarray, indices: np.ndarray,
                batch_size: int = 16) -> dict[str, float]:
    """Mean MSE (0..1 scale) and estimated bpp of rounded latents over tiles ``indices``.

    Returns NaNs when there are no tiles. The bpp is the prior's estimate, not a file size.
    """
    if len(indices) == 0:
        return {"mse": math.nan, "bpp": math.nan}
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    mse = bpp = 0.0
    for start in range(0, len(indices), batch_size):
        batch = batch_tensor(tiles, indices[start : start + batch_size]).to(device)
        out = model(batch)
        mse += float(nn.functional.mse_loss(out["x_hat"], batch, reduction="sum"))
        bpp += float(out["bpp"]) * len(batch)
    model.train(was_training)
    pixels = tiles.shape[1] * tiles.shape[2]
    return {"mse": mse / (len(indices) * pixels), "bpp": bpp / len(indices)}


def _identity(settings: RDTrainSettings, data: PreparedSet) -> str:
    fixed = {k: v for k, v in settings.to_dict().items() if k != "max_seconds"}
    fixed["base"] = {k: v for k, v in fixed["base"].items() if k != "epochs"}
    return json.dumps({"rd": fixed, "data": data.manifest_sha256}, sort_keys=True)


def train_rd(
    data: PreparedSet,
    out: str | Path,
    settings: RDTrainSettings | None = None,
    resume: bool = False,
    progress: bool = True,
    on_epoch: Callable[[dict[str, float]], None] | None = None,
    device: str = "cpu",
) -> RDTrainResult:
    """Train an RD model on a prepared set; checkpoint every epoch; write model and log.

    Parameters
    ----------
    data
        Prepared set with a non-empty train split; its tile side must be a multiple of the
        architecture's downsampling factor.
    out
        Model file ``NAME.safetensors``; beside it ``NAME.checkpoint.safetensors`` (every epoch)
        and ``NAME.train.csv`` (per-epoch loss, MSE, estimated bpp, learning rate).
    settings
        Run settings (default: lmbda 0.01, the study's architecture and Adam settings).
    resume
        Continue from the checkpoint if present (same data and settings except epochs and
        ``max_seconds``).
    progress
        Progress bar on stderr.
    on_epoch
        Called with each epoch's log row after its checkpoint is written.
    device
        ``"cpu"`` or ``"cuda"``; asking for CUDA where there is none is a MicrocaeError.

    Returns
    -------
    RDTrainResult
        The model on the CPU in eval mode, with its code tables built from the final prior.
    """
    settings = settings or RDTrainSettings()
    out = Path(out)
    where = single_device(device)
    configure_allocator()
    base = settings.base
    train_idx, test_idx = data.indices("train"), data.indices("test")
    if len(train_idx) == 0:
        raise MicrocaeError(f"{data.path}: the prepared set has no training tiles")
    if data.tiles.shape[1] % base.model.downsample:
        raise MicrocaeError(f"tile side {data.tiles.shape[1]} is not a multiple of "
                            f"{base.model.downsample}")
    torch.manual_seed(base.seed)
    model = to_channels_last(RDCAE(RDConfig(base.model, settings.filters))).to(where)
    optimizer = make_optimizer(model, base)
    identity = _identity(settings, data)
    checkpoint = side_file(out, ".checkpoint.safetensors")
    start_epoch, history = 0, []
    if resume and checkpoint.exists():
        start_epoch, history = load_checkpoint(checkpoint, model, optimizer, identity)
    elif not resume and checkpoint.exists():
        raise MicrocaeError(f"{checkpoint}: a checkpoint exists; use --resume or delete it")
    drop_epoch = math.ceil(settings.lr_drop * base.epochs)
    elapsed = sum(row["seconds"] for row in history)
    for epoch in range(start_epoch, base.epochs):
        late = settings.max_seconds is not None and elapsed >= settings.lr_drop * (
            settings.max_seconds)
        lr = base.lr * (0.1 if epoch >= drop_epoch or late or (
            history and history[-1]["lr"] < base.lr) else 1.0)
        for group in optimizer.param_groups:
            group["lr"] = lr
        model.train()
        started = time.perf_counter()
        order = train_idx[epoch_order(len(train_idx), base.seed, epoch)]
        steps = math.ceil(len(order) / base.batch_size)
        totals = np.zeros(3)
        bar = tqdm(range(steps), desc=f"epoch {epoch + 1}/{base.epochs}", unit="step",
                   disable=not progress, leave=False)
        for step in bar:
            chosen = order[step * base.batch_size : (step + 1) * base.batch_size]
            tiles = np.ascontiguousarray(data.tiles[np.sort(chosen)], dtype=np.float32)
            if base.augment:
                tiles = augment_batch(tiles, base.seed, epoch, step)
            batch = to_channels_last(torch.from_numpy(np.ascontiguousarray(tiles))[:, None])
            optimizer.zero_grad(set_to_none=True)
            loss, mse, bpp = rd_loss(model, batch.to(where), settings.lmbda)
            loss.backward()
            nn.utils.clip_grad_norm_(model.parameters(), GRAD_CLIP)
            optimizer.step()
            totals += np.array([float(loss.detach()), mse, bpp]) * len(chosen)
            bar.set_postfix(loss=f"{totals[0] / ((step + 1) * base.batch_size):.4f}")
        seconds = time.perf_counter() - started
        elapsed += seconds
        test = evaluate_rd(model, data.tiles, test_idx)
        mean = [float(t) / len(order) for t in totals]
        row = {"epoch": epoch + 1, "train_loss": mean[0], "train_mse": mean[1],
               "train_bpp": mean[2],
               "test_mse": test["mse"], "test_bpp": test["bpp"], "lr": lr, "seconds": seconds}
        history.append(row)
        save_checkpoint(checkpoint, model, optimizer, epoch + 1, history, identity)
        if on_epoch:
            on_epoch(row)
        if settings.max_seconds is not None and elapsed >= settings.max_seconds:
            break
    model = model.cpu().eval()
    final = evaluate_rd(model, data.tiles, test_idx)
    provenance = {
        "trained_with": f"microcae {__version__}, torch {torch.__version__}",
        "objective": "lmbda * 255^2 * MSE(0..1 scale) + estimated bpp",
        "data": {"path": str(data.path), "manifest_sha256": data.manifest_sha256,
                 "train_tiles": len(train_idx), "test_tiles": len(test_idx),
                 "split_by": data.manifest.get("split_by")},
        "settings": settings.to_dict(),
        "epochs_completed": len(history),
        "final_test_estimate": final,
        "history": history,
        "device": str(where),
        "finished": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    save_model(model, out, provenance)
    files = {"model": out, "checkpoint": checkpoint, "log_csv": side_file(out, ".train.csv")}
    write_text_atomic(files["log_csv"], csv_text(history))
    return RDTrainResult(model, history, files)
