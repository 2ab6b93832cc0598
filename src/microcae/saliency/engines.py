"""Exact relevance engines: the literal complex step, the coloured complex step, JVP and VJP.

All four compute, for every pixel of a batch x (N, 1, H, W),

    r_ij = || ∂f(x) / ∂x_ij ||_F      (Frobenius norm over every latent value)

and return (N, H, W) in the dtype of the encoder's weights (or of ``precision``). They differ in
how many linear passes they need (counts for a 256² tile and the study's encoder):

- ``complex-step-naive``: ``x + i·h·e_ij`` through the complex twin, H·W = 65,536 passes;
- ``complex-step-coloured``: ``x + i·h·Σ e_ij`` over a forward colour class, P_r·P_c = 46² = 2,116;
- ``jvp``: torch's forward-mode AD with the same colouring, 2,116;
- ``vjp``: the twins' transposed linearisation, one cotangent per reverse colour class,
  Q_r·Q_c·C = 3·3·8 = 72.

A fifth engine, ``patches`` (:mod:`microcae.saliency.patches`), builds every latent unit's
derivative on its receptive field layer by layer, for encoders of convolutions and pointwise
layers only (the codec's analysis transform, where it is the fastest).

Conventions at kinks (one-sided derivatives, the same in every engine and in torch's autograd):
a ReLU whose input is exactly 0 has slope 0; a max-pool window with tied maxima sends the
derivative to the first maximal element in row-major order (torch's argmax).
:func:`microcae.saliency.kinks.kink_pixels` reports which pixels such points can touch.
"""

from __future__ import annotations

import copy
import warnings
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from microcae.saliency.footprint import (
    Footprint,
    _on_meta,
    encoder_footprint,
    footprint_sums,
    latent_classes,
    layer_macs,
    pixel_classes,
)
from microcae.saliency.layers import complexify
from microcae.saliency.registry import METHODS, STUDY_METHOD, fastest_exact, register
from microcae.saliency.twins import SequentialTwin, Twin, per_sample
from microcae.util.errors import MicrocaeError

DEFAULT_H = 1e-24
"""The study's imaginary step."""

BATCH_BYTES = 256 * 2**20
"""Memory for one batch of passes when ``chunk`` is not given (about 256 MiB)."""

PRECISIONS = {"complex64": torch.float32, "complex128": torch.float64}
"""Complex precision -> dtype of the real and imaginary parts."""


def _at_precision(encoder: nn.Module, x: torch.Tensor,
                  precision: str | None) -> tuple[nn.Module, torch.Tensor]:
    """Return (encoder, x) in the requested precision (a converted copy, never in place)."""
    weights = next(encoder.parameters(), None)
    dtype = weights.dtype if weights is not None else x.dtype
    if precision is not None:
        if precision not in PRECISIONS:
            raise MicrocaeError(f"precision must be one of {sorted(PRECISIONS)}, not {precision!r}")
        if PRECISIONS[precision] != dtype:
            encoder = copy.deepcopy(encoder).to(PRECISIONS[precision])
        dtype = PRECISIONS[precision]
    if not dtype.is_floating_point:
        raise MicrocaeError(f"encoder weights must be floating point, not {dtype}")
    return encoder, x.to(dtype).contiguous(memory_format=torch.channels_last)


def _chunk_size(chunk: int | None, footprint: Footprint | None, x: torch.Tensor,
                copies: int) -> int:
    """Return ``chunk``, or how many passes fit :data:`BATCH_BYTES` (``copies`` activations)."""
    if chunk is None:
        per_pass = footprint.peak * x.shape[0] * x.element_size() * copies
        return max(1, BATCH_BYTES // per_pass)
    if chunk < 1:
        raise MicrocaeError(f"chunk must be at least 1, got {chunk}")
    return chunk


def _chunks(total: int, size: int, label: str, progress: bool) -> tqdm:
    starts = range(0, total, size)
    return tqdm(starts, desc=label, unit="batch", disable=not progress, leave=False)


def _latent_squares(values: torch.Tensor, n: int, flat: bool) -> torch.Tensor:
    """(N·K, *latent) -> (N, K, h, w): squares summed over channels ((N, K, 1, 1) if flat)."""
    grouped = per_sample(values, n)
    if flat:
        return grouped.flatten(2).pow(2).sum(2)[:, :, None, None]
    return grouped.pow(2).sum(2)


@register("complex-step-naive", "complex step (literal)", "engine", exact=True, local=True,
          preference=3)
@torch.no_grad()
def complex_step_naive(encoder: nn.Module, x: torch.Tensor, h: float = DEFAULT_H,
                       precision: str | None = None, chunk: int | None = None,
                       progress: bool = False, limit: int | None = None) -> torch.Tensor:
    """Compute the study's literal complex step: one full complex pass per pixel.

    Pass (i, j) feeds ``x + i·h·e_ij`` through the complex twin and reads the column
    ``∂f/∂x_ij = Im f(x + i·h·e_ij) / h``; each pass recomputes its real part.

    Parameters
    ----------
    encoder
        ``nn.Sequential`` of layers with complex twins (e.g. ``CAE().encoder``), eval mode.
    x
        (N, 1, H, W) input in [0, 1].
    h
        Imaginary step; any value from 1e-8 down to 1e-200 gives the same result in complex128.
    precision
        ``"complex64"`` or ``"complex128"``; default: that of the encoder's weights.
    chunk
        Passes evaluated together (each still a separate complex pass); default: as many as
        fit about 256 MiB.
    progress
        Show a progress bar over the H·W passes.
    limit
        Compute only the first ``limit`` pixels in row-major order and leave the others NaN
        (for timing the literal method on part of an image).

    Returns
    -------
    torch.Tensor
        (N, H, W) relevance, real dtype of ``precision``.
    """
    encoder, x = _at_precision(encoder, x, precision)
    twin = complexify(encoder)
    n, _, height, width = x.shape
    pixels = height * width if limit is None else min(limit, height * width)
    chunk = _chunk_size(chunk, encoder_footprint(encoder, x), x[:1], copies=8)
    r = torch.full((n, height * width), torch.nan, dtype=x.dtype, device=x.device)
    for image in range(n):
        for start in _chunks(pixels, chunk, "complex-step passes", progress):
            stop = min(start + chunk, pixels)
            im = torch.zeros(stop - start, height * width, dtype=x.dtype, device=x.device)
            rows = torch.arange(stop - start, device=x.device)
            im[rows, torch.arange(start, stop, device=x.device)] = h
            re = x[image : image + 1].expand(stop - start, -1, -1, -1)
            _, im_out = twin((re.contiguous(memory_format=torch.channels_last),
                              im.view(-1, 1, height, width)))
            r[image, start:stop] = (im_out / h).flatten(1).norm(dim=1)
    return r.view(n, height, width)


def _each_image(one: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    """Apply ``one`` to every (1, 1, H, W) image of ``x`` and stack: (N, H, W)."""
    return torch.cat([one(x[i : i + 1]) for i in range(x.shape[0])])


def _coloured_forward(push: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor,
                      footprint: Footprint, chunk: int, label: str, progress: bool,
                      limit: int | None = None) -> torch.Tensor:
    """Return r from forward colour classes; ``push`` maps (N·K, 1, H, W) seeds to columns.

    With ``limit``, only the first ``limit`` classes are pushed; the other pixels are NaN.
    """
    periods = footprint.forward_periods
    n, _, height, width = x.shape
    r2 = torch.zeros(n, height, width, dtype=x.dtype, device=x.device)
    total = periods[0] * periods[1] if limit is None else min(limit, periods[0] * periods[1])
    if total < periods[0] * periods[1]:
        r2 -= 1 - pixel_classes((height, width), periods, range(total), x.dtype,
                                x.device).sum(0)  # -1: not computed
    for start in _chunks(total, chunk, label, progress):
        classes = range(start, min(start + chunk, total))
        masks = pixel_classes((height, width), periods, classes, x.dtype, x.device)
        seeds = masks[None].expand(n, -1, -1, -1).reshape(-1, 1, height, width)
        columns = push(seeds.contiguous(memory_format=torch.channels_last))
        squares = _latent_squares(columns, n, footprint.flat)
        r2 += footprint_sums(squares, footprint, periods, classes)
    return r2.sqrt()  # NaN where not computed


@register("complex-step-coloured", "complex step (coloured)", "engine", exact=True, local=True,
          preference=1)
@torch.no_grad()
def complex_step_coloured(encoder: nn.Module, x: torch.Tensor, h: float = DEFAULT_H,
                          precision: str | None = None, chunk: int | None = None,
                          progress: bool = False, limit: int | None = None) -> torch.Tensor:
    """Coloured complex step: every pixel of a forward colour class perturbed in one pass.

    Pixels whose latent footprints are disjoint (:mod:`microcae.saliency.footprint`) share the
    pass ``x + i·h·Σ e_ij``; each pixel's column is read from its own footprint. The real part is
    the same in every pass and is computed once. Same numbers as :func:`complex_step_naive` with
    ``P_r·P_c`` passes instead of ``H·W``.

    Parameters
    ----------
    encoder, x, h, precision, progress
        As :func:`complex_step_naive`.
    chunk
        Colour classes (passes) evaluated together; default: as many as fit about 256 MiB.
    limit
        Push only the first ``limit`` colour classes and leave the other pixels NaN (for
        timing the engine on part of its passes).

    Returns
    -------
    torch.Tensor
        (N, H, W) relevance, real dtype of ``precision``.
    """
    encoder, x = _at_precision(encoder, x, precision)
    twin = complexify(encoder)
    footprint = encoder_footprint(encoder, x)
    chunk = _chunk_size(chunk, footprint, x[:1], copies=4)

    def one(image: torch.Tensor) -> torch.Tensor:
        _, state = twin.real(image)

        def push(masks: torch.Tensor) -> torch.Tensor:
            return twin.tangent(state, masks * h) / h

        return _coloured_forward(push, image, footprint, chunk, "complex-step passes", progress,
                                 limit)

    return _each_image(one, x)


@register("jvp", "jvp", "engine", exact=True, local=True, preference=2)
def jvp(encoder: nn.Module, x: torch.Tensor, precision: str | None = None,
        chunk: int | None = None, progress: bool = False,
        limit: int | None = None) -> torch.Tensor:
    """Forward-mode autodiff (``torch.func.jvp``, vmapped) with the complex step's colouring.

    Independent of the complex twins: torch's own forward-mode derivatives of the real encoder.

    Parameters
    ----------
    encoder, x, precision, progress
        As :func:`complex_step_naive`.
    chunk
        Tangents (colour classes) pushed together; default: as many as fit about 256 MiB.
    limit
        As :func:`complex_step_coloured`.

    Returns
    -------
    torch.Tensor
        (N, H, W) relevance, real dtype of ``precision``.
    """
    encoder, x = _at_precision(encoder, x, precision)
    frozen = {name: p.detach() for name, p in encoder.named_parameters()}
    frozen.update(dict(encoder.named_buffers()))
    footprint = encoder_footprint(encoder, x)
    chunk = _chunk_size(chunk, footprint, x[:1], copies=4)

    def forward(inputs: torch.Tensor) -> torch.Tensor:
        return torch.func.functional_call(encoder, frozen, (inputs,))

    def one(image: torch.Tensor) -> torch.Tensor:
        def push(masks: torch.Tensor) -> torch.Tensor:
            return torch.vmap(lambda t: torch.func.jvp(forward, (image,), (t[None],))[1][0])(masks)

        return _coloured_forward(push, image, footprint, chunk, "jvp passes", progress, limit)

    with warnings.catch_warnings():
        # torch's forward AD loads its decompositions through the deprecated torch.jit.script
        warnings.filterwarnings("ignore", message=".*torch.jit.script.*", category=FutureWarning)
        return _each_image(one, x)


@torch.no_grad()
def reverse_squares(encoder: nn.Module, x: torch.Tensor, latent_rows: range | None = None,
                    latent_cols: range | None = None, precision: str | None = None,
                    chunk: int | None = None, progress: bool = False) -> torch.Tensor:
    """Sum of squared derivatives of a block of latent units, per pixel (reverse mode).

    One real pass records the linearisation (ReLU masks, max-pool winners); batches of
    cotangents are then pulled back through the transposed layers. In one cotangent class no two
    seeded units see the same pixel, so each pixel's squared gradient is exactly one unit's
    squared derivative, and summing over the classes gives the sum over units. With every unit,
    this is r²; over a partition of the latent grid the parts add up to r² (how whole
    micrographs are mapped in windows, each unit pulled back once).

    Parameters
    ----------
    encoder, x, precision, progress
        As :func:`complex_step_naive`.
    latent_rows, latent_cols
        Rows and columns of the latent grid whose units are seeded (all if None).
    chunk
        Cotangents pulled back together; default: as many as fit :data:`BATCH_BYTES` (for
        a 256² tile of the study encoder, all 72 in one batch).

    Returns
    -------
    torch.Tensor
        (N, H, W) sums of squares, real dtype of ``precision``, on ``x``'s device.
    """
    encoder, x = _at_precision(encoder, x, precision)
    twin = complexify(encoder)
    footprint = encoder_footprint(encoder, x)
    periods = footprint.reverse_periods

    def one(image: torch.Tensor) -> torch.Tensor:
        out, state = twin.real(image)
        latent = (out.numel(), 1, 1) if footprint.flat else tuple(out.shape[1:])
        rows = range(latent[1]) if latent_rows is None or footprint.flat else latent_rows
        cols = range(latent[2]) if latent_cols is None or footprint.flat else latent_cols
        phases = {(r % periods[0], c % periods[1]) for r in rows[: periods[0]]
                  for c in cols[: periods[1]]}  # phases of the seeded units
        spatial = periods[0] * periods[1]
        classes = [c for c in range(spatial * latent[0]) if divmod(c % spatial, periods[1])
                   in phases]
        size = _reverse_chunk(chunk, twin, state, image, out, len(classes))
        r2 = torch.zeros(image.shape[2:], dtype=image.dtype, device=image.device)
        for start in _chunks(len(classes), size, "vjp passes", progress):
            seeds = latent_classes(latent, periods, classes[start : start + size], image.dtype,
                                   image.device)
            seeds[:, :, : rows.start] = 0
            seeds[:, :, rows.stop :] = 0
            seeds[:, :, :, : cols.start] = 0
            seeds[:, :, :, cols.stop :] = 0
            seeds = seeds.reshape(-1, *out.shape[1:])
            if seeds.dim() == 4:
                seeds = seeds.contiguous(memory_format=torch.channels_last)
            r2 += twin.squared_cotangent(state, seeds, 1)[0]
        return r2[None]

    return _each_image(one, x)


def reverse_macs(encoder: nn.Module, x: torch.Tensor) -> float:
    """Estimated multiply-adds of :func:`vjp` for one image shaped like ``x``.

    Its cotangents times the multiply-adds of one dense pass (a transposed pass costs about
    as much as the real one; :func:`~microcae.saliency.footprint.layer_macs`). The fused first
    stages of conv–ReLU–max-pool encoders make the study's encoder much cheaper than this.
    """
    return float(passes(encoder, x, "vjp") * sum(layer_macs(encoder, x)))


@register("vjp", "vjp", "engine", exact=True, local=True, preference=0,
          by_units=reverse_squares, cost=reverse_macs)
def vjp(encoder: nn.Module, x: torch.Tensor, precision: str | None = None,
        chunk: int | None = None, progress: bool = False) -> torch.Tensor:
    """Reverse mode: latent units with disjoint input supports seeded together.

    r = sqrt(:func:`reverse_squares` over every latent row); see there.

    Parameters
    ----------
    encoder, x, precision, progress
        As :func:`complex_step_naive`.
    chunk
        Cotangents pulled back together; default: as many as fit :data:`BATCH_BYTES` (for
        a 256² tile of the study encoder, all 72 in one batch).

    Returns
    -------
    torch.Tensor
        (N, H, W) relevance, real dtype of ``precision``, on ``x``'s device.
    """
    return reverse_squares(encoder, x, None, None, precision, chunk, progress).sqrt()


def _reverse_chunk(chunk: int | None, twin: Twin, state: Any, image: torch.Tensor,
                   out: torch.Tensor, total: int) -> int:
    """Return ``chunk``, or how many cotangents fit :data:`BATCH_BYTES` (all ``total`` at most)."""
    if chunk is not None:
        return _chunk_size(chunk, None, image, 1)
    if isinstance(twin, SequentialTwin):
        values = twin.workspace(state)
    else:
        values = twin.workspace(state, image[0].numel(), out[0].numel())
    return max(1, min(total, BATCH_BYTES // (values * image.element_size())))


def passes(encoder: nn.Module, x: torch.Tensor, method: str) -> int:
    """Count the linear passes an engine needs per image shaped like ``x`` (N, 1, H, W).

    ``patches`` makes one real pass (it builds every unit's patch Jacobian layer by layer).
    """
    height, width = x.shape[2:]
    method = fastest_exact(encoder, x) if method == STUDY_METHOD else method
    if method == "complex-step-naive":
        return height * width
    if method == "patches":
        return 1
    footprint = encoder_footprint(encoder, x)
    if method in ("complex-step-coloured", "jvp"):
        return int(np.prod(footprint.forward_periods))
    if method == "vjp":
        out = _on_meta(encoder, torch.zeros(x[:1].shape, dtype=x.dtype, device="meta"))
        channels = out[0].numel() if footprint.flat else out.shape[1]
        return int(np.prod(footprint.reverse_periods)) * channels
    raise MicrocaeError(f"no pass count for method {method!r}")


@register(STUDY_METHOD, "complex-step", "study", exact=True, local=True, study=True)
def study_relevance(encoder: nn.Module, x: torch.Tensor, **options: Any) -> torch.Tensor:
    """Compute the study's complex-step relevance with the fastest exact engine for the encoder.

    Every exact engine gives the same r_ij to floating-point precision; this one name is the
    study's method wherever it is shown (comparisons, reports, the default of ``relevance``).
    The engine is :func:`microcae.saliency.registry.fastest_exact` for this encoder and input
    size: ``vjp`` for the study's encoder, ``patches`` for the codec's analysis transform.

    Parameters
    ----------
    encoder, x
        As :func:`complex_step_naive`.
    **options
        Passed to the engine (``precision``, ``chunk``, ``progress``).

    Returns
    -------
    torch.Tensor
        (N, H, W) relevance.
    """
    return METHODS[fastest_exact(encoder, x)].function(encoder, x, **options)
