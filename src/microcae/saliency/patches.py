"""The ``patches`` engine: every latent unit's derivative on its receptive field, layer by layer.

For encoders of convolutions and pointwise layers (the codec's analysis transform). Unit
(c, y, x) of layer l depends only on an R_l × R_l patch of pixels whose corner is at
(S_l·y − o_l, S_l·x − o_l). Its *patch Jacobian* P_l[(i, j), c, y, x] = ∂a_l(c, y, x) / ∂x at
pixel (S_l·y − o_l + i, S_l·x − o_l + j) is built for every unit from one real pass:

- the input: R_0 = 1, S_0 = 1, o_0 = 0, P_0 = 1;
- a Conv2d (kernel k, stride s, padding p, dilation d; per axis): R_l = R_{l−1} + d(k−1)S_{l−1},
  S_l = s·S_{l−1}, o_l = o_{l−1} + p·S_{l−1}; tap t adds W[:, :, t] times the patches of the
  positions it reads, shifted by d·t·S_{l−1} in the patch (one accumulating matrix product per
  tap and patch row; positions in the padding have zero patches);
- a pointwise layer (GDN, IGDN, activations, batch norm, identity, dropout) applies its
  Jacobian at each position to every patch entry (:meth:`~microcae.saliency.twins.Twin.linear`:
  GDN mixes the channels, the others scale them).

Then r_ij² is the sum, over the latent units whose patch holds pixel (i, j), of the squared
entries there: no cotangents and no colour classes. The work is Σ_l (multiply-adds of layer l)
× R_{l−1}² (:func:`patch_macs`): about 69 GMAC for a 256² tile of the codec's encoder, against
about 1 TMAC for reverse mode (1,536 dense transposed passes). Where R² grows faster than the
reverse mode's Q²·C (a deep encoder with few latent channels) or the encoder has other layers
(max-pools, global layers), ``vjp`` is the engine; :func:`~microcae.saliency.registry.
fastest_exact` chooses by these estimates.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from microcae.saliency.canonizers import _add_patches
from microcae.saliency.engines import _at_precision, _each_image
from microcae.saliency.footprint import _on_meta, encoder_footprint, layer_macs, unit_window
from microcae.saliency.layers import layer_kind, leaves, pointwise_reach
from microcae.saliency.registry import register
from microcae.saliency.twins import Conv2dTwin, Twin
from microcae.util.errors import MicrocaeError

PATCH_BYTES = 512 * 2**20
"""Memory for the patch Jacobians of one block of latent units (a 256² tile of the codec's
encoder, about 370 MB in float32, is one block)."""

Pair = tuple[int, int]


@dataclass(frozen=True)
class Patches:
    """Patch Jacobians of every unit of one layer.

    Attributes
    ----------
    values
        (R_y·R_x, C, h, w), channels-last (memory order R_y, R_x, h, w, C).
    side, stride, origin
        (R_y, R_x), (S_y, S_x), (o_y, o_x): unit (y, x)'s patch starts at pixel
        (S_y·y − o_y, S_x·x − o_x).
    """

    values: torch.Tensor
    side: Pair
    stride: Pair
    origin: Pair


def _problem(path: str, layer: nn.Module) -> str | None:
    """Say why ``layer`` cannot be handled here (None: a pointwise layer or a plain Conv2d).

    The kinds come from the layer table: Conv2d's twin, or a pointwise reach.
    """
    kind = layer_kind(layer, path)
    if kind.twin is Conv2dTwin:
        if layer.groups != 1 or layer.padding_mode != "zeros" or isinstance(layer.padding, str):
            return f"layer '{path}' (Conv2d) has groups, a padding mode or string padding"
        return None
    if kind.reach is not pointwise_reach:
        return f"layer '{path}' ({type(layer).__name__}) is neither a convolution nor pointwise"
    return None


def _layers(encoder: nn.Module) -> list[tuple[str, nn.Module]]:
    """Return the encoder's layers after checking that each is supported (one-line error)."""
    layers = leaves(encoder)
    for path, layer in layers:
        problem = _problem(path, layer)
        if problem is not None:
            raise MicrocaeError(f"engine 'patches' needs an encoder of convolutions and pointwise "
                                f"layers: {problem}; use 'vjp'")
    return layers


def _sides(layers: list[tuple[str, nn.Module]]) -> list[Pair]:
    """Patch side entering each layer (the side after the last layer appended)."""
    side, stride, sides = (1, 1), (1, 1), []
    for _, layer in layers:
        sides.append(side)
        if isinstance(layer, nn.Conv2d):
            side = tuple(r + d * (k - 1) * s for r, d, k, s in zip(
                side, layer.dilation, layer.kernel_size, stride, strict=True))
            stride = tuple(s * t for s, t in zip(stride, layer.stride, strict=True))
    return [*sides, side]


def _conv(conv: nn.Conv2d, patches: Patches, units: tuple[range, range]) -> Patches:
    """Patch Jacobians after ``conv``, for its output positions ``units``, from its input's."""
    (ry, rx), (sy, sx) = patches.side, patches.stride
    k, d, s, p = conv.kernel_size, conv.dilation, conv.stride, conv.padding
    side = (ry + d[0] * (k[0] - 1) * sy, rx + d[1] * (k[1] - 1) * sx)
    values = patches.values.permute(0, 2, 3, 1)  # (R², h', w', C'), no copy if channels-last
    _, h_in, w_in, c_in = values.shape
    padded = values.new_zeros(ry, rx, h_in + 2 * p[0], w_in + 2 * p[1], c_in)
    padded[:, :, p[0] : p[0] + h_in, p[1] : p[1] + w_in] = values.reshape(ry, rx, h_in, w_in,
                                                                          c_in)
    (h, w), c_out = (len(units[0]), len(units[1])), conv.out_channels
    out = values.new_zeros(side[0], side[1], h, w, c_out)
    for ty in range(k[0]):
        first = d[0] * ty + s[0] * units[0].start
        rows = slice(first, first + s[0] * (h - 1) + 1, s[0])
        for tx in range(k[1]):
            first = d[1] * tx + s[1] * units[1].start
            cols = slice(first, first + s[1] * (w - 1) + 1, s[1])
            weight = conv.weight[:, :, ty, tx].t().to(values.dtype)  # (C', C)
            top, left = d[0] * ty * sy, d[1] * tx * sx
            for i in range(ry):
                gathered = padded[i, :, rows, cols].reshape(-1, c_in)  # (R_x·h·w, C')
                out[top + i, left : left + rx].view(-1, c_out).addmm_(gathered, weight)
    stride = (sy * s[0], sx * s[1])
    origin = (patches.origin[0] + p[0] * sy - stride[0] * units[0].start,
              patches.origin[1] + p[1] * sx - stride[1] * units[1].start)
    return Patches(out.view(-1, h, w, c_out).permute(0, 3, 1, 2), side, stride, origin)


def _crop(patches: Patches, units: tuple[range, range]) -> Patches:
    """Keep the positions ``units`` (the origin moves with the first one)."""
    values = patches.values[:, :, units[0].start : units[0].stop, units[1].start : units[1].stop]
    (sy, sx), (oy, ox) = patches.stride, patches.origin
    return Patches(values, patches.side, patches.stride,
                   (oy - sy * units[0].start, ox - sx * units[1].start))


def _window_squares(layers: list[tuple[str, nn.Module]], window: torch.Tensor,
                    units: tuple[range, range]) -> torch.Tensor:
    """(1, 1, H, W) window -> (H, W): squared derivatives of its latent ``units``, summed.

    Every layer runs on the whole window up to the last convolution, which is computed for the
    positions of ``units`` only; the layers after it run on those positions.
    """
    act = window.contiguous(memory_format=torch.channels_last)
    ones = torch.ones(1, 1, *window.shape[2:], dtype=window.dtype, device=window.device)
    patches = Patches(ones.contiguous(memory_format=torch.channels_last), (1, 1), (1, 1), (0, 0))
    convs = [position for position, (_, layer) in enumerate(layers)
             if isinstance(layer, nn.Conv2d)]
    if not convs:  # pointwise layers only: the latent grid is the pixel grid
        patches = _crop(patches, units)
        act = act[:, :, units[0].start : units[0].stop, units[1].start : units[1].stop]
    for position, (path, layer) in enumerate(layers):
        if isinstance(layer, nn.Conv2d):
            act = layer(act)
            if position == convs[-1]:
                act = act[:, :, units[0].start : units[0].stop, units[1].start : units[1].stop]
                patches = _conv(layer, patches, units)
            else:
                patches = _conv(layer, patches, (range(act.shape[2]), range(act.shape[3])))
        else:
            twin: Twin = layer_kind(layer, path).twin(layer)
            act, state = twin.real(act)
            patches = Patches(twin.linear(state, patches.values), patches.side, patches.stride,
                              patches.origin)
    squares = patches.values.square().sum(dim=1)  # (R², h, w)
    (ry, rx), (sy, sx), (oy, ox) = patches.side, patches.stride, patches.origin
    h, w = squares.shape[1:]
    height, width = window.shape[2:]
    canvas = squares.new_zeros(sy * (h + -(-ry // sy)), sx * (w + -(-rx // sx)), 1)
    _add_patches(canvas, squares.view(ry, rx, h, w, 1).permute(2, 3, 0, 1, 4), (0, 0), (sy, sx))
    # canvas index c holds pixel c - origin; copy the part inside the window
    r2 = squares.new_zeros(height, width)
    top, left = max(0, -oy), max(0, -ox)
    bottom, right = min(height, canvas.shape[0] - oy), min(width, canvas.shape[1] - ox)
    r2[top:bottom, left:right] = canvas[top + oy : bottom + oy, left + ox : right + ox, 0]
    return r2


def _unit_blocks(rows: range, cols: range, per_unit: int,
                 budget: int) -> list[tuple[range, range]]:
    """Cut the latent ``rows`` × ``cols`` into even, square-ish blocks of at most ``budget``."""
    units = max(1, budget // max(per_unit, 1))
    if len(rows) * len(cols) <= units:
        return [(rows, cols)]
    side = max(1, int(units**0.5))

    def even(axis: range) -> list[range]:
        count = -(-len(axis) // side)
        edges = [axis.start + len(axis) * i // count for i in range(count + 1)]
        return [range(a, b) for a, b in zip(edges, edges[1:], strict=False)]

    return [(r, c) for r in even(rows) for c in even(cols)]


def _bytes_per_unit(layers: list[tuple[str, nn.Module]], x: torch.Tensor) -> int:
    """Largest patch-Jacobian memory of any layer, per latent unit (its share of that layer)."""
    probe = torch.zeros(x[:1].shape, dtype=x.dtype, device="meta")
    sizes = []
    for (_, layer), side in zip(layers, _sides(layers)[1:], strict=True):
        probe = _on_meta(layer, probe)
        sizes.append(probe.numel() * side[0] * side[1])
    return max(sizes) * x.element_size() // max(probe[0, 0].numel(), 1)


def _latent_stride(layers: list[tuple[str, nn.Module]]) -> Pair:
    """Pixel stride of the latent grid per axis: the product of the convolutions' strides."""
    strides = [layer.stride for _, layer in layers if isinstance(layer, nn.Conv2d)]
    return int(np.prod([s[0] for s in strides])), int(np.prod([s[1] for s in strides]))


@torch.no_grad()
def patch_squares(encoder: nn.Module, x: torch.Tensor, latent_rows: range | None = None,
                  latent_cols: range | None = None, precision: str | None = None,
                  chunk: int | None = None, progress: bool = False) -> torch.Tensor:
    """Sum of squared derivatives of a block of latent units, per pixel, from patch Jacobians.

    Over every latent unit this is r²; over a partition of the latent grid the parts add up to
    r² (how whole micrographs are mapped window by window). Blocks of units whose patch
    Jacobians exceed :data:`PATCH_BYTES` are computed on their own windows of ``x`` (aligned to
    the latent grid, so each unit has its value in ``x``).

    Parameters
    ----------
    encoder
        ``nn.Sequential`` of Conv2d (no groups, zero padding) and pointwise layers (GDN,
        activations, batch norm, identity, dropout), eval mode; one input channel.
    x
        (N, 1, H, W) input in [0, 1].
    latent_rows, latent_cols
        Rows and columns of the latent grid whose units count (all if None).
    precision
        ``"complex64"`` or ``"complex128"`` (float32 or float64 arithmetic); default: that of
        the encoder's weights.
    chunk
        Latent positions (all channels) per block; default: as many as fit
        :data:`PATCH_BYTES`.
    progress
        Show a progress bar over the blocks.

    Returns
    -------
    torch.Tensor
        (N, H, W) sums of squares, real dtype of ``precision``, on ``x``'s device.

    Raises
    ------
    MicrocaeError
        For a layer that is neither a plain convolution nor pointwise (naming its path).
    """
    encoder, x = _at_precision(encoder, x, precision)
    layers = _layers(encoder)
    footprint = encoder_footprint(encoder, x)
    rows = range(footprint.rows.n_out) if latent_rows is None else latent_rows
    cols = range(footprint.cols.n_out) if latent_cols is None else latent_cols
    per_unit = _bytes_per_unit(layers, x)
    budget = PATCH_BYTES if chunk is None else chunk * per_unit
    blocks = _unit_blocks(rows, cols, per_unit, budget)
    step = _latent_stride(layers)
    supports = footprint.rows.supports(), footprint.cols.supports()

    def one(image: torch.Tensor) -> torch.Tensor:
        height, width = image.shape[2:]
        r2 = torch.zeros(height, width, dtype=image.dtype, device=image.device)
        for units in tqdm(blocks, desc="patch blocks", unit="block", disable=not progress,
                          leave=False):
            (top, bottom), (left, right) = ((0, height), (0, width)) if len(blocks) == 1 else (
                unit_window(*supports[axis], units[axis], step[axis], image.shape[2 + axis])
                for axis in (0, 1))
            local = (range(units[0].start - top // step[0], units[0].stop - top // step[0]),
                     range(units[1].start - left // step[1], units[1].stop - left // step[1]))
            r2[top:bottom, left:right] += _window_squares(
                layers, image[:, :, top:bottom, left:right], local)
        return r2[None]

    return _each_image(one, x)


def patch_macs(encoder: nn.Module, x: torch.Tensor) -> float | None:
    """Estimated multiply-adds of :func:`patch_squares` for one image shaped like ``x``.

    Each layer's multiply-adds of a real pass (:func:`~microcae.saliency.footprint.layer_macs`)
    times the patch entries it is applied to (R² of its input for a convolution, of its output
    for a pointwise layer). None if the engine does not apply to the encoder.
    """
    try:
        layers = _layers(encoder)
    except MicrocaeError:
        return None
    sides = _sides(layers)
    total = 0
    counts = layer_macs(encoder, x)
    for macs, (_, layer), before, after in zip(counts, layers, sides[:-1], sides[1:],
                                                strict=True):
        side = before if isinstance(layer, nn.Conv2d) else after
        total += macs * side[0] * side[1]
    return float(total)


@register("patches", "patch Jacobians", "engine", exact=True, local=True, preference=4,
          by_units=patch_squares, cost=patch_macs)  # last on the study's encoder: not for it
def patches(encoder: nn.Module, x: torch.Tensor, precision: str | None = None,
            chunk: int | None = None, progress: bool = False) -> torch.Tensor:
    """Every latent unit's patch Jacobian, layer by layer; r = sqrt of the summed squares.

    r = sqrt(:func:`patch_squares` over every latent unit); see there and the module's
    description. The fastest exact engine for the codec's analysis transform.

    Parameters
    ----------
    encoder, x, precision, chunk, progress
        As :func:`patch_squares`.

    Returns
    -------
    torch.Tensor
        (N, H, W) relevance, real dtype of ``precision``, on ``x``'s device.
    """
    return patch_squares(encoder, x, None, None, precision, chunk, progress).sqrt()
