"""Settings of the training loop and the learning-rate schedule they imply."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

from microcae.util.errors import MicrocaeError

LR_DROP_FACTOR = 0.1
"""The learning rate is multiplied by this once ``lr_drop`` of the run has passed."""


def _finite_positive(value: float | None) -> bool:
    return value is not None and math.isfinite(value) and value > 0


@dataclass(frozen=True)
class TrainSettings:
    """Settings of the loop (defaults: the study's; validated on creation).

    Attributes
    ----------
    epochs, batch_size
        Passes over the training split (≥ 1) and tiles per Adam step (the global batch, ≥ 1).
    lr, beta1, beta2, eps
        Adam settings (lr and eps finite and > 0, betas in [0, 1)).
    seed
        Seeds weight initialisation, the per-epoch shuffles and torch's generator (≥ 0).
    augment
        Random flips and 90° rotations of training tiles (not in the study).
    grad_clip
        Clip the gradient's norm to this before every step (None: no clipping).
    lr_drop
        Fraction in (0, 1] of the run (epochs, or ``max_seconds`` if that comes first) after
        which the learning rate is divided by 10 (None: never).
    max_seconds
        Stop after the epoch in which this much training time has passed (None: no limit).
    """

    epochs: int = 50
    batch_size: int = 32
    lr: float = 1e-3
    beta1: float = 0.9
    beta2: float = 0.999
    eps: float = 1e-8
    seed: int = 0
    augment: bool = False
    grad_clip: float | None = None
    lr_drop: float | None = None
    max_seconds: float | None = None

    def __post_init__(self) -> None:
        checks = {
            "epochs": self.epochs >= 1, "batch_size": self.batch_size >= 1,
            "lr": _finite_positive(self.lr), "eps": _finite_positive(self.eps),
            "beta1": 0 <= self.beta1 < 1, "beta2": 0 <= self.beta2 < 1, "seed": self.seed >= 0,
            "grad_clip": self.grad_clip is None or _finite_positive(self.grad_clip),
            "lr_drop": self.lr_drop is None or (_finite_positive(self.lr_drop)
                                                and self.lr_drop <= 1),
            "max_seconds": self.max_seconds is None or _finite_positive(self.max_seconds),
        }
        for name, ok in checks.items():
            if not ok:
                raise MicrocaeError(f"training setting {name} = {getattr(self, name)!r} is "
                                    "out of range")

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dictionary."""
        return asdict(self)

    def identity(self) -> dict[str, Any]:
        """Return the settings a resumed run must share: all but ``epochs`` and ``max_seconds``."""
        return {k: v for k, v in self.to_dict().items() if k not in ("epochs", "max_seconds")}


def epoch_lr(settings: TrainSettings, epoch: int, elapsed: float, dropped: bool) -> float:
    """Learning rate of 0-based ``epoch``, ``elapsed`` training seconds into the run.

    ``settings.lr`` until ``lr_drop`` of the epochs (or of ``max_seconds``) has passed or the
    previous epoch already ran at the dropped rate (``dropped``), then a tenth of it.
    """
    if settings.lr_drop is None:
        return settings.lr
    late = epoch >= math.ceil(settings.lr_drop * settings.epochs) or (
        settings.max_seconds is not None and elapsed >= settings.lr_drop * settings.max_seconds)
    return settings.lr * LR_DROP_FACTOR if late or dropped else settings.lr
