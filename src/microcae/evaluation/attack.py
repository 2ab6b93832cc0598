"""Attack experiment: how well "the decoder is the key" holds up.

Threat: the owner shares latent files (plain, not encrypted) of their micrographs and keeps
the decoder private. The adversary has those latent files, public micrographs that are not the
owner's, the study's published architecture, and a modest CPU budget. In some scenarios a few
of the owner's images leak together with their latents. We measure how close the adversary's
reconstructions of the owner's other images come to the owner's own decoding.

Data: a prepared set (``microcae prepare``). Its test split plays the owner's micrographs
(whole held-out images); its train split plays the public micrographs.

Scenarios (all reconstructions rounded to 8 bits, scored against the 8-bit originals):

owner            the owner's decoder on the latent files (reference)
mean-image       constant image at the public tiles' mean grey level (what knowing nothing gives)
latent-view      no training: first principal component of the 8 latent channels, upsampled
                 ×16 (bicubic) and scaled to the public tiles' grey-level mean and spread;
                 the sign of the component is chosen by the better score (one bit, "by eye")
stats-match      the adversary trains their own CAE on public tiles, then maps each owner
                 latent channel onto one of their own channels by matching per-channel
                 statistics (mean, spread, share of zeros; Hungarian assignment) and affine
                 moment matching; no leaked pairs
leak-k-scratch   a fresh decoder trained on k leaked (image, latent) pairs only
leak-k-adapted   the adversary's own CAE decoder behind a learned 1×1 channel adapter,
                 fine-tuned on k leaked pairs
encoder-known    the owner's encoder is known (e.g. the full model file was shared): the
                 adversary encodes public tiles and trains a fresh decoder on those pairs
"""

from __future__ import annotations

import copy
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment
from torch import nn

from microcae.codec.container import SourceInfo, read_container, write_container
from microcae.data.dataset import PreparedSet
from microcae.data.images import round_to_8bit, to_uint8
from microcae.evaluation._batching import run_batched
from microcae.metrics.reconstruction import ReconstructionScores, reconstruction_scores
from microcae.models.cae import CAE, build_decoder, decoder_fingerprint
from microcae.util.table_writer import Column, Table

NO_LEAK_SCENARIOS = ("mean-image", "latent-view", "stats-match")
"""Adversaries that have only the latent files and public micrographs."""

CROP = 64


def file_latents(model: CAE, tiles: np.ndarray) -> np.ndarray:
    """Latents exactly as the adversary reads them from uint8 latent files: (N, C, h, w)."""
    raw = run_batched(model.encoder, tiles[:, None])
    source = SourceInfo(tiles.shape[1:], "uint8", "full", (0.0, 255.0))
    out = np.empty_like(raw)
    for i, latent in enumerate(raw):
        data = write_container(latent[None], source, tiles.shape[1], decoder_fingerprint(model))
        out[i] = read_container(data, "tile")[1][0]
    return out


def image_crops(images: np.ndarray, batch: int, rng: np.random.Generator
                ) -> tuple[torch.Tensor, torch.Tensor]:
    """Random (B, 1, 64, 64) crops as (input, target) for autoencoder training."""
    pick = rng.integers(0, len(images), batch)
    rows, cols = rng.integers(0, images.shape[1] - CROP + 1, (2, batch))
    x = torch.from_numpy(np.stack([images[i, r:r + CROP, c:c + CROP]
                                   for i, r, c in zip(pick, rows, cols, strict=True)])[:, None])
    return x, x


def random_crops(images: np.ndarray, latents: np.ndarray, batch: int, down: int,
                 rng: np.random.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Aligned (B, 1, 64, 64) image and (B, C, 64/down, 64/down) latent crops."""
    side = latents.shape[-1]
    cells = CROP // down
    pick = rng.integers(0, len(images), batch)
    rows = rng.integers(0, side - cells + 1, batch)
    cols = rng.integers(0, side - cells + 1, batch)
    x = np.stack([images[i, r * down:(r + cells) * down, c * down:(c + cells) * down]
                  for i, r, c in zip(pick, rows, cols, strict=True)])
    z = np.stack([latents[i, :, r:r + cells, c:c + cells]
                  for i, r, c in zip(pick, rows, cols, strict=True)])
    return torch.from_numpy(x[:, None]), torch.from_numpy(np.ascontiguousarray(z))


def fit(module: nn.Module, batches, steps: int, lr: float = 1e-3) -> nn.Module:
    """Adam on the MSE between ``module(z)`` and ``x`` for ``steps`` batches ``(x, z)``."""
    optimiser = torch.optim.Adam(module.parameters(), lr=lr)
    module.train()
    for _ in range(steps):
        x, z = batches()
        optimiser.zero_grad()
        loss = nn.functional.mse_loss(module(z), x)
        loss.backward()
        optimiser.step()
    return module.eval()


def scores(reconstructions: np.ndarray, originals: np.ndarray) -> ReconstructionScores:
    """Mean MSE, PSNR, SSIM over (N, H, W) tiles after rounding reconstructions to 8 bits."""
    rows = [reconstruction_scores(o, to_uint8(r) / 255.0)
            for r, o in zip(reconstructions, originals, strict=True)]
    return ReconstructionScores(*(float(np.mean([getattr(r, k) for r in rows]))
                                  for k in ("mse", "psnr_db", "ssim")))


def decode_all(decoder: nn.Module, latents: np.ndarray) -> np.ndarray:
    """Decode (N, C, h, w) latents: (N, H, W) float32."""
    return run_batched(decoder, latents)[:, 0]


def latent_view(latents: np.ndarray, originals: np.ndarray, public: np.ndarray,
                down: int) -> ReconstructionScores:
    """PCA component of the latent channels, upsampled and scaled to public grey levels."""
    flat = latents.transpose(1, 0, 2, 3).reshape(latents.shape[1], -1)
    centred = flat - flat.mean(axis=1, keepdims=True)
    component = np.linalg.svd(centred, full_matrices=False)[0][:, 0]
    maps = np.einsum("c,nchw->nhw", component, latents)
    upsampled = nn.functional.interpolate(torch.from_numpy(maps[:, None]), scale_factor=down,
                                          mode="bicubic", align_corners=False).numpy()[:, 0]
    best = None
    for sign in (1.0, -1.0):
        view = sign * upsampled
        view = (view - view.mean()) / view.std() * public.std() + public.mean()
        result = scores(view, originals)
        if best is None or result.psnr_db > best.psnr_db:
            best = result
    return best


def channel_stats(latents: np.ndarray) -> np.ndarray:
    """(C, 3) per-channel mean, standard deviation and share of zeros, each standardised."""
    per = latents.transpose(1, 0, 2, 3).reshape(latents.shape[1], -1)
    stats = np.stack([per.mean(1), per.std(1), (per == 0).mean(1)], axis=1)
    return (stats - stats.mean(0)) / (stats.std(0) + 1e-12)


def stats_matched_adapter(owner: np.ndarray, own: np.ndarray) -> nn.Conv2d:
    """1×1 conv mapping owner channels onto own channels by statistics (no pairs needed)."""
    rows, cols = linear_sum_assignment(
        ((channel_stats(owner)[:, None, :] - channel_stats(own)[None]) ** 2).sum(-1))
    channels = owner.shape[1]
    adapter = nn.Conv2d(channels, channels, 1)
    weight = torch.zeros(channels, channels, 1, 1)
    bias = torch.zeros(channels)
    for i, j in zip(rows, cols, strict=True):  # owner channel i -> own channel j
        a, b = owner[:, i], own[:, j]
        gain = b.std() / (a.std() + 1e-12)
        weight[j, i] = float(gain)
        bias[j] = float(b.mean() - gain * a.mean())
    with torch.no_grad():
        adapter.weight.copy_(weight)
        adapter.bias.copy_(bias)
    return adapter


@dataclass(frozen=True)
class AttackResult:
    """What :func:`decoder_attack` measured.

    Attributes
    ----------
    owner_model_fingerprint, data_manifest_sha256
        Which owner model and which prepared set.
    owner_tiles, public_tiles, eval_tiles
        Tiles of the owner (test split), of the public micrographs (train split) and scored.
    leaks
        Numbers of leaked (image, latent) pairs tried.
    steps, batch, crop, seed
        Adam steps per training stage, crops per step, crop side (px) and seed.
    seconds
        Wall time of the whole attack.
    scenarios
        Scenario name (module docstring) -> mean scores over the evaluated tiles, in run order.
    """

    owner_model_fingerprint: str
    data_manifest_sha256: str
    owner_tiles: int
    public_tiles: int
    eval_tiles: int
    leaks: tuple[int, ...]
    steps: int
    batch: int
    crop: int
    seed: int
    seconds: float
    scenarios: dict[str, ReconstructionScores]

    def psnr_db(self) -> dict[str, float]:
        """Scenario -> mean PSNR (dB)."""
        return {name: s.psnr_db for name, s in self.scenarios.items()}

    def rows(self) -> list[dict[str, Any]]:
        """One row per scenario: ``scenario``, ``psnr_db``, ``ssim``, ``mse``."""
        return [{"scenario": name, "psnr_db": s.psnr_db, "ssim": s.ssim, "mse": s.mse}
                for name, s in self.scenarios.items()]

    def to_table(self) -> Table:
        """Scenario, PSNR (dB), SSIM and MSE per scenario."""
        return Table.of(self.rows(), ATTACK_COLUMNS)

    def to_json(self) -> dict[str, Any]:
        """JSON-ready dict (``results``: scenario -> ``mse``, ``psnr_db``, ``ssim``)."""
        fields = {k: v for k, v in vars(self).items() if k != "scenarios"}
        return {**fields, "leaks": list(self.leaks),
                "results": {name: s.as_dict() for name, s in self.scenarios.items()}}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> AttackResult:
        """Inverse of :meth:`to_json` (e.g. a stored run)."""
        fields = {k: v for k, v in data.items() if k != "results"}
        return cls(**{**fields, "leaks": tuple(data["leaks"]),
                      "scenarios": {name: ReconstructionScores(**s)
                                    for name, s in data["results"].items()}})


ATTACK_COLUMNS = (Column("scenario"), Column("psnr_db", "PSNR (dB)", ".2f"),
                  Column("ssim", "SSIM", ".4f"), Column("mse", "MSE", ".5f"))
"""Columns of the attack table."""


def decoder_attack(owner: CAE, prepared: PreparedSet, eval_tiles: int = 24,
                   leaks: Sequence[int] = (1, 4), steps: int = 400, batch: int = 16,
                   seed: int = 0) -> AttackResult:
    """Run every scenario of the module docstring and score it on the owner's held-out tiles.

    Parameters
    ----------
    owner
        The owner's autoencoder (its encoder makes the latent files, its decoder is the "key").
    prepared
        Prepared set: test split = the owner's micrographs, train split = public micrographs.
    eval_tiles
        Owner tiles scored (after the leaked ones are set aside).
    leaks
        Numbers of leaked (image, latent) pairs tried.
    steps
        Adam steps per training stage (64×64 crops).
    batch
        Crops per step.
    seed
        Seeds the crops, the choice of leaked tiles and weight initialisation.

    Returns
    -------
    AttackResult
        Settings, wall time and the mean scores of every scenario.
    """
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    started = time.perf_counter()
    leaks = list(leaks)
    down = owner.config.downsample
    owner_tiles = round_to_8bit(prepared.tiles[prepared.indices("test")])
    public = round_to_8bit(prepared.tiles[prepared.indices("train")])
    order = rng.permutation(len(owner_tiles))
    leaked_pool = order[: max(leaks, default=0)]
    evaluation = order[max(leaks, default=0):][:eval_tiles]
    owner_latents = file_latents(owner, owner_tiles)
    targets, target_latents = owner_tiles[evaluation], owner_latents[evaluation]

    results: dict[str, ReconstructionScores] = {}
    results["owner"] = scores(decode_all(owner.decoder, target_latents), targets)
    results["mean-image"] = scores(np.full_like(targets, public.mean()), targets)
    results["latent-view"] = latent_view(target_latents, targets, public, down)

    own = fit(CAE(owner.config), lambda: image_crops(public, batch, rng), 2 * steps)
    own_public_latents = run_batched(own.encoder, public[:, None])
    adapter = stats_matched_adapter(owner_latents, own_public_latents)
    results["stats-match"] = scores(
        decode_all(nn.Sequential(adapter, own.decoder), target_latents), targets)

    for k in leaks:
        leaked = leaked_pool[:k]
        pairs = lambda leaked=leaked: random_crops(  # noqa: E731
            owner_tiles[leaked], owner_latents[leaked], batch, down, rng)
        scratch = fit(build_decoder(owner.config), pairs, steps)
        results[f"leak-{k}-scratch"] = scores(decode_all(scratch, target_latents), targets)
        adapted = nn.Sequential(copy.deepcopy(adapter), copy.deepcopy(own.decoder))
        adapted = fit(adapted, pairs, steps)
        results[f"leak-{k}-adapted"] = scores(decode_all(adapted, target_latents), targets)

    public_latents = run_batched(owner.encoder, public[:, None])
    known = fit(build_decoder(owner.config),
                lambda: random_crops(public, public_latents, batch, down, rng), 2 * steps)
    results["encoder-known"] = scores(decode_all(known, target_latents), targets)
    return AttackResult(
        decoder_fingerprint(owner), prepared.manifest_sha256, len(owner_tiles), len(public),
        len(evaluation), tuple(leaks), steps, batch, CROP, seed,
        round(time.perf_counter() - started, 1), results)
