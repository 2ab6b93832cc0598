"""Model kinds and bundled models by name; the one loader and the one saver for every kind.

``--model`` on the command line takes a name of :data:`BUNDLED` (``study``, ``rd-study``, ...) or
a path to a model file. :func:`load_model` reads any kind: the file's ``format`` metadata picks
the class from :data:`MODEL_KINDS`, the stored configuration builds it (never the weight
shapes), and the stored tensor shapes are checked against that configuration *before* anything
is allocated, so a small file cannot make the loader build a huge network.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from microcae.models.base import MicrocaeModel
from microcae.models.cae import CAE
from microcae.models.files import (
    FileHeader,
    parse_metadata_json,
    read_file_header,
    read_tensors,
    write_model_file,
)
from microcae.models.hyperprior import HyperpriorCodec
from microcae.models.rdcae import RDCAE
from microcae.util.errors import MicrocaeError

ASSETS = Path(__file__).parents[1] / "assets"

MODEL_KINDS: dict[str, type[MicrocaeModel]] = {
    cls.kind: cls for cls in (CAE, RDCAE, HyperpriorCodec)}
"""File ``format`` -> model class."""

BUNDLED: dict[str, Path] = {
    "study": ASSETS / "cae_default.safetensors",
    "study-steel": ASSETS / "cae_steel.safetensors",
    "rd-study": ASSETS / "rd_study.safetensors",
    "rd-wide": ASSETS / "rd_wide.safetensors",
    "codec-1": ASSETS / "codec_1.safetensors",
    "codec-2": ASSETS / "codec_2.safetensors",
    "codec-3": ASSETS / "codec_3.safetensors",
    "codec-4": ASSETS / "codec_4.safetensors",
    "codec-5": ASSETS / "codec_5.safetensors",
    "codec-6": ASSETS / "codec_6.safetensors",
}
"""Models shipped with the package, by the name ``--model`` accepts (see the README for how
each was trained; each file's provenance metadata says so too)."""

CODEC_LEVELS = tuple(f"codec-{k}" for k in range(1, 7))
"""Bundled levels of microcae's codec, from the smallest files to the best quality
(``microcae encode --quality Q`` picks ``codec-Q``)."""
DEFAULT_CODEC_LEVEL = 4
"""The level ``microcae encode`` uses without ``--quality``, ``--bpp`` or ``--model`` (λ = 0.01,
the λ of the base run the others were fine-tuned from; see docs/codec.md)."""

DEFAULT_MODEL = "study"
BUNDLED_MODEL = BUNDLED[DEFAULT_MODEL]
"""The study CAE trained on public micrographs: what ``load_model()`` returns."""


@dataclass
class ModelFile:
    """A loaded model and the provenance stored with it."""

    model: MicrocaeModel
    provenance: dict[str, Any] = field(default_factory=dict)
    microcae_version: str = ""


def resolve_model(name_or_path: str | Path | None) -> Path:
    """Path of a bundled model's name (None: the default model), or the given path."""
    if name_or_path is None:
        return BUNDLED_MODEL
    if str(name_or_path) in BUNDLED:
        return BUNDLED[str(name_or_path)]
    return Path(name_or_path)


def _model_class(header: FileHeader) -> type[MicrocaeModel]:
    cls = MODEL_KINDS.get(header.kind)
    if cls is None:
        raise MicrocaeError(f"{header.path}: not a microcae model (format {header.kind!r}; "
                            f"known: {', '.join(MODEL_KINDS)})")
    version = header.metadata.get("format_version")
    if version != cls.format_version:
        raise MicrocaeError(f"{header.path}: {cls.kind} format version {version!r} is not "
                            f"supported")
    return cls


def _checked_config(header: FileHeader, cls: type[MicrocaeModel]) -> Any:
    """Parse the stored configuration and check the stored weights fit it, allocating nothing."""
    text = header.metadata.get("config", "")
    parse_metadata_json(text, header.path, "configuration")
    try:
        config = cls.config_type.from_json(text)
    except (KeyError, ValueError, TypeError) as exc:
        raise MicrocaeError(f"{header.path}: corrupt model metadata ({exc})") from None
    with torch.device("meta"):
        skeleton = cls(config)
    expected = {k: tuple(v.shape) for k, v in skeleton.state_dict().items()}
    stored = {k: s for k, s in header.shapes.items() if not k.startswith(cls.stored_prefix)}
    if cls.derived_prefix is not None:  # weights the model derives from its stored tables
        expected = {k: s for k, s in expected.items()
                    if k in stored or not k.startswith(cls.derived_prefix)}
    if stored != expected:
        raise MicrocaeError(f"{header.path}: weights do not match the stored configuration")
    return config


def _load_weights(path: Path, model: MicrocaeModel, tensors: dict[str, torch.Tensor]) -> None:
    expected = model.state_dict()
    weights = {k: v for k, v in tensors.items() if k in expected}
    if not all(v.is_floating_point() for v in weights.values()):
        raise MicrocaeError(f"{path}: weights do not match the stored configuration")
    if not all(torch.isfinite(t).all() for t in weights.values()):
        raise MicrocaeError(f"{path}: weights contain NaN or infinite values")
    missing = model.load_state_dict({k: v.to(expected[k].dtype) for k, v in weights.items()},
                                    strict=False).missing_keys
    derived = model.derived_prefix
    if any(derived is None or not k.startswith(derived) for k in missing):
        raise MicrocaeError(f"{path}: weights do not match the stored configuration")


def read_model_file(name_or_path: str | Path | None = None) -> ModelFile:
    """Load any microcae model file (or bundled model by name) in eval mode, never unpickling.

    Raises
    ------
    MicrocaeError
        If the file is missing, not safetensors, not a microcae model, of an unsupported
        format version, its metadata is corrupt, or its tensors do not match its stored
        configuration (checked before the model is built).
    """
    header = read_file_header(resolve_model(name_or_path))
    cls = _model_class(header)
    config = _checked_config(header, cls)
    provenance = parse_metadata_json(header.metadata.get("provenance", "{}"), header.path,
                                     "provenance")
    if not isinstance(provenance, dict):
        raise MicrocaeError(f"{header.path}: corrupt model metadata (provenance is not an object)")
    model = cls(config)
    tensors = read_tensors(header.path)
    _load_weights(header.path, model, tensors)
    model.load_stored_tensors(tensors, str(header.path))
    model.lmbda = trained_lmbda(provenance)
    model.eval()
    return ModelFile(model, provenance, header.metadata.get("microcae_version", ""))


def trained_lmbda(provenance: dict[str, Any]) -> float | None:
    """Return the ``lmbda`` a model file's provenance records for its training.

    Returns
    -------
    float | None
        A finite positive float, or None when the provenance records none (or a bad value).
    """
    settings = provenance.get("settings")
    value = settings.get("lmbda") if isinstance(settings, dict) else None
    if isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(
            value) and value > 0:
        return float(value)
    return None


def load_model(name_or_path: str | Path | None = None) -> MicrocaeModel:
    """Load a model of any kind from a file or a bundled name (None: the study CAE), eval mode."""
    return read_model_file(name_or_path).model


def bundled_model_for(fingerprint: str) -> MicrocaeModel | None:
    """Return the bundled model whose decoding fingerprint is ``fingerprint`` (None: none is).

    This is how a latent file, which records its model's fingerprint, finds its decoder
    without a ``--model`` option.
    """
    for path in BUNDLED.values():
        model = load_model(path)
        if model.fingerprint() == fingerprint:
            return model
    return None


def codec_levels() -> list[str]:
    """Names of the :data:`CODEC_LEVELS` bundled with this installation, smallest files first."""
    return [name for name in CODEC_LEVELS if name in BUNDLED and BUNDLED[name].is_file()]


def _required_levels() -> list[str]:
    """:func:`codec_levels`, or an error when none is bundled."""
    levels = codec_levels()
    if not levels:
        raise MicrocaeError("no codec level is bundled with this installation; pass --model")
    return levels


def encode_models(model: str | Path | None, quality: int | None = None,
                  bpp: float | None = None) -> list[str | Path]:
    """Models ``microcae encode`` may use: every bundled level for a ``bpp`` budget, else one.

    Raises
    ------
    MicrocaeError
        If more than one of ``model``, ``quality`` and ``bpp`` is given, or a level is missing.
    """
    if bpp is None:
        return [codec_level(model, quality)]
    if model is not None or quality is not None:
        raise MicrocaeError("--model, --quality and --bpp exclude each other")
    return list(_required_levels())


def codec_level(model: str | Path | None, quality: int | None = None) -> str | Path:
    """Choose the model of ``microcae encode``: ``model`` if given, else a codec level.

    Parameters
    ----------
    model
        A bundled name or a path (``--model``), or None.
    quality
        Level 1..len(:data:`CODEC_LEVELS`) (``--quality``); None: :data:`DEFAULT_CODEC_LEVEL`.

    Raises
    ------
    MicrocaeError
        If both are given, or the level does not exist.
    """
    if model is not None and quality is not None:
        raise MicrocaeError("--model, --quality and --bpp exclude each other")
    if model is not None:
        return model
    levels = _required_levels()
    if quality is not None:
        if not 1 <= quality <= len(levels):
            raise MicrocaeError(f"--quality must be 1..{len(levels)}")
        return levels[quality - 1]
    return levels[min(DEFAULT_CODEC_LEVEL, len(levels)) - 1]


def save_model(model: MicrocaeModel, path: str | Path,
               provenance: dict[str, Any] | None = None) -> None:
    """Rebuild the model's tables (:meth:`~MicrocaeModel.update`) and write it, atomically.

    Parameters
    ----------
    model
        A model of any kind in :data:`MODEL_KINDS`.
    path
        Target ``.safetensors`` file.
    provenance
        JSON-serialisable facts about how the model was made (data, settings, epochs, ...).
    """
    model.update()
    write_model_file(path, {**model.state_dict(), **model.stored_tensors()}, model.kind,
                     model.format_version, model.config.to_json(), provenance)


def pack_model(source: str | Path, target: str | Path, note: str | None = None) -> None:
    """Write a smaller copy of a model file: convolution kernels stored as float16.

    Every 4-D floating-point tensor (the convolution kernels, nearly all of a codec's weights)
    is rounded to float16, and the integer weights of a codec's hyper-synthesis are stored in
    the smallest of int8, int16 and int32 that holds each layer (exact)
    while its float parameters, which only training uses, are left out (the model's
    :attr:`~MicrocaeModel.derived_prefix`; loading derives them exactly from the integers).
    Everything else (GDN and entropy-model parameters, code tables, integer biases) is copied
    unchanged and no table is rebuilt. Loading upcasts the kernels exactly, so the model that
    runs, and its fingerprint, is the stored one on every machine. The bundled codec levels are
    packed this way (about half the bytes; each kernel weight changes by at most 2**-11 of its
    magnitude, or by 3e-8 for the few below float16's normal range, 6e-5).

    Parameters
    ----------
    source
        A model file or bundled name.
    target
        The ``.safetensors`` file to write (atomically).
    note
        Appended to the provenance's ``note``.

    Raises
    ------
    MicrocaeError
        If ``source`` is not a readable model file, or a kernel does not fit float16.
    """
    stored = read_model_file(source)
    state = {}
    derived = stored.model.derived_prefix
    for name, tensor in stored.model.state_dict().items():
        if derived is not None and name.startswith(derived):
            continue  # the model derives these from its stored tables
        if tensor.is_floating_point() and tensor.dim() == 4:
            if not torch.isfinite(tensor.half()).all():
                raise MicrocaeError(f"{source}: {name} does not fit float16")
            tensor = tensor.half()
        state[name] = tensor
    provenance = dict(stored.provenance)
    packed = "Packed by 'microcae models pack': convolution kernels stored as float16."
    provenance["note"] = " ".join(filter(None, [provenance.get("note"), note, packed]))
    model = stored.model
    tables = model.stored_tensors()
    for name, tensor in tables.items():
        if name.startswith("tables.hyper.") and name.endswith(".weight"):
            largest = int(tensor.abs().max())
            tables[name] = tensor.to(torch.int8 if largest < 1 << 7 else
                                     torch.int16 if largest < 1 << 15 else torch.int32)
    write_model_file(target, {**state, **tables}, model.kind,
                     model.format_version, model.config.to_json(), provenance)
