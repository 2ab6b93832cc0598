"""Training checkpoints: weights, Adam state and progress in one safetensors file.

A checkpoint is written at the end of every epoch. It holds the model's state, Adam's moments and
step counts, the number of epochs done, the per-epoch log so far and the run's *identity* (a
JSON text of everything a run resuming it must share: data, model, objective and settings other
than the epoch count and time budget). Nothing is pickled.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file
from torch import nn

from microcae.util.atomic import atomic_path
from microcae.util.errors import MicrocaeError
from microcae.util.safe_json import loads_bounded

CHECKPOINT_FORMAT = "microcae.checkpoint"


def save_checkpoint(path: Path, model: nn.Module, optimizer: torch.optim.Adam, epoch: int,
                    history: list[dict[str, float]], identity: str) -> None:
    """Write weights, Adam moments and progress to a safetensors checkpoint, atomically.

    Parameters
    ----------
    path
        Target file (``NAME.checkpoint.safetensors``).
    model, optimizer
        The (unwrapped) model and its Adam optimiser.
    epoch
        Epochs completed.
    history
        Per-epoch log rows so far.
    identity
        The run's identity text (compared on resume).
    """
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
        If the checkpoint is unreadable or belongs to another run (other data, model,
        objective or settings).
    """
    try:
        with safe_open(str(path), framework="pt") as handle:
            metadata = handle.metadata() or {}
        tensors = load_file(str(path))
    except (SafetensorError, OSError, ValueError) as exc:
        raise MicrocaeError(f"{path}: unreadable checkpoint ({exc})") from None
    if metadata.get("format") != CHECKPOINT_FORMAT:
        raise MicrocaeError(f"{path}: not a microcae training checkpoint")
    if metadata.get("identity") != identity:
        raise MicrocaeError(f"{path}: checkpoint is of another run (different data, model or "
                            "settings)")
    try:
        steps, history = (loads_bounded(metadata[key]) for key in ("adam_steps", "history"))
        epoch = int(metadata["epoch"])
    except (KeyError, ValueError, TypeError) as exc:
        raise MicrocaeError(f"{path}: unreadable checkpoint ({exc})") from None
    model.load_state_dict({k[6:]: v for k, v in tensors.items() if k.startswith("model.")})
    state = optimizer.state_dict()
    state["state"] = {
        int(i): {"step": torch.tensor(step), "exp_avg": tensors[f"adam.{i}.exp_avg"],
                 "exp_avg_sq": tensors[f"adam.{i}.exp_avg_sq"]}
        for i, step in steps.items()
    }
    optimizer.load_state_dict(state)
    return epoch, history
