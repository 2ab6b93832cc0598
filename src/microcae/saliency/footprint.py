"""Latent footprints of pixels, input supports of latent units, and the colourings they allow.

For the layers with complex twins, each spatial axis is independent: the latent positions that
pixel (i, j) can influence form a rectangle, rows ``rows.lo[i]..rows.hi[i]`` × columns
``cols.lo[j]..cols.hi[j]`` (all channels). The rectangle is composed from every layer's reach
rule (:data:`microcae.saliency.layers.LAYERS`: kernel, stride, padding, dilation) and the actual
sizes of a probe pass; it is a superset of the true
influence (which depends on ReLU masks and max-pool winners), so colourings built on it are exact.
For the study's encoder one latent unit sees 46 × 46 pixels and neighbouring units are 16 pixels
apart.

- Forward colouring: pixels P apart along an axis never share a latent position, so the
  ``P_r·P_c`` pixel classes ``(i mod P_r, j mod P_c)`` can each be perturbed in one pass
  (46 × 46 = 2,116 passes for a 256 × 256 tile instead of 65,536). This is optimal for any
  colouring: all 46² pixels seen by one latent unit conflict pairwise.
- Reverse colouring: latent positions Q apart have disjoint input supports, so the
  ``Q_r·Q_c·C`` cotangent classes seed every such position of one channel at once
  (3 × 3 × 8 = 72 for the study's encoder, again the minimum: a pixel influences 72 latent values).

Layers that mix all positions (Linear, Flatten, AdaptiveAvgPool2d) make the footprint global:
the latent is then read as (D, 1, 1) and every pixel conflicts with every other.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from microcae.saliency.layers import layer_kind, leaves
from microcae.util.errors import MicrocaeError


def _cummax_nonempty(hi: np.ndarray, empty: np.ndarray) -> np.ndarray:
    return np.maximum.accumulate(np.where(empty, -1, hi))


def _min_separation(lo: np.ndarray, hi: np.ndarray) -> int:
    """Smallest P such that for all non-empty i < j with j - i >= P: lo[j] > hi[i]."""
    n = len(lo)
    empty = lo > hi
    reach = _cummax_nonempty(hi, empty)
    for step in range(1, n):
        ok = empty[step:] | (lo[step:] > reach[:-step])
        if ok.all():
            return step
    return max(n, 1)


@dataclass(frozen=True)
class AxisFootprint:
    """Influence of each input index along one axis.

    Attributes
    ----------
    lo, hi
        (n_in,) int64 arrays: input index i can influence output indices ``lo[i]..hi[i]``
        (nothing where ``lo[i] > hi[i]``).
    n_out
        Output length along the axis.
    """

    lo: np.ndarray
    hi: np.ndarray
    n_out: int

    @classmethod
    def identity(cls, n: int) -> AxisFootprint:
        """Footprint of an axis of length n onto itself."""
        return cls(np.arange(n), np.arange(n), n)

    def then(self, lo: np.ndarray, hi: np.ndarray, n_out: int) -> AxisFootprint:
        """Compose with a layer mapping index k of this output to ``lo[k]..hi[k]`` of ``n_out``."""
        empty = self.lo > self.hi
        first = lo[np.clip(self.lo, 0, len(lo) - 1)]
        last = hi[np.clip(self.hi, 0, len(hi) - 1)]
        return AxisFootprint(np.where(empty, 1, first), np.where(empty, 0, last), n_out)

    def forward_period(self) -> int:
        """Smallest P such that inputs P or more apart never share an output index."""
        return _min_separation(self.lo, self.hi)

    def supports(self) -> tuple[np.ndarray, np.ndarray]:
        """(first, last): (n_out,) range of input indices that can influence each output index."""
        first = np.full(self.n_out, len(self.lo), dtype=np.int64)
        last = np.full(self.n_out, -1, dtype=np.int64)
        for i in np.flatnonzero(self.lo <= self.hi):
            first[self.lo[i] : self.hi[i] + 1] = np.minimum(first[self.lo[i] : self.hi[i] + 1], i)
            last[self.lo[i] : self.hi[i] + 1] = i
        return first, last

    def reverse_period(self) -> int:
        """Smallest Q such that outputs Q or more apart have disjoint input supports."""
        return _min_separation(*self.supports())


@dataclass(frozen=True)
class Footprint:
    """Row and column footprints of an encoder for one input size.

    Attributes
    ----------
    rows, cols
        Per-axis footprints from the (H, W) input to the latent grid.
    flat
        True if a layer mixes all positions; the latent is then read as (D, 1, 1).
    peak
        Values in the largest activation of one sample (sizes the batches of passes).
    """

    rows: AxisFootprint
    cols: AxisFootprint
    flat: bool
    peak: int

    @property
    def forward_periods(self) -> tuple[int, int]:
        """(P_r, P_c): pixel classes ``(i mod P_r, j mod P_c)`` share one forward pass."""
        return self.rows.forward_period(), self.cols.forward_period()

    @property
    def reverse_periods(self) -> tuple[int, int]:
        """(Q_r, Q_c): latent classes ``(u mod Q_r, v mod Q_c)`` share one cotangent."""
        return self.rows.reverse_period(), self.cols.reverse_period()

    def reach(self) -> int:
        """Largest distance in pixels between a pixel and any pixel seen by a latent it feeds."""
        worst = 0
        for axis in (self.rows, self.cols):
            first, last = axis.supports()
            for i in np.flatnonzero(axis.lo <= axis.hi):
                span = slice(axis.lo[i], axis.hi[i] + 1)
                worst = max(worst, i - int(first[span].min()), int(last[span].max()) - i)
        return worst


def _on_meta(layer: nn.Module, probe: torch.Tensor) -> torch.Tensor:
    """Run ``layer`` on a meta tensor with meta copies of its parameters (the output's shape)."""
    tensors = {name: torch.empty_like(t, device="meta")
               for name, t in (*layer.named_parameters(), *layer.named_buffers())}
    return torch.func.functional_call(layer, tensors, (probe,))


@torch.no_grad()
def encoder_footprint(encoder: nn.Module, x: torch.Tensor) -> Footprint:
    """Derive the latent footprint of every pixel from the encoder's layers.

    Parameters
    ----------
    encoder
        An ``nn.Sequential`` (nested allowed) of layers with complex twins.
    x
        (N, C, H, W) input; only its shape and dtype are used (the layers run on meta tensors
        to learn their output sizes, without arithmetic).

    Returns
    -------
    Footprint
        Row and column footprints for inputs of size (H, W).

    Raises
    ------
    MicrocaeError
        For a layer not in :data:`microcae.saliency.layers.LAYERS`.
    """
    probe = torch.zeros(x[:1].shape, dtype=x.dtype, device="meta")  # sizes only, no arithmetic
    peak = probe.numel()
    axes = [AxisFootprint.identity(x.shape[2]), AxisFootprint.identity(x.shape[3])]
    flat = False
    for path, layer in leaves(encoder):
        reach = layer_kind(layer, path).reach
        out = _on_meta(layer, probe)
        peak = max(peak, out.numel())
        if reach is None and not flat:
            flat = True
            axes = [AxisFootprint(np.zeros(len(a.lo), np.int64), np.zeros(len(a.lo), np.int64), 1)
                    for a in axes]
        elif not flat:
            for axis in (0, 1):
                lo, hi = reach(layer, axis, probe.shape[2 + axis], out.shape[2 + axis])
                axes[axis] = axes[axis].then(lo, hi, out.shape[2 + axis])
        probe = out
    if not flat and probe.dim() != 4:
        raise MicrocaeError(f"encoder output has shape {tuple(probe.shape)}; expected 4-D")
    return Footprint(axes[0], axes[1], flat, peak)


@torch.no_grad()
def layer_macs(encoder: nn.Module, x: torch.Tensor) -> list[int]:
    """Multiply-adds of each layer of one real pass (:func:`~microcae.saliency.layers.leaves`).

    Counted by torch's ``FlopCounterMode`` on meta tensors (no arithmetic): convolutions,
    matrix products (linear layers, GDN's channel sums); elementwise work counts 0.

    Parameters
    ----------
    encoder
        An ``nn.Sequential`` (nested allowed).
    x
        (N, C, H, W) input; only its shape and dtype are used, for one sample.

    Returns
    -------
    list of int
        One count per leaf layer, in order.
    """
    probe = torch.zeros(x[:1].shape, dtype=x.dtype, device="meta")
    counts = []
    for _, layer in leaves(encoder):
        with FlopCounterMode(display=False) as counter:
            probe = _on_meta(layer, probe)
        counts.append(counter.get_total_flops() // 2)
    return counts


def unit_window(first: np.ndarray, last: np.ndarray, units: range, step: int,
                size: int) -> tuple[int, int]:
    """Pixel range, aligned to the latent grid, that the latent ``units`` of one axis read.

    Parameters
    ----------
    first, last
        (n_out,) :meth:`AxisFootprint.supports` of the axis.
    units
        Consecutive latent indices.
    step
        Latent stride in pixels (the window starts at a multiple of it, so every layer's grid
        of the window lines up with the image's and the units keep their values).
    size
        Image length along the axis.

    Returns
    -------
    (int, int)
        ``(low, high)``: pixels ``low .. high - 1``.
    """
    low = int(first[units.start : units.stop].min()) // step * step
    high = min(-(-(int(last[units.start : units.stop].max()) + 1) // step) * step, size)
    return low, high


def pixel_classes(shape: tuple[int, int], periods: tuple[int, int], classes: Sequence[int],
                  dtype: torch.dtype, device: torch.device | str = "cpu") -> torch.Tensor:
    """0/1 indicator images of forward colour classes.

    Class ``c`` holds the pixels with ``(i mod P_r, j mod P_c) == divmod(c, P_c)``.

    Returns
    -------
    torch.Tensor
        (len(classes), H, W) tensor of ``dtype``.
    """
    rows = torch.arange(shape[0], device=device) % periods[0]
    cols = torch.arange(shape[1], device=device) % periods[1]
    colour = rows[:, None] * periods[1] + cols[None, :]
    wanted = torch.tensor(list(classes), device=device)
    return (colour[None] == wanted[:, None, None]).to(dtype)


def latent_classes(shape: tuple[int, int, int], periods: tuple[int, int], classes: Sequence[int],
                   dtype: torch.dtype, device: torch.device | str = "cpu") -> torch.Tensor:
    """0/1 cotangent seeds of reverse colour classes on a (C, h, w) latent.

    Class ``c`` is channel ``c // (Q_r·Q_c)`` at the positions with
    ``(u mod Q_r, v mod Q_c) == divmod(c mod (Q_r·Q_c), Q_c)``.

    Returns
    -------
    torch.Tensor
        (len(classes), C, h, w) tensor of ``dtype``.
    """
    channels, height, width = shape
    spatial = periods[0] * periods[1]
    masks = pixel_classes((height, width), periods, [c % spatial for c in classes], dtype, device)
    seeds = torch.zeros(len(classes), channels, height, width, dtype=dtype, device=device)
    for slot, colour in enumerate(classes):
        seeds[slot, colour // spatial] = masks[slot]
    return seeds


def footprint_sums(squares: torch.Tensor, footprint: Footprint, periods: tuple[int, int],
                   classes: range) -> torch.Tensor:
    """Sum each pixel's own footprint in the forward pass of its class: r² per pixel.

    Parameters
    ----------
    squares
        (N, K, h, w) squared derivatives summed over latent channels, one map per class of
        ``classes`` (consecutive, in order).
    footprint, periods
        The encoder's footprint and the forward periods the passes were coloured with.
    classes
        The K classes of ``squares``.

    Returns
    -------
    torch.Tensor
        (N, H, W) of ``squares.dtype``: r² for the pixels of ``classes``, 0 elsewhere. Only the
        (at most a few) latent positions of each pixel's rectangle are added, no differences.
    """
    rows, cols = footprint.rows, footprint.cols
    height, width = len(rows.lo), len(cols.lo)
    colour = (np.arange(height)[:, None] % periods[0]) * periods[1] + (
        np.arange(width)[None, :] % periods[1])
    device = squares.device
    member = torch.from_numpy((colour >= classes.start) & (colour < classes.stop)).to(device)
    slot = torch.from_numpy(np.clip(colour - classes.start, 0, len(classes) - 1)).to(device)
    out = torch.zeros(squares.shape[0], height, width, dtype=squares.dtype,
                      device=squares.device)
    extent_r = int((rows.hi - rows.lo).max(initial=-1)) + 1
    extent_c = int((cols.hi - cols.lo).max(initial=-1)) + 1
    for du in range(extent_r):
        r_index = rows.lo + du
        r_valid = torch.from_numpy(r_index <= rows.hi).to(device)
        r_index = torch.from_numpy(np.clip(r_index, 0, squares.shape[2] - 1)).to(device)
        for dv in range(extent_c):
            c_index = cols.lo + dv
            c_valid = torch.from_numpy(c_index <= cols.hi).to(device)
            valid = member & r_valid[:, None] & c_valid[None, :]
            c_index = torch.from_numpy(np.clip(c_index, 0, squares.shape[3] - 1)).to(device)
            picked = squares[:, slot, r_index[:, None], c_index[None, :]]
            out += torch.where(valid, picked, 0.0)
    return out


def alignment(footprint: Footprint, shape: tuple[int, int]) -> int:
    """Pixel stride of the latent grid (16 for the study), from an (H, W) probe's sizes."""
    return math.gcd(shape[0] // footprint.rows.n_out, shape[1] // footprint.cols.n_out)
