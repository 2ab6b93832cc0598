"""The rate–distortion-trained CAE: a CAE plus a factorized prior and its stored code tables.

``RDCAE`` speaks ``forward`` / ``compress`` / ``decompress``: ``forward`` gives the training
quantities (reconstruction through rounded latents, likelihoods of the noisy latents, bits per
pixel), ``compress`` the integer latents, ``decompress`` the image from them. Byte-level coding
of the integers is :mod:`microcae.entropy.range_coder`; files are :mod:`microcae.codec`.

Model files are safetensors with ``format = "microcae.rdcae"``: encoder, decoder and prior
weights, the int32 code tables (:mod:`microcae.entropy.code_tables`) and the configuration as
JSON metadata.
Loading never unpickles, and the tables are read from the file, never recomputed.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from microcae.entropy.code_tables import VALUE_MAX, VALUE_MIN, EntropyTables, build_tables
from microcae.entropy.factorized import FactorizedPrior
from microcae.models.cae import (
    BUNDLED_MODEL,
    CAE,
    MODEL_FORMAT,
    CAEConfig,
    build_decoder,
    build_encoder,
    checked_metadata,
    decoder_fingerprint,
    load_checked_weights,
    read_model_file,
    read_safetensors,
    state_fingerprint,
    write_model_file,
)
from microcae.util.errors import MicrocaeError

RD_MODEL_FORMAT = "microcae.rdcae"
RD_MODEL_FORMAT_VERSION = "1"

ARCHITECTURES: dict[str, CAEConfig] = {
    "study": CAEConfig(),
    "wide": CAEConfig(channels=(64, 64, 64, 32)),
}
"""Named CAE architectures for ``microcae train-rd --arch``. ``study``: the paper's network
(latent 16×16×8 per 256² tile); ``wide``: same depth, 64 channels in every hidden stage and a
16×16×32 latent (4× the latent values, which the entropy coder makes cheap where they are
predictable)."""


@dataclass(frozen=True)
class RDConfig:
    """Architecture of an :class:`RDCAE`: the CAE's configuration and the prior's hidden widths."""

    cae: CAEConfig = field(default_factory=CAEConfig)
    filters: tuple[int, ...] = (3, 3, 3)

    def __post_init__(self) -> None:
        object.__setattr__(self, "filters", tuple(int(f) for f in self.filters))
        if not 1 <= len(self.filters) <= 6 or not all(1 <= f <= 32 for f in self.filters):
            raise ValueError(f"filters must be 1..6 widths in 1..32, got {self.filters}")

    def to_json(self) -> str:
        """Serialise to a JSON object string."""
        return json.dumps({"cae": json.loads(self.cae.to_json()), "filters": list(self.filters)},
                          sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> RDConfig:
        """Parse :meth:`to_json` output; raises ``ValueError`` on anything else."""
        data = json.loads(text)
        if not isinstance(data, dict) or set(data) != {"cae", "filters"}:
            raise ValueError("unexpected configuration fields")
        return cls(CAEConfig.from_json(json.dumps(data["cae"])), tuple(data["filters"]))


class RDCAE(nn.Module):
    """CAE whose integer latents are entropy coded with a learned factorized prior.

    ``encoder`` and ``decoder`` are those of :class:`microcae.models.cae.CAE` with configuration
    ``config`` (so saliency, tiling and decoding code treat both alike); ``prior`` models each
    latent channel's distribution; ``tables`` are its integer code tables (None until
    :meth:`update_tables` or loading).
    """

    def __init__(self, rd_config: RDConfig | None = None) -> None:
        super().__init__()
        self.rd_config = rd_config or RDConfig()
        self.config = self.rd_config.cae
        self.encoder = build_encoder(self.config)
        self.decoder = build_decoder(self.config)
        self.prior = FactorizedPrior(self.config.latent_channels, self.rd_config.filters)
        self.tables: EntropyTables | None = None

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Training pass on (N, 1, H, W) images in [0, 1].

        Returns
        -------
        dict
            ``x_hat`` (N, 1, H, W): decoded from the rounded latents (straight-through gradient);
            ``likelihoods`` (N, C, h, w): prior mass of the latents plus uniform noise U(-½, ½)
            in training, of the rounded latents in eval mode; ``bpp``: scalar, the summed
            ``-log2`` likelihood per image pixel.
        """
        y = self.encoder(x)
        rounded = y + (torch.round(y) - y).detach()
        noisy = y + torch.empty_like(y).uniform_(-0.5, 0.5) if self.training else rounded
        likelihoods = self.prior.likelihood(noisy)
        bpp = -torch.log2(likelihoods).sum() / (x.shape[0] * x.shape[-2] * x.shape[-1])
        return {"x_hat": self.decoder(rounded), "likelihoods": likelihoods, "bpp": bpp}

    @torch.no_grad()
    def compress(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Integer latents of (N, 1, H, W) images in [0, 1].

        Returns
        -------
        dict
            ``symbols``: (N, C, H/d, W/d) int32, the encoder's output rounded (half to even)
            and clamped to the int16 range, as :mod:`microcae.entropy.range_coder` codes them.
        """
        y = torch.round(self.encoder(x))
        return {"symbols": y.clamp(VALUE_MIN, VALUE_MAX).to(torch.int32)}

    @torch.no_grad()
    def decompress(self, symbols: torch.Tensor) -> dict[str, torch.Tensor]:
        """Decode integer latents (N, C, h, w): returns ``x_hat`` (N, 1, h·d, w·d)."""
        weight = next(self.decoder.parameters())
        return {"x_hat": self.decoder(symbols.to(weight.device, weight.dtype))}

    def update_tables(self) -> EntropyTables:
        """Build (and keep) the integer code tables from the current prior."""
        self.tables = build_tables(self.prior)
        return self.tables


CodecModel = CAE | RDCAE
"""Any model the latent files can be made with."""


def _fingerprint_tensors(model: RDCAE) -> dict[str, torch.Tensor]:
    if model.tables is None:
        raise MicrocaeError("the RD model has no code tables (call update_tables first)")
    state = {k: v for k, v in model.state_dict().items() if k.startswith("decoder.")}
    return {**state, **model.tables.to_tensors()}


def model_fingerprint(model: CodecModel) -> str:
    """SHA-256 (hex) that a latent file is tied to.

    For a :class:`~microcae.models.cae.CAE`: :func:`microcae.models.cae.decoder_fingerprint`. For an
    :class:`RDCAE`: its configuration JSON, decoder weights and int32 code tables, so a file
    never decodes with other tables.
    """
    if isinstance(model, RDCAE):
        return state_fingerprint(_fingerprint_tensors(model), "", model.rd_config.to_json())
    return decoder_fingerprint(model)


@dataclass
class RDModelFile:
    """A loaded RD model and the provenance stored with it."""

    model: RDCAE
    provenance: dict[str, Any] = field(default_factory=dict)
    microcae_version: str = ""


def save_rd_model(model: RDCAE, path: str | Path, provenance: dict[str, Any] | None = None) -> None:
    """Build the code tables from the prior and write everything as safetensors, atomically.

    Parameters
    ----------
    model
        The trained model; its ``tables`` are (re)computed here from ``prior``.
    path
        Target file.
    provenance
        JSON-serialisable facts about the training (lambda, data, epochs, ...).
    """
    model.update_tables()
    write_model_file(path, {**model.state_dict(), **model.tables.to_tensors()}, RD_MODEL_FORMAT,
                     RD_MODEL_FORMAT_VERSION, model.rd_config.to_json(), provenance)


def read_rd_model_file(path: str | Path) -> RDModelFile:
    """Load a model saved by :func:`save_rd_model` (eval mode, CPU), never unpickling.

    Raises
    ------
    MicrocaeError
        If the file is missing, not an RD model, of an unknown format version, or its weights
        or code tables do not match its stored configuration.
    """
    path = Path(path)
    metadata, tensors = read_safetensors(path)
    config_json, provenance = checked_metadata(path, metadata, RD_MODEL_FORMAT,
                                               RD_MODEL_FORMAT_VERSION, "microcae RD model")
    try:
        config = RDConfig.from_json(config_json)
    except (KeyError, ValueError, TypeError) as exc:
        raise MicrocaeError(f"{path}: corrupt model metadata ({exc})") from None
    model = RDCAE(config)
    load_checked_weights(path, model, {k: v for k, v in tensors.items()
                                       if not k.startswith("tables.")})
    model.tables = EntropyTables.from_tensors(tensors, str(path))
    if model.tables.channels != config.cae.latent_channels:
        raise MicrocaeError(f"{path}: code tables do not match the latent channels")
    model.eval()
    return RDModelFile(model, provenance, metadata.get("microcae_version", ""))


def load_codec_model(path: str | Path | None = None) -> CodecModel:
    """Load a CAE or an RD model by its file's ``format`` metadata (None: the bundled CAE)."""
    if path is None:
        return read_model_file(BUNDLED_MODEL).model
    metadata, _ = read_safetensors(Path(path), tensors=False)
    if metadata.get("format") == RD_MODEL_FORMAT:
        return read_rd_model_file(path).model
    if metadata.get("format") != MODEL_FORMAT:
        raise MicrocaeError(f"{path}: not a microcae model (format {metadata.get('format')!r})")
    return read_model_file(path).model
