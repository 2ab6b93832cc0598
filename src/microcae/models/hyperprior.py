"""Mean-scale hyperprior codec with an integer hyper-synthesis (deterministic entropy parameters).

The model of Minnen, Ballé & Toderici, "Joint autoregressive and hierarchical priors for learned
image compression" (NeurIPS 2018) without the autoregressive context, i.e. the mean-scale
hyperprior built on Ballé et al., "Variational image compression with a scale hyperprior"
(ICLR 2018), for greyscale images:

* ``encoder`` (analysis): 4 × conv 5×5 stride 2 with GDN between, 1 → N → N → N → M channels,
  stride 16;
* ``decoder`` (synthesis): the mirror with inverse GDN, each upsampling a conv 3×3 to 4× the
  channels followed by ``PixelShuffle(2)`` (sub-pixel convolution; a 3×3 sub-pixel layer can
  represent any 5×5 stride-2 transposed convolution and runs much faster on CPUs);
* ``hyper_encoder``: conv 3×3, ReLU, conv 5×5 s2, ReLU, conv 5×5 s2 (M → N → N → N), so z has
  stride 64; ``z_prior``: a factorized prior (:class:`microcae.entropy.factorized.FactorizedPrior`);
* ``hyper_decoder``: an **integer network** (Ballé, Johnston & Minnen, "Integer networks for data
  compression with latent-variable models", ICLR 2019), see :class:`IntegerHyperSynthesis`. From
  the integer ``ẑ`` it computes, exactly and identically on every machine, an integer mean of
  each latent ``y`` in units of ``2**-mean_frac_bits`` and an integer index into a fixed table of
  Gaussian scales.

Coding (one range-coder stream, :func:`encode_stream`): the symbols of ``ẑ`` under the
factorized prior's stored integer tables, then the symbols ``round(y - mean)`` of ``y``, each
under the stored integer table of its scale index, then the escaped values, then a 32-bit
sentinel. :meth:`HyperpriorCodec.update` builds the tables and freezes the hyper-synthesis'
integer weights; both are stored as int32 tensors (:meth:`HyperpriorCodec.tables_tensors`). The
decoder therefore needs only integers, stored integer tables and stored integer weights to
recover every symbol; only the final image synthesis is floating point. ``ŷ = symbol + mean``.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, fields
from typing import Any

import numpy as np
import torch
from scipy import special
from torch import nn

from microcae.entropy.code_tables import (
    MAX_SYMBOLS,
    TAIL_MASS,
    TOTAL,
    VALUE_MAX,
    VALUE_MIN,
    EntropyTables,
    build_tables,
    quantise_pmf,
    validate,
)
from microcae.entropy.factorized import LIKELIHOOD_FLOOR, FactorizedPrior
from microcae.models.base import MicrocaeModel
from microcae.models.gdn import GDN, bound_ste
from microcae.util.errors import MicrocaeError

STRIDE = 64
"""Total stride of ``z``: images are padded to multiples of this."""
MAX_Z_POSITIONS = 1 << 14
"""Most ``h_z * w_z`` positions accepted by :meth:`HyperpriorCodec.decompress` (about 67 Mpixel);
bounds the memory any (possibly hostile) shape can make the decoder allocate."""
SENTINEL = (0xC0DE, 0x5EED)
"""Two 16-bit values coded after all symbols; a damaged or truncated stream decodes others."""
EXACT_LIMIT = 1 << 53
"""Integers of magnitude below this are exact in float64."""
FLOAT32_EXACT_LIMIT = 1 << 24
"""Integers of magnitude below this are exact in float32."""
RAW_SIZE = VALUE_MAX - VALUE_MIN + 1


@dataclass(frozen=True)
class HyperpriorConfig:
    """Architecture and integer-network settings of a :class:`HyperpriorCodec`.

    Attributes
    ----------
    N
        Channels of the hidden stages and of ``z``.
    M
        Channels of the latent ``y``.
    weight_frac_bits
        Integer weights ``W`` stand for ``W / 2**weight_frac_bits``.
    weight_max
        ``|W| <= weight_max`` (integers).
    bias_max
        ``|B| <= bias_max`` for the integer biases (in accumulator units; below 2**31, they are
        stored as int32).
    act_bits
        Hidden activations of the hyper-synthesis are integers in ``0 .. 2**act_bits - 1``
        (QReLU).
    act_frac_bits
        A hidden activation ``a`` stands for ``a / 2**act_frac_bits``.
    mean_frac_bits
        Means are integers in units of ``2**-mean_frac_bits``.
    index_gain_bits
        The scale head's real output ``v`` gives the index ``round(v * 2**index_gain_bits)``
        (so its float parameters move the index ``2**index_gain_bits`` times faster).
    z_max
        ``ẑ`` is rounded and clamped to ``-z_max .. z_max``.
    scale_min, scale_max, scale_levels
        The Gaussian scale table: ``scale_levels`` log-spaced values from ``scale_min`` to
        ``scale_max``.
    """

    N: int = 96
    M: int = 128
    weight_frac_bits: int = 8
    weight_max: int = 2047
    bias_max: int = 1 << 24
    act_bits: int = 8
    act_frac_bits: int = 4
    mean_frac_bits: int = 4
    index_gain_bits: int = 4
    z_max: int = 1023
    scale_min: float = 0.11
    scale_max: float = 256.0
    scale_levels: int = 64

    def __post_init__(self) -> None:
        for name in ("N", "M", "weight_frac_bits", "weight_max", "bias_max", "act_bits",
                     "act_frac_bits", "mean_frac_bits", "index_gain_bits", "z_max",
                     "scale_levels"):
            if not isinstance(getattr(self, name), int) or isinstance(getattr(self, name), bool):
                raise ValueError(f"{name} must be an int, got {getattr(self, name)!r}")
        if not (1 <= self.N <= 1024 and 2 <= self.M <= 1024):
            raise ValueError(f"N and M must lie in 1..1024 and 2..1024, got {self.N}, {self.M}")
        if not (1 <= self.weight_frac_bits <= 16 and 1 <= self.act_bits <= 16
                and 0 <= self.act_frac_bits <= 8 and 0 <= self.mean_frac_bits <= 8
                and 0 <= self.index_gain_bits <= 8):
            raise ValueError("integer-network bit widths out of range")
        if not (self.act_frac_bits < self.weight_frac_bits
                and max(self.mean_frac_bits, self.index_gain_bits)
                < self.weight_frac_bits + self.act_frac_bits):
            raise ValueError("every layer must shift right: need act_frac_bits < "
                             "weight_frac_bits and mean_frac_bits, index_gain_bits < "
                             "weight_frac_bits + act_frac_bits")
        if not (1 <= self.weight_max < 1 << 24 and 0 <= self.bias_max < 1 << 31
                and 1 <= self.z_max <= VALUE_MAX):
            raise ValueError("weight_max, bias_max or z_max out of range")
        if not (0 < self.scale_min < self.scale_max <= 4096 and 2 <= self.scale_levels <= 1024):
            raise ValueError("scale table out of range")
        if self.worst_case_accumulator() >= EXACT_LIMIT:
            raise ValueError("integer hyper-synthesis could leave the exact float64 range "
                             f"({self.worst_case_accumulator()} >= 2**53)")

    @property
    def hyper_widths(self) -> tuple[int, int]:
        """Hidden widths of the hyper-synthesis (Minnen et al.: M and 3M/2)."""
        return self.M, 3 * self.M // 2

    def worst_case_accumulator(self) -> int:
        """Bound on every partial sum of the integer hyper-synthesis (see IntegerHyperSynthesis).

        Returns
        -------
        int
            ``max_l (9 C_l weight_max U_l) + bias_max + 2**(shift_max - 1)`` with ``C_l`` the input
            channels and ``U_l`` the largest input magnitude of layer ``l`` (``z_max``, then
            ``2**act_bits - 1``).
        """
        amax = (1 << self.act_bits) - 1
        h1, h2 = self.hyper_widths
        products = max(9 * self.N * self.weight_max * self.z_max,
                       9 * h1 * self.weight_max * amax, 9 * h2 * self.weight_max * amax)
        return products + self.bias_max + (1 << (self.weight_frac_bits + self.act_frac_bits - 1))

    def scales(self) -> np.ndarray:
        """(scale_levels,) float64: the scale table (log-spaced)."""
        return np.exp(np.linspace(math.log(self.scale_min), math.log(self.scale_max),
                                  self.scale_levels))

    def to_json(self) -> str:
        """Serialise to a JSON object string (sorted keys)."""
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> HyperpriorConfig:
        """Parse :meth:`to_json` output; raises ``ValueError`` on unknown or missing fields."""
        data = json.loads(text)
        names = {f.name for f in fields(cls)}
        if not isinstance(data, dict) or set(data) != names:
            raise ValueError("unexpected hyperprior configuration fields")
        for name in ("scale_min", "scale_max"):
            data[name] = float(data[name])
        return cls(**data)


def pad_to_multiple(x: torch.Tensor, multiple: int = STRIDE) -> torch.Tensor:
    """Pad (N, C, H, W) at the bottom and right, replicating the edge, to multiples of ``multiple``.

    Returns
    -------
    torch.Tensor
        (N, C, ceil(H/multiple)*multiple, ceil(W/multiple)*multiple); ``x`` itself if no padding
        is needed.
    """
    h, w = x.shape[-2:]
    ph, pw = -h % multiple, -w % multiple
    if ph == 0 and pw == 0:
        return x
    return nn.functional.pad(x, (0, pw, 0, ph), mode="replicate")


def crop(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Top-left (H, W) = ``size`` window of (N, C, H', W'), H' >= H, W' >= W."""
    return x[..., : size[0], : size[1]]


def round_ste(x: torch.Tensor) -> torch.Tensor:
    """``floor(x + 1/2)`` (ties upward, like the integer path) with an identity gradient."""
    return x + (torch.floor(x + 0.5) - x).detach()


def _subpixel(cin: int, cout: int) -> nn.Sequential:
    """Conv 3×3 (cin → 4·cout) + PixelShuffle(2), initialised ICNR-style (no checkerboard)."""
    conv = nn.Conv2d(cin, 4 * cout, 3, padding=1)
    with torch.no_grad():
        conv.weight.copy_(conv.weight[::4].repeat_interleave(4, dim=0))
        conv.bias.copy_(conv.bias[::4].repeat_interleave(4, dim=0))
    return nn.Sequential(conv, nn.PixelShuffle(2))


def build_encoder(config: HyperpriorConfig) -> nn.Sequential:
    """Analysis transform: (B, 1, H, W) → (B, M, H/16, W/16)."""
    n, m = config.N, config.M
    return nn.Sequential(
        nn.Conv2d(1, n, 5, stride=2, padding=2), GDN(n),
        nn.Conv2d(n, n, 5, stride=2, padding=2), GDN(n),
        nn.Conv2d(n, n, 5, stride=2, padding=2), GDN(n),
        nn.Conv2d(n, m, 5, stride=2, padding=2),
    )


def build_decoder(config: HyperpriorConfig) -> nn.Sequential:
    """Synthesis transform: (B, M, h, w) → (B, 1, 16h, 16w), sub-pixel convolutions, IGDN."""
    n, m = config.N, config.M
    return nn.Sequential(
        _subpixel(m, n), GDN(n, inverse=True),
        _subpixel(n, n), GDN(n, inverse=True),
        _subpixel(n, n), GDN(n, inverse=True),
        _subpixel(n, 1),
    )


def build_hyper_encoder(config: HyperpriorConfig) -> nn.Sequential:
    """Hyper-analysis: (B, M, h, w) → (B, N, h/4, w/4)."""
    n, m = config.N, config.M
    return nn.Sequential(
        nn.Conv2d(m, n, 3, padding=1), nn.ReLU(inplace=False),
        nn.Conv2d(n, n, 5, stride=2, padding=2), nn.ReLU(inplace=False),
        nn.Conv2d(n, n, 5, stride=2, padding=2),
    )


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

    def load_integer_parameters(self, weight: torch.Tensor, bias: torch.Tensor,
                                label: str) -> None:
        """Set the frozen integers from stored int32 tensors, checking shapes and bounds."""
        if (weight.dtype != torch.int32 or bias.dtype != torch.int32
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
        return torch.tensor([2.0**-s for s in self.shift], dtype=like.dtype)[None, :, None, None]

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
        shift = torch.tensor(self.shift, dtype=torch.int64)[None, :, None, None]
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


def gaussian_likelihood(residual: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """Mass of N(0, scale²) on ``[residual - 1/2, residual + 1/2]``, floored at 1e-9.

    Computed as ``Phi((1/2 - |r|)/s) - Phi((-1/2 - |r|)/s)`` (both arguments on the accurate
    side of the normal CDF). Shapes broadcast; returns the broadcast shape.
    """
    r = residual.abs()
    upper = torch.special.ndtr((0.5 - r) / scale)
    lower = torch.special.ndtr((-0.5 - r) / scale)
    return (upper - lower).clamp_min(LIKELIHOOD_FLOOR)


def gaussian_tables(scales: np.ndarray) -> EntropyTables:
    """Integer code tables of zero-mean quantised Gaussians, one row per scale.

    Row ``i`` codes symbols ``-T_i .. T_i`` (``T_i`` the smallest integer whose two tails beyond
    ``± (T_i + 1/2)`` carry at most :data:`~microcae.entropy.code_tables.TAIL_MASS`) as in
    :mod:`microcae.entropy.code_tables`, plus the escape symbol with the remaining mass;
    frequencies by :func:`~microcae.entropy.code_tables.quantise_pmf` (each >= 1, rows summing
    to ``2**16``).

    Parameters
    ----------
    scales
        (L,) float64 standard deviations.

    Returns
    -------
    EntropyTables
        With ``channels == L``, ``offsets[i] == -T_i``, ``lengths[i] == 2 T_i + 2``.
    """
    z_tail = -float(special.ndtri(TAIL_MASS / 2))
    rows, offsets = [], []
    for s in np.asarray(scales, dtype=np.float64):
        t = int(min(max(math.ceil(z_tail * s - 0.5), 1), (MAX_SYMBOLS - 1) // 2))
        k = np.abs(np.arange(-t, t + 1, dtype=np.float64))
        pmf = special.ndtr((0.5 - k) / s) - special.ndtr((-0.5 - k) / s)
        rows.append(quantise_pmf(np.append(pmf, max(1.0 - float(pmf.sum()), 0.0))))
        offsets.append(-t)
    return _stack_tables(offsets, rows)


def _stack_tables(offsets: list[int], rows: list[np.ndarray]) -> EntropyTables:
    width = max(len(r) for r in rows)
    freqs = np.zeros((len(rows), width), dtype=np.int32)
    for i, row in enumerate(rows):
        freqs[i, : len(row)] = row
    tables = EntropyTables(np.asarray(offsets, dtype=np.int32),
                           np.asarray([len(r) for r in rows], dtype=np.int32), freqs)
    validate(tables, "hyperprior")
    return tables


def factorized_tables(prior: FactorizedPrior, chunk: int = 16) -> EntropyTables:
    """Return :func:`~microcae.entropy.code_tables.build_tables` of ``prior``, ``chunk`` at a time.

    Same tables as one call on the whole prior, with memory bounded by ``chunk`` channels.
    """
    offsets: list[int] = []
    rows: list[np.ndarray] = []
    for start in range(0, prior.channels, chunk):
        stop = min(start + chunk, prior.channels)
        part = FactorizedPrior(stop - start, prior.filters)
        part.load_state_dict({k: v[start:stop] for k, v in prior.state_dict().items()})
        tables = build_tables(part)
        offsets.extend(int(o) for o in tables.offsets)
        rows.extend(tables.freqs[c, : tables.lengths[c]] for c in range(tables.channels))
    return _stack_tables(offsets, rows)


def _categoricals(tables: EntropyTables) -> list[Any]:
    """One constriction model per table row from the integer frequencies.

    ``freqs / 2**16`` are exact binary fractions summing to exactly 1, so constriction's
    fixed-point model (24-bit) is the same on every machine.
    """
    import constriction

    categorical = constriction.stream.model.Categorical
    return [categorical(tables.freqs[c, : tables.lengths[c]].astype(np.float64) / TOTAL,
                        perfect=False) for c in range(tables.channels)]


@dataclass
class Coders:
    """constriction models for every row of the z and y tables (built once per table set)."""

    z: list[Any]
    y: list[Any]

    @classmethod
    def build(cls, z_tables: EntropyTables, y_tables: EntropyTables) -> Coders:
        """Models of both table sets."""
        return cls(_categoricals(z_tables), _categoricals(y_tables))


def _split(values: np.ndarray, offsets: np.ndarray,
           lengths: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Table symbols (escape where out of range) and the escaped values, elementwise."""
    index = values - offsets
    outside = (index < 0) | (index >= lengths - 1)
    return np.where(outside, lengths - 1, index).astype(np.int32), values[outside]


def _grouping(index: np.ndarray, levels: int) -> tuple[np.ndarray, list[int]]:
    """Stable order grouping flat positions by scale index, and the size of each group."""
    order = np.argsort(index, kind="stable")
    return order, np.bincount(index, minlength=levels).tolist()


def encode_stream(z_symbols: np.ndarray, y_symbols: np.ndarray, index: np.ndarray,
                  z_tables: EntropyTables, y_tables: EntropyTables,
                  coders: Coders | None = None) -> bytes:
    """Range-code ``ẑ`` and the symbols of ``y`` in one stream.

    Parameters
    ----------
    z_symbols
        (N, h, w) integers within the int16 range; channel ``c`` under z table row ``c``.
    y_symbols
        (M, 4h, 4w) integers within the int16 range.
    index
        (M, 4h, 4w) integer scale indices: the y table row of each symbol.
    z_tables, y_tables
        The stored integer tables.
    coders
        Prebuilt constriction models of these tables (optional cache).

    Returns
    -------
    bytes
        32-bit little-endian words. Order: z channel by channel (C order), the escaped z values,
        the y symbols grouped by scale index (ascending; C order within a group), the escaped y
        values (same order), :data:`SENTINEL`. An escaped value ``v`` is ``v + 2**15`` under a
        uniform model on ``0 .. 2**16 - 1``.
    """
    import constriction

    coders = coders or Coders.build(z_tables, y_tables)
    uniform = constriction.stream.model.Uniform(RAW_SIZE)
    encoder = constriction.stream.queue.RangeEncoder()
    n = z_symbols.shape[0]
    z_flat = z_symbols.reshape(n, -1).astype(np.int64)
    escaped = []
    for c in range(n):
        symbols, out = _split(z_flat[c], int(z_tables.offsets[c]), int(z_tables.lengths[c]))
        encoder.encode(symbols, coders.z[c])
        escaped.append(out)
    raw = np.concatenate(escaped)
    if raw.size:
        encoder.encode((raw - VALUE_MIN).astype(np.int32), uniform)
    flat_index = index.reshape(-1).astype(np.int64)
    order, counts = _grouping(flat_index, y_tables.channels)
    grouped = y_symbols.reshape(-1).astype(np.int64)[order]
    escaped, start = [], 0
    for i, count in enumerate(counts):
        if count:
            symbols, out = _split(grouped[start : start + count], int(y_tables.offsets[i]),
                                  int(y_tables.lengths[i]))
            encoder.encode(symbols, coders.y[i])
            escaped.append(out)
            start += count
    raw = np.concatenate(escaped) if escaped else np.zeros(0, dtype=np.int64)
    if raw.size:
        encoder.encode((raw - VALUE_MIN).astype(np.int32), uniform)
    encoder.encode(np.asarray(SENTINEL, dtype=np.int32), uniform)
    return encoder.get_compressed().astype("<u4").tobytes()


_DECODER_ERRORS = (ValueError, RuntimeError, AssertionError, OverflowError, TypeError)


def decode_stream(data: bytes, z_shape: tuple[int, int, int],
                  y_index: Callable[[np.ndarray], np.ndarray], z_tables: EntropyTables,
                  y_tables: EntropyTables,
                  coders: Coders | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Invert :func:`encode_stream`.

    Parameters
    ----------
    data
        The stream (a multiple of 4 bytes).
    z_shape
        (N, h, w).
    y_index
        Callable mapping the (N, h, w) int64 ``ẑ`` to the (M, 4h, 4w) int64 scale indices (the
        integer hyper-synthesis); called once, between decoding z and y.
    z_tables, y_tables
        The stored integer tables.
    coders
        Prebuilt constriction models of these tables (optional cache).

    Returns
    -------
    tuple
        ``ẑ`` (N, h, w) int64 and the y symbols (M, 4h, 4w) int64.

    Raises
    ------
    MicrocaeError
        If the stream is not whole words, runs out or does not end in :data:`SENTINEL`, or if
        it is not byte for byte the canonical stream of what it decodes to (re-encoded here,
        about a tenth of the decoding time): so no damage, padding or appended data is accepted.
    """
    import constriction

    coders = coders or Coders.build(z_tables, y_tables)
    n, h, w = z_shape
    if len(data) % 4 or not data:
        raise MicrocaeError("corrupt payload (coded stream is not a whole number of words)")
    uniform = constriction.stream.model.Uniform(RAW_SIZE)
    try:
        decoder = constriction.stream.queue.RangeDecoder(np.frombuffer(data, "<u4").copy())
        z = np.stack([np.asarray(decoder.decode(coders.z[c], h * w), dtype=np.int64)
                      for c in range(n)])
        lengths = z_tables.lengths.astype(np.int64)[:, None]
        escape = z == lengths - 1
        z += z_tables.offsets.astype(np.int64)[:, None]
        if escape.any():
            z[escape] = np.asarray(decoder.decode(uniform, int(escape.sum())),
                                   dtype=np.int64) + VALUE_MIN
    except _DECODER_ERRORS as exc:
        raise MicrocaeError(f"corrupt payload (range decoder: {exc})") from None
    z = z.reshape(n, h, w)
    index = np.asarray(y_index(z), dtype=np.int64)
    flat_index = index.reshape(-1)
    order, counts = _grouping(flat_index, y_tables.channels)
    rows = flat_index[order]
    try:
        grouped = np.empty(flat_index.size, dtype=np.int64)
        start = 0
        for i, count in enumerate(counts):
            if count:
                grouped[start : start + count] = decoder.decode(coders.y[i], count)
                start += count
        escape = grouped == y_tables.lengths.astype(np.int64)[rows] - 1
        grouped += y_tables.offsets.astype(np.int64)[rows]
        if escape.any():
            grouped[escape] = np.asarray(decoder.decode(uniform, int(escape.sum())),
                                         dtype=np.int64) + VALUE_MIN
        sentinel = tuple(int(v) for v in decoder.decode(uniform, len(SENTINEL)))
        complete = decoder.maybe_exhausted()
    except _DECODER_ERRORS as exc:
        raise MicrocaeError(f"corrupt payload (range decoder: {exc})") from None
    if sentinel != SENTINEL:
        raise MicrocaeError("corrupt payload (coded stream damaged or truncated)")
    if not complete:
        raise MicrocaeError("corrupt payload (coded data beyond the end of the stream)")
    y = np.empty_like(grouped)
    y[order] = grouped
    y = y.reshape(index.shape)
    if bytes(data) != encode_stream(z, y, index, z_tables, y_tables, coders):
        raise MicrocaeError("corrupt payload (not the canonical coded stream of its symbols)")
    return z, y


class HyperpriorCodec(MicrocaeModel):
    """Mean-scale hyperprior codec for (1, 1, H, W) greyscale images in [0, 1].

    microcae's own codec and the default of ``microcae encode``: whole images (no tiles), one
    range-coded stream per image, decoded from integers only.

    Parameters
    ----------
    config
        Architecture; ``HyperpriorConfig()`` if None.

    Attributes
    ----------
    encoder, decoder, hyper_encoder, hyper_decoder, z_prior
        See the module docstring.
    z_tables, y_tables
        Integer code tables (None until :meth:`update` or :meth:`load_tables`).
    """

    kind = "microcae.hyperprior"
    config_type = HyperpriorConfig
    latent_coding = "stream"

    def __init__(self, config: HyperpriorConfig | None = None) -> None:
        super().__init__()
        self.config = config or HyperpriorConfig()
        self.encoder = build_encoder(self.config)
        self.decoder = build_decoder(self.config)
        self.hyper_encoder = build_hyper_encoder(self.config)
        self.hyper_decoder = IntegerHyperSynthesis(self.config)
        self.z_prior = FactorizedPrior(self.config.N)
        self.z_tables: EntropyTables | None = None
        self.y_tables: EntropyTables | None = None
        self._coders: Coders | None = None
        scales = self.config.scales()
        self._log_scale_min = math.log(scales[0])
        self._log_scale_step = math.log(scales[-1] / scales[0]) / (len(scales) - 1)

    def __getstate__(self) -> dict[str, Any]:
        """State for copying: the cached range-coder models are rebuilt on demand, not copied."""
        state = super().__getstate__()
        return {**state, "_coders": None}

    @property
    def downsample(self) -> int:
        """Factor from image side to latent ``y`` side (16); whole images pad to 64."""
        return STRIDE // 4

    @property
    def latent_channels(self) -> int:
        """Channels M of the latent ``y``."""
        return self.config.M

    def stored_tensors(self) -> dict[str, torch.Tensor]:
        """Return the code tables and frozen integer hyper-synthesis (:meth:`tables_tensors`)."""
        return self.tables_tensors()

    def load_stored_tensors(self, tensors: dict[str, torch.Tensor], label: str) -> None:
        """Restore them from a model file's tensors (:meth:`load_tables`)."""
        self.load_tables(tensors, label)

    # ---------------------------------------------------------------- training
    def scale_of(self, index: torch.Tensor) -> torch.Tensor:
        """Scale-table value at (integer-valued, possibly straight-through) ``index``."""
        return torch.exp(self._log_scale_min + self._log_scale_step * index)

    def forward(self, x: torch.Tensor) -> dict[str, Any]:
        """Training pass on (B, 1, H, W) images in [0, 1] (any H, W: padded to multiples of 64).

        Quantisation: the decoder and the hyper-synthesis see the **rounded** values with
        straight-through gradients (``ŷ = round(y - mean) + mean``, ``ẑ = round(z)``), exactly what
        :meth:`compress` codes; the rates use **additive uniform noise** ``U(-1/2, 1/2)`` on ``y``
        and ``z`` in training mode (the usual differentiable rate proxy), the rounded values in
        eval mode (then ``bpp`` is the ideal code length of :meth:`compress`'s symbols under the
        continuous model).

        Returns
        -------
        dict
            ``x_hat`` (B, 1, H, W) float; ``likelihoods``: ``{"y": (B, M, H'/16, W'/16),
            "z": (B, N, H'/64, W'/64)}`` with H', W' the padded size; ``bpp``: scalar, summed
            ``-log2`` likelihoods per pixel of the unpadded images.
        """
        size = tuple(x.shape[-2:])
        y = self.encoder(pad_to_multiple(x))
        z = self.hyper_encoder(y)
        zmax = float(self.config.z_max)
        z_hat = bound_ste(round_ste(z), -zmax, zmax)
        mean_int, index = self.hyper_decoder(z_hat)
        mean = mean_int * 2.0**-self.config.mean_frac_bits
        scale = self.scale_of(index)
        residual = y - mean
        y_hat = round_ste(residual) + mean
        if self.training:
            y_rate = residual + torch.empty_like(residual).uniform_(-0.5, 0.5)
            z_rate = z + torch.empty_like(z).uniform_(-0.5, 0.5)
        else:
            y_rate, z_rate = torch.floor(residual + 0.5), z_hat
        y_likelihoods = gaussian_likelihood(y_rate, scale)
        z_likelihoods = self.z_prior.likelihood(z_rate)
        pixels = x.shape[0] * size[0] * size[1]
        bpp = (-torch.log2(y_likelihoods).sum() - torch.log2(z_likelihoods).sum()) / pixels
        return {"x_hat": crop(self.decoder(y_hat), size),
                "likelihoods": {"y": y_likelihoods, "z": z_likelihoods}, "bpp": bpp}

    # ---------------------------------------------------------------- tables
    def update(self, force: bool = True) -> bool:
        """Build the integer code tables and freeze the integer hyper-synthesis (CPU).

        The z tables come from ``z_prior`` (float64), the y tables from the scale table, and the
        hyper-synthesis' integer weights and biases are fixed from its float parameters; all
        are stored by :meth:`tables_tensors`, so decoding never recomputes them.

        Parameters
        ----------
        force
            Rebuild even if tables are present.

        Returns
        -------
        bool
            True if the tables were (re)built.
        """
        if self.z_tables is not None and not force:
            return False
        self.z_tables = factorized_tables(self.z_prior)
        self.y_tables = gaussian_tables(self.config.scales())
        for layer in self._int_layers():
            layer.freeze()
        self._coders = None
        return True

    def _int_layers(self) -> list[IntConv2d]:
        hyper = self.hyper_decoder
        return [hyper.conv1, hyper.conv2, hyper.conv3]

    def tables_tensors(self) -> dict[str, torch.Tensor]:
        """Return the code tables and frozen integer weights as int32 tensors ``tables.*``.

        Names: ``tables.z.{offsets,lengths,freqs}``, ``tables.y.{...}`` and
        ``tables.hyper.conv{1,2,3}.{weight,bias}`` (for safetensors, next to the state dict).
        """
        z_tables, y_tables = self._tables()
        out = {}
        for prefix, tables in (("tables.z.", z_tables), ("tables.y.", y_tables)):
            out.update({prefix + k.removeprefix("tables."): v
                        for k, v in tables.to_tensors().items()})
        for k, layer in enumerate(self._int_layers(), start=1):
            weight, bias = layer.integer_parameters()
            out[f"tables.hyper.conv{k}.weight"] = weight.to(torch.int32).contiguous()
            out[f"tables.hyper.conv{k}.bias"] = bias.to(torch.int32).contiguous()
        return out

    def load_tables(self, tensors: dict[str, torch.Tensor], label: str = "model") -> None:
        """Set the code tables from :meth:`tables_tensors` output (validated, never recomputed).

        Raises
        ------
        MicrocaeError
            If tables are missing, not int32, not normalised or of the wrong size.
        """
        loaded = []
        for prefix, rows in (("tables.z.", self.config.N), ("tables.y.", self.config.scale_levels)):
            picked = {"tables." + k.removeprefix(prefix): v for k, v in tensors.items()
                      if k.startswith(prefix)}
            tables = EntropyTables.from_tensors(picked, label)
            if tables.channels != rows:
                raise MicrocaeError(f"{label}: {prefix}* tables have {tables.channels} rows, "
                                    f"expected {rows}")
            loaded.append(tables)
        for k, layer in enumerate(self._int_layers(), start=1):
            try:
                weight = tensors[f"tables.hyper.conv{k}.weight"]
                bias = tensors[f"tables.hyper.conv{k}.bias"]
            except KeyError as exc:
                raise MicrocaeError(f"{label}: integer hyper-synthesis missing ({exc.args[0]})"
                                    ) from None
            layer.load_integer_parameters(weight, bias, label)
        self.z_tables, self.y_tables = loaded
        self._coders = None

    def _tables(self) -> tuple[EntropyTables, EntropyTables]:
        if self.z_tables is None or self.y_tables is None:
            raise MicrocaeError("the hyperprior codec has no code tables (call update first)")
        return self.z_tables, self.y_tables

    def _coder_models(self) -> Coders:
        if self._coders is None:
            self._coders = Coders.build(*self._tables())
        return self._coders

    # ---------------------------------------------------------------- coding
    def entropy_parameters(self, z_hat: torch.Tensor, peak: bool = False) -> dict[str, Any]:
        """Exact integer means and scale indices from integer ``ẑ`` (both coder sides call this).

        Parameters
        ----------
        z_hat
            (B, N, h, w) integer tensor (any integer or integer-valued dtype).
        peak
            Also compute ``peak`` (costs as much again).

        Returns
        -------
        dict
            ``mean`` (B, M, 4h, 4w) int64 in units of ``2**-mean_frac_bits``; ``index``
            (B, M, 4h, 4w) int64 in ``0 .. scale_levels - 1``; ``peak`` int, the largest
            accumulator bound if asked for, else 0 (the float32 training path is exact when
            ``peak + 2**(shift-1) < 2**24``, see :class:`IntegerHyperSynthesis`).
        """
        mean, index, bound = self.hyper_decoder.exact(z_hat.to(torch.int64).cpu(), peak)
        return {"mean": mean, "index": index, "peak": bound}

    @torch.no_grad()
    def quantise(self, x: torch.Tensor, peak: bool = False) -> dict[str, Any]:
        """Integer symbols of one image, as :meth:`compress` codes them.

        Parameters
        ----------
        x
            (1, 1, H, W) image in [0, 1].
        peak
            Also compute the hyper-synthesis' peak accumulator bound.

        Returns
        -------
        dict
            ``z`` (1, N, h, w) int64 ``ẑ = clamp(floor(z + 1/2), ±z_max)``; ``y`` (1, M, 4h, 4w)
            int64 symbols ``clamp(floor(y - mean + 1/2), int16)``; ``mean``, ``index``,
            ``peak`` as :meth:`entropy_parameters`; ``shape`` (h, w); ``image_shape`` (H, W).
        """
        if x.dim() != 4 or x.shape[:2] != (1, 1):
            raise ValueError(f"expected one (1, 1, H, W) image, got shape {tuple(x.shape)}")
        size = tuple(x.shape[-2:])
        x = pad_to_multiple(x.to(next(self.parameters()).dtype))
        y = self.encoder(x.contiguous(memory_format=torch.channels_last))
        z = self.hyper_encoder(y)
        z_max = self.config.z_max
        z_hat = torch.floor(z.double() + 0.5).clamp(-z_max, z_max).to(torch.int64).cpu()
        params = self.entropy_parameters(z_hat, peak)
        mean = params["mean"].double() * 2.0**-self.config.mean_frac_bits
        symbols = torch.floor(y.double().cpu() - mean + 0.5).clamp(VALUE_MIN, VALUE_MAX)
        return {"z": z_hat, "y": symbols.to(torch.int64), **params,
                "shape": tuple(z_hat.shape[-2:]), "image_shape": size}

    @torch.no_grad()
    def compress(self, x: torch.Tensor) -> dict[str, Any]:
        """Code one (1, 1, H, W) image in [0, 1] (any H, W >= 1).

        Returns
        -------
        dict
            ``strings``: one bytes object (z and y in one range-coder stream, see
            :func:`encode_stream`); ``shape``: (h_z, w_z) = (ceil(H/64), ceil(W/64));
            ``image_shape``: (H, W), which :meth:`decompress` needs to crop the padding.
        """
        z_tables, y_tables = self._tables()
        q = self.quantise(x)
        data = encode_stream(q["z"][0].numpy(), q["y"][0].numpy(), q["index"][0].numpy(),
                             z_tables, y_tables, self._coder_models())
        return {"strings": data, "shape": q["shape"], "image_shape": q["image_shape"]}

    def decode_symbols(self, strings: bytes, shape: tuple[int, int]) -> dict[str, torch.Tensor]:
        """Entropy-decode a stream: integers only (no floating point of this machine involved).

        Parameters
        ----------
        strings
            :meth:`compress`'s ``strings``.
        shape
            (h_z, w_z).

        Returns
        -------
        dict
            ``z`` (1, N, h, w), ``y`` symbols, ``mean``, ``index`` (1, M, 4h, 4w), all int64.

        Raises
        ------
        MicrocaeError
            On a shape out of range or a damaged, truncated or padded stream.
        """
        z_tables, y_tables = self._tables()
        if not isinstance(strings, bytes | bytearray | memoryview):
            raise MicrocaeError("corrupt payload (the coded stream is not bytes)")
        try:
            h, w = (int(s) for s in shape)
        except (TypeError, ValueError):
            raise MicrocaeError(f"corrupt header (latent shape {shape!r})") from None
        if not (h >= 1 and w >= 1 and h * w <= MAX_Z_POSITIONS):
            raise MicrocaeError(f"corrupt header (latent shape {h}x{w} out of range)")
        symbols = (self.config.N + 16 * self.config.M) * h * w
        if len(strings) > 4 * symbols + 64:  # at most 32 bits per symbol
            raise MicrocaeError("corrupt payload (coded stream longer than any valid one)")
        params: dict[str, Any] = {}

        def y_index(z: np.ndarray) -> np.ndarray:
            params.update(self.entropy_parameters(torch.from_numpy(z)[None]))
            return params["index"][0].numpy()

        z, y = decode_stream(bytes(strings), (self.config.N, h, w), y_index, z_tables, y_tables,
                             self._coder_models())
        return {"z": torch.from_numpy(z)[None], "y": torch.from_numpy(y)[None],
                "mean": params["mean"], "index": params["index"]}

    @torch.no_grad()
    def decompress(self, strings: bytes, shape: tuple[int, int],
                   image_shape: tuple[int, int] | None = None) -> dict[str, torch.Tensor]:
        """Decode :meth:`compress` output.

        Parameters
        ----------
        strings, shape
            As returned by :meth:`compress`.
        image_shape
            (H, W) to crop to; None keeps the padded (64 h_z, 64 w_z).

        Returns
        -------
        dict
            ``x_hat`` (1, 1, H, W) float (the model's dtype), clamped to [0, 1].

        Raises
        ------
        MicrocaeError
            On a damaged stream or an ``image_shape`` that does not fit ``shape``.
        """
        decoded = self.decode_symbols(strings, shape)
        h, w = decoded["z"].shape[-2:]
        size = (STRIDE * h, STRIDE * w) if image_shape is None else tuple(image_shape)
        if not (len(size) == 2 and -(-size[0] // STRIDE) == h and -(-size[1] // STRIDE) == w
                and min(size) >= 1):
            raise MicrocaeError(f"corrupt header (image size {size} does not fit {h}x{w})")
        weight = next(self.decoder.parameters())
        y_hat = decoded["y"].double() + decoded["mean"].double() * 2.0**-self.config.mean_frac_bits
        layout = torch.channels_last if weight.dtype == torch.float32 else torch.contiguous_format
        y_hat = y_hat.to(weight.device, weight.dtype).contiguous(memory_format=layout)
        x_hat = self.decoder(y_hat)
        return {"x_hat": crop(x_hat, size).clamp(0.0, 1.0)}

    # ---------------------------------------------------------------- cost
    def macs_per_pixel(self) -> dict[str, float]:
        """Forward multiply-accumulates per image pixel, counted from the layer shapes.

        A convolution costs ``C_in / groups * k_h * k_w`` MACs per output value; GDN/IGDN
        ``C`` per output value (its 1×1 convolution over the squares); element-wise operations
        (activations, the square roots, rounding) are not counted.

        Returns
        -------
        dict
            ``encoder``, ``decoder``, ``hyper_encoder``, ``hyper_decoder`` and ``total``.
        """
        n, m = self.config.N, self.config.M
        side = 128
        inputs = {"encoder": (1, side, side), "decoder": (m, side // 16, side // 16),
                  "hyper_encoder": (m, side // 16, side // 16),
                  "hyper_decoder": (n, side // 64, side // 64)}
        out: dict[str, float] = {}
        for name, shape in inputs.items():
            part = getattr(self, name)
            with _counting_macs(part) as counter, torch.no_grad():
                dtype = next(part.parameters()).dtype
                part(torch.zeros((1, *shape), dtype=dtype))
            out[name] = counter[0] / side**2
        out["total"] = sum(out.values())
        return out


@contextmanager
def _counting_macs(module: nn.Module) -> Iterator[list[int]]:
    """Count MACs of the convolutions and GDNs inside ``module`` while the context is open."""
    counter = [0]

    def hook(layer: nn.Module, _inputs: Any, output: Any) -> None:
        out = output[0] if isinstance(output, tuple) else output
        per_value = layer.weight[0].numel() if not isinstance(layer, GDN) else layer.channels
        counter[0] += out.numel() // out.shape[0] * per_value

    handles = [layer.register_forward_hook(hook) for layer in module.modules()
               if isinstance(layer, nn.Conv2d | GDN | IntConv2d)]
    try:
        yield counter
    finally:
        for handle in handles:
            handle.remove()
