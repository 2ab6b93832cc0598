"""The study's convolutional autoencoder (CAE), exactly as published, and configurable."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, replace

import torch
from torch import nn

from microcae.models.base import MicrocaeModel


@dataclass(frozen=True)
class CAEConfig:
    """Architecture of a :class:`CAE`.

    Attributes
    ----------
    channels
        Encoder widths, one per stage (conv k×k + ReLU + 2×2 max-pool). The decoder mirrors them.
        The study: (64, 32, 16, 8) -> a 256×256 tile becomes a 16×16×8 latent.
    in_channels
        Image channels (1 for greyscale micrographs).
    kernel_size
        Odd convolution kernel side; 'same' zero padding, stride 1.
    """

    channels: tuple[int, ...] = (64, 32, 16, 8)
    in_channels: int = 1
    kernel_size: int = 3

    def __post_init__(self) -> None:
        object.__setattr__(self, "channels", tuple(int(c) for c in self.channels))
        if not 1 <= len(self.channels) <= 8 or not all(1 <= c <= 4096 for c in self.channels):
            raise ValueError(f"channels must be 1..8 widths in 1..4096, got {self.channels}")
        if not 1 <= self.in_channels <= 4:
            raise ValueError(f"in_channels must be 1..4, got {self.in_channels}")
        if self.kernel_size < 1 or self.kernel_size % 2 == 0 or self.kernel_size > 15:
            raise ValueError(f"kernel_size must be odd and at most 15, got {self.kernel_size}")

    @property
    def downsample(self) -> int:
        """Factor by which each spatial side shrinks from image to latent (16 for the study)."""
        return 2 ** len(self.channels)

    @property
    def latent_channels(self) -> int:
        """Channels of the latent feature map (8 for the study)."""
        return self.channels[-1]

    def to_json(self) -> str:
        """Serialise to a JSON object string."""
        return json.dumps(asdict(self), sort_keys=True)

    def with_channels(self, widths: tuple[int, ...]) -> CAEConfig:
        """Return this configuration with other encoder widths (``ValueError`` if invalid)."""
        return replace(self, channels=tuple(widths))

    @classmethod
    def from_json(cls, text: str) -> CAEConfig:
        """Parse :meth:`to_json` output; raises ``ValueError`` on anything else."""
        data = json.loads(text)
        if not isinstance(data, dict) or set(data) - {"channels", "in_channels", "kernel_size"}:
            raise ValueError("unexpected configuration fields")
        return cls(
            channels=tuple(data["channels"]),
            in_channels=int(data["in_channels"]),
            kernel_size=int(data["kernel_size"]),
        )


def _conv(in_ch: int, out_ch: int, kernel_size: int) -> nn.Conv2d:
    return nn.Conv2d(in_ch, out_ch, kernel_size, stride=1, padding=kernel_size // 2)


def build_encoder(config: CAEConfig) -> nn.Sequential:
    """Build the encoder: per stage ``Conv2d -> ReLU -> MaxPool2d(2)``.

    Maps (N, C, H, W) to (N, channels[-1], H / 2^k, W / 2^k) for k stages.
    """
    layers: list[nn.Module] = []
    previous = config.in_channels
    for width in config.channels:
        layers += [_conv(previous, width, config.kernel_size), nn.ReLU(), nn.MaxPool2d(2)]
        previous = width
    return nn.Sequential(*layers)


def build_decoder(config: CAEConfig) -> nn.Sequential:
    """Build the decoder: per stage ``Upsample(2) -> Conv2d -> ReLU``, then a linear conv."""
    layers: list[nn.Module] = []
    previous = config.latent_channels
    for width in reversed(config.channels):
        layers += [
            nn.Upsample(scale_factor=2, mode="nearest"),
            _conv(previous, width, config.kernel_size),
            nn.ReLU(),
        ]
        previous = width
    layers.append(_conv(previous, config.in_channels, config.kernel_size))
    return nn.Sequential(*layers)


class CAE(MicrocaeModel):
    """Convolutional autoencoder of Arumugam & Kiran (2023); ``CAE()`` is the study's network.

    ``encoder`` maps (N, 1, H, W) floats in [0, 1] to (N, 8, H/16, W/16); ``decoder`` maps back.
    H and W must be multiples of ``config.downsample``. With the default configuration the model
    has 50,353 parameters and compresses 65,536 pixel values to 2,048 latent values (ratio 32).
    Latent files store its latents quantised (8-bit by default, see :mod:`microcae.codec`).
    """

    kind = "microcae.cae"
    config_type = CAEConfig

    def __init__(self, config: CAEConfig | None = None) -> None:
        super().__init__()
        self.config = config or CAEConfig()
        self.encoder = build_encoder(self.config)
        self.decoder = build_decoder(self.config)

    @property
    def downsample(self) -> int:
        """Factor by which each image side shrinks to the latent (16 for the study)."""
        return self.config.downsample

    @property
    def latent_channels(self) -> int:
        """Latent channels (8 for the study)."""
        return self.config.latent_channels

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Reconstruct ``x`` (N, C, H, W): returns ``{"x_hat": (N, C, H, W)}``."""
        return {"x_hat": self.decoder(self.encoder(x))}

    @torch.no_grad()
    def compress(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Real-valued latents ``{"latents": (N, C_lat, H/d, W/d)}`` of (N, C, H, W) images."""
        return {"latents": self.encoder(x)}

    @torch.no_grad()
    def decompress(self, latents: torch.Tensor) -> dict[str, torch.Tensor]:
        """Decode (N, C_lat, h, w) latents: returns ``{"x_hat": (N, C, h·d, w·d)}``."""
        weight = next(self.decoder.parameters())
        return {"x_hat": self.decoder(latents.to(weight.device, weight.dtype))}
