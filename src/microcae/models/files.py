"""Model files: safetensors weights plus JSON metadata, read without unpickling or over-allocating.

A model file holds the weights (and any stored tables) as tensors and, as metadata, the model
kind (``format``), its ``format_version``, the configuration JSON, the provenance JSON and the
package version. Reading first looks only at the header (names, dtypes, shapes), so a file
whose configuration claims a huge network is refused before anything is built.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file

from microcae import __version__
from microcae.util.atomic import atomic_path
from microcae.util.errors import MicrocaeError
from microcae.util.safe_json import loads_bounded


@dataclass(frozen=True)
class FileHeader:
    """What a model file says about itself, read without loading any tensor.

    Attributes
    ----------
    path
        The file.
    metadata
        The safetensors metadata (string to string).
    shapes
        Tensor name -> shape, from the safetensors header.
    """

    path: Path
    metadata: dict[str, str]
    shapes: dict[str, tuple[int, ...]]

    @property
    def kind(self) -> str:
        """The ``format`` metadata: the model kind (e.g. ``"microcae.cae"``), or ``""``."""
        return self.metadata.get("format", "")


def parse_metadata_json(text: str, path: Path, what: str) -> Any:
    """Parse one JSON metadata field with :func:`microcae.util.safe_json.loads_bounded`.

    Raises
    ------
    MicrocaeError
        If the text is not JSON, nests too deeply or is too large (never ``RecursionError``).
    """
    try:
        return loads_bounded(text)
    except (ValueError, TypeError) as exc:
        raise MicrocaeError(f"{path}: corrupt model metadata ({what}: {exc})") from None


def _unreadable(path: Path, exc: Exception) -> MicrocaeError:
    reason = str(exc).splitlines()[0] if str(exc) else exc.__class__.__name__
    return MicrocaeError(f"{path}: not a valid safetensors model file ({reason})")


def read_file_header(path: str | Path) -> FileHeader:
    """Read a model file's metadata and tensor shapes (no tensor data is loaded).

    Raises
    ------
    MicrocaeError
        If the file is missing or not safetensors.
    """
    path = Path(path)
    if not path.is_file():
        raise MicrocaeError(f"{path}: no such model file")
    try:
        with safe_open(str(path), framework="pt") as handle:
            metadata = handle.metadata() or {}
            shapes = {name: tuple(handle.get_slice(name).get_shape()) for name in handle.keys()}
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        raise _unreadable(path, exc) from None
    return FileHeader(path, dict(metadata), shapes)


def read_tensors(path: Path) -> dict[str, torch.Tensor]:
    """Load every tensor of a safetensors file onto the CPU (never unpickling)."""
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        raise _unreadable(path, exc) from None


def write_model_file(path: str | Path, tensors: dict[str, torch.Tensor], kind: str,
                     version: str, config_json: str, provenance: dict[str, Any] | None) -> None:
    """Write tensors (copied to contiguous CPU tensors) and model metadata, atomically.

    Parameters
    ----------
    path
        Target ``.safetensors`` file (temporary file, then rename).
    tensors
        Name -> tensor.
    kind, version
        ``format`` and ``format_version`` metadata.
    config_json
        The model configuration as a JSON object string.
    provenance
        JSON-serialisable facts about how the model was made; the package version is added.
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


def state_fingerprint(tensors: dict[str, torch.Tensor], config_json: str) -> str:
    """SHA-256 (hex) of a configuration and named tensors.

    The digest takes ``config_json`` (UTF-8), then every tensor in name order as
    ``name|dtype|shape|`` followed by its CPU bytes.
    """
    digest = hashlib.sha256(config_json.encode("utf-8"))
    for name in sorted(tensors):
        tensor = tensors[name].detach().to("cpu").contiguous()
        digest.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}|".encode())
        digest.update(tensor.numpy().tobytes())
    return digest.hexdigest()
