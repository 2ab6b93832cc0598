"""Fusions: runs of layers rewritten as one twin that is cheaper in reverse mode.

Zennit keeps such temporary model rewrites ("canonizers") apart from the per-layer rules; so does
microcae. A fused twin gives the same numbers as its layers' twins in turn (up to the order of
floating-point additions) and shares their weights. :func:`canonize` applies every fusion to the
twins of one ``nn.Sequential``:

- ReLU then a non-overlapping MaxPool2d -> :class:`ReLUMaxPoolTwin` (one pooled-size pass);
- a one-channel-input Conv2d then that pair -> :class:`InputConvPoolTwin` (the transposed first
  stage as one small matrix per pooled position).
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F  # noqa: N812
from torch.nn.modules.utils import _pair

from microcae.saliency.twins import Conv2dTwin, MaxPool2dTwin, SlopeTwin, Twin, _scale


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


class InputConvPoolTwin(Twin):
    """One-channel-input Conv2d, ReLU and non-overlapping MaxPool2d, fused for reverse mode.

    The real and tangent maps are those of the two twins in turn. The transpose is where the
    fusion pays: every pooling window sends its cotangent to one argmax per channel, and from
    there the transposed convolution spreads it over a fixed patch of (k + K − 1)² input pixels
    (k: pool size, K: kernel size). At each pooled position the pair's transpose is therefore a
    fixed (C × (k + K − 1)²) matrix, built once per real pass from the argmaxes, the ReLU mask
    and the weights. Pulling back a batch of cotangents is then one batched matrix product over
    positions and a col2im (``F.fold``), instead of a full-resolution unpooled tensor and a
    transposed convolution with one output channel, the costliest steps of reverse mode on a CPU.
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

    def _window_matrices(self, pool_state: tuple, dtype: torch.dtype) -> torch.Tensor:
        """(N, h·w, C, Fy·Fx) map from a position's channel cotangents to its input patch."""
        conv_shape, index, _, positive = pool_state
        weight = self.conv.module.weight.detach().to(dtype)  # (C, 1, Ky, Kx)
        (ky, kx), (py, px) = weight.shape[2:], _pair(self.pool.module.kernel_size)
        fy, fx = py + ky - 1, px + kx - 1
        n, c, h, w = index.shape
        rows = torch.arange(h, device=index.device).view(1, 1, h, 1)
        cols = torch.arange(w, device=index.device).view(1, 1, 1, w)
        dy = index // conv_shape[3] - py * rows  # argmax offset inside its window
        dx = index % conv_shape[3] - px * cols
        matrices = torch.zeros(n, c, h, w, fy * fx, dtype=dtype, device=index.device)
        mask = positive.to(dtype)
        for i in range(ky):
            for j in range(kx):
                target = ((dy + i) * fx + dx + j).unsqueeze(-1)
                tap = (weight[:, 0, i, j].view(1, c, 1, 1) * mask).unsqueeze(-1)
                matrices.scatter_add_(-1, target, tap)
        return matrices.permute(0, 2, 3, 1, 4).reshape(n, h * w, c, fy * fx).contiguous()

    def cotangent(self, state: tuple, ct: torch.Tensor) -> torch.Tensor:
        """Per position, channel cotangents times the window matrix, then col2im."""
        conv_state, pool_state, cache = state
        if ct.dtype not in cache:
            cache[ct.dtype] = self._window_matrices(pool_state, ct.dtype)
        matrices = cache[ct.dtype]
        n, positions, c, patch = matrices.shape
        k = ct.shape[0] // n
        h, w = ct.shape[2:]
        (ky, kx), (py, px) = self.conv.module.kernel_size, _pair(self.pool.module.kernel_size)
        pad_y, pad_x = _pair(self.conv.module.padding)
        height, width = conv_state[2:]
        fold_h, fold_w = (h - 1) * py + py + ky - 1, (w - 1) * px + px + kx - 1
        out = torch.zeros(ct.shape[0], 1, max(fold_h, pad_y + height),
                          max(fold_w, pad_x + width), dtype=ct.dtype, device=ct.device)
        for sample in range(n):
            batch = ct[sample * k : (sample + 1) * k]
            columns = torch.bmm(batch.permute(2, 3, 0, 1).reshape(positions, k, c),
                                matrices[sample])  # (h·w, K, patch)
            out[sample * k : (sample + 1) * k, :, :fold_h, :fold_w] = F.fold(
                columns.permute(1, 2, 0), (fold_h, fold_w), (py + ky - 1, px + kx - 1),
                stride=(py, px))
        return out[:, :, pad_y : pad_y + height, pad_x : pad_x + width]




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
        else:
            fused.append(twin)
    return fused
