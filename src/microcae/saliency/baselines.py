"""Baseline relevance methods through Captum and Zennit: GBP, LRP-w², LRP-z^β, gradient, IG.

All are registered (with their titles and properties) in :data:`microcae.saliency.METHODS` and
called through :func:`microcae.saliency.relevance`; each returns (N, H, W) for an input of
(N, 1, H, W).
Hooks exist only while a method runs (Captum and Zennit remove theirs on exit), parameters are
never modified and no ``.grad`` is accumulated on them.

Output choices (the encoder's output is a feature map, not one score):

- ``gbp``, ``gradient`` and ``integrated-gradients`` explain the scalar ``||f(x)||_2`` (the L2
  norm of each sample's latent), the study's choice for guided backpropagation.
- ``lrp-w2`` and ``lrp-zbeta`` are seeded with the latent itself: the relevance put on latent
  value k is f_k(x) (all f_k >= 0 after the final ReLU and max-pool), so by conservation the input
  relevance sums to ``sum_k f_k(x)``; :func:`lrp_conservation` reports the ratio per image.
"""

from __future__ import annotations

import warnings

import torch
from captum.attr import GuidedBackprop, IntegratedGradients, Saliency
from torch import nn
from zennit.composites import SpecialFirstLayerMapComposite, layer_map_base
from zennit.core import Hook
from zennit.rules import WSquare, ZBox, ZPlus
from zennit.types import Convolution

from microcae.saliency.registry import register

LRP_STABILIZER = 1e-6
"""Zennit's stabiliser: each LRP denominator d becomes d + 1e-6·sign(d) (sign(0) = +1)."""
RELU_NETWORK = (nn.Conv2d, nn.Linear, nn.ReLU, nn.MaxPool2d, nn.AvgPool2d, nn.AdaptiveAvgPool2d,
                nn.Flatten, nn.Identity, nn.Dropout)
"""Layer types GBP and LRP are defined for: ReLU networks of convolutions, linear layers and
pools (GBP rewrites the ReLUs' gradients; the LRP rules here are for convolutions and pass
relevance through ReLUs and pools). Other layers, e.g. the codec's GDN, are refused with a
one-line error (:func:`microcae.saliency.registry.check_encoder`) instead of a silent
plain-gradient pass."""


class LatentNorm(nn.Module):
    """Wrap an encoder as ``x -> ||f(x)||_2`` per sample: (N, 1, H, W) -> (N,).

    GBP, gradient and integrated gradients need one output per sample; the study used the L2
    norm of the latent for GBP, and microcae uses it for all three.
    """

    def __init__(self, encoder: nn.Module) -> None:
        super().__init__()
        self.encoder = encoder

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Return the (N,) L2 norms of the flattened latents of ``x`` (N, 1, H, W)."""
        return self.encoder(x).flatten(1).norm(dim=1)


def _leaf(x: torch.Tensor) -> torch.Tensor:
    return x.detach().clone().requires_grad_(True)


@register("gbp", "GBP", "baseline", preference=1, study=True, layers=RELU_NETWORK)
def guided_backprop(encoder: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Guided backpropagation of the latent's L2 norm (Captum ``GuidedBackprop``).

    Parameters
    ----------
    encoder
        Module mapping (N, 1, H, W) to a latent; its ReLUs must be ``nn.ReLU`` modules.
    x
        (N, 1, H, W) float tensor in [0, 1].

    Returns
    -------
    torch.Tensor
        (N, H, W), dtype of ``x``, signed: ∂||f||/∂x with every ReLU passing only positive
        gradients (units: latent norm per unit intensity).

    References
    ----------
    Springenberg, Dosovitskiy, Brox & Riedmiller (2015), "Striving for simplicity: the all
    convolutional net", ICLR workshop, arXiv:1412.6806.
    """
    with warnings.catch_warnings():
        # Captum announces that it hooks ReLUs and removes the hooks afterwards (tested).
        warnings.filterwarnings(
            "ignore", message="Setting backward hooks on ReLU activations", category=UserWarning
        )
        attribution = GuidedBackprop(LatentNorm(encoder)).attribute(_leaf(x))
    return attribution.detach()[:, 0]


@register("gradient", "gradient", "baseline", preference=4)
def gradient(encoder: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Absolute gradient of the latent's L2 norm (Captum ``Saliency``).

    Parameters
    ----------
    encoder
        Module mapping (N, 1, H, W) to a latent.
    x
        (N, 1, H, W) float tensor in [0, 1].

    Returns
    -------
    torch.Tensor
        (N, H, W), dtype of ``x``, non-negative: |∂||f(x)||_2/∂x_ij|.

    References
    ----------
    Simonyan, Vedaldi & Zisserman (2014), "Deep inside convolutional networks: visualising image
    classification models and saliency maps", ICLR workshop, arXiv:1312.6034.
    """
    attribution = Saliency(LatentNorm(encoder)).attribute(_leaf(x), abs=True)
    return attribution.detach()[:, 0]


@register("integrated-gradients", "integrated gradients", "baseline", preference=5)
def integrated_gradients(
    encoder: nn.Module, x: torch.Tensor, n_steps: int = 32, internal_batch_size: int = 16
) -> torch.Tensor:
    """Integrated gradients of the latent's L2 norm from a black image (Captum).

    Parameters
    ----------
    encoder
        Module mapping (N, 1, H, W) to a latent.
    x
        (N, 1, H, W) float tensor in [0, 1].
    n_steps
        Gauss-Legendre nodes on the straight path from 0 to ``x``.
    internal_batch_size
        Path points evaluated per forward/backward pass (bounds memory).

    Returns
    -------
    torch.Tensor
        (N, H, W), dtype of ``x``, signed; sums to about ||f(x)|| - ||f(0)|| (completeness).

    References
    ----------
    Sundararajan, Taly & Yan (2017), "Axiomatic attribution for deep networks", ICML,
    arXiv:1703.01365.
    """
    attribution = IntegratedGradients(LatentNorm(encoder)).attribute(
        _leaf(x), baselines=0.0, n_steps=n_steps, internal_batch_size=internal_batch_size
    )
    return attribution.detach()[:, 0]


@torch.no_grad()
def lrp_conservation(encoder: nn.Module, x: torch.Tensor, maps: torch.Tensor) -> torch.Tensor:
    """Share of the LRP seed that reached the input: ``sum_ij R_ij / sum_k f_k(x)`` per image.

    Parameters
    ----------
    encoder
        The encoder the maps were computed for.
    x
        (N, 1, H, W) input batch.
    maps
        (N, H, W) input relevance from ``lrp-w2`` or ``lrp-zbeta``.

    Returns
    -------
    torch.Tensor
        (N,) float64 ratios; 1 means full conservation, NaN where the latent is all zero.
    """
    seed = encoder(x).flatten(1).sum(dim=1).double()
    return maps.flatten(1).sum(dim=1).double() / torch.where(seed == 0, torch.nan, seed)


def lrp_composite(first_rule: Hook) -> SpecialFirstLayerMapComposite:
    """Zennit composite: ``first_rule`` on the first convolution, z+ on every other one.

    Biases are left out of every rule (``zero_params="bias"``, the deep Taylor form of z+), so
    relevance is conserved layer by layer; ReLUs pass relevance unchanged and max-pools send it
    to the winning input (Zennit's default for layers without a rule).

    Parameters
    ----------
    first_rule
        A Zennit rule instance for the first convolution, e.g. ``WSquare`` or ``ZBox``.

    Returns
    -------
    SpecialFirstLayerMapComposite
        Use as ``with composite.context(encoder) as hooked: ...``.

    References
    ----------
    Montavon, Lapuschkin, Binder, Samek & Müller (2017), "Explaining nonlinear classification
    decisions with deep Taylor decomposition", Pattern Recognition 65, 211-222.
    """
    layer_map = [
        *layer_map_base(LRP_STABILIZER),
        (Convolution, ZPlus(stabilizer=LRP_STABILIZER, zero_params="bias")),
    ]
    return SpecialFirstLayerMapComposite(layer_map, [(Convolution, first_rule)])


def _lrp(encoder: nn.Module, x: torch.Tensor, first_rule: Hook) -> torch.Tensor:
    leaf = _leaf(x)
    with lrp_composite(first_rule).context(encoder) as hooked, torch.enable_grad():
        latent = hooked(leaf)
        (attribution,) = torch.autograd.grad(latent, leaf, grad_outputs=latent.detach())
    return attribution.detach()[:, 0]


@register("lrp-w2", "LRP-w²", "baseline", preference=2, study=True,
          conservation=lrp_conservation, layers=RELU_NETWORK)
def lrp_w2(encoder: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """LRP with the w² rule on the first convolution and z+ elsewhere, seeded with the latent.

    Parameters
    ----------
    encoder
        Module of ``nn.Conv2d``, ``nn.ReLU`` and ``nn.MaxPool2d`` layers (e.g. ``CAE().encoder``).
    x
        (N, 1, H, W) float tensor in [0, 1].

    Returns
    -------
    torch.Tensor
        (N, H, W), dtype of ``x``, non-negative; sums to ``sum_k f_k(x)`` up to relevance lost
        where a z+ denominator vanishes (see :func:`lrp_conservation`).

    References
    ----------
    Montavon et al. (2017), Pattern Recognition 65, 211-222 (w² and z+ rules); Bach et al.
    (2015), "On pixel-wise explanations ... by layer-wise relevance propagation", PLoS ONE 10(7).
    """
    return _lrp(encoder, x, WSquare(stabilizer=LRP_STABILIZER, zero_params="bias"))


@register("lrp-zbeta", "LRP-β", "baseline", preference=3, study=True,
          conservation=lrp_conservation, layers=RELU_NETWORK)
def lrp_zbeta(encoder: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """LRP with the z^β (ZBox) rule, bounds [0, 1], on the first convolution and z+ elsewhere.

    Parameters
    ----------
    encoder
        Module of ``nn.Conv2d``, ``nn.ReLU`` and ``nn.MaxPool2d`` layers (e.g. ``CAE().encoder``).
    x
        (N, 1, H, W) float tensor in [0, 1] (the rule's input bounds).

    Returns
    -------
    torch.Tensor
        (N, H, W), dtype of ``x``, signed; sums to ``sum_k f_k(x)`` up to relevance lost where
        a denominator vanishes (see :func:`lrp_conservation`).

    References
    ----------
    Montavon et al. (2017), Pattern Recognition 65, 211-222 (z^B rule for bounded inputs).
    """
    return _lrp(encoder, x, ZBox(low=0.0, high=1.0, stabilizer=LRP_STABILIZER, zero_params="bias"))
