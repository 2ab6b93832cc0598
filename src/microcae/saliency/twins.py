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
``cotangent(state, ct)`` (its transpose, reverse mode). Which twin serves which torch layer is
in :data:`microcae.saliency.layers.LAYERS`; fusions of several layers into one twin are in
:mod:`microcae.saliency.canonizers`.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.nn import functional as F  # noqa: N812
from torch.nn.modules.utils import _pair

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

    def linear(self, state: Any, v: torch.Tensor) -> torch.Tensor:
        """Apply the Jacobian at the real input to (N·K, ...) ``v``, exactly linear in ``v``.

        This is :meth:`tangent` for every twin whose imaginary map is linear; the analytic
        twins (whose imaginary map is linear only for tiny steps) apply their derivative.
        """
        return self.tangent(state, v)

    def cotangent(self, state: Any, ct: torch.Tensor) -> torch.Tensor:
        """Transpose of :meth:`tangent`: (N·K, *out) cotangents -> (N·K, *in)."""
        batch = ct.shape[0]
        zeros = torch.zeros(batch, *state[1:], dtype=ct.dtype, device=ct.device)
        _, pull = torch.func.vjp(lambda t: self.tangent(state, t), zeros)
        return pull(ct)[0]

    def workspace(self, state: Any, values_in: int, values_out: int) -> int:
        """Values held per cotangent while :meth:`cotangent` runs (sizes per real sample)."""
        return values_in + values_out

    def squared_cotangent(self, state: Any, ct: torch.Tensor, n: int) -> torch.Tensor:
        """Sum of squares of the pulled-back cotangents over K and channels: (N, *in spatial).

        ``n`` is the number of real samples (``ct`` holds K = ``len(ct) // n`` per sample).
        """
        return per_sample(self.cotangent(state, ct), n).pow(2).sum(dim=(1, 2))

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

    def _slope(self, a: torch.Tensor) -> torch.Tensor:
        """Return the (N, ...) derivative at the real input ``a``."""
        if isinstance(self.module, nn.Tanh):
            return 1 - torch.tanh(a) ** 2
        if isinstance(self.module, nn.Sigmoid):
            return torch.sigmoid(a) * (1 - torch.sigmoid(a))
        return torch.where(a > 0, 1.0, self.module.alpha * torch.exp(a)).to(a.dtype)

    def linear(self, state: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """Multiply by the derivative at the real input."""
        return _scale(self._slope(state), v)

    def cotangent(self, state: torch.Tensor, ct: torch.Tensor) -> torch.Tensor:
        """Multiply by the derivative at the real input (a diagonal map is its own transpose)."""
        return _scale(self._slope(state), ct)


class MaxPool2dTwin(Twin):
    """MaxPool2d: the real part's maximum; ``im`` gathered at the argmax (first index on ties)."""

    def non_overlapping(self) -> bool:
        """Tell whether the windows tile the input (stride = kernel, no padding or dilation)."""
        pool = self.module
        kernel = _pair(pool.kernel_size)
        return (_pair(pool.stride or pool.kernel_size) == kernel and _pair(pool.padding) == (0, 0)
                and _pair(pool.dilation) == (1, 1) and not pool.ceil_mode)

    def real(self, re: torch.Tensor) -> tuple[torch.Tensor, tuple]:
        """Run the pool; the state holds the input shape, torch's argmax indices and a cache."""
        pool = self.module
        out, index = F.max_pool2d(re, pool.kernel_size, pool.stride, pool.padding, pool.dilation,
                                  pool.ceil_mode, return_indices=True)
        return out, (re.shape, index, {"layout": _layout(re)})

    def _winner(self, state: tuple, dtype: torch.dtype) -> torch.Tensor:
        """(N, C, H, W) 0/1 map of the argmaxes (built on first use, for forward mode)."""
        shape, index, cache = state
        if dtype not in cache:
            flat = torch.zeros(shape[0], shape[1], shape[2] * shape[3], dtype=dtype,
                               device=index.device)
            flat.scatter_(2, index.flatten(2), 1.0)
            cache[dtype] = flat.view(shape).contiguous(memory_format=cache["layout"])
        return cache[dtype]

    def tangent(self, state: tuple, im: torch.Tensor) -> torch.Tensor:
        """Read ``im`` at each window's argmax."""
        shape, index, _ = state
        if self.non_overlapping():  # exact: one non-zero per window, summed with zeros
            winner = self._winner(state, im.dtype)
            k = _pair(self.module.kernel_size)
            return F.avg_pool2d(_scale(winner, im), k, k, divisor_override=1)
        n, c = index.shape[:2]
        flat = per_sample(im, n).flatten(3)
        picks = index.flatten(2).unsqueeze(1).expand(n, flat.shape[1], c, -1)
        return flat.gather(3, picks).reshape(im.shape[0], c, *index.shape[2:])

    def cotangent(self, state: tuple, ct: torch.Tensor) -> torch.Tensor:
        """Send each cotangent to its window's argmax (adding up where windows share it)."""
        shape, index, _ = state
        n, c = index.shape[:2]
        if self.non_overlapping():  # windows do not overlap: each argmax receives one value
            k = _pair(self.module.kernel_size)
            per_row = index.expand(ct.shape[0], -1, -1, -1) if n == 1 else \
                index.repeat_interleave(ct.shape[0] // n, dim=0)
            return F.max_unpool2d(ct, per_row, k, k, output_size=shape[2:])
        k = ct.shape[0] // n
        out = torch.zeros(n, k, c, shape[2] * shape[3], dtype=ct.dtype, device=ct.device)
        picks = index.flatten(2).unsqueeze(1).expand(n, k, c, -1)
        out.scatter_add_(3, picks, per_sample(ct, n).flatten(3))
        return out.view(ct.shape[0], c, shape[2], shape[3])


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


class GDNTwin(Twin):
    """Generalised divisive normalisation y = x · (β + Γ(x·x))^(∓1/2) (GDN; IGDN with ``+``).

    Ballé, Laparra & Simoncelli (2016): per position, ``n_i = β_i + Σ_j Γ_ij x_j²`` and
    ``y_i = x_i n_i^(-1/2)`` (``n_i^(+1/2)`` for the inverse, ``module.inverse``). The wrapped
    module must expose the effective ``gamma`` (C, C) and ``beta`` (C,) and optionally
    ``inverse``, as :class:`microcae.models.gdn.GDN` does (its properties apply the
    non-negative reparametrisation to the stored ``gamma_sqrt`` and ``beta_sqrt``); the real
    part is the module's own (fused) forward. The twin is the
    complex-analytic function at ``z = a + i·b``, with the square ``z·z = a² − b² + 2i·ab``
    (never ``|z|²``) and the complex power taken in polar form (``atan2`` keeps an imaginary
    part of 1e-24 that ``n_re + n_im`` would lose): ``Im y = a·Im r(n) + b·Re r(n)``.
    """

    def _weights(self, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor, float]:
        gamma = self.module.gamma.detach().to(dtype)
        power = 0.5 if getattr(self.module, "inverse", False) else -0.5
        return gamma[:, :, None, None], self.module.beta.detach().to(dtype), power

    def real(self, re: torch.Tensor) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
        """Run the layer; the state is the (N, C, H, W) input and its norm n = β + Γ(x²)."""
        gamma, beta, _ = self._weights(re.dtype)
        return self.module(re), (re, F.conv2d(re * re, gamma, beta))

    def tangent(self, state: tuple[torch.Tensor, torch.Tensor], im: torch.Tensor) -> torch.Tensor:
        """Imaginary part of the complex GDN at ``re + i·im`` (linear in ``im`` up to O(im³))."""
        a, _ = state
        gamma, beta, power = self._weights(im.dtype)
        b = per_sample(im, a.shape[0])
        a = a.unsqueeze(1)
        n_re = F.conv2d((a * a - b * b).reshape(im.shape), gamma, beta)
        n_im = F.conv2d((2 * a * b).reshape(im.shape), gamma)
        size, angle = torch.hypot(n_re, n_im).pow(power), torch.atan2(n_im, n_re) * power
        r_re, r_im = per_sample(size * torch.cos(angle), a.shape[0]), per_sample(
            size * torch.sin(angle), a.shape[0])
        return (a * r_im + b * r_re).reshape(im.shape)

    def linear(self, state: tuple[torch.Tensor, torch.Tensor], v: torch.Tensor) -> torch.Tensor:
        """Apply the derivative at the real input: ``v·r(n) + x·r'(n)·Γ(2x·v)``."""
        x, norm = state
        gamma, _, power = self._weights(v.dtype)
        factor, slope = norm.pow(power), power * norm.pow(power - 1)  # r(n), r'(n)
        mixed = F.conv2d(_scale(2 * x, v), gamma)  # Γ(2x·v)
        return _scale(factor, v) + _scale(x * slope, mixed)

    def cotangent(self, state: tuple[torch.Tensor, torch.Tensor],
                  ct: torch.Tensor) -> torch.Tensor:
        """Transpose of the derivative ``dx·r(n) + x·r'(n)·Γ(2x·dx)`` at the real input."""
        x, norm = state
        gamma, _, power = self._weights(ct.dtype)
        factor, slope = norm.pow(power), power * norm.pow(power - 1)  # r(n), r'(n)
        mixed = F.conv_transpose2d(_scale(x * slope, ct), gamma)  # Γᵀ(ct · x · r'(n))
        return _scale(factor, ct) + _scale(2 * x, mixed)


class SequentialTwin(Twin):
    """nn.Sequential: the twins of its children in order (nested containers allowed)."""

    def __init__(self, module: nn.Sequential, twins: list[Twin]) -> None:
        super().__init__(module)
        self.twins = nn.ModuleList(twins)

    def real(self, re: torch.Tensor) -> tuple[torch.Tensor, tuple[list, list]]:
        """Run every real layer; the state lists the children's states and value counts."""
        states, sizes = [], []
        for twin in self.twins:
            before = re[0].numel()
            re, state = twin.real(re)
            states.append(state)
            sizes.append((before, re[0].numel()))
        return re, (states, sizes)

    def tangent(self, state: tuple[list, list], im: torch.Tensor) -> torch.Tensor:
        """Push ``im`` through the children's tangent maps."""
        for twin, inner in zip(self.twins, state[0], strict=True):
            im = twin.tangent(inner, im)
        return im

    def cotangent(self, state: tuple[list, list], ct: torch.Tensor) -> torch.Tensor:
        """Pull ``ct`` back through the children's transposes in reverse order."""
        for twin, inner in zip(reversed(self.twins), reversed(state[0]), strict=True):
            ct = twin.cotangent(inner, ct)
        return ct

    def squared_cotangent(self, state: tuple[list, list], ct: torch.Tensor,
                          n: int) -> torch.Tensor:
        """Pull back through all children but the first, then the first's sum of squares."""
        for twin, inner in zip(reversed(self.twins[1:]), reversed(state[0][1:]), strict=True):
            ct = twin.cotangent(inner, ct)
        return self.twins[0].squared_cotangent(state[0][0], ct, n)

    def workspace(self, state: tuple[list, list], values_in: int = 0,
                  values_out: int = 0) -> int:
        """Largest workspace of any child (values per cotangent)."""
        return max(twin.workspace(inner, *size)
                   for twin, inner, size in zip(self.twins, *state, strict=True))
