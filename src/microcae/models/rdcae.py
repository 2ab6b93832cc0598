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
from dataclasses import dataclass, field, replace

import torch

from microcae.entropy.code_tables import VALUE_MAX, VALUE_MIN, EntropyTables, build_tables
from microcae.entropy.factorized import FactorizedPrior
from microcae.models.base import MicrocaeModel
from microcae.models.cae import CAEConfig, build_decoder, build_encoder
from microcae.util.errors import MicrocaeError

ARCHITECTURES: dict[str, CAEConfig] = {
    "study": CAEConfig(),
    "wide": CAEConfig(channels=(64, 64, 64, 32)),
}
"""Named CAE architectures of RD models (``microcae train --arch rd-study|rd-wide``).
``study``: the paper's network
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

    def with_channels(self, widths: tuple[int, ...]) -> RDConfig:
        """Return this configuration with other CAE encoder widths (``ValueError`` if invalid)."""
        return replace(self, cae=self.cae.with_channels(widths))

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


class RDCAE(MicrocaeModel):
    """CAE whose integer latents are entropy coded with a learned factorized prior.

    ``encoder`` and ``decoder`` are those of :class:`microcae.models.cae.CAE` with configuration
    ``config.cae`` (so saliency, tiling and decoding code treat both alike); ``prior`` models each
    latent channel's distribution; ``tables`` are its integer code tables (None until
    :meth:`update` or loading).
    """

    kind = "microcae.rdcae"
    config_type = RDConfig
    latent_coding = "entropy"

    def __init__(self, config: RDConfig | None = None) -> None:
        super().__init__()
        self.config = config or RDConfig()
        self.encoder = build_encoder(self.config.cae)
        self.decoder = build_decoder(self.config.cae)
        self.prior = FactorizedPrior(self.config.cae.latent_channels, self.config.filters)
        self.tables: EntropyTables | None = None

    @property
    def downsample(self) -> int:
        """Factor by which each image side shrinks to the latent (16 for the study's depth)."""
        return self.config.cae.downsample

    @property
    def latent_channels(self) -> int:
        """Latent channels."""
        return self.config.cae.latent_channels

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
            ``latents``: (N, C, H/d, W/d) int32 symbols, the encoder's output rounded (half to even)
            and clamped to the int16 range, as :mod:`microcae.entropy.range_coder` codes them.
        """
        y = torch.round(self.encoder(x))
        return {"latents": y.clamp(VALUE_MIN, VALUE_MAX).to(torch.int32)}

    @torch.no_grad()
    def decompress(self, symbols: torch.Tensor) -> dict[str, torch.Tensor]:
        """Decode integer latents (N, C, h, w): returns ``x_hat`` (N, 1, h·d, w·d)."""
        weight = next(self.decoder.parameters())
        return {"x_hat": self.decoder(symbols.to(weight.device, weight.dtype))}

    def update(self) -> None:
        """Build (and keep) the integer code tables from the current prior."""
        self.tables = build_tables(self.prior)

    def stored_tensors(self) -> dict[str, torch.Tensor]:
        """Return the int32 code tables as ``tables.*`` tensors.

        Raises
        ------
        MicrocaeError
            If the tables were never built (:meth:`update`) nor loaded.
        """
        if self.tables is None:
            raise MicrocaeError("the RD model has no code tables (call update first)")
        return self.tables.to_tensors()

    def load_stored_tensors(self, tensors: dict[str, torch.Tensor], label: str) -> None:
        """Read and validate the ``tables.*`` tensors of a model file."""
        tables = EntropyTables.from_tensors(tensors, label)
        if tables.channels != self.latent_channels:
            raise MicrocaeError(f"{label}: code tables do not match the latent channels")
        self.tables = tables
