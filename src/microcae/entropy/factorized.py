"""Factorized entropy model: one learned, monotone cumulative density per latent channel.

The prior of Ballé et al., "Variational image compression with a scale hyperprior" (ICLR 2018,
appendix 6.1; first used in "End-to-end optimized image compression", ICLR 2017): channel ``c``
has a cumulative distribution ``F_c(y) = sigmoid(g_c(y))`` where ``g_c`` is a small scalar network
``R -> R^3 -> R^3 -> R^3 -> R`` whose matrices pass through ``softplus`` (non-negative) and whose
hidden layers add ``tanh(a) * tanh(h)`` with ``tanh(a) > -1``, so ``g_c`` is increasing. The
probability of an integer ``k`` (or of ``k`` plus uniform noise, in training) is
``F_c(k + 1/2) - F_c(k - 1/2)``. Written here in plain PyTorch.
"""

from __future__ import annotations

import copy
import math

import torch
from torch import nn

LIKELIHOOD_FLOOR = 1e-9
"""Smallest likelihood used in the rate (bounds -log2 p at about 30 bits per value)."""


class FactorizedPrior(nn.Module):
    """Per-channel learned density of the latent, for rate estimation and code tables.

    Parameters
    ----------
    channels
        Latent channels C.
    filters
        Hidden widths of each channel's scalar network (Ballé et al.: (3, 3, 3)).
    init_scale
        Initial spread of the density, in latent units (about the width of the initial CDF).
    """

    def __init__(self, channels: int, filters: tuple[int, ...] = (3, 3, 3),
                 init_scale: float = 10.0) -> None:
        super().__init__()
        self.channels = int(channels)
        self.filters = tuple(int(f) for f in filters)
        dims = (1, *self.filters, 1)
        scale = init_scale ** (1.0 / (len(dims) - 1))
        self.matrices = nn.ParameterList()
        self.biases = nn.ParameterList()
        self.factors = nn.ParameterList()
        for k in range(len(dims) - 1):
            start = math.log(math.expm1(1.0 / scale / dims[k + 1]))
            self.matrices.append(nn.Parameter(torch.full((channels, dims[k + 1], dims[k]), start)))
            self.biases.append(nn.Parameter(torch.rand(channels, dims[k + 1], 1) - 0.5))
            if k < len(dims) - 2:
                self.factors.append(nn.Parameter(torch.zeros(channels, dims[k + 1], 1)))

    def logits(self, values: torch.Tensor) -> torch.Tensor:
        """``g_c`` at ``values`` of shape (C, 1, N): the logit of the CDF, shape (C, 1, N)."""
        h = values
        for k, (matrix, bias) in enumerate(zip(self.matrices, self.biases, strict=True)):
            h = torch.matmul(nn.functional.softplus(matrix), h) + bias
            if k < len(self.factors):
                h = h + torch.tanh(self.factors[k]) * torch.tanh(h)
        return h

    def likelihood(self, y: torch.Tensor) -> torch.Tensor:
        """Probability mass of the unit interval around each value of ``y``.

        Parameters
        ----------
        y
            (N, C, H, W) latents (with additive uniform noise in training, integers at test).

        Returns
        -------
        torch.Tensor
            (N, C, H, W) likelihoods in [LIKELIHOOD_FLOOR, 1]; ``-log2`` of them is the rate
            in bits.
        """
        n, c, h, w = y.shape
        flat = y.permute(1, 0, 2, 3).reshape(c, 1, -1)
        lower = self.logits(flat - 0.5)
        upper = self.logits(flat + 0.5)
        sign = -torch.sign(lower + upper).detach()  # evaluate in the sigmoid's flat tail
        mass = torch.abs(torch.sigmoid(sign * upper) - torch.sigmoid(sign * lower))
        mass = mass.clamp_min(LIKELIHOOD_FLOOR)
        return mass.reshape(c, n, h, w).permute(1, 0, 2, 3)

    @torch.no_grad()
    def cdf(self, points: torch.Tensor) -> torch.Tensor:
        """CDF of every channel at ``points`` (P,): returns (C, P) float64 in [0, 1]."""
        twin = copy.deepcopy(self).to("cpu", torch.float64)
        grid = points.double().reshape(1, 1, -1).expand(self.channels, 1, -1)
        return torch.sigmoid(twin.logits(grid))[:, 0]
