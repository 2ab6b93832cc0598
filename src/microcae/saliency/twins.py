"""Complex twins of torch layers: the study's complex-step rules, sharing the trained weights.

A complex activation ``re + i·im`` is carried as two real tensors. The real part ``re`` has shape
(N, ...) and is computed by the original layer itself, so it equals the real model's output bit
for bit. The imaginary part ``im`` has shape (N·K, ...): K imaginary parts per real sample
(sample-major), which lets K perturbations share one real pass. Per layer:

- Conv2d / Linear: ``W*re + b + i·W*im``, two real convolutions (bias on the real part only;
  torch's own complex convolution uses a three-multiplication trick whose ``(re + im)`` sums lose
  an ``im`` of 1e-24 entirely);
- ReLU / LeakyReLU: the slope set by the real part (``re > 0``; slope of the negative side at
  exactly 0, like torch's derivative);
- MaxPool2d: the real part's maximum and ``im`` at that argmax (torch's first index on ties);
- Tanh / Sigmoid / ELU: the imaginary part of the complex-analytic function;
- AvgPool2d, AdaptiveAvgPool2d, Upsample (nearest, bilinear), Flatten, Identity, Dropout (eval):
  linear with no offset, applied to both parts; BatchNorm2d (eval): scale on both, shift on re.

Given the real part, every twin is linear in ``im`` (to machine precision for the analytic ones,
whose higher terms are O(h³)). Each twin therefore also exposes its linearisation:
``real(re) -> (out, state)``, ``tangent(state, im)`` (the imaginary map, i.e. forward mode) and
``cotangent(state, ct)`` (its transpose, reverse mode). :data:`TWINS` maps layer types to twins;
:func:`complexify` builds the twin of a whole (nested ``nn.Sequential``) module.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F  # noqa: N812
from torch.nn.modules.utils import _pair

from microcae.util.errors import MicrocaeError

Pair = tuple[torch.Tensor, torch.Tensor]
"""A complex value as (real part (N, ...), imaginary parts (N·K, ...))."""


def per_sample(values: torch.Tensor, n: int) -> torch.Tensor:
    """View (N·K, ...) as (N, K, ...): the K imaginary parts of each of N real samples."""
    return values.view(n, values.shape[0] // n, *values.shape[1:])


def _scale(factor: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
    """Multiply (N·K, ...) ``values`` by the (N, ...) ``factor`` of their real sample."""
    n = factor.shape[0]
    if n == 1:  # plain broadcasting keeps the memory layout (channels-last) of ``values``
        return values * factor
    return (per_sample(values, n) * factor.unsqueeze(1)).reshape(values.shape)


class Twin(nn.Module):
    """Base twin: wraps (never copies) ``module``; ``forward((re, im)) -> (re_out, im_out)``."""

    def __init__(self, module: nn.Module) -> None:
        super().__init__()
        self.module = module

    def real(self, re: torch.Tensor) -> tuple[torch.Tensor, Any]:
        """Run the real layer on (N, ...) ``re``; return its output and the linearisation state."""
        return self.module(re), re.shape

    def tangent(self, state: Any, im: torch.Tensor) -> torch.Tensor:
        """Imaginary output for (N·K, ...) imaginary inputs ``im`` given the real pass's state."""
        raise NotImplementedError

    def cotangent(self, state: Any, ct: torch.Tensor) -> torch.Tensor:
        """Transpose of :meth:`tangent`: (N·K, *out) cotangents -> (N·K, *in)."""
        batch = ct.shape[0]
        zeros = torch.zeros(batch, *state[1:], dtype=ct.dtype, device=ct.device)
        _, pull = torch.func.vjp(lambda t: self.tangent(state, t), zeros)
        return pull(ct)[0]

    def forward(self, z: Pair) -> Pair:
        """Complex pass: ``(re, im) -> (layer(re), imaginary part of the complex layer)``."""
        out, state = self.real(z[0])
        return out, self.tangent(state, z[1])


class LinearMapTwin(Twin):
    """Layers that are linear with no offset (pools, upsampling, flatten, ...): same map on im."""

    def tangent(self, state: Any, im: torch.Tensor) -> torch.Tensor:
        """Apply the layer itself to ``im``."""
        return self.module(im)


class Conv2dTwin(Twin):
    """Conv2d: ``conv(re) + b`` and ``conv(im)`` (no bias), two real convolutions."""

    def tangent(self, state: Any, im: torch.Tensor) -> torch.Tensor:
        """Convolve ``im`` with the shared weights, without bias."""
        return self.module._conv_forward(im, self.module.weight, None)

    def cotangent(self, state: Any, ct: torch.Tensor) -> torch.Tensor:
        """Transposed convolution with the shared weights (output cropped to the input size)."""
        conv = self.module
        if isinstance(conv.padding, str) or conv.padding_mode != "zeros":
            return super().cotangent(state, ct)
        extra = [
            size - ((out - 1) * s - 2 * p + d * (k - 1) + 1)
            for size, out, s, p, d, k in zip(state[2:], ct.shape[2:], conv.stride, conv.padding,
                                              conv.dilation, conv.kernel_size, strict=True)
        ]
        return F.conv_transpose2d(ct, conv.weight, None, conv.stride, conv.padding, tuple(extra),
                                  conv.groups, conv.dilation)


class LinearTwin(Twin):
    """Linear: ``W re + b`` and ``W im``."""

    def tangent(self, state: Any, im: torch.Tensor) -> torch.Tensor:
        """Multiply ``im`` by the shared weight matrix, without bias."""
        return F.linear(im, self.module.weight)

    def cotangent(self, state: Any, ct: torch.Tensor) -> torch.Tensor:
        """Multiply by the transposed weight matrix."""
        return ct @ self.module.weight


class SlopeTwin(Twin):
    """ReLU / LeakyReLU: ``im`` times the slope chosen by the real part (``re > 0``)."""

    def real(self, re: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Run the layer; the state is the (N, ...) slope: 1 where ``re > 0``, else 0 or α."""
        negative = getattr(self.module, "negative_slope", 0.0)
        slope = torch.where(re > 0, torch.ones((), dtype=re.dtype, device=re.device),
                            torch.full((), negative, dtype=re.dtype, device=re.device))
        return self.module(re), slope

    def tangent(self, state: torch.Tensor, im: torch.Tensor) -> torch.Tensor:
        """Scale ``im`` by the slope."""
        return _scale(state, im)

    def cotangent(self, state: torch.Tensor, ct: torch.Tensor) -> torch.Tensor:
        """Scale by the slope again: a diagonal map is its own transpose."""
        return _scale(state, ct)


class AnalyticTwin(Twin):
    """Tanh, Sigmoid, ELU: the imaginary part of the complex-analytic function at ``re + i·im``.

    With ``a = re`` and ``b = im``: ``Im tanh(a + ib) = sin 2b / (cosh 2a + cos 2b)``,
    ``Im sigmoid(a + ib) = sin b / (2 (cosh a + cos b))`` and, for ELU,
    ``Im = b`` where ``a > 0`` and ``α e^a sin b`` elsewhere. These are free of cancellation
    (``cosh`` overflowing to infinity gives the correct limit 0). The real part is the real
    layer's ``f(a)``, which equals ``Re f(a + ib) = f(a) + O(b²)`` in floating point for the tiny
    steps of the complex step.
    """

    def real(self, re: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Run the layer; the state is the (N, ...) real input."""
        return self.module(re), re

    def tangent(self, state: torch.Tensor, im: torch.Tensor) -> torch.Tensor:
        """Imaginary part of the complex function (linear in ``im`` up to O(im³))."""
        a = state.unsqueeze(1)
        b = per_sample(im, state.shape[0])
        if isinstance(self.module, nn.Tanh):
            out = torch.sin(2 * b) / (torch.cosh(2 * a) + torch.cos(2 * b))
        elif isinstance(self.module, nn.Sigmoid):
            out = torch.sin(b) / (2 * (torch.cosh(a) + torch.cos(b)))
        else:
            out = torch.where(a > 0, b, self.module.alpha * torch.exp(a) * torch.sin(b))
        return out.reshape(im.shape)

    def cotangent(self, state: torch.Tensor, ct: torch.Tensor) -> torch.Tensor:
        """Multiply by the derivative at the real input."""
        a = state
        if isinstance(self.module, nn.Tanh):
            slope = 1 - torch.tanh(a) ** 2
        elif isinstance(self.module, nn.Sigmoid):
            slope = torch.sigmoid(a) * (1 - torch.sigmoid(a))
        else:
            slope = torch.where(a > 0, 1.0, self.module.alpha * torch.exp(a)).to(a.dtype)
        return _scale(slope, ct)


class MaxPool2dTwin(Twin):
    """MaxPool2d: the real part's maximum; ``im`` gathered at the argmax (first index on ties)."""

    def _non_overlapping(self) -> bool:
        pool = self.module
        kernel = _pair(pool.kernel_size)
        return (_pair(pool.stride or pool.kernel_size) == kernel and _pair(pool.padding) == (0, 0)
                and _pair(pool.dilation) == (1, 1) and not pool.ceil_mode)

    def real(self, re: torch.Tensor) -> tuple[torch.Tensor, tuple]:
        """Run the pool; the state holds the argmax indices (torch's) and a 0/1 winner map."""
        pool = self.module
        out, index = F.max_pool2d(re, pool.kernel_size, pool.stride, pool.padding, pool.dilation,
                                  pool.ceil_mode, return_indices=True)
        winner = None
        if self._non_overlapping():
            flat = torch.zeros(re.shape[0], re.shape[1], re.shape[2] * re.shape[3],
                               dtype=re.dtype, device=re.device)
            flat.scatter_(2, index.flatten(2), 1.0)
            winner = flat.view(re.shape).contiguous(memory_format=_layout(re))
        return out, (re.shape, index, winner)

    def tangent(self, state: tuple, im: torch.Tensor) -> torch.Tensor:
        """Read ``im`` at each window's argmax."""
        shape, index, winner = state
        if winner is not None:  # exact: one non-zero per window, summed with zeros
            k = _pair(self.module.kernel_size)
            return F.avg_pool2d(_scale(winner, im), k, k, divisor_override=1)
        n, c = index.shape[:2]
        flat = per_sample(im, n).flatten(3)
        picks = index.flatten(2).unsqueeze(1).expand(n, flat.shape[1], c, -1)
        return flat.gather(3, picks).reshape(im.shape[0], c, *index.shape[2:])

    def cotangent(self, state: tuple, ct: torch.Tensor) -> torch.Tensor:
        """Send each cotangent to its window's argmax (adding up where windows share it)."""
        shape, index, winner = state
        n, c = index.shape[:2]
        if winner is not None:  # windows do not overlap: each argmax receives one value
            k = _pair(self.module.kernel_size)
            per_row = index.expand(ct.shape[0], -1, -1, -1) if n == 1 else \
                index.repeat_interleave(ct.shape[0] // n, dim=0)
            return F.max_unpool2d(ct, per_row, k, k, output_size=shape[2:])
        k = ct.shape[0] // n
        out = torch.zeros(n, k, c, shape[2] * shape[3], dtype=ct.dtype, device=ct.device)
        picks = index.flatten(2).unsqueeze(1).expand(n, k, c, -1)
        out.scatter_add_(3, picks, per_sample(ct, n).flatten(3))
        return out.view(ct.shape[0], c, shape[2], shape[3])


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


def _layout(tensor: torch.Tensor) -> torch.memory_format:
    if tensor.dim() == 4 and tensor.is_contiguous(memory_format=torch.channels_last):
        return torch.channels_last
    return torch.contiguous_format


class BatchNorm2dTwin(Twin):
    """BatchNorm2d in eval mode: ``bn(re)`` and ``γ / sqrt(var + ε) · im``."""

    def _factor(self) -> torch.Tensor:
        bn = self.module
        factor = torch.rsqrt(bn.running_var + bn.eps)
        if bn.weight is not None:
            factor = factor * bn.weight
        return factor.view(1, -1, 1, 1)

    def tangent(self, state: Any, im: torch.Tensor) -> torch.Tensor:
        """Scale ``im`` per channel."""
        return im * self._factor().to(im.dtype)

    def cotangent(self, state: Any, ct: torch.Tensor) -> torch.Tensor:
        """Per-channel scaling is its own transpose."""
        return ct * self._factor().to(ct.dtype)


class SequentialTwin(Twin):
    """nn.Sequential: the twins of its children in order (nested containers allowed)."""

    def __init__(self, module: nn.Sequential, twins: list[Twin]) -> None:
        super().__init__(module)
        self.twins = nn.ModuleList(twins)

    def real(self, re: torch.Tensor) -> tuple[torch.Tensor, list]:
        """Run every real layer; the state is the list of the children's states."""
        states = []
        for twin in self.twins:
            re, state = twin.real(re)
            states.append(state)
        return re, states

    def tangent(self, state: list, im: torch.Tensor) -> torch.Tensor:
        """Push ``im`` through the children's tangent maps."""
        for twin, inner in zip(self.twins, state, strict=True):
            im = twin.tangent(inner, im)
        return im

    def cotangent(self, state: list, ct: torch.Tensor) -> torch.Tensor:
        """Pull ``ct`` back through the children's transposes in reverse order."""
        for twin, inner in zip(reversed(self.twins), reversed(state), strict=True):
            ct = twin.cotangent(inner, ct)
        return ct


TWINS: dict[type[nn.Module], Callable[[nn.Module], Twin]] = {
    nn.Conv2d: Conv2dTwin,
    nn.Linear: LinearTwin,
    nn.ReLU: SlopeTwin,
    nn.LeakyReLU: SlopeTwin,
    nn.Tanh: AnalyticTwin,
    nn.Sigmoid: AnalyticTwin,
    nn.ELU: AnalyticTwin,
    nn.MaxPool2d: MaxPool2dTwin,
    nn.AvgPool2d: LinearMapTwin,
    nn.AdaptiveAvgPool2d: LinearMapTwin,
    nn.Upsample: LinearMapTwin,
    nn.Flatten: LinearMapTwin,
    nn.Identity: LinearMapTwin,
    nn.Dropout: LinearMapTwin,
    nn.BatchNorm2d: BatchNorm2dTwin,
}
"""Layer type -> twin constructor (exact type match). Add an entry to support a new layer."""


def _check(module: nn.Module, path: str) -> None:
    name = f"layer '{path}' ({type(module).__name__})"
    if isinstance(module, (nn.Dropout, nn.BatchNorm2d)) and module.training:
        raise MicrocaeError(f"{name} is in training mode; call .eval() on the model first")
    if isinstance(module, nn.BatchNorm2d) and module.running_var is None:
        raise MicrocaeError(f"{name} has no running statistics")
    if isinstance(module, nn.Upsample) and module.mode not in ("nearest", "bilinear"):
        raise MicrocaeError(f"{name}: mode {module.mode!r} is not supported (nearest, bilinear)")
    if isinstance(module, nn.MaxPool2d) and module.return_indices:
        raise MicrocaeError(f"{name}: return_indices=True is not supported")
    if isinstance(module, (nn.ReLU, nn.LeakyReLU, nn.ELU)) and module.inplace:
        raise MicrocaeError(f"{name}: in-place activations are not supported")


def complexify(module: nn.Module, path: str = "encoder") -> Twin:
    """Build the complex twin of a module; the twin shares (never copies) the module's weights.

    Parameters
    ----------
    module
        A layer whose exact type is a key of :data:`TWINS`, or an ``nn.Sequential`` of such
        (nested containers allowed). Dropout and BatchNorm2d must be in eval mode.
    path
        Name of ``module`` used in error messages; children are named ``path.child``.

    Returns
    -------
    Twin
        ``twin((re, im))`` returns ``(module(re), imaginary part)`` for (N, ...) ``re`` and
        (N·K, ...) ``im``; ``twin.real``, ``twin.tangent`` and ``twin.cotangent`` give the
        linearisation. The twin holds no copy of any parameter and registers no hooks.

    Raises
    ------
    MicrocaeError
        For an unsupported layer (naming its path and type) or a layer in training mode.
    """
    if type(module) is nn.Sequential:
        children = list(module.named_children())
        twins = [complexify(child, f"{path}.{name}") for name, child in children]
        fused: list[Twin] = []
        for twin in twins:
            previous = fused[-1] if fused else None
            if (isinstance(twin, MaxPool2dTwin) and twin._non_overlapping()
                    and isinstance(previous, SlopeTwin) and type(previous.module) is nn.ReLU):
                fused[-1] = ReLUMaxPoolTwin(previous.module, twin.module)
                if len(fused) >= 2 and InputConvPoolTwin.fits(fused[-2], fused[-1]):
                    fused[-2:] = [InputConvPoolTwin(fused[-2], fused[-1])]
            else:
                fused.append(twin)
        return SequentialTwin(module, fused)
    maker = TWINS.get(type(module))
    if maker is None:
        supported = ", ".join(sorted(t.__name__ for t in TWINS))
        raise MicrocaeError(f"layer '{path}' ({type(module).__name__}) has no complex twin; "
                            f"supported: {supported}, Sequential")
    _check(module, path)
    return maker(module)
