"""Integer networks: layers whose outputs are exact integers on every machine.

Ballé, Johnston & Minnen, "Integer networks for data compression with latent-variable models"
(ICLR 2019). The hyper-synthesis of :class:`~microcae.models.hyperprior.HyperpriorCodec` is one:
in training it runs on integer-valued floats with straight-through rounding; at coding time
:meth:`IntConv2d.exact` computes it on integer-valued float64 tensors, exact and independent of
summation order while every partial sum stays below 2^53 (the bound is checked from the
configuration's weight, bias and activation ranges).
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import torch
from torch import nn

from microcae.models.gdn import bound_ste
from microcae.util.errors import MicrocaeError

if TYPE_CHECKING:
    from microcae.models.hyperprior import HyperpriorConfig

EXACT_LIMIT = 1 << 53
"""Integers of magnitude below this are exact in float64."""
FLOAT32_EXACT_LIMIT = 1 << 24
"""Integers of magnitude below this are exact in float32."""


def round_ste(x: torch.Tensor) -> torch.Tensor:
    """``floor(x + 1/2)`` (ties upward, like the integer path) with an identity gradient."""
    return x + (torch.floor(x + 0.5) - x).detach()


class IntConv2d(nn.Module):
    """3×3 convolution with integer weights and biases and a rounding right shift.

    On integer inputs ``u`` it computes, per output channel ``o``,
    ``floor((sum W[o] * u + B[o]) / 2**shift[o] + 1/2)`` with integer ``W``, ``B`` (the stored
    float parameters times ``2**weight_frac_bits``, resp. ``2**(weight_frac_bits + in_frac)``,
    rounded and clamped; straight-through gradients in training).

    Parameters
    ----------
    cin, cout
        Channels.
    in_frac
        The input integers stand for ``u / 2**in_frac``.
    out_frac
        (cout,) the outputs stand for ``out / 2**out_frac``.
    config
        Bit widths and bounds.
    """

    def __init__(self, cin: int, cout: int, in_frac: int, out_frac: list[int],
                 config: HyperpriorConfig) -> None:
        super().__init__()
        conv = nn.Conv2d(cin, cout, 3, padding=1)
        self.weight = nn.Parameter(conv.weight.detach().clone())
        self.bias = nn.Parameter(conv.bias.detach().clone())
        self.weight_scale = float(2 ** config.weight_frac_bits)
        self.bias_scale = float(2 ** (config.weight_frac_bits + in_frac))
        self.weight_max, self.bias_max = float(config.weight_max), float(config.bias_max)
        shift = [config.weight_frac_bits + in_frac - f for f in out_frac]
        if len(shift) != cout or min(shift) < 1:
            raise ValueError("every output channel needs a right shift of at least 1")
        self.shift = tuple(shift)
        self.frozen: tuple[torch.Tensor, torch.Tensor] | None = None
        """Integer (W, B) fixed by :meth:`freeze` (stored with the code tables), or None."""

    def integer_parameters(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Integer weights (cout, cin, 3, 3) and biases (cout,), int64.

        The frozen ones if :meth:`freeze` ran (or they were loaded), else derived from the float
        parameters by ``clamp(floor(p * scale + 1/2))`` in float64 (exact operations, the rule
        the training path applies).
        """
        if self.frozen is not None:
            return self.frozen
        with torch.no_grad():
            weight = torch.floor(self.weight.double() * self.weight_scale + 0.5)
            bias = torch.floor(self.bias.double() * self.bias_scale + 0.5)
            return (weight.clamp(-self.weight_max, self.weight_max).to(torch.int64),
                    bias.clamp(-self.bias_max, self.bias_max).to(torch.int64))

    def freeze(self) -> None:
        """Fix the integer parameters derived from the current float parameters."""
        self.frozen = None
        self.frozen = self.integer_parameters()

    def derive_float_parameters(self) -> None:
        """Set the float parameters to the frozen integers over their scales (exact in float32).

        For files that store only the integers: the training path then rounds them back to the
        same integers, so a fine-tune starts from exactly the stored network.
        """
        weight, bias = self.integer_parameters()
        with torch.no_grad():
            self.weight.copy_(weight.double() / self.weight_scale)
            self.bias.copy_(bias.double() / self.bias_scale)

    def load_integer_parameters(self, weight: torch.Tensor, bias: torch.Tensor,
                                label: str) -> None:
        """Set the frozen integers from stored tensors (int32; weights int8, int16 or int32).

        Packed model files (:func:`microcae.models.registry.pack_model`) store each layer's
        weights in the smallest of those types that holds them.
        """
        if (weight.dtype not in (torch.int8, torch.int16, torch.int32) or bias.dtype != torch.int32
                or weight.shape != self.weight.shape or bias.shape != self.bias.shape):
            raise MicrocaeError(f"{label}: integer hyper-synthesis parameters do not fit")
        if (int(weight.abs().max()) > self.weight_max or int(bias.abs().max()) > self.bias_max):
            raise MicrocaeError(f"{label}: integer hyper-synthesis parameters out of range")
        self.frozen = (weight.to(torch.int64), bias.to(torch.int64))

    def int_weight(self) -> torch.Tensor:
        """(cout, cin, 3, 3) integer-valued float weights ``W`` (straight-through)."""
        return bound_ste(round_ste(self.weight * self.weight_scale), -self.weight_max,
                         self.weight_max)

    def int_bias(self) -> torch.Tensor:
        """(cout,) integer-valued float biases ``B`` (straight-through)."""
        return bound_ste(round_ste(self.bias * self.bias_scale), -self.bias_max, self.bias_max)

    def _scale(self, like: torch.Tensor) -> torch.Tensor:
        return torch.tensor([2.0**-s for s in self.shift], dtype=like.dtype,
                            device=like.device)[None, :, None, None]

    def forward(self, u: torch.Tensor) -> torch.Tensor:
        """Training path (float32, differentiable): (B, cin, h, w) integers → (B, cout, h, w).

        Equal to :meth:`exact` whenever every ``sum |W| |u| + |B| + 2**(shift-1)`` stays below
        ``2**24`` (then every float32 operation is exact).
        """
        acc = nn.functional.conv2d(u, self.int_weight().to(u.dtype), self.int_bias().to(u.dtype),
                                   padding=1)
        return round_ste(acc * self._scale(acc))

    @torch.no_grad()
    def exact(self, u: torch.Tensor, peak: bool = False) -> tuple[torch.Tensor, int]:
        """Inference path: integer arithmetic on integer-valued float64 and int64 tensors.

        Parameters
        ----------
        u
            (B, cin, h, w) int64 inputs.
        peak
            Also compute the largest ``sum |W| |u| + |B|`` over the outputs (it bounds every
            partial sum of the dot products; for the float32 condition). Costs a second matmul.

        Returns
        -------
        tuple
            (B, cout, h, w) int64 outputs, and that peak (0 unless ``peak``).
        """
        weight, bias = (p.double() for p in self.integer_parameters())
        b, _, h, w = u.shape
        columns = nn.functional.unfold(u.double(), 3, padding=1)  # (B, 9 cin, h w), no arithmetic
        flat = weight.reshape(weight.shape[0], -1)
        acc = torch.matmul(flat, columns) + bias[None, :, None]  # exact: see IntegerHyperSynthesis
        bound = 0
        if peak and acc.numel():
            bound = int((torch.matmul(flat.abs(), columns.abs()) + bias.abs()[None, :, None])
                        .max().item())
        acc = acc.to(torch.int64).reshape(b, -1, h, w)
        shift = torch.tensor(self.shift, dtype=torch.int64, device=acc.device)[None, :, None, None]
        out = torch.bitwise_right_shift(acc + (1 << (shift - 1)), shift)
        return out, bound


class IntegerHyperSynthesis(nn.Module):
    """Integer hyper-synthesis: ``ẑ`` → integer means and integer scale indices of ``y``.

    Layers (sub-pixel convolutions with integer weights; ``Q`` is QReLU, i.e. clamping to
    ``0 .. 2**act_bits - 1``): IntConv 3×3 N → 4·M, PixelShuffle(2), Q; IntConv 3×3 M → 4·(3M/2),
    PixelShuffle(2), Q; IntConv 3×3 3M/2 → 2M, whose first M channels are the means (integers in
    units of ``2**-mean_frac_bits``, clamped to ±2**(15 + mean_frac_bits)) and last M channels the
    scale indices (``2**index_gain_bits`` times the real output, rounded and clamped to
    ``0 .. scale_levels - 1``).

    Notes
    -----
    **Why the inference path is exact and order-independent.** Each output of a layer is
    ``sum_j W_j u_j + B`` over ``K = 9 C_in`` taps, with integers ``|W_j| <= weight_max``,
    ``|u_j| <= U`` (``U = z_max`` for the first layer, ``2**act_bits - 1`` after a QReLU) and
    ``|B| <= bias_max``. Every product is an integer of magnitude ``<= weight_max * U`` and every
    partial sum, in whatever order a BLAS kernel, a thread split or an FMA unit forms it, is an
    integer of magnitude ``<= K * weight_max * U + bias_max``. With the defaults and N, M <= 1024
    this is below ``9 * 1536 * 2047 * 1023 + 2**24 < 2**35`` (the configuration refuses any setting
    whose bound, :meth:`HyperpriorConfig.worst_case_accumulator`, reaches ``2**53``). Integers
    below ``2**53`` are exactly representable in float64, and IEEE-754 addition, multiplication
    and FMA return the exact result whenever it is representable, so every intermediate value is
    exact and the result is the same on every machine, thread count and summation order. The
    convolution is ``unfold`` (data movement only) followed by a float64 matmul; the rounding
    shift and the clamps are done in int64. The float32 training path (:meth:`forward`) gives the
    same integers when every accumulator stays below ``2**24``; :meth:`exact` reports the peak.
    """

    def __init__(self, config: HyperpriorConfig) -> None:
        super().__init__()
        n, m = config.N, config.M
        h1, h2 = config.hyper_widths
        fa, fm = config.act_frac_bits, config.mean_frac_bits
        self.act_max = (1 << config.act_bits) - 1
        self.mean_max = (1 << (15 + fm)) - 1
        self.index_max = config.scale_levels - 1
        self.M = m
        self.conv1 = IntConv2d(n, 4 * h1, 0, [fa] * (4 * h1), config)
        self.shuffle1 = nn.PixelShuffle(2)
        self.conv2 = IntConv2d(h1, 4 * h2, fa, [fa] * (4 * h2), config)
        self.shuffle2 = nn.PixelShuffle(2)
        gain = config.index_gain_bits
        self.conv3 = IntConv2d(h2, 2 * m, fa, [fm] * m + [gain] * m, config)
        with torch.no_grad():
            # hidden units start active (QReLU would zero nearly all of them at ẑ = 0) ...
            self.conv1.bias.uniform_(0.25, 1.0)
            self.conv2.bias.uniform_(0.25, 1.0)
            # ... and the scale indices near scale 1 (index = 2**gain (w·x + b))
            start = math.log(1.0 / config.scale_min) / math.log(config.scale_max /
                                                                   config.scale_min)
            self.conv3.bias[m:] += start * self.index_max / 2**gain

    def forward(self, z_hat: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Training path (float32, straight-through rounding and clamping).

        Parameters
        ----------
        z_hat
            (B, N, h, w) integer-valued float32 (``ẑ``, straight-through rounded).

        Returns
        -------
        tuple
            means (B, M, 4h, 4w) and scale indices (B, M, 4h, 4w), integer-valued float32.
        """
        a = bound_ste(self.shuffle1(self.conv1(z_hat)), 0.0, float(self.act_max))
        a = bound_ste(self.shuffle2(self.conv2(a)), 0.0, float(self.act_max))
        out = self.conv3(a)
        mean = bound_ste(out[:, : self.M], -float(self.mean_max), float(self.mean_max))
        index = bound_ste(out[:, self.M :], 0.0, float(self.index_max))
        return mean, index

    @torch.no_grad()
    def exact(self, z_hat: torch.Tensor,
              peak: bool = False) -> tuple[torch.Tensor, torch.Tensor, int]:
        """Inference path, exact (see the class notes).

        Parameters
        ----------
        z_hat
            (B, N, h, w) int64.
        peak
            Also report the peak accumulator bound (a second matmul per layer).

        Returns
        -------
        tuple
            means (B, M, 4h, 4w) int64, scale indices (B, M, 4h, 4w) int64, and the peak
            accumulator magnitude over the three layers (0 unless ``peak``).
        """
        out, p1 = self.conv1.exact(z_hat, peak)
        a = self.shuffle1(out.clamp(0, self.act_max))
        out, p2 = self.conv2.exact(a, peak)
        a = self.shuffle2(out.clamp(0, self.act_max))
        out, p3 = self.conv3.exact(a, peak)
        mean = out[:, : self.M].clamp(-self.mean_max, self.mean_max)
        index = out[:, self.M :].clamp(0, self.index_max)
        return mean.contiguous(), index.contiguous(), max(p1, p2, p3)
