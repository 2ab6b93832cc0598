"""Fusions: runs of layers rewritten as one twin that is cheaper in reverse mode.

Zennit keeps such temporary model rewrites ("canonizers") apart from the per-layer rules; so does
microcae. A fused twin gives the same numbers as its layers' twins in turn (up to the order of
floating-point additions) and shares their weights. :func:`canonize` applies every fusion to the
twins of one ``nn.Sequential``:

- ReLU then a non-overlapping MaxPool2d -> :class:`ReLUMaxPoolTwin` (one pooled-size pass);
- a one-channel-input Conv2d then that pair -> :class:`InputConvPoolTwin` (the transposed first
  stage as one small matrix per pooled position);
- that, a Conv2d and a ReLU-pool -> :class:`InputTwoStageTwin` (the transposed first two stages
  as one patch Jacobian per unit of the second pooled grid).

The fused transposes work in a "cotangents last" layout: per position, a (patch × K) block for
the K cotangents, from one batched matrix product, added into a (H, W, K) canvas.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn.modules.utils import _pair

from microcae.saliency.twins import Conv2dTwin, MaxPool2dTwin, SlopeTwin, Twin, _scale

BLOCK = 16
"""Side, in second-stage pooled positions, of the blocks in which patch Jacobians are built (a
block's working set stays in cache)."""
CACHE_BYTES = 512 * 2**20
"""Patch Jacobians are kept between calls while they take at most this much memory."""


class ReLUMaxPoolTwin(MaxPool2dTwin):
    """ReLU followed by a non-overlapping MaxPool2d, fused to save one full-size pass.

    The ReLU's slope at a window's argmax is 1 exactly where the pooled value is positive (a
    ReLU output is positive iff its input is), so the pair's imaginary map is the pool's map
    times ``pooled > 0``, applied on the pooled grid: the same numbers as the two twins in turn.
    """

    def __init__(self, relu: nn.ReLU, pool: nn.MaxPool2d) -> None:
        super().__init__(pool)
        self.relu = relu

    def real(self, re: torch.Tensor) -> tuple[torch.Tensor, tuple]:
        """Run the ReLU and the pool; the state adds the 0/1 map ``pooled > 0``."""
        out, state = super().real(self.relu(re))
        return out, (*state, (out > 0).to(out.dtype))

    def tangent(self, state: tuple, im: torch.Tensor) -> torch.Tensor:
        """Read ``im`` at each argmax and keep it where the pooled value is positive."""
        return _scale(state[3], super().tangent(state[:3], im))

    def cotangent(self, state: tuple, ct: torch.Tensor) -> torch.Tensor:
        """Transpose of :meth:`tangent`."""
        return super().cotangent(state[:3], _scale(state[3], ct))

    def codes(self, state: tuple) -> torch.Tensor:
        """(N, C, h, w) int64: each window's argmax offset dy·kx + dx, or −1 where pooled ≤ 0.

        Built on first use and kept in the state.
        """
        shape, index, cache, positive = state
        if "codes" not in cache:
            (ky, kx), (_, _, h, w) = _pair(self.module.kernel_size), index.shape
            top = torch.arange(h, device=index.device).view(1, 1, h, 1) * ky
            left = torch.arange(w, device=index.device).view(1, 1, 1, w) * kx
            offset = (index // shape[3] - top) * kx + index % shape[3] - left
            cache["codes"] = torch.where(positive > 0, offset, -1)
        return cache["codes"]


def _cotangents_last(block: torch.Tensor) -> torch.Tensor:
    """View (K, C, h, w) cotangents as (h·w, C, K) (no copy for channels-last ``block``)."""
    return block.permute(2, 3, 1, 0).reshape(-1, block.shape[1], block.shape[0])


def _canvas(n: int, grid: tuple[int, int], patch: tuple[int, int], stride: tuple[int, int],
            need: tuple[int, int], ct: torch.Tensor) -> torch.Tensor:
    """Zeros (N, Hc, Wc, K) large enough for :func:`_add_patches` and the cropped input."""
    size = [max(s * (g + (p - 1) // s), m) for g, p, s, m in zip(grid, patch, stride, need,
                                                                  strict=True)]
    return torch.zeros(n, *size, ct.shape[0] // n, dtype=ct.dtype, device=ct.device)


def _add_patches(canvas: torch.Tensor, columns: torch.Tensor, origin: tuple[int, int],
                 stride: tuple[int, int]) -> None:
    """Col2im into ``canvas`` (Hc, Wc, K): (h, w, Gy, Gx, K) patches at ``stride`` from ``origin``.

    The patch is cut into stride-sized blocks; each block of every position is one strided add
    (K innermost), so there are ceil(Gy/sy)·ceil(Gx/sx) adds, not Gy·Gx.
    """
    h, w, gy, gx, k = columns.shape
    sy, sx = stride
    for by in range(0, gy, sy):
        for bx in range(0, gx, sx):
            ny, nx = min(sy, gy - by), min(sx, gx - bx)
            top, left = origin[0] + by, origin[1] + bx
            target = canvas[top : top + sy * h, left : left + sx * w]
            target = target.view(h, sy, w, sx, k)[:, :ny, :, :nx]
            target += columns[:, :, by : by + ny, bx : bx + nx].permute(0, 2, 1, 3, 4)


def _squares(canvas: torch.Tensor, offset: tuple[int, int], size: tuple[int, int]
             ) -> torch.Tensor:
    """(N, Hc, Wc, K) canvases -> (N, H, W) sums of squares over K, cropped at ``offset``."""
    crop = canvas[:, offset[0] : offset[0] + size[0], offset[1] : offset[1] + size[1]]
    return crop.square().sum(dim=-1)


def _pixel_cotangents(canvas: torch.Tensor, offset: tuple[int, int],
                      size: tuple[int, int]) -> torch.Tensor:
    """(N, Hc, Wc, K) canvases -> (N·K, 1, H, W) cotangents of the input, cropped at ``offset``."""
    n, _, _, k = canvas.shape
    crop = canvas[:, offset[0] : offset[0] + size[0], offset[1] : offset[1] + size[1]]
    return crop.permute(0, 3, 1, 2).reshape(n * k, 1, *size)


class InputConvPoolTwin(Twin):
    """One-channel-input Conv2d, ReLU and non-overlapping MaxPool2d, fused for reverse mode.

    The real and tangent maps are those of the two twins in turn. The transpose is where the
    fusion pays: every pooling window sends its cotangent to one argmax per channel, and from
    there the transposed convolution spreads it over a fixed patch of (k + K − 1)² input pixels
    (k: pool size, K: kernel size). At each pooled position the pair's transpose is therefore a
    fixed (C × (k + K − 1)²) matrix, built once per real pass from the argmaxes, the ReLU mask
    and the weights. Pulling back a batch of cotangents is then one batched matrix product over
    positions and a col2im, instead of a full-resolution unpooled tensor and a transposed
    convolution with one output channel, the costliest steps of reverse mode on a CPU.
    Same numbers as the two twins in turn, up to the order of floating-point additions.
    """

    def __init__(self, conv: Conv2dTwin, pool: ReLUMaxPoolTwin) -> None:
        super().__init__(conv.module)
        self.conv = conv
        self.pool = pool

    @staticmethod
    def fits(conv: Twin, pool: Twin) -> bool:
        """Tell whether ``conv`` then ``pool`` can be fused.

        That is a plain convolution of a one-channel input (stride 1, no dilation or groups,
        zero padding), then ReLU and a non-overlapping max-pool.
        """
        if not (isinstance(conv, Conv2dTwin) and isinstance(pool, ReLUMaxPoolTwin)):
            return False
        layer = conv.module
        return (layer.in_channels == 1 and layer.groups == 1 and _pair(layer.stride) == (1, 1)
                and _pair(layer.dilation) == (1, 1) and not isinstance(layer.padding, str)
                and layer.padding_mode == "zeros")

    def real(self, re: torch.Tensor) -> tuple[torch.Tensor, tuple]:
        """Run the convolution, ReLU and pool; the state adds a cache for the window matrices."""
        mid, conv_state = self.conv.real(re)
        out, pool_state = self.pool.real(mid)
        return out, (conv_state, pool_state, {})

    def tangent(self, state: tuple, im: torch.Tensor) -> torch.Tensor:
        """Apply the convolution's, then the ReLU-pool's imaginary map."""
        return self.pool.tangent(state[1], self.conv.tangent(state[0], im))

    def patch_size(self) -> tuple[int, int]:
        """(Fy, Fx): input pixels reached from one pooled position, k + K − 1 per axis."""
        (ky, kx), (py, px) = self.conv.module.kernel_size, _pair(self.pool.module.kernel_size)
        return py + ky - 1, px + kx - 1

    def window_matrices(self, pool_state: tuple, dtype: torch.dtype, rows: slice = slice(None),
                        cols: slice = slice(None), out: torch.Tensor | None = None,
                        samples: slice = slice(None)) -> torch.Tensor:
        """(N, Fy, Fx, r, w, C): transposed matrices of the pooled positions ``rows`` × ``cols``.

        Column c of a position's (Fy·Fx × C) matrix is the convolution kernel of channel c
        placed at that channel's argmax offset in the (Fy × Fx) input patch, times the ReLU
        mask (pooled value > 0). Cells come first so that every step is a contiguous
        (r, w, C) block. With ``out`` (zeros of that shape, or a view), the matrices are added
        into it and it is returned; ``samples`` selects real samples (N of them).
        """
        kernel = _pair(self.pool.module.kernel_size)
        codes = self.pool.codes(pool_state)[samples, :, rows, cols].permute(0, 2, 3, 1)
        weight = self.conv.module.weight.detach().to(device=codes.device, dtype=dtype)[:, 0]
        (ky, kx), (n, h, w, c) = weight.shape[1:], codes.shape
        if out is None:
            out = torch.zeros(n, *self.patch_size(), h, w, c, dtype=dtype, device=codes.device)
        taps = weight.permute(1, 2, 0).reshape(1, ky, kx, 1, 1, c)
        for oy in range(kernel[0]):
            for ox in range(kernel[1]):
                chosen = (codes == oy * kernel[1] + ox).to(dtype).view(n, 1, 1, h, w, c)
                out[:, oy : oy + ky, ox : ox + kx].addcmul_(chosen, taps)
        return out

    def workspace(self, state: tuple, values_in: int, values_out: int) -> int:
        """Per cotangent: the columns of every pooled position and the pixel canvas."""
        (fy, fx), pool_state = self.patch_size(), state[1]
        return values_out // pool_state[1].shape[1] * fy * fx + 2 * values_in

    def cotangent(self, state: tuple, ct: torch.Tensor) -> torch.Tensor:
        """Per position, the transposed matrix times the channel cotangents, then col2im."""
        canvas, offset, size = self._canvas(state, ct)
        return _pixel_cotangents(canvas, offset, size)

    def squared_cotangent(self, state: tuple, ct: torch.Tensor, n: int) -> torch.Tensor:
        """Sum of squares over the cotangents, per pixel, from the canvas: (N, H, W)."""
        canvas, offset, size = self._canvas(state, ct)
        return _squares(canvas, offset, size)

    def _canvas(self, state: tuple, ct: torch.Tensor) -> tuple[torch.Tensor, tuple, tuple]:
        """(N, Hc, Wc, K) pulled-back cotangents, crop offset and input size."""
        conv_state, pool_state, cache = state
        if ct.dtype not in cache:
            cache[ct.dtype] = self.window_matrices(pool_state, ct.dtype)
        matrices = cache[ct.dtype]
        n, fy, fx, h, w, c = matrices.shape
        k = ct.shape[0] // n
        stride = _pair(self.pool.module.kernel_size)
        pad = _pair(self.conv.module.padding)
        height, width = conv_state[2:]
        canvas = _canvas(n, (h, w), (fy, fx), stride, (pad[0] + height, pad[1] + width), ct)
        for sample in range(n):
            block = _cotangents_last(ct[sample * k : (sample + 1) * k])
            columns = torch.bmm(matrices[sample].view(fy * fx, h * w, c).transpose(0, 1), block)
            _add_patches(canvas[sample], columns.view(h, w, fy, fx, k), (0, 0), stride)
        return canvas, pad, (height, width)


class InputTwoStageTwin(Twin):
    """The first two stages (conv-ReLU-pool twice) of a one-channel encoder, fused for reverse mode.

    After the two stages, a cotangent lives on the second pooled grid (C₂ channels) and every
    active unit (c, p) — channel c of pooled position p, pooled value > 0 — reads one second-stage
    convolution output, its window's argmax. That output depends on a fixed (Gy × Gx) patch of
    pixels (G = s₁(s₂ + k₂ − 2) + s₁ + k₁ − 1: 10 × 10 for the study) through a linear map, the
    unit's *patch Jacobian* (G² values), fixed by the real pass. Pulling back K cotangents is
    then, per position, a (G² × C₂) by (C₂ × K) product and a col2im: no 64-channel
    full-resolution tensor per cotangent, the costliest part of reverse mode.

    The patch Jacobians do not depend on the cotangents. They are built once per real pass from
    the first stage's window matrices M₁ (:meth:`InputConvPoolTwin.window_matrices`): the
    products S = M₁ W₂ of every pooled-1 position's matrix with the second convolution's taps (one
    dense matrix product), then for each unit its taps gathered at its argmax and placed into its
    patch. They are built in blocks of :data:`BLOCK` × :data:`BLOCK` units (the working set stays
    in cache) and kept while they fit :data:`CACHE_BYTES`, else rebuilt per call. Same numbers as
    the twins in turn, up to the order of floating-point additions.
    """

    def __init__(self, first: InputConvPoolTwin, conv: Conv2dTwin, pool: ReLUMaxPoolTwin) -> None:
        super().__init__(first.module)
        self.first, self.conv, self.pool = first, conv, pool

    @staticmethod
    def fits(first: Twin, conv: Twin, pool: Twin) -> bool:
        """Tell whether a fused input stage, a convolution and a ReLU-pool can be fused.

        The convolution must be plain (stride 1, no dilation or groups, integer zero padding).
        """
        if not (isinstance(first, InputConvPoolTwin) and isinstance(conv, Conv2dTwin)
                and isinstance(pool, ReLUMaxPoolTwin)):
            return False
        layer = conv.module
        return (layer.groups == 1 and _pair(layer.stride) == (1, 1)
                and _pair(layer.dilation) == (1, 1) and not isinstance(layer.padding, str)
                and layer.padding_mode == "zeros")

    def real(self, re: torch.Tensor) -> tuple[torch.Tensor, tuple]:
        """Run both stages; the state holds each part's state and a cache for the patches."""
        mid, first_state = self.first.real(re)
        conv_out, conv_state = self.conv.real(mid)
        out, pool_state = self.pool.real(conv_out)
        return out, (first_state, conv_state, pool_state, {})

    def tangent(self, state: tuple, im: torch.Tensor) -> torch.Tensor:
        """Apply the parts' imaginary maps in turn."""
        first_state, conv_state, pool_state, _ = state
        im = self.first.tangent(first_state, im)
        return self.pool.tangent(pool_state, self.conv.tangent(conv_state, im))

    def _geometry(self) -> dict[str, tuple[int, int]]:
        """Per axis (y, x): sizes of the second stage and of the patches they give."""
        p1 = _pair(self.first.conv.module.padding)
        s1 = _pair(self.first.pool.module.kernel_size)
        k2, p2 = self.conv.module.kernel_size, _pair(self.conv.module.padding)
        s2 = _pair(self.pool.module.kernel_size)
        f = self.first.patch_size()
        e = tuple(s + k - 1 for s, k in zip(s2, k2, strict=True))
        g = tuple(s * (n - 1) + m for s, n, m in zip(s1, e, f, strict=True))
        offset = tuple(s * q + p for s, q, p in zip(s1, p2, p1, strict=True))
        stride = tuple(a * b for a, b in zip(s1, s2, strict=True))
        return {"k2": k2, "p2": p2, "s1": s1, "s2": s2, "f": f, "e": e, "g": g,
                "offset": offset, "stride": stride}

    def _blocks(self, state: tuple) -> list[tuple[slice, slice]]:
        """Blocks of at most :data:`BLOCK` × :data:`BLOCK` pooled-2 positions, row-major."""
        h2, w2 = state[2][1].shape[2:]
        return [(slice(a, min(a + BLOCK, h2)), slice(b, min(b + BLOCK, w2)))
                for a in range(0, h2, BLOCK) for b in range(0, w2, BLOCK)]

    def _first_matrices(self, state: tuple, dtype: torch.dtype, sample: int, rows: slice,
                        cols: slice) -> torch.Tensor:
        """First-stage matrices on the pooled-1 window of a block, by phase.

        The window is every pooled-1 position the block's units read (E per axis and unit,
        s₂ apart), zero where it leaves the grid (the second convolution's zero padding).
        Returns (Fy, Fx, s₂y, s₂x, Ry/s₂y, Rx/s₂x, C₁): position (a·s₂ + u, b·s₂ + v) of the
        window at [..., u, v, a, b, :], so that every unit's read is a contiguous slice.
        """
        geo = self._geometry()
        pool1 = state[0][1]
        size = pool1[1].shape[2:]
        window = []
        for axis, span in enumerate((rows, cols)):
            lo = geo["s2"][axis] * span.start - geo["p2"][axis]
            window.append((lo, geo["s2"][axis] * (span.stop - 1) - geo["p2"][axis]
                           + geo["e"][axis]))
        (ly, hy), (lx, hx) = window
        (sy, sx), c1 = geo["s2"], self.first.conv.module.weight.shape[0]
        height, width = -(-(hy - ly) // sy) * sy, -(-(hx - lx) // sx) * sx
        m1 = torch.zeros(*geo["f"], height, width, c1, dtype=dtype, device=pool1[1].device)
        (ty, by), (tx, bx) = (max(ly, 0), min(hy, size[0])), (max(lx, 0), min(hx, size[1]))
        if by > ty and bx > tx:
            self.first.window_matrices(pool1, dtype, slice(ty, by), slice(tx, bx),
                                       m1[None, :, :, ty - ly : by - ly, tx - lx : bx - lx],
                                       slice(sample, sample + 1))
        phases = m1.view(*geo["f"], height // sy, sy, width // sx, sx, c1)
        return phases.permute(0, 1, 3, 5, 2, 4, 6).contiguous()

    def _patches(self, state: tuple, dtype: torch.dtype, sample: int, rows: slice,
                 cols: slice) -> tuple[torch.Tensor, torch.Tensor]:
        """Transposed patch Jacobians (r·w, G², L) of a block of units and its live channels (L,).

        For each tap j of the second convolution, the products S_j = M₁ W₂,j of the window's
        first-stage matrices with the tap (pixel f of pooled-1 position P's patch, live output
        channel l) are one dense matrix product; each unit whose argmax offset is d then adds
        S_j at pooled-1 position s₂p + d + j − p₂ into its patch at cells s₁(d + j) + f.
        Channels without a positive pooled value in the block (dead ReLUs) are left out.
        """
        geo = self._geometry()
        k2x, (s1y, s1x), (s2y, s2x) = geo["k2"][1], geo["s1"], geo["s2"]
        (fy, fx), (gy, gx) = geo["f"], geo["g"]
        codes = self.pool.codes(state[2])[sample, :, rows, cols]  # (C2, r, w)
        live = (codes >= 0).flatten(1).any(dim=1).nonzero()[:, 0]
        codes = codes[live].permute(1, 2, 0)
        r, w, count = codes.shape
        chosen = {(oy, ox): (codes == oy * s2x + ox).to(dtype)
                  for oy in range(s2y) for ox in range(s2x)}
        m1 = self._first_matrices(state, dtype, sample, rows, cols)
        weight = self.conv.module.weight.detach().to(device=m1.device, dtype=dtype)[live]
        taps = weight.permute(2, 3, 1, 0).reshape(-1, m1.shape[-1], count)  # (J, C1, L)
        patches = torch.zeros(gy, gx, r, w, count, dtype=dtype, device=m1.device)
        for j, tap in enumerate(taps):
            products = (m1.view(-1, m1.shape[-1]) @ tap).view(*m1.shape[:-1], count)
            jy, jx = divmod(j, k2x)
            for (oy, ox), mask in chosen.items():
                ey, ex = oy + jy, ox + jx  # the pooled-1 position in the unit's window
                reach = products[:, :, ey % s2y, ex % s2x, ey // s2y : ey // s2y + r,
                                 ex // s2x : ex // s2x + w]
                patches[s1y * ey : s1y * ey + fy, s1x * ex : s1x * ex + fx].addcmul_(reach, mask)
        return patches.view(gy * gx, r * w, count).transpose(0, 1), live

    def _block_patches(self, state: tuple, dtype: torch.dtype, sample: int, rows: slice,
                       cols: slice) -> tuple[torch.Tensor, torch.Tensor]:
        """Return one block's patches, built on first use, kept while :data:`CACHE_BYTES` allow."""
        cache = state[3].setdefault(dtype, {"bytes": 0})
        key = (sample, rows.start, cols.start)
        if key in cache:
            return cache[key]
        patches, live = self._patches(state, dtype, sample, rows, cols)
        size = patches.numel() * patches.element_size()
        if cache["bytes"] + size <= CACHE_BYTES:
            cache[key] = (patches, live)
            cache["bytes"] += size
        return patches, live

    def workspace(self, state: tuple, values_in: int, values_out: int) -> int:
        """Per cotangent: the pixel canvas, its input, and one block's columns."""
        g = self._geometry()["g"]
        return 2 * values_in + values_out + BLOCK * BLOCK * g[0] * g[1]

    def cotangent(self, state: tuple, ct: torch.Tensor) -> torch.Tensor:
        """Per pooled-2 position, the patch Jacobians times the channel cotangents, then col2im."""
        canvas, offset, size = self._canvas(state, ct)
        return _pixel_cotangents(canvas, offset, size)

    def squared_cotangent(self, state: tuple, ct: torch.Tensor, n: int) -> torch.Tensor:
        """Sum of squares over the cotangents, per pixel, from the canvas: (N, H, W)."""
        canvas, offset, size = self._canvas(state, ct)
        return _squares(canvas, offset, size)

    def _canvas(self, state: tuple, ct: torch.Tensor) -> tuple[torch.Tensor, tuple, tuple]:
        """(N, Hc, Wc, K) pulled-back cotangents, crop offset and input size."""
        geo = self._geometry()
        (gy, gx), stride, offset = geo["g"], geo["stride"], geo["offset"]
        height, width = state[0][0][2:]
        n = state[2][1].shape[0]
        k, (h2, w2) = ct.shape[0] // n, ct.shape[2:]
        canvas = _canvas(n, (h2, w2), (gy, gx), stride,
                         (offset[0] + height, offset[1] + width), ct)
        for sample in range(n):
            batch = ct[sample * k : (sample + 1) * k]
            for rows, cols in self._blocks(state):
                sub = batch[:, :, rows, cols].permute(2, 3, 1, 0)  # (r, w, C2, K)
                patches, live = self._block_patches(state, ct.dtype, sample, rows, cols)
                block = sub.index_select(2, live).reshape(-1, len(live), k)
                columns = torch.bmm(patches, block).view(*sub.shape[:2], gy, gx, k)
                _add_patches(canvas[sample], columns,
                             (rows.start * stride[0], cols.start * stride[1]), stride)
        return canvas, offset, (height, width)


def canonize(twins: list[Twin]) -> list[Twin]:
    """Apply every fusion to the twins of one ``nn.Sequential``'s children, in order.

    Parameters
    ----------
    twins
        The children's twins.

    Returns
    -------
    list of Twin
        The same computation with fusible runs replaced by their fused twins.
    """
    fused: list[Twin] = []
    for twin in twins:
        previous = fused[-1] if fused else None
        if (isinstance(twin, MaxPool2dTwin) and twin.non_overlapping()
                and isinstance(previous, SlopeTwin) and type(previous.module) is nn.ReLU):
            fused[-1] = ReLUMaxPoolTwin(previous.module, twin.module)
            if len(fused) >= 2 and InputConvPoolTwin.fits(fused[-2], fused[-1]):
                fused[-2:] = [InputConvPoolTwin(fused[-2], fused[-1])]
            elif len(fused) >= 3 and InputTwoStageTwin.fits(*fused[-3:]):
                fused[-3:] = [InputTwoStageTwin(*fused[-3:])]
        else:
            fused.append(twin)
    return fused
