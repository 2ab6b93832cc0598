"""Run a convolutional stack over horizontal strips with exact halos, so memory follows the strip.

A stack is an ``nn.Sequential`` (nested ones are opened) of :class:`torch.nn.Conv2d` with zero
padding, :class:`torch.nn.PixelShuffle` and point-wise layers (GDN, ReLU). Each output row of
such a stack depends on a contiguous window of input rows, found by carrying the row interval
backwards through the layers (:func:`input_rows`): a convolution's output row ``o`` reads input
rows ``s·o − p … s·o − p + d·(k − 1)``, a pixel shuffle's output row ``o`` input row ``⌊o / r⌋``.

:func:`run_rows` computes a band of output rows from exactly the input rows it needs, layer by
layer, cropping every intermediate result to the rows the next layer needs. A convolution
zero-pads only where its window leaves the true tensor (its top and bottom), never at a band's
border, and the width is never split; so every output value is the same function of the same
input values as in one whole pass. :func:`run_in_strips` fills the whole output strip by strip
(peak memory: one strip's activations), and inside a strip runs each convolution with the
layers after it in row chunks whose unfolded input (PyTorch's float64 convolution is an
``im2col`` matrix times the weights) fits in the cache.

With PyTorch's CPU kernels the float32 channels-last analysis (oneDNN) is bitwise that of one
whole pass at every band size tested, so the coded stream is too. The float64 NCHW synthesis
(im2col + MKL ``dgemm``) gives the same 8- and 16-bit pixels at every strip size tested, and
float64 values equal to one pass to ≈1e-16: MKL 2024.2 sums a ``dgemm`` in an order that depends
on its shape and on the CPU. On an AVX2 machine only products with fewer than 192 columns (and a
reduction length of 864 or 1728) differed, so chunks here keep at least
:data:`MIN_GEMM_COLUMNS` columns; on an AVX-512 machine chunks and strips of any size may differ
from whole layers in the last bits. oneDNN's float32 synthesis likewise differs in the last bits
for bands of a few hundred positions.
"""

from __future__ import annotations

from fractions import Fraction

import torch
from torch import nn

from microcae.models.gdn import GDN
from microcae.models.integer_network import IntConv2d

Rows = tuple[int, int]
"""A half-open interval ``[start, stop)`` of rows."""
POINTWISE = (GDN, nn.ReLU, nn.Identity)
"""Layers that act on each pixel alone (output row ``o`` reads input row ``o``)."""
CONVOLUTIONS = (nn.Conv2d, IntConv2d)
"""Layers with a convolution's row footprint (:func:`run_rows` runs only ``nn.Conv2d``; the
integer ones are planned here and run by their own exact path)."""
MIN_GEMM_COLUMNS = 1024
"""Fewest output positions per convolution chunk (5× the 192 below which MKL's ``dgemm``
changes its summation order, see the module docstring)."""
CHUNK_BYTES = 8 << 20
"""Target size of one chunk's unfolded convolution input (``im2col``). On the 2-core x86-64
development machine (2 MiB L2 per core) 2–16 MiB ran equally fast within the noise, 64 MiB
1.5–2× slower; the whole last synthesis layer of a 2080×1542 image (a 3.8 GB im2col) ran 6×
slower than in chunks."""


def flatten(stack: nn.Module) -> list[nn.Module]:
    """List the layers of ``stack`` in order, opening nested ``nn.Sequential`` containers."""
    if isinstance(stack, nn.Sequential):
        return [layer for child in stack for layer in flatten(child)]
    return [stack]


def _conv_geometry(layer: nn.Conv2d | IntConv2d) -> tuple[int, int, int, int]:
    """(kernel, stride, padding, dilation) along the rows; refuses what strips cannot handle.

    An :class:`~microcae.models.integer_network.IntConv2d` is a 3×3 convolution, stride 1,
    zero padding 1 (its exact path unfolds 3×3 windows with padding 1).
    """
    if isinstance(layer, IntConv2d):
        return 3, 1, 1, 1
    if isinstance(layer.padding, str) or layer.padding_mode != "zeros":
        raise ValueError(f"strips need numeric zero padding, got {layer}")
    return layer.kernel_size[0], layer.stride[0], layer.padding[0], layer.dilation[0]


def input_rows(layer: nn.Module, rows: Rows) -> Rows:
    """Input rows that output ``rows`` of ``layer`` read (unclipped: may reach into padding).

    Raises
    ------
    ValueError
        For a layer kind whose row footprint is not known here.
    """
    start, stop = rows
    if isinstance(layer, CONVOLUTIONS):
        k, s, p, d = _conv_geometry(layer)
        return s * start - p, s * (stop - 1) - p + d * (k - 1) + 1
    if isinstance(layer, nn.PixelShuffle):
        r = layer.upscale_factor
        return start // r, -(-stop // r)
    if isinstance(layer, POINTWISE):
        return rows
    raise ValueError(f"no row footprint for layer {type(layer).__name__}")


def output_height(layer: nn.Module, height: int) -> int:
    """Rows that ``layer`` makes of ``height`` input rows."""
    if isinstance(layer, CONVOLUTIONS):
        k, s, p, d = _conv_geometry(layer)
        return (height + 2 * p - d * (k - 1) - 1) // s + 1
    if isinstance(layer, nn.PixelShuffle):
        return height * layer.upscale_factor
    input_rows(layer, (0, 1))  # raises for unknown kinds
    return height


def row_factor(stack: nn.Module) -> Fraction:
    """Input rows per output row of ``stack`` (16 for the analysis, 1/16 for the synthesis)."""
    factor = Fraction(1)
    for layer in flatten(stack):
        if isinstance(layer, CONVOLUTIONS):
            factor *= _conv_geometry(layer)[1]
        elif isinstance(layer, nn.PixelShuffle):
            factor /= layer.upscale_factor
    return factor


def halo(stack: nn.Module) -> tuple[int, int]:
    """Exact row reach of ``stack`` beyond an aligned block, above and below, in input rows.

    An aligned block is output rows ``[a, b)`` whose ideal input rows ``[f a, f b)`` are whole
    (``f`` = :func:`row_factor`). The returned ``(top, bottom)`` is how many input rows above
    ``f a`` and below ``f b`` those outputs read (the same for every aligned block).

    Returns
    -------
    tuple[int, int]
        For microcae's analysis (4 × conv 5×5 stride 2) ``(30, 15)`` image rows; for its synthesis
        (4 × conv 3×3 + PixelShuffle(2)) ``(2, 2)`` latent rows.
    """
    factor = row_factor(stack)
    block = (0, factor.denominator)
    rows = block
    for layer in reversed(flatten(stack)):
        rows = input_rows(layer, rows)
    return int(block[0] * factor - rows[0]), int(rows[1] - block[1] * factor)


def plan(layers: list[nn.Module], rows: Rows, height: int) -> list[Rows]:
    """Rows of every intermediate tensor that output ``rows`` of ``layers`` need (clipped).

    Parameters
    ----------
    layers
        :func:`flatten` output.
    rows
        Output rows wanted.
    height
        Rows of the whole input.

    Returns
    -------
    list[Rows]
        ``len(layers) + 1`` intervals: the rows of the input, then of each layer's output (the
        last is ``rows``), each within its tensor.
    """
    heights = [height]
    for layer in layers:
        heights.append(output_height(layer, heights[-1]))
    if not (0 <= rows[0] < rows[1] <= heights[-1]):
        raise ValueError(f"output rows {rows} outside 0..{heights[-1]}")
    needed = [rows]
    for layer, rows_in in zip(reversed(layers), reversed(heights[:-1]), strict=True):
        start, stop = input_rows(layer, needed[0])
        needed.insert(0, (max(start, 0), min(stop, rows_in)))
    return needed


def _layout(x: torch.Tensor) -> torch.memory_format:
    """Memory format of a dense (N, C, H, W) tensor (channels-last: channels stride 1)."""
    if x.stride(1) == 1 and x.shape[2] * x.shape[3] > 1:
        return torch.channels_last
    return torch.contiguous_format


def _crop(x: torch.Tensor, start: int, stop: int) -> torch.Tensor:
    """Rows ``[start, stop)`` of (N, C, H, W) ``x``, dense in ``x``'s memory format."""
    if start == 0 and stop == x.shape[2]:
        return x
    layout = _layout(x)
    band = x[:, :, start:stop]
    return band if band.is_contiguous(memory_format=layout) else band.contiguous(
        memory_format=layout)


def _conv_rows(layer: nn.Conv2d, x: torch.Tensor, known: Rows,
               height: int) -> tuple[torch.Tensor, int]:
    """Apply ``layer`` to the band ``x`` = input rows ``known`` of a ``height``-row input.

    The rows are zero-padded only at the true top (``known[0] == 0``) and bottom
    (``known[1] == height``). Returns the output and the index of its first row in the whole
    output.
    """
    _, s, p, _ = _conv_geometry(layer)
    top = p if known[0] == 0 else 0
    bottom = p if known[1] == height else 0
    if top or bottom:
        layout = _layout(x)
        x = nn.functional.pad(x, (0, 0, top, bottom)).contiguous(memory_format=layout)
    out = nn.functional.conv2d(x, layer.weight, layer.bias, layer.stride, (0, layer.padding[1]),
                               layer.dilation, layer.groups)
    return out, (known[0] - top + p) // s


def run_rows(layers: list[nn.Module], x: torch.Tensor, rows: Rows, first: int = 0,
             height: int | None = None) -> torch.Tensor:
    """Output rows ``rows`` of ``layers`` applied to an input, from only the rows they need.

    Parameters
    ----------
    layers
        Convolutions, pixel shuffles and point-wise layers (:func:`flatten` output).
    x
        (N, C, h, W): rows ``[first, first + h)`` of the (N, C, height, W) input; they must
        include the rows ``rows`` need.
    rows
        ``[start, stop)`` of the output's rows.
    first, height
        Where ``x`` lies in the input, and the input's rows (``x``'s own if None).

    Returns
    -------
    torch.Tensor
        (N, C', stop − start, W') equal to ``layers`` applied to the whole input, rows
        ``start:stop``.
    """
    height = x.shape[2] if height is None else height
    needed = plan(layers, rows, height)
    if not (first <= needed[0][0] and needed[0][1] <= first + x.shape[2]):
        raise ValueError(f"input rows {needed[0]} are not all in the band at {first}")
    t = _crop(x, needed[0][0] - first, needed[0][1] - first)
    heights = [height]
    for layer, known, want in zip(layers, needed[:-1], needed[1:], strict=True):
        heights.append(output_height(layer, heights[-1]))
        if isinstance(layer, nn.Conv2d):
            t, start = _conv_rows(layer, t, known, heights[-2])
        elif isinstance(layer, nn.PixelShuffle):
            t, start = layer(t), known[0] * layer.upscale_factor
        elif isinstance(layer, POINTWISE):
            t, start = layer(t), known[0]
        else:  # an integer convolution: planned here, run by its own exact path
            raise ValueError(f"{type(layer).__name__} does not run in strips here")
        t = _crop(t, want[0] - start, want[1] - start)
    return t


def _groups(layers: list[nn.Module]) -> list[list[nn.Module]]:
    """Split ``layers`` before every convolution (a convolution and the layers after it)."""
    groups: list[list[nn.Module]] = [[]]
    for layer in layers:
        if isinstance(layer, nn.Conv2d) and groups[-1]:
            groups.append([])
        groups[-1].append(layer)
    return groups


def _chunk_rows(group: list[nn.Module], x: torch.Tensor, chunk_bytes: int | None) -> int | None:
    """Output rows of ``group`` per chunk so that its convolution's im2col ≈ ``chunk_bytes``.

    (oneDNN convolves channels-last tensors without an im2col matrix; there the same chunks
    bound the activations of the layers after the convolution.) None (no chunking) without a
    budget or without a convolution.
    """
    conv = group[0]
    if chunk_bytes is None or not isinstance(conv, nn.Conv2d):
        return None
    width = (x.shape[3] + 2 * conv.padding[1] - conv.dilation[1] * (conv.kernel_size[1] - 1)
             - 1) // conv.stride[1] + 1
    column_bytes = conv.weight[0].numel() * width * x.element_size()
    rows = max(-(-MIN_GEMM_COLUMNS // width), chunk_bytes // column_bytes, 1)
    for layer in group[1:]:
        rows = output_height(layer, rows)
    return rows


def _run_group(group: list[nn.Module], t: torch.Tensor, known: Rows, height: int, want: Rows,
               chunk: int | None) -> torch.Tensor:
    """Rows ``want`` of ``group``'s output from the band ``t`` (input rows ``known``).

    In equal chunks of at least ``chunk`` rows (so none has fewer gemm columns than asked for),
    or in one piece if ``chunk`` is None.
    """
    count = 1 if chunk is None else max((want[1] - want[0]) // chunk, 1)
    if count == 1:
        return run_rows(group, t, want, known[0], height)
    bounds = [want[0] + (want[1] - want[0]) * k // count for k in range(count + 1)]
    out: torch.Tensor | None = None
    for start, stop in zip(bounds[:-1], bounds[1:], strict=True):
        part = run_rows(group, t, (start, stop), known[0], height)
        if out is None:
            out = _empty_like_rows(part, want[1] - want[0])
        out[:, :, start - want[0] : stop - want[0]] = part
    assert out is not None
    return out


def _empty_like_rows(part: torch.Tensor, rows: int) -> torch.Tensor:
    """Uninitialised (N, C, rows, W) tensor like ``part`` (dtype, device, memory format)."""
    return torch.empty((part.shape[0], part.shape[1], rows, part.shape[3]), dtype=part.dtype,
                       device=part.device, memory_format=_layout(part))


def run_in_strips(stack: nn.Module, x: torch.Tensor, strip: int | None = None,
                  stop: int | None = None, chunk_bytes: int | None = None) -> torch.Tensor:
    """``stack(x)``, rows ``0:stop``, computed ``strip`` output rows at a time.

    Parameters
    ----------
    stack
        An ``nn.Sequential`` of convolutions, pixel shuffles and point-wise layers.
    x
        (N, C, H, W) input, NCHW or channels-last.
    strip
        Output rows per strip (>= 1; the last strip may be shorter); None: one strip.
    stop
        Output rows to compute (from the top); None: all.
    chunk_bytes
        Run each convolution with the layers after it in row chunks whose im2col (kernel
        taps × output positions × item size) takes about this many bytes (:data:`CHUNK_BYTES`
        is the measured best); None: whole strips.

    Returns
    -------
    torch.Tensor
        (N, C', stop, W'), ``stack(x)[:, :, :stop]`` (bitwise, or to the last bits: see the
        module docstring), in the memory format of the last layer's output. Peak memory: this
        output plus one strip's activations (its rows and every layer's halo), plus one
        chunk's im2col.
    """
    layers = flatten(stack)
    heights = [x.shape[2]]
    for layer in layers:
        heights.append(output_height(layer, heights[-1]))
    stop = heights[-1] if stop is None else stop
    strip = stop if strip is None else strip
    if strip < 1:
        raise ValueError(f"strips need at least one row, got {strip}")
    out: torch.Tensor | None = None
    for start in range(0, stop, strip):
        needed = plan(layers, (start, min(start + strip, stop)), heights[0])
        t, index = _crop(x, *needed[0]), 0
        for group in _groups(layers):
            t = _run_group(group, t, needed[index], heights[index],
                           needed[index + len(group)], _chunk_rows(group, t, chunk_bytes))
            index += len(group)
        if t.shape[2] == stop:  # one strip
            return t
        if out is None:
            out = _empty_like_rows(t, stop)
        out[:, :, start : start + t.shape[2]] = t
    assert out is not None
    return out
