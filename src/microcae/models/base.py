"""The base every microcae model kind implements (CompressAI's ``CompressionModel`` idea).

A model kind is a subclass of :class:`MicrocaeModel` with

* ``kind`` — the ``format`` written into its files and the key of
  :data:`microcae.models.registry.MODEL_KINDS`;
* ``config`` — a frozen configuration with ``to_json`` / ``from_json``, stored in the file and
  never inferred from weight shapes;
* ``encoder`` / ``decoder`` — torch modules (saliency maps the encoder, latent files are tied to
  the decoder);
* ``forward`` / ``compress`` / ``decompress`` with dict outputs;
* optional stored tables (:meth:`stored_tensors`, :meth:`load_stored_tensors`), rebuilt by
  :meth:`update` before saving and read back from the file, never recomputed on load.
"""

from __future__ import annotations

from typing import Any, ClassVar, Protocol

import torch
from torch import nn

from microcae.entropy.code_tables import EntropyTables
from microcae.models.files import state_fingerprint

WHOLE_MODEL = ("encoder.", "decoder.")
"""Fingerprint parts covering everything that determines latents and reconstructions."""


class ModelConfig(Protocol):
    """A model configuration: frozen, serialisable to and from a JSON object string."""

    def to_json(self) -> str:
        """Serialise to a JSON object string."""

    @classmethod
    def from_json(cls, text: str) -> ModelConfig:
        """Parse :meth:`to_json` output; raise ``ValueError`` on anything else."""


class MicrocaeModel(nn.Module):
    """Base of every model kind: configuration, encoder, decoder, coding API, fingerprint.

    Subclasses set the class attributes and implement :meth:`forward`, :meth:`compress`,
    :meth:`decompress`, :attr:`downsample` and :attr:`latent_channels`.
    """

    kind: ClassVar[str]
    """File ``format`` and registry key, e.g. ``"microcae.cae"``."""
    format_version: ClassVar[str] = "1"
    config_type: ClassVar[type]
    """The configuration class (``from_json`` builds it from a file's metadata)."""
    latent_coding: ClassVar[str] = "uint8"
    """How latent files store this model's latents by default (``"uint8"`` or ``"entropy"``)."""
    stored_prefix: ClassVar[str] = "tables."
    """Name prefix of stored tensors that are not weights (tables)."""
    derived_prefix: ClassVar[str | None] = None
    """Name prefix of weights a file may leave out because :meth:`load_stored_tensors` derives
    them exactly from the stored tensors (packed files); None: every weight is stored."""

    config: Any
    encoder: nn.Module
    decoder: nn.Module
    tables: EntropyTables | None = None
    """Integer code tables of entropy-coded latents (kinds with ``latent_coding = "entropy"``)."""
    lmbda: float | None = None
    """Rate–distortion weight the model was trained with (``microcae train --lmbda``, read from
    its file's provenance); None if unknown or not a coding model."""

    @property
    def downsample(self) -> int:
        """Factor by which each image side shrinks to the latent (16 for the study CAE)."""
        raise NotImplementedError

    @property
    def latent_channels(self) -> int:
        """Channels of the latent feature map (8 for the study CAE)."""
        raise NotImplementedError

    def compress(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """``{"latents": (N, C_lat, H/d, W/d)}`` of (N, C, H, W) images in [0, 1].

        The latents are in the form latent files store them: real-valued (quantised by the
        container) or integer symbols (entropy-coded kinds).
        """
        raise NotImplementedError

    def decompress(self, latents: torch.Tensor) -> dict[str, torch.Tensor]:
        """Images ``{"x_hat": (N, C, H, W)}`` from latents of :meth:`compress`."""
        raise NotImplementedError

    def update(self) -> None:
        """Rebuild stored tables from the trained parameters (called before saving)."""

    def stored_tensors(self) -> dict[str, torch.Tensor]:
        """Tables stored beside the weights, named with :attr:`stored_prefix` (none by default)."""
        return {}

    def load_stored_tensors(self, tensors: dict[str, torch.Tensor], label: str) -> None:
        """Restore :meth:`stored_tensors` from a file's tensors; raise MicrocaeError if broken."""

    def fingerprint(self, parts: tuple[str, ...] = ("decoder.",)) -> str:
        """SHA-256 (hex) of the configuration, the weights under ``parts`` and the stored tables.

        The default, the decoding state, is what a latent file is tied to: a file never decodes
        with another decoder or other code tables. ``parts=("encoder.", "decoder.")`` covers
        everything that determines a model's latents and reconstructions.
        """
        state = {k: v for k, v in self.state_dict().items() if k.startswith(parts)}
        return state_fingerprint({**state, **self.stored_tensors()}, self.config.to_json())
