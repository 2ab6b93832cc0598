"""Encoder-side refinement: optimise one image's latents for its own rate–distortion cost.

The analysis transform is trained to do well on average; for one given image a few hundred
gradient steps on its latents ``y`` and ``z`` themselves find a better trade-off (Campos et al.,
"Content adaptive optimization for neural image compression", CVPRW 2019; Yang, Bamler & Mandt,
"Improving inference for neural image compression", NeurIPS 2020). Only the encoder works
harder: the stream format, the decoder and its determinism are unchanged, so a refined file
decodes anywhere an unrefined one does.

The loss is the training objective ``lmbda · 255² · MSE + bpp`` with the model's own
``lmbda``, under the usual uniform-noise proxy: the synthesis sees ``y + u`` and the rates are
the model's densities of ``y − mean + u`` and ``z + u`` (``u ~ U(−1/2, 1/2)``, drawn from a
seeded generator: on one machine the same image gives the same file; another CPU may round
the float32 steps otherwise and write another, equally valid file). The means and scales come
from the training path of the integer hyper-synthesis at the straight-through rounded ``ẑ``.
Adam, with the learning rate divided by 10 after 60 % and again after 90 % of the steps. The
distortion's gradient is accumulated over horizontal strips of the image with exact halos
(:func:`~microcae.models.strips.plan`), so memory follows the strip, not the image.

At the end both candidates — the analysis transform's latents and the refined ones — are
quantised exactly as :meth:`~microcae.models.hyperprior.HyperpriorCodec.compress` codes them and
scored by the same cost with the real rounding (ideal code length of the symbols under the
stored scale table, distortion of the decoded image); the cheaper one is kept, so refinement
never makes the cost worse.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from tqdm import tqdm

from microcae.entropy.gaussian import gaussian_likelihood
from microcae.models.gdn import bound_ste
from microcae.models.integer_network import round_ste
from microcae.models.strips import flatten, plan
from microcae.util.errors import MicrocaeError

if TYPE_CHECKING:
    from microcae.models.base import MicrocaeModel
    from microcae.models.hyperprior import HyperpriorCodec

DISTORTION_SCALE = 255.0**2
"""The objective weighs MSE on the 0..1 scale by ``lmbda · 255²`` (as in training)."""


@dataclass(frozen=True)
class Refinement:
    """Settings of encoder-side latent refinement.

    Attributes
    ----------
    steps
        Adam steps (each one synthesis forward and backward over the image).
    lr
        Initial learning rate (latent units per step).
    seed
        Seed of the noise generator (refinement is deterministic on one machine).
    strip_pixels
        About this many image pixels per strip of the distortion's gradient (bounds memory:
        roughly 1.2 kB of activations per pixel for N = 64).
    progress
        Show a progress bar of the steps on stderr (an image can take minutes).
    """

    steps: int = 200
    lr: float = 2e-2
    seed: int = 0
    strip_pixels: int = 1 << 20
    progress: bool = False

    def __post_init__(self) -> None:
        if isinstance(self.steps, bool) or not isinstance(self.steps, int) or self.steps < 1:
            raise MicrocaeError(f"refinement needs at least one step, got {self.steps!r}")
        if not (math.isfinite(self.lr) and self.lr > 0):
            raise MicrocaeError(f"refinement learning rate must be > 0, got {self.lr}")
        if self.strip_pixels < 1:
            raise MicrocaeError(f"strip_pixels must be positive, got {self.strip_pixels}")


def refine_latents(codec: HyperpriorCodec, x: torch.Tensor, y: torch.Tensor, z: torch.Tensor,
                   refinement: Refinement) -> tuple[torch.Tensor, torch.Tensor]:
    """Return the latents of ``x`` that cost least: the refined ones or ``(y, z)`` themselves.

    Parameters
    ----------
    codec
        The codec, in eval mode, with code tables; its ``lmbda`` (from its file's provenance)
        weighs the distortion.
    x
        (1, 1, H, W) image in [0, 1] (unpadded), the codec's dtype.
    y, z
        (1, M, h, w) and (1, N, h/4, w/4): the analysis and hyper-analysis of ``x`` padded to
        multiples of 64.
    refinement
        The settings.

    Returns
    -------
    tuple[torch.Tensor, torch.Tensor]
        ``(y, z)`` of the same shapes and dtype, detached.

    Raises
    ------
    MicrocaeError
        If the codec records no ``lmbda``.
    """
    lmbda = trained_lmbda_of(codec)
    strip = _strip_rows(refinement, y.shape[-1] * codec.downsample, codec.downsample)
    with torch.enable_grad():
        refined = _optimise(codec, x, y, z, lmbda, refinement.steps, refinement.lr,
                            refinement.seed, strip, refinement.progress)
    start_cost = rd_cost(codec, x, y, z, lmbda, strip)
    refined_cost = rd_cost(codec, x, *refined, lmbda, strip)
    return refined if refined_cost < start_cost else (y.detach(), z.detach())


def trained_lmbda_of(model: MicrocaeModel) -> float:
    """Return the ``lmbda`` refinement weighs the distortion with: the model's training one.

    Raises
    ------
    MicrocaeError
        If the model's file records none (:attr:`~microcae.models.base.MicrocaeModel.lmbda`).
    """
    if model.lmbda is None:
        raise MicrocaeError("refinement needs the lambda the codec was trained with, and its "
                            "model file records none (train it with 'microcae train')")
    return model.lmbda


def _strip_rows(refinement: Refinement, width: int, multiple: int) -> int:
    """Image rows per strip, a multiple of ``multiple``, for images ``width`` px wide."""
    return multiple * max(1, refinement.strip_pixels // (multiple * width))


def _optimise(codec: HyperpriorCodec, x: torch.Tensor, y: torch.Tensor, z: torch.Tensor,
              lmbda: float, steps: int, lr: float, seed: int, strip: int,
              progress: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Adam on ``(y, z)`` under the noise proxy; returns the last iterate, detached."""
    y = y.detach().clone().requires_grad_(True)
    z = z.detach().clone().requires_grad_(True)
    optimiser = torch.optim.Adam([y, z], lr=lr)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimiser, lambda step: 1.0 if step < 0.6 * steps else 0.1 if step < 0.9 * steps
        else 0.01)
    generator = torch.Generator().manual_seed(seed)
    frozen = [p for p in codec.parameters() if p.requires_grad]
    for parameter in frozen:
        parameter.requires_grad_(False)
    try:
        for _ in tqdm(range(steps), desc="refine", unit="step", leave=False,
                      disable=not progress):
            optimiser.zero_grad(set_to_none=False)
            noise_y = (torch.rand(y.shape, generator=generator, dtype=y.dtype) - 0.5).to(y.device)
            noise_z = (torch.rand(z.shape, generator=generator, dtype=z.dtype) - 0.5).to(z.device)
            _rate_backward(codec, x, y, z, noise_y, noise_z)
            _distortion_backward(codec, x, y, noise_y, lmbda, strip)
            optimiser.step()
            schedule.step()
    finally:
        for parameter in frozen:
            parameter.requires_grad_(True)
    return y.detach(), z.detach()


def _rate_backward(codec: HyperpriorCodec, x: torch.Tensor, y: torch.Tensor, z: torch.Tensor,
                   noise_y: torch.Tensor, noise_z: torch.Tensor) -> None:
    """Accumulate the gradient of the proxy rate (bits per pixel of ``x``) into y and z."""
    config = codec.config
    z_hat = bound_ste(round_ste(z), -float(config.z_max), float(config.z_max))
    mean_int, index = codec.hyper_decoder(z_hat)
    mean = mean_int * 2.0**-config.mean_frac_bits
    bits = (-torch.log2(gaussian_likelihood(y - mean + noise_y, codec.scale_of(index))).sum()
            - torch.log2(codec.z_prior.likelihood(z + noise_z)).sum())
    (bits / (x.shape[-2] * x.shape[-1])).backward()


def _distortion_backward(codec: HyperpriorCodec, x: torch.Tensor, y: torch.Tensor,
                         noise_y: torch.Tensor, lmbda: float, strip: int) -> None:
    """Accumulate the gradient of ``lmbda · 255² · MSE(decoder(y + u), x)`` into y, by strips.

    Each strip of image rows runs the synthesis on the latent rows it depends on
    (:func:`~microcae.models.strips.plan`) and keeps only its own rows: the sum over strips is
    the whole image's loss, so the gradient is that of one pass.
    """
    height, width = x.shape[-2:]
    layers = flatten(codec.decoder)
    side = codec.downsample
    weight = lmbda * DISTORTION_SCALE / (height * width)
    for start in range(0, height, strip):
        stop = min(start + strip, height)
        first, last = plan(layers, (start, stop), y.shape[2])[0]
        out = codec.decoder(y[:, :, first:last] + noise_y[:, :, first:last])
        rows = out[:, :, start - side * first: stop - side * first, :width]
        (weight * (rows - x[:, :, start:stop]).square().sum()).backward()


@torch.no_grad()
def rd_cost(codec: HyperpriorCodec, x: torch.Tensor, y: torch.Tensor, z: torch.Tensor,
            lmbda: float, strip: int | None = None) -> float:
    """``lmbda · 255² · MSE + bpp`` of the latents as :meth:`compress` would code them.

    Parameters
    ----------
    codec, x, y, z
        As :func:`refine_latents`.
    lmbda
        Weight of the distortion.
    strip
        Image rows per strip of the synthesis (a multiple of 16); None: one pass.

    Returns
    -------
    float
        The cost: the ideal code length (bits per pixel of ``x``) of the rounded ``ẑ`` and of
        the symbols under their stored scale indices, plus the weighted MSE of the decoded
        image (clamped to [0, 1]) against ``x``.
    """
    q = {k: v.to(y.device) for k, v in codec.symbols_of(y, z).items()
         if isinstance(v, torch.Tensor)}
    config = codec.config
    scale = codec.scale_of(q["index"].double())
    bits = (-torch.log2(gaussian_likelihood(q["y"].double(), scale)).sum()
            - torch.log2(codec.z_prior.likelihood(q["z"].to(z.dtype))).double().sum())
    y_hat = q["y"].double() + q["mean"].double() * 2.0**-config.mean_frac_bits
    height, width = x.shape[-2:]
    x_hat = codec.synthesis(y_hat.to(y.dtype), height, strip)[..., :width].clamp(0.0, 1.0)
    mse = (x_hat.double() - x.double()).square().mean()
    return float(lmbda * DISTORTION_SCALE * mse + bits / (height * width))
