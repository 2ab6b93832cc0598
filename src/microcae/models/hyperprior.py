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
  compression with latent-variable models", ICLR 2019), see
  :class:`~microcae.models.integer_network.IntegerHyperSynthesis`. From
  the integer ``ẑ`` it computes, exactly and identically on every machine, an integer mean of
  each latent ``y`` in units of ``2**-mean_frac_bits`` and an integer index into a fixed table of
  Gaussian scales.

Coding (one range-coder stream, :func:`microcae.entropy.gaussian.encode_stream`): the symbols
of ``ẑ`` under the
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
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, fields
from typing import Any

import numpy as np
import torch
from torch import nn

from microcae.entropy.code_tables import (
    VALUE_MAX,
    VALUE_MIN,
    EntropyTables,
)
from microcae.entropy.factorized import FactorizedPrior
from microcae.entropy.gaussian import (
    Coders,
    decode_stream,
    encode_stream,
    factorized_tables,
    gaussian_likelihood,
    gaussian_tables,
)
from microcae.models.base import MicrocaeModel
from microcae.models.gdn import GDN, bound_ste
from microcae.models.integer_network import (
    EXACT_LIMIT,
    IntConv2d,
    IntegerHyperSynthesis,
    round_ste,
)
from microcae.models.refinement import Refinement, refine_latents
from microcae.models.strips import CHUNK_BYTES, plan, run_in_strips
from microcae.util.errors import MicrocaeError

STRIDE = 64
"""Total stride of ``z``: images are padded to multiples of this."""
MAX_Z_POSITIONS = 1 << 14
"""Most ``h_z * w_z`` positions accepted by :meth:`HyperpriorCodec.decompress` (about 67 Mpixel);
bounds the memory any (possibly hostile) shape can make the decoder allocate."""


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
    derived_prefix = "hyper_decoder."

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
        """Restore them from a model file's tensors (:meth:`load_tables`).

        A packed file leaves out the hyper-synthesis' float parameters (:attr:`derived_prefix`);
        they are then derived from its stored integers.
        """
        self.load_tables(tensors, label)
        for k, layer in enumerate(self._int_layers(), start=1):
            if f"{self.derived_prefix}conv{k}.weight" not in tensors:
                layer.derive_float_parameters()

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
    def entropy_parameters(self, z_hat: torch.Tensor, peak: bool = False,
                           strip_rows: int | None = None) -> dict[str, Any]:
        """Exact integer means and scale indices from integer ``ẑ`` (both coder sides call this).

        Parameters
        ----------
        z_hat
            (B, N, h, w) integer tensor (any integer or integer-valued dtype).
        peak
            Also compute ``peak`` (costs as much again).
        strip_rows
            Compute bands of ``strip_rows / 64`` rows of ``ẑ`` (at least one) at a time, each
            from its exact halo (2 rows of ``ẑ`` either side, planned from the layers by
            :func:`~microcae.models.strips.plan`); integer arithmetic, so the same integers as
            one pass. None: one pass.

        Returns
        -------
        dict
            ``mean`` (B, M, 4h, 4w) int64 in units of ``2**-mean_frac_bits``; ``index``
            (B, M, 4h, 4w) int64 in ``0 .. scale_levels - 1``; ``peak`` int, the largest
            accumulator bound if asked for, else 0 (the float32 training path is exact when
            ``peak + 2**(shift-1) < 2**24``, see :class:`IntegerHyperSynthesis`).
        """
        z = z_hat.to(torch.int64).cpu()
        height = z.shape[2]
        band = height if strip_rows is None else max(self._strip_rows(strip_rows) // STRIDE, 1)
        if band >= height:
            mean, index, bound = self.hyper_decoder.exact(z, peak)
            return {"mean": mean, "index": index, "peak": bound}
        hyper = self.hyper_decoder
        layers = [hyper.conv1, hyper.shuffle1, hyper.conv2, hyper.shuffle2, hyper.conv3]
        means, indices, bound = [], [], 0
        for start in range(0, height, band):
            rows = (4 * start, 4 * min(start + band, height))
            first, stop = plan(layers, rows, height)[0]
            mean, index, part_bound = hyper.exact(z[:, :, first:stop], peak)
            keep = slice(rows[0] - 4 * first, rows[1] - 4 * first)
            means.append(mean[:, :, keep])
            indices.append(index[:, :, keep])
            bound = max(bound, part_bound)
        return {"mean": torch.cat(means, 2), "index": torch.cat(indices, 2), "peak": bound}

    def _strip_rows(self, strip_rows: int | None) -> int | None:
        """Check ``strip_rows`` (None, or a positive multiple of the latent stride 16)."""
        if strip_rows is not None and (isinstance(strip_rows, bool) or not isinstance(
                strip_rows, int) or strip_rows < 1 or strip_rows % self.downsample):
            raise ValueError(f"strip_rows must be a positive multiple of {self.downsample}, "
                             f"got {strip_rows!r}")
        return strip_rows

    def analysis(self, x: torch.Tensor, strip_rows: int | None = None) -> torch.Tensor:
        """Run the analysis transform ``encoder(x)``, optionally in strips (the same result).

        Each convolution runs with the GDN after it in row chunks
        (:data:`~microcae.models.strips.CHUNK_BYTES`), which halves the peak memory of a pass.

        Parameters
        ----------
        x
            (1, 1, H, W) image, H and W multiples of 16.
        strip_rows
            Image rows per strip (a multiple of 16; each strip reads its exact halo, 30 rows
            above and 15 below, see :mod:`microcae.models.strips`); None: one pass.

        Returns
        -------
        torch.Tensor
            (1, M, H/16, W/16) ``y``, bitwise that of one pass.
        """
        rows = self._strip_rows(strip_rows)
        return run_in_strips(self.encoder, x, None if rows is None else rows // self.downsample,
                             chunk_bytes=CHUNK_BYTES)

    def synthesis(self, y_hat: torch.Tensor, rows: int | None = None,
                  strip_rows: int | None = None) -> torch.Tensor:
        """Run the synthesis transform ``decoder(ŷ)``, rows ``0:rows``, optionally in strips.

        Each convolution runs with the layers after it in cache-sized row chunks
        (:data:`~microcae.models.strips.CHUNK_BYTES`): for float64 NCHW input 2–4 times faster
        than whole layers and the same (bitwise on AVX2 CPUs; to ≈1e-16 on AVX-512 ones, see
        :mod:`microcae.models.strips`).

        Parameters
        ----------
        y_hat
            (1, M, h, w) dequantised latents.
        rows
            Image rows to make (from the top; at most 16 h); None: all.
        strip_rows
            Image rows per strip (a multiple of 16; halo 2 latent rows each side); None: one
            strip.

        Returns
        -------
        torch.Tensor
            (1, 1, rows, 16 w), unclipped.
        """
        return run_in_strips(self.decoder, y_hat, self._strip_rows(strip_rows), rows,
                             CHUNK_BYTES)

    @torch.no_grad()
    def quantise(self, x: torch.Tensor, peak: bool = False, strip_rows: int | None = None,
                 refine: Refinement | None = None) -> dict[str, Any]:
        """Integer symbols of one image, as :meth:`compress` codes them.

        Parameters
        ----------
        x
            (1, 1, H, W) image in [0, 1].
        peak
            Also compute the hyper-synthesis' peak accumulator bound.
        strip_rows
            Run the analysis in strips of this many image rows (:meth:`analysis`; same
            symbols); None: one pass. The hyper-analysis always runs on the whole ``y``
            (1/256 of the pixels).
        refine
            Optimise the latents for this image first
            (:func:`~microcae.models.refinement.refine_latents`; needs :attr:`lmbda`); None:
            the analysis transform's latents.

        Returns
        -------
        dict
            As :meth:`symbols_of`, plus ``image_shape`` (H, W).
        """
        if x.dim() != 4 or x.shape[:2] != (1, 1):
            raise ValueError(f"expected one (1, 1, H, W) image, got shape {tuple(x.shape)}")
        size = tuple(x.shape[-2:])
        x = x.to(next(self.parameters()).dtype)
        y = self.analysis(pad_to_multiple(x).contiguous(memory_format=torch.channels_last),
                          strip_rows)
        z = self.hyper_encoder(y)
        if refine is not None:
            y, z = refine_latents(self, x, y, z, refine)
        return {**self.symbols_of(y, z, peak, strip_rows), "image_shape": size}

    @torch.no_grad()
    def symbols_of(self, y: torch.Tensor, z: torch.Tensor, peak: bool = False,
                   strip_rows: int | None = None) -> dict[str, Any]:
        """Quantise latents ``y`` (1, M, 4h, 4w) and ``z`` (1, N, h, w) into coded integers.

        Returns
        -------
        dict
            ``z`` (1, N, h, w) int64 ``ẑ = clamp(floor(z + 1/2), ±z_max)``; ``y`` (1, M, 4h, 4w)
            int64 symbols ``clamp(floor(y - mean + 1/2), int16)``; ``mean``, ``index``,
            ``peak`` as :meth:`entropy_parameters` (``strip_rows`` passed on); ``shape``
            (h, w).
        """
        z_max = self.config.z_max
        z_hat = torch.floor(z.double() + 0.5).clamp(-z_max, z_max).to(torch.int64).cpu()
        params = self.entropy_parameters(z_hat, peak, strip_rows)
        mean = params["mean"].double() * 2.0**-self.config.mean_frac_bits
        symbols = torch.floor(y.double().cpu() - mean + 0.5).clamp(VALUE_MIN, VALUE_MAX)
        return {"z": z_hat, "y": symbols.to(torch.int64), **params,
                "shape": tuple(z_hat.shape[-2:])}

    @torch.no_grad()
    def compress(self, x: torch.Tensor, strip_rows: int | None = None,
                 refine: Refinement | None = None) -> dict[str, Any]:
        """Code one (1, 1, H, W) image in [0, 1] (any H, W >= 1).

        ``strip_rows``: run the analysis in strips of this many image rows (a multiple of 16;
        the same stream, bounded memory); None: one pass. ``refine``: optimise the latents
        for this image first (:meth:`quantise`; the same decoder, a smaller cost).

        Returns
        -------
        dict
            ``strings``: one bytes object (z and y in one range-coder stream, see
            :func:`encode_stream`); ``shape``: (h_z, w_z) = (ceil(H/64), ceil(W/64));
            ``image_shape``: (H, W), which :meth:`decompress` needs to crop the padding.
        """
        z_tables, y_tables = self._tables()
        q = self.quantise(x, strip_rows=strip_rows, refine=refine)
        data = encode_stream(q["z"][0].numpy(), q["y"][0].numpy(), q["index"][0].numpy(),
                             z_tables, y_tables, self._coder_models())
        return {"strings": data, "shape": q["shape"], "image_shape": q["image_shape"]}

    def decode_symbols(self, strings: bytes, shape: tuple[int, int],
                       strip_rows: int | None = None) -> dict[str, torch.Tensor]:
        """Entropy-decode a stream: integers only (no floating point of this machine involved).

        Parameters
        ----------
        strings
            :meth:`compress`'s ``strings``.
        shape
            (h_z, w_z).
        strip_rows
            Run the integer hyper-synthesis in bands (:meth:`entropy_parameters`; the same
            integers); None: one pass.

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
            params.update(self.entropy_parameters(torch.from_numpy(z)[None],
                                                  strip_rows=strip_rows))
            return params["index"][0].numpy()

        z, y = decode_stream(bytes(strings), (self.config.N, h, w), y_index, z_tables, y_tables,
                             self._coder_models())
        return {"z": torch.from_numpy(z)[None], "y": torch.from_numpy(y)[None],
                "mean": params["mean"], "index": params["index"]}

    @torch.no_grad()
    def decompress(self, strings: bytes, shape: tuple[int, int],
                   image_shape: tuple[int, int] | None = None,
                   strip_rows: int | None = None) -> dict[str, torch.Tensor]:
        """Decode :meth:`compress` output.

        Parameters
        ----------
        strings, shape
            As returned by :meth:`compress`.
        image_shape
            (H, W) to crop to; None keeps the padded (64 h_z, 64 w_z).
        strip_rows
            Run the synthesis in strips of this many image rows (:meth:`synthesis`; a multiple
            of 16, bounded memory); None: one strip.

        Returns
        -------
        dict
            ``x_hat`` (1, 1, H, W) float (the model's dtype), clamped to [0, 1].

        Raises
        ------
        MicrocaeError
            On a damaged stream or an ``image_shape`` that does not fit ``shape``.
        """
        decoded = self.decode_symbols(strings, shape, strip_rows)
        h, w = decoded["z"].shape[-2:]
        size = (STRIDE * h, STRIDE * w) if image_shape is None else tuple(image_shape)
        if not (len(size) == 2 and -(-size[0] // STRIDE) == h and -(-size[1] // STRIDE) == w
                and min(size) >= 1):
            raise MicrocaeError(f"corrupt header (image size {size} does not fit {h}x{w})")
        weight = next(self.decoder.parameters())
        y_hat = decoded["y"].double() + decoded["mean"].double() * 2.0**-self.config.mean_frac_bits
        layout = torch.channels_last if weight.dtype == torch.float32 else torch.contiguous_format
        y_hat = y_hat.to(weight.device, weight.dtype).contiguous(memory_format=layout)
        x_hat = self.synthesis(y_hat, size[0], strip_rows)
        return {"x_hat": crop(x_hat, size).clamp_(0.0, 1.0)}

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
