"""Training loop of the study (MSE, Adam 1e-3, batch 32) with checkpoints, exact resume and logs.

Determinism: the weights are initialised from ``seed``, and epoch ``e`` visits the training tiles
in the order of a permutation drawn from a generator seeded with ``(seed, e)`` (likewise the
optional flips/rotations). A checkpoint written at the end of every epoch holds the weights and the
Adam state, so a run killed at any point and resumed with ``--resume`` ends with the same weights
as an uninterrupted run on the same machine and thread count.

Data parallelism: under ``torchrun --nproc_per_node N`` every process walks the same permutation,
takes its contiguous share of each global batch of ``batch_size`` tiles (see
:meth:`microcae.training.distributed.ProcessGroup.shard`) and trains a
``DistributedDataParallel`` copy of
the model whose loss is scaled so that the averaged gradient is that of the global batch's mean
loss. The run therefore follows the single-process one up to floating-point rounding. Rank 0
alone logs, checkpoints and writes the model; all ranks read the checkpoint on ``--resume``, so
the output folder must be on a file system that every node sees.
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
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

from microcae import __version__
from microcae.data.dataset import PreparedSet
from microcae.models.cae import CAE, CAEConfig
from microcae.models.registry import save_model
from microcae.training.distributed import ProcessGroup, process_group
from microcae.util.atomic import atomic_path, write_text_atomic
from microcae.util.errors import MicrocaeError
from microcae.util.runtime import configure_allocator, to_channels_last

CHECKPOINT_FORMAT = "microcae.checkpoint"


@dataclass(frozen=True)
class TrainSettings:
    """Hyper-parameters of a run (defaults: the study's).

    Attributes
    ----------
    epochs, batch_size
        Passes over the training split and tiles per Adam step.
    lr, beta1, beta2, eps
        Adam settings.
    seed
        Seeds weight initialisation and the per-epoch shuffles.
    augment
        Random flips and 90° rotations of training tiles (not in the study).
    model
        Architecture to train.
    """

    epochs: int = 50
    batch_size: int = 32
    lr: float = 1e-3
    beta1: float = 0.9
    beta2: float = 0.999
    eps: float = 1e-8
    seed: int = 0
    augment: bool = False
    model: CAEConfig = field(default_factory=CAEConfig)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dictionary (the model configuration as a nested dict)."""
        return asdict(self)


@dataclass
class TrainResult:
    """What a run produced: the model, per-epoch history and the files written.

    ``rank`` is the process's rank under ``torchrun`` (0 otherwise); only rank 0 writes the files
    and keeps the history.
    """

    model: CAE
    history: list[dict[str, float]]
    files: dict[str, Path]
    rank: int = 0


def make_optimizer(model: nn.Module, settings: TrainSettings) -> torch.optim.Adam:
    """Adam with the run's learning rate, betas and epsilon."""
    return torch.optim.Adam(
        model.parameters(), lr=settings.lr, betas=(settings.beta1, settings.beta2),
        eps=settings.eps,
    )


def train_step(model: nn.Module, optimizer: torch.optim.Optimizer, batch: torch.Tensor) -> float:
    """One Adam step on the MSE reconstruction loss of ``batch`` (B, 1, H, W); returns the loss."""
    optimizer.zero_grad(set_to_none=True)
    loss = nn.functional.mse_loss(model(batch)["x_hat"], batch)
    loss.backward()
    optimizer.step()
    return float(loss.detach())


def shard_step(model: nn.Module, optimizer: torch.optim.Optimizer, shard: torch.Tensor,
               global_tiles: int, world_size: int) -> float:
    """One Adam step of data-parallel training on this process's ``shard`` of a global batch.

    Parameters
    ----------
    model
        The ``DistributedDataParallel`` model (it averages gradients over the ranks).
    shard
        (b, 1, H, W) tiles of this rank; b may be 0.
    global_tiles, world_size
        Tiles in the global batch (over all ranks) and the number of ranks.

    Returns
    -------
    float
        Summed squared error of the shard divided by H·W (the sum of its tiles' MSEs).
    """
    optimizer.zero_grad(set_to_none=True)
    pixels = shard.shape[-2] * shard.shape[-1]
    summed = (model(shard)["x_hat"] - shard).pow(2).sum()
    (summed * (world_size / (global_tiles * pixels))).backward()
    optimizer.step()
    return float(summed.detach()) / pixels


def epoch_order(n_tiles: int, seed: int, epoch: int) -> np.ndarray:
    """Permutation of ``range(n_tiles)`` for ``epoch`` (0-based), fixed by ``(seed, epoch)``."""
    return np.random.default_rng([seed, epoch]).permutation(n_tiles)


def augment_batch(batch: np.ndarray, seed: int, epoch: int, step: int) -> np.ndarray:
    """Flip and rotate each (H, W) tile of a (B, H, W) batch by a draw fixed by its position."""
    rng = np.random.default_rng([seed, epoch, step, 1])
    out = np.empty_like(batch)
    for i, tile in enumerate(batch):
        turns, flip = rng.integers(4), rng.integers(2)
        tile = np.rot90(tile, k=int(turns))
        out[i] = tile[:, ::-1] if flip else tile
    return out


def batch_tensor(tiles: np.ndarray, indices: np.ndarray) -> torch.Tensor:
    """Gather tiles ``indices`` of a (T, H, W) array into a (B, 1, H, W) channels-last tensor."""
    gathered = np.ascontiguousarray(tiles[np.sort(indices)], dtype=np.float32)
    return to_channels_last(torch.from_numpy(gathered)[:, None])


def _epoch_losses(model: nn.Module, optimizer: torch.optim.Adam, data: PreparedSet,
                  order: np.ndarray, settings: TrainSettings, epoch: int, group: ProcessGroup,
                  progress: bool) -> float:
    """Train one epoch over tile indices ``order``; return the summed per-tile MSE of all ranks."""
    steps = math.ceil(len(order) / settings.batch_size)
    bar = tqdm(range(steps), desc=f"epoch {epoch + 1}/{settings.epochs}", unit="step",
               disable=not (progress and group.is_main), leave=False)
    total, seen = 0.0, 0
    for step in bar:
        chosen = order[step * settings.batch_size : (step + 1) * settings.batch_size]
        tiles = np.ascontiguousarray(data.tiles[np.sort(chosen)], dtype=np.float32)
        if settings.augment:
            tiles = augment_batch(tiles, settings.seed, epoch, step)
        tiles = tiles[group.shard(len(tiles))]
        batch = to_channels_last(torch.from_numpy(np.ascontiguousarray(tiles))[:, None])
        batch = batch.to(group.device)
        if group.distributed:
            total += shard_step(model, optimizer, batch, len(chosen), group.world_size)
        else:
            total += train_step(model, optimizer, batch) * len(chosen)
        seen += len(chosen)
        bar.set_postfix(mse=f"{total * group.world_size / seen:.5f}")
    return group.all_sum(total)


@torch.no_grad()
def evaluate_mse(model: nn.Module, tiles: np.ndarray, indices: np.ndarray,
                 batch_size: int = 16) -> float:
    """Mean squared reconstruction error over tiles ``indices`` (NaN if there are none)."""
    if len(indices) == 0:
        return math.nan
    was_training = model.training
    model.eval()
    total = 0.0
    device = next(model.parameters()).device
    for start in range(0, len(indices), batch_size):
        batch = batch_tensor(tiles, indices[start : start + batch_size]).to(device)
        total += float(nn.functional.mse_loss(model(batch)["x_hat"], batch, reduction="sum"))
    model.train(was_training)
    return total / (len(indices) * tiles.shape[1] * tiles.shape[2])


def _checkpoint_path(out: Path) -> Path:
    return out.with_name(out.name.removesuffix(".safetensors") + ".checkpoint.safetensors")


def side_file(out: Path, suffix: str) -> Path:
    """Path beside the model file ``NAME.safetensors``: ``NAME`` + ``suffix``."""
    return out.with_name(out.name.removesuffix(".safetensors") + suffix)


def _run_identity(settings: TrainSettings, data: PreparedSet) -> str:
    """Describe what a checkpoint must share with the run resuming it (not the epoch count)."""
    fixed = {k: v for k, v in settings.to_dict().items() if k != "epochs"}
    return json.dumps({"settings": fixed, "data": data.manifest_sha256}, sort_keys=True)


def save_checkpoint(path: Path, model: nn.Module, optimizer: torch.optim.Adam, epoch: int,
                    history: list[dict[str, float]], identity: str) -> None:
    """Write weights, Adam moments and progress to a safetensors checkpoint, atomically."""
    tensors = {f"model.{k}": v.detach().cpu().contiguous()
               for k, v in model.state_dict().items()}
    steps = {}
    for index, state in optimizer.state_dict()["state"].items():
        tensors[f"adam.{index}.exp_avg"] = state["exp_avg"].cpu().contiguous()
        tensors[f"adam.{index}.exp_avg_sq"] = state["exp_avg_sq"].cpu().contiguous()
        steps[str(index)] = float(state["step"])
    metadata = {"format": CHECKPOINT_FORMAT, "epoch": str(epoch), "identity": identity,
                "history": json.dumps(history), "adam_steps": json.dumps(steps)}
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata=metadata)


def load_checkpoint(path: Path, model: nn.Module, optimizer: torch.optim.Adam,
                    identity: str) -> tuple[int, list[dict[str, float]]]:
    """Restore a checkpoint into ``model`` and ``optimizer``; return (epochs done, history).

    Raises
    ------
    MicrocaeError
        If the checkpoint is unreadable or belongs to another run (other data or settings).
    """
    try:
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as handle:
            metadata = handle.metadata() or {}
        tensors = load_file(str(path))
    except (SafetensorError, OSError, ValueError) as exc:
        raise MicrocaeError(f"{path}: unreadable checkpoint ({exc})") from None
    if metadata.get("format") != CHECKPOINT_FORMAT:
        raise MicrocaeError(f"{path}: not a microcae training checkpoint")
    if metadata.get("identity") != identity:
        raise MicrocaeError(f"{path}: checkpoint is of another run (different data or settings)")
    model.load_state_dict({k[6:]: v for k, v in tensors.items() if k.startswith("model.")})
    steps = json.loads(metadata["adam_steps"])
    state = optimizer.state_dict()
    state["state"] = {
        int(i): {"step": torch.tensor(step), "exp_avg": tensors[f"adam.{i}.exp_avg"],
                 "exp_avg_sq": tensors[f"adam.{i}.exp_avg_sq"]}
        for i, step in steps.items()
    }
    optimizer.load_state_dict(state)
    return int(metadata["epoch"]), json.loads(metadata["history"])


def write_history(history: list[dict[str, float]], csv_path: Path, json_path: Path) -> None:
    """Write the per-epoch log as CSV and JSON (atomically)."""
    columns = ["epoch", "train_mse", "test_mse", "seconds", "tiles_per_second"]
    lines = [",".join(columns)] + [",".join(f"{row[c]:.8g}" for c in columns) for row in history]
    write_text_atomic(csv_path, "\n".join(lines) + "\n")
    write_text_atomic(json_path, json.dumps(history, indent=1) + "\n")


def train(
    data: PreparedSet,
    out: str | Path,
    settings: TrainSettings | None = None,
    resume: bool = False,
    progress: bool = True,
    on_epoch: Callable[[dict[str, float]], None] | None = None,
    device: str = "cpu",
    note: str | None = None,
) -> TrainResult:
    """Train a CAE on a prepared set; checkpoint every epoch; write the model and its logs.

    Parameters
    ----------
    data
        Prepared set (:func:`microcae.data.dataset.load_dataset`) with a non-empty train split.
    out
        Model file ``NAME.safetensors``. Beside it: ``NAME.checkpoint.safetensors`` (every
        epoch), ``NAME.train.csv`` / ``NAME.train.json`` (per-epoch MSE) and ``NAME.loss.png``.
    settings
        Hyper-parameters (default: the study's).
    resume
        Continue from ``NAME.checkpoint.safetensors`` if present (same data and settings).
    progress
        Show a progress bar with the running loss on stderr.
    on_epoch
        Called with each epoch's log row (after its checkpoint is written).
    device
        ``"cpu"`` or ``"cuda"`` for a single-process run (under ``torchrun`` each process uses
        its local GPU if there is one). Checkpoints are device-independent: a run started on a
        GPU can be resumed on the CPU.
    note
        Free text stored in the model's provenance (e.g. where earlier epochs of a resumed run
        were computed).

    Returns
    -------
    TrainResult
        The trained model (eval mode, on the CPU), per-epoch history and paths of written files.
        Under ``torchrun`` every rank returns the same weights, but only rank 0 writes the files,
        calls ``on_epoch`` and has the history (empty on the other ranks).
    """
    with process_group(device) as group:
        return _train(data, Path(out), settings or TrainSettings(), resume, progress, on_epoch,
                      group, note)


def _train(data: PreparedSet, out: Path, settings: TrainSettings, resume: bool, progress: bool,
           on_epoch: Callable[[dict[str, float]], None] | None,
           group: ProcessGroup, note: str | None) -> TrainResult:
    from microcae.figures.training import plot_loss_curve

    configure_allocator()
    train_idx, test_idx = data.indices("train"), data.indices("test")
    if len(train_idx) == 0:
        raise MicrocaeError(f"{data.path}: the prepared set has no training tiles")
    if data.tiles.shape[1] % settings.model.downsample:
        raise MicrocaeError(f"tile side {data.tiles.shape[1]} is not a multiple of "
                            f"{settings.model.downsample}")
    torch.manual_seed(settings.seed)
    model = to_channels_last(CAE(settings.model)).to(group.device)
    optimizer = make_optimizer(model, settings)
    identity = _run_identity(settings, data)
    checkpoint = _checkpoint_path(out)
    start_epoch, history = 0, []
    if resume and checkpoint.exists():
        start_epoch, history = load_checkpoint(checkpoint, model, optimizer, identity)
    elif not resume and checkpoint.exists():
        raise MicrocaeError(f"{checkpoint}: a checkpoint exists; use --resume or delete it")
    stepped: nn.Module = model
    if group.distributed:
        stepped = DistributedDataParallel(
            model, device_ids=[group.device] if group.device.type == "cuda" else None)
    for epoch in range(start_epoch, settings.epochs):
        model.train()
        started = time.perf_counter()
        order = train_idx[epoch_order(len(train_idx), settings.seed, epoch)]
        summed = _epoch_losses(stepped, optimizer, data, order, settings, epoch, group, progress)
        seconds = time.perf_counter() - started
        if not group.is_main:
            continue
        row = {"epoch": epoch + 1, "train_mse": summed / len(train_idx),
               "test_mse": evaluate_mse(model, data.tiles, test_idx), "seconds": seconds,
               "tiles_per_second": len(train_idx) / seconds}
        history.append(row)
        save_checkpoint(checkpoint, model, optimizer, epoch + 1, history, identity)
        if on_epoch:
            on_epoch(row)
    model.eval()
    files = {"model": out, "checkpoint": checkpoint, "log_csv": side_file(out, ".train.csv"),
             "log_json": side_file(out, ".train.json"), "loss_png": side_file(out, ".loss.png")}
    if not group.is_main:
        return TrainResult(model.cpu(), [], files, group.rank)
    final = {"train_mse": evaluate_mse(model, data.tiles, train_idx),
             "test_mse": evaluate_mse(model, data.tiles, test_idx)}
    model = model.cpu()
    provenance = {
        "trained_with": f"microcae {__version__}, torch {torch.__version__}",
        "data": {"path": str(data.path), "manifest_sha256": data.manifest_sha256,
                 "train_tiles": len(train_idx), "test_tiles": len(test_idx),
                 "split_by": data.manifest.get("split_by")},
        "settings": settings.to_dict(),
        "epochs_completed": len(history),
        "final_eval_mse": final,
        "history": history,
        "threads": torch.get_num_threads(),
        "device": str(group.device),
        "processes": group.world_size,
        "finished": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    if note:
        provenance["note"] = note
    save_model(model, out, provenance)
    write_history(history, files["log_csv"], files["log_json"])
    plot_loss_curve(history, files["loss_png"])
    return TrainResult(model, history, files)
