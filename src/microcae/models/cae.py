"""The study's convolutional autoencoder (CAE), configurable, with safetensors save/load."""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file
from torch import nn

from microcae import __version__
from microcae.util.atomic import atomic_path
from microcae.util.errors import MicrocaeError

MODEL_FORMAT = "microcae.cae"
MODEL_FORMAT_VERSION = "1"
BUNDLED_MODEL = Path(__file__).parents[1] / "assets" / "cae_default.safetensors"
"""The model shipped with the package (study architecture, trained on public micrographs)."""


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


class CAE(nn.Module):
    """Convolutional autoencoder of Arumugam & Kiran (2023); ``CAE()`` is the study's network.

    ``encoder`` maps (N, 1, H, W) floats in [0, 1] to (N, 8, H/16, W/16); ``decoder`` maps back.
    H and W must be multiples of ``config.downsample``. With the default configuration the model
    has 50,353 parameters and compresses 65,536 pixel values to 2,048 latent values (ratio 32).
    """

    def __init__(self, config: CAEConfig | None = None) -> None:
        super().__init__()
        self.config = config or CAEConfig()
        self.encoder = build_encoder(self.config)
        self.decoder = build_decoder(self.config)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Reconstruct ``x`` (N, C, H, W) -> (N, C, H, W)."""
        return self.decoder(self.encoder(x))


@dataclass
class ModelFile:
    """A loaded model and the provenance stored with it."""

    model: CAE
    provenance: dict[str, Any] = field(default_factory=dict)
    microcae_version: str = ""


def state_fingerprint(state: dict[str, torch.Tensor], prefix: str, extra: str) -> str:
    """SHA-256 (hex) of ``extra`` and the tensors of ``state`` whose names start with ``prefix``.

    Tensors enter in name order, each with its name, dtype and shape, then its CPU bytes.
    """
    digest = hashlib.sha256(extra.encode("utf-8"))
    for name in sorted(k for k in state if k.startswith(prefix)):
        tensor = state[name].detach().to("cpu").contiguous()
        digest.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}|".encode())
        digest.update(tensor.numpy().tobytes())
    return digest.hexdigest()


def decoder_fingerprint(model: CAE) -> str:
    """SHA-256 (hex) of the decoder's configuration and weights: what a latent file is tied to."""
    return state_fingerprint(model.state_dict(), "decoder.", model.config.to_json())


def save_model(model: CAE, path: str | Path, provenance: dict[str, Any] | None = None) -> None:
    """Write weights as safetensors with configuration and provenance as JSON metadata.

    Parameters
    ----------
    model
        The autoencoder to save (weights are copied to contiguous CPU float tensors).
    path
        Target file; written atomically (temporary file, then rename).
    provenance
        JSON-serialisable facts about how the model was made (data manifest hash, epochs, seed,
        metrics, ...). The package version is added automatically.
    """
    write_model_file(path, model.state_dict(), MODEL_FORMAT, MODEL_FORMAT_VERSION,
                     model.config.to_json(), provenance)


def write_model_file(path: str | Path, tensors: dict[str, torch.Tensor], kind: str,
                     version: str, config_json: str, provenance: dict[str, Any] | None) -> None:
    """Write tensors (copied to contiguous CPU tensors) and model metadata, atomically.

    The metadata holds ``format`` = ``kind``, ``format_version``, the configuration JSON, the
    provenance JSON and the package version.
    """
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}
    metadata = {
        "format": kind,
        "format_version": version,
        "config": config_json,
        "provenance": json.dumps(provenance or {}, sort_keys=True),
        "microcae_version": __version__,
    }
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata=metadata)


def read_safetensors(path: Path, tensors: bool = True
                     ) -> tuple[dict[str, str], dict[str, torch.Tensor]]:
    """Read a safetensors model file's metadata (and tensors, on the CPU), never unpickling.

    Raises
    ------
    MicrocaeError
        If the file is missing or not safetensors.
    """
    if not path.is_file():
        raise MicrocaeError(f"{path}: no such model file")
    try:
        with safe_open(str(path), framework="pt") as handle:
            metadata = handle.metadata() or {}
        return metadata, load_file(str(path)) if tensors else {}
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        reason = str(exc).splitlines()[0] if str(exc) else exc.__class__.__name__
        raise MicrocaeError(f"{path}: not a valid safetensors model file ({reason})") from None


def checked_metadata(path: Path, metadata: dict[str, str], kind: str, version: str,
                     label: str) -> tuple[str, dict[str, Any]]:
    """Check a model file's ``format`` and ``format_version``; return (config JSON, provenance).

    Parameters
    ----------
    path
        The file (for messages).
    metadata
        Its safetensors metadata.
    kind, version
        Expected ``format`` and ``format_version``.
    label
        What the file should be, for messages (e.g. ``"microcae model"``).

    Raises
    ------
    MicrocaeError
        On another format, an unsupported version or unreadable configuration/provenance.
    """
    if metadata.get("format") != kind:
        raise MicrocaeError(f"{path}: not a {label} (no '{kind}' metadata)")
    if metadata.get("format_version") != version:
        raise MicrocaeError(
            f"{path}: {label} format version {metadata.get('format_version')!r} is not supported"
        )
    try:
        return metadata["config"], json.loads(metadata.get("provenance", "{}"))
    except (KeyError, ValueError, TypeError) as exc:
        raise MicrocaeError(f"{path}: corrupt model metadata ({exc})") from None


def load_checked_weights(path: Path, model: nn.Module, weights: dict[str, torch.Tensor]) -> None:
    """Load ``weights`` into ``model`` after checking names, shapes, dtype kind and finiteness.

    Raises
    ------
    MicrocaeError
        If the weights do not match the model built from the stored configuration, or hold NaN
        or infinite values.
    """
    expected = model.state_dict()
    if set(weights) != set(expected) or any(
        weights[k].shape != expected[k].shape or not weights[k].is_floating_point()
        for k in expected
    ):
        raise MicrocaeError(f"{path}: weights do not match the stored configuration")
    if not all(torch.isfinite(t).all() for t in weights.values()):
        raise MicrocaeError(f"{path}: weights contain NaN or infinite values")
    model.load_state_dict({k: v.to(expected[k].dtype) for k, v in weights.items()})


def read_model_file(path: str | Path) -> ModelFile:
    """Load a model saved by :func:`save_model`, never unpickling anything.

    Raises
    ------
    MicrocaeError
        If the file is missing, not safetensors, not a microcae model, of a newer format, or
        its weights do not match its stored configuration.
    """
    path = Path(path)
    metadata, tensors = read_safetensors(path)
    config_json, provenance = checked_metadata(path, metadata, MODEL_FORMAT, MODEL_FORMAT_VERSION,
                                               "microcae model")
    try:
        config = CAEConfig.from_json(config_json)
    except (KeyError, ValueError, TypeError) as exc:
        raise MicrocaeError(f"{path}: corrupt model metadata ({exc})") from None
    model = CAE(config)
    load_checked_weights(path, model, tensors)
    model.eval()
    return ModelFile(model, provenance, metadata.get("microcae_version", ""))


def load_model(path: str | Path | None = None) -> CAE:
    """Load a :class:`CAE` from a safetensors file (``None``: the bundled model), in eval mode."""
    return read_model_file(BUNDLED_MODEL if path is None else path).model
