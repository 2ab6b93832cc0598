"""The model kinds training can build, describe and save: one table until the model registry lands.

``microcae.models.registry`` (``build(kind, config)``, ``save(model, path, provenance)``, and
``.kind`` / ``.config.to_json()`` on every model) will replace this module: :func:`build`,
:func:`save` and :func:`describe` are the only places that know the classes.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from torch import nn

from microcae.models.cae import CAE, save_model
from microcae.models.rdcae import RDCAE, save_rd_model
from microcae.util.errors import MicrocaeError


@dataclass(frozen=True)
class _Kind:
    """How to make, configure and save one model class."""

    model: type[nn.Module]
    config_of: Callable[[Any], Any]
    save: Callable[[Any, Path, dict[str, Any]], None]
    with_channels: Callable[[Any, tuple[int, ...]], Any]


_KINDS: dict[str, _Kind] = {
    "cae": _Kind(CAE, lambda m: m.config, save_model,
                 lambda config, widths: replace(config, channels=widths)),
    "rdcae": _Kind(RDCAE, lambda m: m.rd_config, save_rd_model,
                   lambda config, widths: replace(config, cae=replace(config.cae,
                                                                      channels=widths))),
}


def build(kind: str, config: Any) -> nn.Module:
    """Make a model of ``kind`` (``"cae"``, ``"rdcae"``) with ``config`` (torch's RNG)."""
    return _KINDS[kind].model(config)


def kind_of(model: nn.Module) -> str:
    """Return the kind name of ``model``; a MicrocaeError for a class training cannot save."""
    for name, kind in _KINDS.items():
        if type(model) is kind.model:
            return name
    raise MicrocaeError(f"cannot train a {type(model).__name__}: not a microcae model kind "
                        f"({', '.join(_KINDS)})")


def describe(model: nn.Module) -> dict[str, Any]:
    """``{"kind": ..., "config": {...}}``: what the model is, for run identity and provenance."""
    kind = kind_of(model)
    return {"kind": kind, "config": json.loads(_KINDS[kind].config_of(model).to_json())}


def save(model: nn.Module, path: Path, provenance: dict[str, Any]) -> None:
    """Write ``model`` (on the CPU) with ``provenance`` to ``path`` in its kind's file format."""
    _KINDS[kind_of(model)].save(model, path, provenance)


def with_channels(kind: str, config: Any, widths: tuple[int, ...]) -> Any:
    """``config`` of ``kind`` with other encoder widths; ``ValueError`` if they are invalid."""
    return _KINDS[kind].with_channels(config, tuple(widths))


def tile_multiple(model: nn.Module) -> int:
    """Factor that tile sides must be a multiple of (the encoder's downsampling)."""
    return int(model.config.downsample)
