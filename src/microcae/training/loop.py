"""The one training loop: any model kind, a pluggable objective, checkpoints and exact resume.

:func:`train` builds the model with ``build_model`` (after seeding torch with ``seed``), minimises
an :class:`~microcae.training.objectives.Objective` with Adam, shows a progress bar, logs every
epoch, writes a checkpoint at the end of every epoch and the model file once at the end.

Determinism: the weights are initialised from ``seed``; epoch ``e`` visits the training tiles in
an order fixed by ``(seed, e)`` (likewise the optional flips and rotations, see
:mod:`microcae.training.batches`), and torch's generator (the RD model's training noise) is
reseeded from ``(seed, e, rank)`` at the start of every epoch. A checkpoint holds the weights and
the Adam state, so a run killed at any point and resumed ends with the same weights as an
uninterrupted run on the same machine and thread count. With the defaults (no gradient clipping,
no learning-rate drop) and :class:`~microcae.training.objectives.MSEObjective` the run is the
study's: MSE, Adam 1e-3, batch 32.

Loop settings (:class:`~microcae.training.settings.TrainSettings`) for every objective:
``grad_clip`` (clip the gradient norm), ``lr_drop`` (divide the learning rate by 10 after that
fraction of the epochs, or of ``max_seconds`` if that comes first; once dropped it stays
dropped) and ``max_seconds`` (stop after the epoch in which that much training time has passed,
counting the epochs of earlier sessions of a resumed run).

Divergence: a non-finite loss, or non-finite weights or test scores at the end of an epoch,
stop the run with a :class:`~microcae.util.errors.MicrocaeError`; no model is written and the
checkpoint keeps the last finished epoch (whose weights and scores were finite).

Data parallelism: under ``torchrun --nproc_per_node N`` every process walks the same
permutation, takes its contiguous share of each global batch of ``batch_size`` tiles (see
:meth:`microcae.training.distributed.ProcessGroup.shard`) and trains a
``DistributedDataParallel`` copy of the model whose loss is weighted by ``share · N / batch``, so
that the averaged gradient is that of the global batch's mean loss (a process whose share is
empty computes one tile at weight 0). For objectives without randomness the run follows the
single-process one up to floating-point rounding; the RD model's noise is drawn per process.
Rank 0's epoch time decides ``lr_drop`` and ``max_seconds`` for all. Rank 0 alone logs,
checkpoints and writes the model; all ranks read the checkpoint on ``resume``, so the output
folder must be on a file system that every node sees.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

from microcae import __version__
from microcae.data.dataset import PreparedSet
from microcae.models.base import MicrocaeModel
from microcae.models.cae import CAE
from microcae.models.registry import MODEL_KINDS, read_model_file, save_model
from microcae.training.batches import as_batch, epoch_order, global_batches
from microcae.training.checkpoint import load_checkpoint, save_checkpoint
from microcae.training.distributed import ProcessGroup, process_group
from microcae.training.objectives import MSEObjective, Objective
from microcae.training.outputs import check_output, output_files, write_history
from microcae.training.settings import TrainSettings, epoch_lr
from microcae.util.errors import MicrocaeError
from microcae.util.runtime import configure_allocator, to_channels_last


@dataclass
class TrainResult:
    """What a run produced: the model, per-epoch history and the files written.

    ``rank`` is the process's rank under ``torchrun`` (0 otherwise); only rank 0 writes the files
    and keeps the history.
    """

    model: nn.Module
    history: list[dict[str, float]]
    files: dict[str, Path]
    rank: int = 0


def make_optimizer(model: nn.Module, settings: TrainSettings) -> torch.optim.Adam:
    """Adam with the run's learning rate, betas and epsilon."""
    return torch.optim.Adam(
        model.parameters(), lr=settings.lr, betas=(settings.beta1, settings.beta2),
        eps=settings.eps,
    )


def train_step(model: nn.Module, optimizer: torch.optim.Optimizer, objective: Objective,
               batch: torch.Tensor, grad_clip: float | None = None,
               weight: float | None = None) -> tuple[float, dict[str, float]]:
    """One optimiser step on the objective's loss of ``batch`` (B, 1, H, W).

    Parameters
    ----------
    grad_clip
        Clip the gradient norm to this before the step (None: no clipping).
    weight
        Factor on the loss before ``backward`` (data-parallel share weighting; None: 1).

    Returns
    -------
    tuple
        The loss and the objective's logged batch quantities, as floats.
    """
    optimizer.zero_grad(set_to_none=True)
    loss, logs = objective.loss(model, batch)
    (loss if weight is None else loss * weight).backward()
    if grad_clip is not None:
        nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
    optimizer.step()
    values = torch.stack([loss.detach(), *logs.values()]).tolist()
    return values[0], dict(zip(logs, values[1:], strict=True))


def _epoch_seed(seed: int, epoch: int, rank: int) -> int:
    return int(np.random.SeedSequence([seed, epoch, rank, 2]).generate_state(1)[0])


def _check_data(data: PreparedSet, chunk: int = 256) -> tuple[np.ndarray, np.ndarray]:
    """Train and test indices of ``data``; refuse an empty train split or non-finite tiles."""
    train_idx, test_idx = data.indices("train"), data.indices("test")
    if len(train_idx) == 0:
        raise MicrocaeError(f"{data.path}: the prepared set has no training tiles")
    for start in range(0, len(data.tiles), chunk):
        finite = np.isfinite(data.tiles[start : start + chunk]).all(axis=(1, 2))
        if not finite.all():
            raise MicrocaeError(f"{data.path}: tile {start + int(np.argmin(finite))} of "
                                "tiles.npy holds NaN or infinite values")
    return train_idx, test_idx


def train(
    data: PreparedSet,
    out: str | Path,
    settings: TrainSettings | None = None,
    *,
    build_model: Callable[[], nn.Module] = CAE,
    objective: Objective | None = None,
    resume: bool = False,
    overwrite: bool = False,
    progress: bool = True,
    on_epoch: Callable[[dict[str, float]], None] | None = None,
    device: str = "cpu",
    note: str | None = None,
    init: str | Path | None = None,
) -> TrainResult:
    """Train a model on a prepared set; checkpoint every epoch; write the model and its log.

    Parameters
    ----------
    data
        Prepared set (:func:`microcae.data.dataset.load_dataset`) with a non-empty train split
        and finite tiles whose side is a multiple of the model's downsampling factor.
    out
        Model file ``NAME.safetensors``. Beside it: ``NAME.checkpoint.safetensors`` (every
        epoch), ``NAME.train.csv`` / ``NAME.train.json`` (per-epoch log: ``epoch``, the
        objective's ``train_*`` and ``test_*`` columns, ``lr``, ``seconds``,
        ``tiles_per_second``).
    settings
        Loop settings (default: the study's).
    build_model
        Makes the untrained model (called once, after seeding torch): a microcae model kind,
        e.g. ``CAE`` (the study's network, the default) or
        :meth:`microcae.training.architectures.Architecture.build`.
    objective
        What to minimise (default :class:`~microcae.training.objectives.MSEObjective`).
    resume
        Continue from ``NAME.checkpoint.safetensors`` if present (same data, model, objective
        and settings except ``epochs`` and ``max_seconds``); a larger ``epochs`` extends it.
    overwrite
        Allow replacing an existing ``out`` (a finished run's model: latent files made with
        it no longer decode), and, without ``resume``, start afresh over an existing
        checkpoint.
    progress
        Show a progress bar with the running loss on stderr.
    on_epoch
        Called with each epoch's log row (after its checkpoint is written).
    device
        ``"cpu"`` or ``"cuda"`` for a single-process run (under ``torchrun`` each process uses
        its local GPU if there is one). Checkpoints are device-independent.
    note
        Free text stored in the model's provenance (e.g. where earlier epochs ran).
    init
        Start from the weights of this model file (or bundled name) instead of a fresh
        initialisation: a fine-tune, e.g. of one codec level from another at a new λ. It must be
        of the same kind and configuration; its path, fingerprint, epochs and training time go
        into the run's identity and the new model's provenance. The optimiser starts afresh.

    Returns
    -------
    TrainResult
        The trained model (eval mode, on the CPU), per-epoch history and paths of written files.
        Under ``torchrun`` only rank 0 writes the files, calls ``on_epoch`` and has the history.

    Raises
    ------
    MicrocaeError
        Before any work: an existing ``out`` without ``overwrite``, an output folder that
        cannot be written, a checkpoint without ``resume`` or ``overwrite``, or one of another
        run, bad data, a model that is not a microcae kind, or a device that is not there.
        During the run: a non-finite loss, weights or test scores (divergence).
    """
    with process_group(device) as group:
        out = Path(out)
        check_output(out, overwrite)
        run = _Run.start(data, out, settings or TrainSettings(), build_model,
                         objective or MSEObjective(), group, resume, overwrite, init)
        run.fit(progress, on_epoch)
        return run.finish(note)



def _describe(model: MicrocaeModel) -> dict[str, Any]:
    """``{"kind": ..., "config": {...}}``: what the model is, for run identity and provenance.

    Raises
    ------
    MicrocaeError
        If ``model`` is not a registered microcae model kind (it could not be saved).
    """
    if type(model) not in MODEL_KINDS.values():
        raise MicrocaeError(f"cannot train a {type(model).__name__}: not a microcae model kind "
                            f"({', '.join(MODEL_KINDS)})")
    return {"kind": model.kind, "config": json.loads(model.config.to_json())}


def _initialise(model: MicrocaeModel, init: str | Path) -> dict[str, Any]:
    """Load the weights of model file ``init`` into ``model``; return what the run records.

    Returns
    -------
    dict
        ``path``, ``fingerprint`` (of encoder and decoder), ``epochs`` and ``seconds`` of the
        run that made it (from its provenance; 0 if it records none) and, if that run was a
        fine-tune too, its own ``init``.

    Raises
    ------
    MicrocaeError
        If the file is not a model of the same kind and configuration (or unreadable).
    """
    source = read_model_file(init)
    if _describe(source.model) != _describe(model):
        raise MicrocaeError(f"{init}: --init needs a model of the same kind and configuration "
                            f"({model.kind}, {model.config.to_json()})")
    model.load_state_dict(source.model.state_dict())
    history = source.provenance.get("history", [])
    history = history if isinstance(history, list) else []
    facts = {"path": str(init), "fingerprint": source.model.fingerprint(("encoder.", "decoder.")),
             "epochs": len(history),
             "seconds": round(sum(float(row.get("seconds", 0)) for row in history
                                  if isinstance(row, dict)), 1)}
    if "init" in source.provenance:
        facts["init"] = source.provenance["init"]
    return facts


@dataclass
class _Run:
    """State of one training run between :func:`train`'s start, epochs and finish."""

    data: PreparedSet
    out: Path
    settings: TrainSettings
    objective: Objective
    group: ProcessGroup
    model: nn.Module
    optimizer: torch.optim.Adam
    identity: str
    splits: tuple[np.ndarray, np.ndarray]
    start_epoch: int = 0
    history: list[dict[str, float]] = field(default_factory=list)
    init: dict[str, Any] | None = None

    @classmethod
    def start(cls, data: PreparedSet, out: Path, settings: TrainSettings,
              build_model: Callable[[], nn.Module], objective: Objective, group: ProcessGroup,
              resume: bool, overwrite: bool, init: str | Path | None = None) -> _Run:
        """Check the data, build the model and optimiser, and restore a checkpoint if asked."""
        configure_allocator()
        splits = _check_data(data)
        torch.manual_seed(settings.seed)
        model = build_model()
        description = _describe(model)
        started_from = None if init is None else _initialise(model, init)
        model = to_channels_last(model).to(group.device)
        multiple = model.downsample
        if data.tiles.shape[1] % multiple or data.tiles.shape[2] % multiple:
            raise MicrocaeError(f"tile side {data.tiles.shape[1]} is not a multiple of {multiple}")
        facts = {"settings": settings.identity(), "model": description,
                 "objective": objective.describe(), "data": data.manifest_sha256}
        if started_from is not None:
            facts["init"] = started_from
        identity = json.dumps(facts, sort_keys=True)
        run = cls(data, out, settings, objective, group, model, make_optimizer(model, settings),
                  identity, splits, init=started_from)
        checkpoint = output_files(out)["checkpoint"]
        if checkpoint.exists() and resume:
            run.start_epoch, run.history = load_checkpoint(checkpoint, model, run.optimizer,
                                                           identity)
        elif checkpoint.exists() and not overwrite:
            raise MicrocaeError(f"{checkpoint}: a checkpoint of an earlier run exists; use "
                                "--resume to continue it or --force to start afresh")
        return run

    def fit(self, progress: bool, on_epoch: Callable[[dict[str, float]], None] | None) -> None:
        """Run the remaining epochs, checkpointing each (rank 0), within ``max_seconds``."""
        settings, history = self.settings, self.history
        stepped: nn.Module = self.model
        if self.group.distributed:
            stepped = DistributedDataParallel(self.model, device_ids=(
                [self.group.device] if self.group.device.type == "cuda" else None))
        elapsed = sum(row["seconds"] for row in history)
        lr = history[-1]["lr"] if history else settings.lr
        for epoch in range(self.start_epoch, settings.epochs):
            lr = epoch_lr(settings, epoch, elapsed, dropped=lr < settings.lr)
            row = self._epoch(stepped, epoch, lr, progress)
            elapsed += row["seconds"]
            if self.group.is_main:
                history.append(row)
                save_checkpoint(output_files(self.out)["checkpoint"], self.model,
                                self.optimizer, epoch + 1, history, self.identity)
                if on_epoch:
                    on_epoch(row)
            if settings.max_seconds is not None and elapsed >= settings.max_seconds:
                break

    def _epoch(self, stepped: nn.Module, epoch: int, lr: float,
               progress: bool) -> dict[str, float]:
        """Train one epoch at ``lr``; return its log row (test columns on rank 0 only)."""
        settings, group = self.settings, self.group
        for param_group in self.optimizer.param_groups:
            param_group["lr"] = lr
        torch.manual_seed(_epoch_seed(settings.seed, epoch, group.rank))
        self.model.train()
        started = time.perf_counter()
        train_idx, test_idx = self.splits
        order = train_idx[epoch_order(len(train_idx), settings.seed, epoch)]
        sums = self._train_epoch(stepped, order, epoch, progress and group.is_main)
        self._check_weights(epoch)
        seconds = group.broadcast(time.perf_counter() - started)
        row: dict[str, float] = {"epoch": epoch + 1}
        row.update({f"train_{name}": value / len(order) for name, value in sums.items()})
        if group.is_main:
            tested = self.objective.evaluate(self.model, self.data.tiles, test_idx)
            if len(test_idx) and not all(map(math.isfinite, tested.values())):
                raise self._diverged(f"the test split gave {tested}", epoch)
            row.update({f"test_{name}": value for name, value in tested.items()})
        row.update(lr=lr, seconds=seconds, tiles_per_second=len(order) / seconds)
        return row

    def _train_epoch(self, stepped: nn.Module, order: np.ndarray, epoch: int,
                     progress: bool) -> dict[str, float]:
        """Step through one epoch; return each logged quantity summed over tiles (all ranks)."""
        settings, group, objective = self.settings, self.group, self.objective
        sums = dict.fromkeys(objective.logged, 0.0)
        shown, seen = objective.logged[0], 0
        batches = global_batches(self.data.tiles, order, settings.batch_size, settings.seed,
                                 epoch, settings.augment)
        with tqdm(batches, total=math.ceil(len(order) / settings.batch_size), unit="step",
                  desc=f"epoch {epoch + 1}/{settings.epochs}", disable=not progress,
                  leave=False) as bar:
            for step, tiles in enumerate(bar):
                share, weight = self._share(tiles)
                loss, logs = train_step(stepped, self.optimizer, objective,
                                        as_batch(share).to(group.device), settings.grad_clip,
                                        weight)
                if not math.isfinite(loss):
                    raise self._diverged(f"the loss became {loss} at step {step + 1}", epoch)
                tiles_here = len(share) if weight != 0 else 0
                for name in sums:
                    sums[name] += logs[name] * tiles_here
                seen += tiles_here
                bar.set_postfix({shown: f"{sums[shown] / max(seen, 1):.5f}"})
        return {name: group.all_sum(value) for name, value in sums.items()}

    def _share(self, tiles: np.ndarray) -> tuple[np.ndarray, float | None]:
        """Return this rank's share of a global batch and its loss weight (None: one process).

        An empty share becomes the batch's first tile at weight 0, so that the rank still
        takes part in the gradient all-reduce.
        """
        group = self.group
        if not group.distributed:
            return tiles, None
        share = tiles[group.shard(len(tiles))]
        if len(share) == 0:
            return tiles[:1], 0.0
        return share, len(share) * group.world_size / len(tiles)

    def _check_weights(self, epoch: int) -> None:
        if not all(bool(torch.isfinite(p).all()) for p in self.model.parameters()):
            raise self._diverged("the weights became non-finite", epoch)

    def _diverged(self, what: str, epoch: int) -> MicrocaeError:
        checkpoint = output_files(self.out)["checkpoint"]
        kept = ("no checkpoint written; lower --lr" if epoch == 0 or not checkpoint.exists()
                else f"{checkpoint} keeps epoch {epoch}; lower --lr and start afresh with --force")
        return MicrocaeError(f"training diverged in epoch {epoch + 1} ({what}): no model "
                             f"written, {kept}")

    def finish(self, note: str | None) -> TrainResult:
        """Evaluate both splits, write the model and the log (rank 0); return the result."""
        self.model.eval()
        files = output_files(self.out)
        if not self.group.is_main:
            return TrainResult(self.model.cpu(), [], files, self.group.rank)
        final = {f"{split}_{name}": value
                 for split, indices in zip(("train", "test"), self.splits, strict=True)
                 for name, value in self.objective.evaluate(self.model, self.data.tiles,
                                                            indices).items()}
        model = self.model.cpu()
        provenance = self._provenance(final, note)
        save_model(model, self.out, provenance)
        write_history(self.history, files["log_csv"], files["log_json"])
        return TrainResult(model, self.history, files)

    def _provenance(self, final: dict[str, float], note: str | None) -> dict[str, Any]:
        data, (train_idx, test_idx) = self.data, self.splits
        provenance = {
            "trained_with": f"microcae {__version__}, torch {torch.__version__}",
            "data": {"path": str(data.path), "manifest_sha256": data.manifest_sha256,
                     "train_tiles": len(train_idx), "test_tiles": len(test_idx),
                     "split_by": data.manifest.get("split_by")},
            "model": _describe(self.model),
            "settings": {**self.settings.to_dict(), **self.objective.describe()},
            "epochs_completed": len(self.history),
            "final_eval": final,
            "history": self.history,
            "threads": torch.get_num_threads(),
            "device": str(self.group.device),
            "processes": self.group.world_size,
            "finished": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        }
        if self.init is not None:
            provenance["init"] = self.init
        if note:
            provenance["note"] = note
        return provenance
