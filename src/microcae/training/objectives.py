"""What a training run minimises: the objectives of the one loop in :mod:`microcae.training.loop`.

An :class:`Objective` turns a batch into the loss to minimise and the quantities to log, measures
a model on held-out tiles, and describes itself for the run's identity (what a checkpoint must
share with the run resuming it) and the model's provenance.

* :class:`MSEObjective`: the study's loss, the mean squared reconstruction error of pixels on
  the 0..1 scale, for models whose ``forward`` returns the reconstruction (the study CAE).
* :class:`RateDistortionObjective`: ``lmbda · 255² · MSE + bpp`` for coding models whose
  ``forward`` returns a dict with ``x_hat`` (the reconstruction) and ``bpp`` (the estimated bits
  per pixel of the batch), such as :class:`microcae.models.rdcae.RDCAE`. ``255² · MSE`` is the
  MSE in 8-bit grey levels, the convention of Ballé et al. (ICLR 2017/2018) and CompressAI.

Both are deterministic given the model's own randomness (the RD model's training noise comes
from torch's generator, which the loop seeds per epoch).
"""

from __future__ import annotations

import contextlib
import math
from abc import ABC, abstractmethod
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import torch
from torch import nn

from microcae.training.batches import batch_tensor
from microcae.util.errors import MicrocaeError

EVAL_BATCH = 16
"""Tiles per forward pass when an objective evaluates a model."""


class Objective(ABC):
    """A training objective: loss of a batch, evaluation on tiles, and a description.

    Attributes
    ----------
    logged
        Names of the batch quantities :meth:`loss` returns, in log order (the first is shown
        on the progress bar). The loop logs their per-tile means over each epoch as
        ``train_<name>``.
    evaluated
        Names of the quantities :meth:`evaluate` returns, logged as ``test_<name>`` each epoch
        and measured on both splits at the end of the run.
    """

    logged: ClassVar[tuple[str, ...]]
    evaluated: ClassVar[tuple[str, ...]]

    @abstractmethod
    def loss(self, model: nn.Module,
             batch: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Loss of a batch and the quantities to log.

        Parameters
        ----------
        model
            The model in training mode (possibly wrapped in ``DistributedDataParallel``).
        batch
            (B, 1, H, W) float32 tiles in [0, 1], B ≥ 1, on the model's device.

        Returns
        -------
        tuple
            The scalar loss to minimise (the mean over the batch's tiles, with gradient) and
            ``{name: detached scalar}`` for every name in :attr:`logged`, each a mean per tile.
        """

    @abstractmethod
    def evaluate(self, model: nn.Module, tiles: np.ndarray,
                 indices: np.ndarray) -> dict[str, float]:
        """Measure ``model`` on tiles ``indices`` of a (T, H, W) array (eval mode, no gradient).

        Returns ``{name: mean per tile}`` for every name in :attr:`evaluated`, NaN for each when
        ``indices`` is empty. The model's training mode is restored afterwards.
        """

    @abstractmethod
    def describe(self) -> dict[str, Any]:
        """JSON-ready description: ``objective`` (its name), its parameters and its formula."""

    def columns(self) -> list[str]:
        """Per-epoch log columns the objective contributes: ``train_*`` then ``test_*``."""
        return [f"train_{n}" for n in self.logged] + [f"test_{n}" for n in self.evaluated]


@contextlib.contextmanager
def _evaluating(model: nn.Module) -> Iterator[torch.device]:
    """Put ``model`` in eval mode for the block (no gradients); yield its device."""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            yield next(model.parameters()).device
    finally:
        model.train(was_training)


def _batches(tiles: np.ndarray, indices: np.ndarray, device: torch.device,
             batch_size: int = EVAL_BATCH) -> Iterator[torch.Tensor]:
    """Yield tiles ``indices`` as (b, 1, H, W) channels-last tensors on ``device``."""
    for start in range(0, len(indices), batch_size):
        yield batch_tensor(tiles, indices[start : start + batch_size]).to(device)


def evaluate_mse(model: nn.Module, tiles: np.ndarray, indices: np.ndarray,
                 batch_size: int = EVAL_BATCH) -> float:
    """Mean squared reconstruction error (0..1 scale) over tiles ``indices`` (NaN if none).

    ``model(x)["x_hat"]`` is the reconstruction (N, 1, H, W) of x; ``tiles`` is (T, H, W).
    """
    if len(indices) == 0:
        return math.nan
    total = 0.0
    with _evaluating(model) as device:
        for batch in _batches(tiles, indices, device, batch_size):
            total += float(nn.functional.mse_loss(_reconstruction(model(batch)), batch,
                                                  reduction="sum"))
    return total / (len(indices) * tiles.shape[1] * tiles.shape[2])


def _reconstruction(output: Any) -> torch.Tensor:
    if not isinstance(output, Mapping) or "x_hat" not in output or "bpp" in output:
        raise MicrocaeError("the MSE objective needs a model whose forward returns "
                            "{'x_hat': ...} (a coding model takes the rate–distortion objective)")
    return output["x_hat"]


def _coding_output(output: Any) -> Mapping[str, torch.Tensor]:
    if not isinstance(output, Mapping) or not {"x_hat", "bpp"} <= set(output):
        raise MicrocaeError("the rate–distortion objective needs a model whose forward returns "
                            "a dict with 'x_hat' and 'bpp' (a coding model)")
    return output


@dataclass(frozen=True)
class MSEObjective(Objective):
    """The study's loss: MSE between a tile and its reconstruction, pixels on the 0..1 scale."""

    logged: ClassVar[tuple[str, ...]] = ("mse",)
    evaluated: ClassVar[tuple[str, ...]] = ("mse",)

    def loss(self, model: nn.Module,
             batch: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """``mse_loss(model(batch)["x_hat"], batch)`` (mean over all pixels); logs ``mse``."""
        loss = nn.functional.mse_loss(_reconstruction(model(batch)), batch)
        return loss, {"mse": loss.detach()}

    def evaluate(self, model: nn.Module, tiles: np.ndarray,
                 indices: np.ndarray) -> dict[str, float]:
        """``{"mse": ...}``: :func:`evaluate_mse` over tiles ``indices``."""
        return {"mse": evaluate_mse(model, tiles, indices)}

    def describe(self) -> dict[str, Any]:
        """``{"objective": "mse", "loss": formula}``."""
        return {"objective": "mse", "loss": "MSE (pixels on the 0..1 scale)"}


@dataclass(frozen=True)
class RateDistortionObjective(Objective):
    """Rate–distortion loss ``lmbda · 255² · MSE + bpp`` of a coding model.

    Attributes
    ----------
    lmbda
        Weight of the distortion (finite, > 0). Larger: more bits, higher quality.
    """

    lmbda: float = 0.01
    logged: ClassVar[tuple[str, ...]] = ("loss", "mse", "bpp")
    evaluated: ClassVar[tuple[str, ...]] = ("mse", "bpp")

    def __post_init__(self) -> None:
        if not (math.isfinite(self.lmbda) and self.lmbda > 0):
            raise MicrocaeError(f"lmbda must be a finite number > 0, got {self.lmbda}")

    def loss(self, model: nn.Module,
             batch: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Return the loss of ``model(batch)``; log ``loss``, ``mse`` (0..1 scale) and ``bpp``."""
        out = _coding_output(model(batch))
        mse = nn.functional.mse_loss(out["x_hat"], batch)
        loss = self.lmbda * 255.0**2 * mse + out["bpp"]
        return loss, {"loss": loss.detach(), "mse": mse.detach(), "bpp": out["bpp"].detach()}

    def evaluate(self, model: nn.Module, tiles: np.ndarray,
                 indices: np.ndarray) -> dict[str, float]:
        """Mean MSE (0..1 scale) and estimated bpp of the eval-mode (rounded) latents.

        The bpp is the model's estimate, not a file size.
        """
        if len(indices) == 0:
            return {"mse": math.nan, "bpp": math.nan}
        mse = bpp = 0.0
        with _evaluating(model) as device:
            for batch in _batches(tiles, indices, device):
                out = _coding_output(model(batch))
                mse += float(nn.functional.mse_loss(out["x_hat"], batch, reduction="sum"))
                bpp += float(out["bpp"]) * len(batch)
        pixels = tiles.shape[1] * tiles.shape[2]
        return {"mse": mse / (len(indices) * pixels), "bpp": bpp / len(indices)}

    def describe(self) -> dict[str, Any]:
        """``{"objective": "rate-distortion", "lmbda": ..., "loss": formula}``."""
        return {"objective": "rate-distortion", "lmbda": self.lmbda,
                "loss": "lmbda * 255^2 * MSE(0..1 scale) + estimated bpp"}
