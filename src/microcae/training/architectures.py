"""Named models to train (``microcae train --arch``): model kind, configuration and loop defaults.

``study`` is the paper's CAE trained with MSE. The ``rd-*`` architectures are coding models (a
CAE with a learned factorized entropy model, :class:`microcae.models.rdcae.RDCAE`) trained with
the rate–distortion objective ``lmbda · 255² · MSE + bpp``, gradient norms clipped to 1 and the
learning rate divided by 10 for the last 20 % of the run; their files hold the integer code
tables that ``microcae encode`` range-codes with.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

from microcae.models import rdcae
from microcae.models.base import MicrocaeModel
from microcae.models.cae import CAEConfig
from microcae.models.hyperprior import HyperpriorConfig
from microcae.models.registry import MODEL_KINDS
from microcae.training.objectives import MSEObjective, Objective, RateDistortionObjective
from microcae.training.settings import TrainSettings
from microcae.util.errors import MicrocaeError


@dataclass(frozen=True)
class Architecture:
    """A model to train and how.

    Attributes
    ----------
    kind
        Model kind: a key of :data:`microcae.models.registry.MODEL_KINDS`.
    config
        The kind's configuration (e.g. :class:`~microcae.models.cae.CAEConfig`).
    summary
        One line for ``--help``.
    lmbda
        Default λ of the rate–distortion objective; None: the model is trained with MSE.
    grad_clip, lr_drop
        Defaults of the loop settings of the same names (None: off).
    """

    kind: str
    config: Any
    summary: str
    lmbda: float | None = None
    grad_clip: float | None = None
    lr_drop: float | None = None

    def with_channels(self, widths: tuple[int, ...]) -> Architecture:
        """Return the same architecture with other encoder widths (``ValueError`` if invalid)."""
        if not hasattr(self.config, "with_channels"):
            raise MicrocaeError(f"--channels does not apply to {self.kind} models")
        return replace(self, config=self.config.with_channels(tuple(widths)))

    def build(self) -> MicrocaeModel:
        """Make a new, untrained model (weights from torch's generator)."""
        return MODEL_KINDS[self.kind](self.config)

    def objective(self, lmbda: float | None = None) -> Objective:
        """Return the objective to train with; ``lmbda`` overrides a coding model's default λ.

        Raises
        ------
        MicrocaeError
            If ``lmbda`` is given for a model trained with MSE.
        """
        if self.lmbda is None:
            if lmbda is not None:
                coding = ", ".join(name for name, a in ARCHITECTURES.items() if a.lmbda)
                raise MicrocaeError(f"--lmbda applies to coding architectures only ({coding})")
            return MSEObjective()
        return RateDistortionObjective(self.lmbda if lmbda is None else lmbda)

    def settings(self, **changes: Any) -> TrainSettings:
        """Return loop settings with this architecture's defaults, updated by ``changes``."""
        return TrainSettings(**{"grad_clip": self.grad_clip, "lr_drop": self.lr_drop,
                                **changes})


_RD = {"lmbda": 0.01, "grad_clip": 1.0, "lr_drop": 0.8}

ARCHITECTURES: dict[str, Architecture] = {
    "study": Architecture("microcae.cae", CAEConfig(),
                          "the paper's CAE, MSE (latent 16×16×8 per 256² tile)"),
    "rd-study": Architecture("microcae.rdcae", rdcae.RDConfig(rdcae.ARCHITECTURES["study"]),
                             "the paper's CAE + entropy model, rate–distortion", **_RD),
    "rd-wide": Architecture("microcae.rdcae", rdcae.RDConfig(rdcae.ARCHITECTURES["wide"]),
                            "64-channel stages, latent 16×16×32, + entropy model, "
                            "rate–distortion", **_RD),
    "codec": Architecture("microcae.hyperprior", HyperpriorConfig(N=64, M=96),
                          "microcae's codec: GDN transforms + mean-scale hyperprior with an "
                          "integer hyper-synthesis, whole images, rate–distortion", **_RD),
}
"""Architectures by ``--arch`` name (the first is the default)."""
