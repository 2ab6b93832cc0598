"""Generalized divisive normalisation (GDN) and its inverse, written here in plain PyTorch.

Ballé, Laparra & Simoncelli, "Density modeling of images using a generalized normalization
transformation" (ICLR 2016) and "End-to-end optimized image compression" (ICLR 2017):

    y_i = x_i / sqrt(beta_i + sum_j gamma_ij x_j^2)          (GDN)
    y_i = x_i * sqrt(beta_i + sum_j gamma_ij x_j^2)          (inverse GDN, IGDN)

The sum over channels is a 1×1 convolution of ``x * x`` (a product, never ``abs(x) ** 2``, so a
complex-step twin can evaluate it analytically). ``beta`` and ``gamma`` must stay positive,
respectively non-negative: they are stored as square roots with a pedestal, and a lower bound
with a straight-through gradient keeps them above ``beta_min`` and ``0`` (Ballé 2017, sec. 3.3).
"""

from __future__ import annotations

import torch
from torch import nn

PEDESTAL = 2.0**-18
"""Small constant under the square-root reparametrisation (keeps gradients finite near 0)."""


class _BoundSTE(torch.autograd.Function):
    """``clamp(x, lo, hi)`` whose gradient also passes where it would move ``x`` back inside.

    Written in the ``setup_context`` form, so ``torch.func`` transforms (``jacrev``, ``jvp``,
    ``vmap``) can trace through it.
    """

    generate_vmap_rule = True

    @staticmethod
    def forward(x: torch.Tensor, lo: float, hi: float) -> torch.Tensor:
        return x.clamp(lo, hi)

    @staticmethod
    def setup_context(ctx: torch.autograd.function.FunctionCtx, inputs: tuple,
                      output: torch.Tensor) -> None:
        x, ctx.lo, ctx.hi = inputs
        ctx.save_for_backward(x)
        ctx.save_for_forward(x)

    @staticmethod
    def backward(ctx: torch.autograd.function.FunctionCtx,
                 grad: torch.Tensor) -> tuple[torch.Tensor, None, None]:
        (x,) = ctx.saved_tensors
        passes = ((x >= ctx.lo) | (grad < 0)) & ((x <= ctx.hi) | (grad > 0))
        return grad * passes.to(grad.dtype), None, None

    @staticmethod
    def jvp(ctx: torch.autograd.function.FunctionCtx, tangent: torch.Tensor, *_: None
            ) -> torch.Tensor:
        (x,) = ctx.saved_tensors
        return tangent * ((x >= ctx.lo) & (x <= ctx.hi)).to(tangent.dtype)  # clamp's own


def bound_ste(x: torch.Tensor, lo: float = float("-inf"), hi: float = float("inf")) -> torch.Tensor:
    """Clamp ``x`` to ``[lo, hi]``; the gradient passes inside and wherever descent moves inward.

    Parameters
    ----------
    x
        Any tensor.
    lo, hi
        Bounds (either may be infinite).

    Returns
    -------
    torch.Tensor
        ``x.clamp(lo, hi)``, same shape and dtype.
    """
    return _BoundSTE.apply(x, lo, hi)


def _norm(x: torch.Tensor, gamma: torch.Tensor, beta: torch.Tensor, rows: bool) -> torch.Tensor:
    """``beta + gamma · x²`` over the channel axis of rows (P, C) or columns (N, C, P)."""
    if rows:
        return torch.addmm(beta, x * x, gamma.t())
    return torch.matmul(gamma, x * x).add_(beta[:, None])


def _mix(v: torch.Tensor, gamma: torch.Tensor, rows: bool) -> torch.Tensor:
    """``gamma · v`` over the channel axis of rows (P, C) or columns (N, C, P)."""
    return v @ gamma.t() if rows else torch.matmul(gamma, v)


class _FusedGDN(torch.autograd.Function):
    """GDN with a hand-written backward that keeps only ``x`` and the factor.

    ``x`` is either rows (P, C) (the channels-last layout, ``rows=True``) or columns (N, C, P)
    (the contiguous NCHW layout); the channel sums are one matmul either way, without copying
    ``x``. Forward: ``f = rsqrt(beta + gamma · x²)`` (``sqrt`` if inverse), ``y = x * f``. With
    ``g = dy * x * df/dnorm`` (``-f³/2``, resp. ``1/(2f)``): ``dx = dy * f + 2 x (gammaᵀ · g)``,
    ``dgamma = sum g · (x²)ᵀ``, ``dbeta = sum g``.
    """

    generate_vmap_rule = True

    @staticmethod
    def forward(x: torch.Tensor, gamma: torch.Tensor, beta: torch.Tensor, inverse: bool,
                rows: bool) -> tuple[torch.Tensor, torch.Tensor]:
        norm = _norm(x, gamma, beta, rows)
        factor = norm.sqrt_() if inverse else norm.rsqrt_()
        return x * factor, factor

    @staticmethod
    def setup_context(ctx: torch.autograd.function.FunctionCtx, inputs: tuple,
                      output: tuple[torch.Tensor, torch.Tensor]) -> None:
        x, gamma, _, ctx.inverse, ctx.rows = inputs
        ctx.mark_non_differentiable(output[1])
        ctx.save_for_backward(x, output[1], gamma)
        ctx.save_for_forward(x, output[1], gamma)

    @staticmethod
    def _slope(ctx: torch.autograd.function.FunctionCtx, factor: torch.Tensor) -> torch.Tensor:
        """``df/dnorm``: ``-f³/2`` (GDN) or ``1/(2f)`` (IGDN)."""
        return 0.5 / factor if ctx.inverse else factor.pow(3) * -0.5

    @staticmethod
    def jvp(ctx: torch.autograd.function.FunctionCtx, dx: torch.Tensor | None,
            dgamma: torch.Tensor | None, dbeta: torch.Tensor | None, *_: None
            ) -> tuple[torch.Tensor, None]:
        """Forward mode: ``dy = dx * f + x * df/dnorm * (gamma · 2x dx + dgamma · x² + dbeta)``."""
        x, factor, gamma = ctx.saved_tensors
        dnorm = torch.zeros_like(factor)
        if dx is not None:
            dnorm = dnorm + _mix(2 * x * dx, gamma, ctx.rows)
        if dgamma is not None:
            dnorm = dnorm + _mix(x * x, dgamma, ctx.rows)
        if dbeta is not None:
            dnorm = dnorm + (dbeta if ctx.rows else dbeta[:, None])
        dy = x * _FusedGDN._slope(ctx, factor) * dnorm
        return (dy if dx is None else dy + dx * factor), None

    @staticmethod
    def backward(ctx: torch.autograd.function.FunctionCtx, dy: torch.Tensor, _: torch.Tensor
                 ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None, None, None]:
        x, factor, gamma = ctx.saved_tensors
        g = dy * x * _FusedGDN._slope(ctx, factor)
        if ctx.rows:
            dx = torch.mm(g, gamma)
            dgamma = torch.mm(g.t(), x * x) if ctx.needs_input_grad[1] else None
            dbeta = g.sum(0) if ctx.needs_input_grad[2] else None
        else:
            dx = torch.matmul(gamma.t(), g)
            dgamma = (torch.matmul(g, (x * x).transpose(1, 2)).sum(0)
                      if ctx.needs_input_grad[1] else None)
            dbeta = g.sum((0, 2)) if ctx.needs_input_grad[2] else None
        dx = torch.addcmul(dx.mul_(x).mul_(2.0), dy, factor)  # out of place: vmap has a rule
        return dx, dgamma, dbeta, None, None


class GDN(nn.Module):
    """GDN (or, with ``inverse=True``, IGDN) over the channels of (N, C, H, W) tensors.

    Parameters
    ----------
    channels
        C.
    inverse
        Multiply by the norm instead of dividing (the synthesis transform's IGDN).
    beta_min
        Lower bound of ``beta`` (keeps the division finite).
    gamma_init
        Initial diagonal of ``gamma`` (off-diagonal entries start at 0; ``beta`` starts at 1).

    Notes
    -----
    Stored parameters ``beta_sqrt`` (C,) and ``gamma_sqrt`` (C, C) give
    ``beta = max(beta_sqrt, sqrt(beta_min + p))**2 - p`` and
    ``gamma = max(gamma_sqrt, sqrt(p))**2 - p`` with the pedestal ``p`` = :data:`PEDESTAL`, so
    ``beta >= beta_min`` and ``gamma >= 0`` whatever the optimiser does to the stored values.
    """

    def __init__(self, channels: int, inverse: bool = False, beta_min: float = 1e-6,
                 gamma_init: float = 0.1) -> None:
        super().__init__()
        self.channels = int(channels)
        self.inverse = bool(inverse)
        self.beta_min = float(beta_min)
        self.beta_sqrt = nn.Parameter(torch.sqrt(torch.ones(channels) + PEDESTAL))
        self.gamma_sqrt = nn.Parameter(torch.sqrt(gamma_init * torch.eye(channels) + PEDESTAL))

    @property
    def beta(self) -> torch.Tensor:
        """(C,) the effective ``beta`` (>= ``beta_min``)."""
        bound = (self.beta_min + PEDESTAL) ** 0.5
        return bound_ste(self.beta_sqrt, bound) ** 2 - PEDESTAL

    @property
    def gamma(self) -> torch.Tensor:
        """(C, C) the effective ``gamma`` (>= 0); row ``i`` weights the squares for output ``i``."""
        return bound_ste(self.gamma_sqrt, PEDESTAL**0.5) ** 2 - PEDESTAL

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Normalise ``x``.

        Parameters
        ----------
        x
            (N, C, H, W), any memory format.

        Returns
        -------
        torch.Tensor
            (N, C, H, W), same dtype and memory format. Real inputs take the fused path
            (:class:`_FusedGDN`: one matmul over the channels in whichever layout ``x`` has,
            in place without autograd); complex inputs the plain 1×1 convolution of ``x * x``
            (:meth:`reference`).
        """
        if x.is_complex():
            return self.reference(x)
        n, c, h, w = x.shape
        rows = not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last)
        flat = x.permute(0, 2, 3, 1).reshape(-1, c) if rows else x.reshape(n, c, h * w)
        gamma, beta = self.gamma.to(x.dtype), self.beta.to(x.dtype)
        if torch.is_grad_enabled() and (x.requires_grad or gamma.requires_grad):
            out = _FusedGDN.apply(flat, gamma, beta, self.inverse, rows)[0]
        else:  # inference: two buffers, in place
            norm = _norm(flat, gamma, beta, rows)
            out = (norm.sqrt_() if self.inverse else norm.rsqrt_()).mul_(flat)
        if rows:
            return out.reshape(n, h, w, c).permute(0, 3, 1, 2)
        return out.reshape(n, c, h, w)

    def reference(self, x: torch.Tensor) -> torch.Tensor:
        """Unfused GDN: ``x * rsqrt(conv1x1(x * x, gamma) + beta)`` (or ``* sqrt`` if inverse).

        Same contract as :meth:`forward`, any dtype (real or complex), autograd-traced layer by
        layer.
        """
        weight = self.gamma.to(x.dtype)[:, :, None, None]
        norm = nn.functional.conv2d(x * x, weight, self.beta.to(x.dtype))
        return x * torch.sqrt(norm) if self.inverse else x * torch.rsqrt(norm)

    def extra_repr(self) -> str:
        """Channels and direction, for ``print(model)``."""
        return f"{self.channels}, inverse={self.inverse}"
