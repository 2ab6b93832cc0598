"""Per-tile jobs of the batch engine: what is computed for every tile and how it is stored.

A :class:`TileJob` maps a batch of tiles to one result per tile. Its ``layout`` says where the
results go in the Zarr store: ``"image"`` results are (tile, tile) maps written into an
image-shaped (H, W) array (relevance, reconstruction); ``"tile"`` results are arrays of a fixed
shape stored per tile in a (rows, cols, ...) array (latents). :data:`JOBS` maps each name (the
``microcae batch`` sub-commands) to a factory taking the job's options.
"""

from __future__ import annotations

import copy
import functools
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import torch
from torch import nn

from microcae.models.base import MicrocaeModel
from microcae.util.errors import MicrocaeError
from microcae.util.runtime import to_channels_last

Layout = Literal["image", "tile"]


@dataclass(frozen=True)
class TileJob:
    """A computation run on every tile of every image.

    Attributes
    ----------
    name
        Job name (``"encode"``, ``"saliency"``, ``"reconstruct"``).
    array
        Name of the Zarr array that holds the results in each image's group.
    layout
        ``"image"``: each result is a (tile, tile) map placed in an (H, W) array;
        ``"tile"``: each result is an array of :meth:`result_shape`, stored per tile.
    compute
        ``compute(model, batch)`` maps (B, 1, tile, tile) float32 tiles in [0, 1] to a
        (B, *result_shape) float32 array. ``model`` is in eval mode and channels-last, and
        shared between threads: ``compute`` must not modify it.
    options
        JSON-ready settings that change the results (part of the store's identity).
    """

    name: str
    array: str
    layout: Layout
    compute: Callable[[MicrocaeModel, torch.Tensor], np.ndarray]
    options: dict[str, Any] = field(default_factory=dict)

    def result_shape(self, model: MicrocaeModel, tile: int) -> tuple[int, ...]:
        """Shape of one tile's result (without the batch axis)."""
        if self.layout == "image":
            return (tile, tile)
        side = tile // model.downsample
        return (model.latent_channels, side, side)


@torch.no_grad()
def _encode(model: MicrocaeModel, batch: torch.Tensor) -> np.ndarray:
    latents = model.compress(to_channels_last(batch))["latents"]
    return latents.contiguous().numpy().astype(np.float32, copy=False)


@torch.no_grad()
def _reconstruct(model: MicrocaeModel, batch: torch.Tensor) -> np.ndarray:
    latents = model.compress(to_channels_last(batch))["latents"]
    tiles = model.decompress(to_channels_last(latents.float()))["x_hat"][:, 0]
    return tiles.contiguous().numpy().astype(np.float32, copy=False)


def _relevance(method: str, model: MicrocaeModel, batch: torch.Tensor) -> np.ndarray:
    from microcae.saliency import relevance

    # methods may hook the encoder, and threads share the model: work on a private copy
    encoder = copy.deepcopy(model.encoder).to(memory_format=torch.contiguous_format)
    return relevance(encoder, batch, method=method).detach().numpy().astype(np.float32)


def encode_job() -> TileJob:
    """Latents of every tile: (C, tile/d, tile/d) float32 per tile (d: the model's downsampling).

    The latents are what the model's ``compress`` gives: real-valued for the study CAE,
    integer symbols (stored as float32) for entropy-coded kinds, so export can entropy-code
    them.
    """
    return TileJob("encode", "latents", "tile", _encode)


def reconstruct_job() -> TileJob:
    """Reconstruct every tile (encode, decode): (tile, tile) float32 in [0, 1] units, unclipped."""
    return TileJob("reconstruct", "reconstruction", "image", _reconstruct)


def default_saliency_method(encoder: nn.Module | None = None, tile: int = 256) -> str:
    """Return the cheapest exact relevance engine of the saliency registry for ``encoder``.

    Parameters
    ----------
    encoder
        The encoder that will be mapped (None: the registry's first exact engine, ``vjp``).
    tile
        Side (px) of the tiles it maps; the engines' cost estimates depend on the shape.
    """
    from microcae.saliency.registry import fastest_exact

    if encoder is None:
        return fastest_exact()
    return fastest_exact(encoder, torch.zeros(1, 1, tile, tile))


def saliency_job(method: str | None = None, encoder: nn.Module | None = None,
                 tile: int = 256) -> TileJob:
    """Raw relevance r_ij of every tile (``microcae.saliency.relevance``), (tile, tile) float32.

    Parameters
    ----------
    method
        A key of ``microcae.saliency.METHODS``; default: :func:`default_saliency_method` of
        ``encoder`` and ``tile`` (``vjp`` for the study's encoder, ``patches`` for the codec's).
        Maps of a whole image are the per-tile maps side by side, as the encoder sees tiles.
    encoder, tile
        The encoder and tile side the default method is chosen for.
    """
    from microcae.saliency import METHODS

    method = method or default_saliency_method(encoder, tile)
    if method not in METHODS:
        raise MicrocaeError(f"unknown relevance method {method!r}; choose from {sorted(METHODS)}")
    return TileJob("saliency", "relevance", "image", functools.partial(_relevance, method),
                   {"method": method})


JOBS: dict[str, Callable[..., TileJob]] = {
    "encode": encode_job,
    "saliency": saliency_job,
    "reconstruct": reconstruct_job,
}
"""Job name -> factory (keyword options such as ``method`` for saliency)."""
