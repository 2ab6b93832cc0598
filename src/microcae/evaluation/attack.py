"""Attack experiment: how well "the decoder is the key" holds up.

Threat: the owner shares latent files (plain, not encrypted) of their micrographs and keeps
the decoder private. The adversary has those latent files, public micrographs that are not the
owner's, the study's published architecture, and a modest CPU budget. In some scenarios a few
of the owner's images leak together with their latents. We measure how close the adversary's
reconstructions of the owner's other images come to the owner's own decoding.

Data: a prepared set (``microcae prepare``). Its test split plays the owner's micrographs
(whole held-out images); its train split plays the public micrographs.

Budget: every training stage runs the same number of Adam steps on crops. A fair adversary gets
the owner's budget: :func:`owner_budget_steps` gives the steps that show it as many pixels as
the owner's training saw (epochs × training tiles × tile area). Each trained scenario is scored
at the checkpoints of :func:`curve_steps` too, so its curve shows whether it has converged.

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
import dataclasses
import json
import math
import time
import zlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from scipy.optimize import linear_sum_assignment
from torch import nn

from microcae.codec.container import SourceInfo, read_container, write_container
from microcae.data.dataset import PreparedSet
from microcae.data.images import round_to_8bit, to_uint8
from microcae.evaluation._batching import run_batched
from microcae.metrics.reconstruction import ReconstructionScores, reconstruction_scores
from microcae.models.cae import CAE, build_decoder
from microcae.util.atomic import atomic_path, write_text_atomic
from microcae.util.errors import MicrocaeError
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
        data = write_container(latent[None], source, tiles.shape[1], model.fingerprint())
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


def owner_budget_steps(provenance: Mapping[str, Any], tile: int, batch: int,
                       crop: int = CROP) -> int:
    """Adam steps of ``batch`` crops of ``crop``² px that see as many pixels as the owner did.

    Parameters
    ----------
    provenance
        The owner model file's provenance (``epochs_completed``, ``data.train_tiles``).
    tile
        Side (px) of the owner's training tiles.
    batch, crop
        The adversary's crops per step and crop side.

    Returns
    -------
    int
        ``ceil(epochs × train tiles × tile² / (batch × crop²))``.

    Raises
    ------
    MicrocaeError
        If the provenance does not say how the owner was trained.
    """
    try:
        seen = int(provenance["epochs_completed"]) * int(provenance["data"]["train_tiles"])
    except (KeyError, TypeError, ValueError):
        raise MicrocaeError("the owner model's provenance does not give its training budget "
                            "(epochs_completed, data.train_tiles)") from None
    return math.ceil(seen * tile * tile / (batch * crop * crop))


def curve_steps(steps: int, first: int = 25) -> list[int]:
    """Checkpoints of a training curve: ``first`` doubling up to ``steps``, then ``steps``."""
    points = []
    while first < steps:
        points.append(first)
        first *= 2
    return [*points, steps]


Checkpoint = Callable[[int, nn.Module], None]


def fit(module: nn.Module, batches: Callable[[], tuple[torch.Tensor, torch.Tensor]], steps: int,
        lr: float = 1e-3, at: Sequence[int] = (), checkpoint: Checkpoint | None = None
        ) -> nn.Module:
    """Adam on the MSE between ``module(z)`` and ``x`` for ``steps`` batches ``(x, z)``.

    After each step number in ``at``, ``checkpoint(step, module)`` is called with the module in
    eval mode (training resumes afterwards).
    """
    optimiser = torch.optim.Adam(module.parameters(), lr=lr)
    module.train()
    marks = set(at)
    for step in range(1, steps + 1):
        x, z = batches()
        optimiser.zero_grad()
        loss = nn.functional.mse_loss(module(z), x)
        loss.backward()
        optimiser.step()
        if checkpoint is not None and step in marks:
            checkpoint(step, module.eval())
            module.train()
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


Curve = list[tuple[int, ReconstructionScores]]
"""(training step, mean scores at that step), ascending in steps."""


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
        Scenario name (module docstring) -> mean scores over the evaluated tiles at the end of
        training, in run order.
    curves
        Trained scenario -> its scores at the checkpoints of :func:`curve_steps` (empty for runs
        stored before curves were recorded).
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
    curves: dict[str, Curve] = field(default_factory=dict)

    def psnr_db(self) -> dict[str, float]:
        """Map each scenario to its mean PSNR (dB)."""
        return {name: s.psnr_db for name, s in self.scenarios.items()}

    def rows(self) -> list[dict[str, Any]]:
        """One row per scenario: ``scenario``, ``psnr_db``, ``ssim``, ``mse``."""
        return [{"scenario": name, "psnr_db": s.psnr_db, "ssim": s.ssim, "mse": s.mse}
                for name, s in self.scenarios.items()]

    def to_table(self) -> Table:
        """Return scenario, PSNR (dB), SSIM and MSE per scenario."""
        return Table.of(self.rows(), ATTACK_COLUMNS)

    def curve_table(self) -> Table:
        """PSNR (dB) of every trained scenario (rows) at every checkpoint (columns)."""
        steps = sorted({step for curve in self.curves.values() for step, _ in curve})
        rows = [{"scenario": name, **{str(step): score.psnr_db for step, score in curve}}
                for name, curve in self.curves.items()]
        return Table.of(rows, [Column("scenario"),
                               *(Column(str(step), f"{step} steps", ".2f") for step in steps)])

    def to_json(self) -> dict[str, Any]:
        """JSON-ready dict (``results``: scenario -> ``mse``, ``psnr_db``, ``ssim``)."""
        fields = {k: v for k, v in vars(self).items() if k not in ("scenarios", "curves")}
        out = {**fields, "leaks": list(self.leaks),
               "results": {name: s.as_dict() for name, s in self.scenarios.items()}}
        if self.curves:
            out["curves"] = {name: [{"step": step, **score.as_dict()} for step, score in curve]
                             for name, curve in self.curves.items()}
        return out

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> AttackResult:
        """Inverse of :meth:`to_json` (e.g. a stored run; keys it does not write are ignored)."""
        names = {f.name for f in dataclasses.fields(cls)} - {"scenarios", "curves"}
        fields = {k: v for k, v in data.items() if k in names}
        curves = {name: [(int(p["step"]), ReconstructionScores(p["mse"], p["psnr_db"],
                                                               p["ssim"])) for p in points]
                  for name, points in data.get("curves", {}).items()}
        return cls(**{**fields, "leaks": tuple(data["leaks"]), "curves": curves,
                      "scenarios": {name: ReconstructionScores(**s)
                                    for name, s in data["results"].items()}})


ATTACK_COLUMNS = (Column("scenario"), Column("psnr_db", "PSNR (dB)", ".2f"),
                  Column("ssim", "SSIM", ".4f"), Column("mse", "MSE", ".5f"))
"""Columns of the attack table."""


Batches = Callable[[np.random.Generator], Callable[[], tuple[torch.Tensor, torch.Tensor]]]
"""Given a stage's generator, the function that draws one training batch ``(x, z)``."""


class _Stages:
    """Trains and scores the attack's stages; keeps finished stages in ``state`` to resume.

    Every stage draws its crops and initial weights from its own seed (the run's seed and the
    stage's name), so a stage gives the same result whether or not earlier stages ran in the
    same process.
    """

    def __init__(self, targets: np.ndarray, latents: np.ndarray, steps: int, seed: int,
                 log: Callable[[str], None] | None, state: Path | None,
                 identity: dict[str, Any]) -> None:
        self.targets, self.latents, self.steps, self.seed = targets, latents, steps, seed
        self.at, self.log = curve_steps(steps), log or (lambda line: None)
        self.results: dict[str, ReconstructionScores] = {}
        self.curves: dict[str, Curve] = {}
        self.state, self.identity = state, identity
        self.saved: dict[str, Any] = {"identity": identity, "curves": {}, "seconds": {}}
        self.fresh = 0.0  # seconds of the stages trained in this process
        if state is not None and (state / STATE_FILE).is_file():
            saved = json.loads((state / STATE_FILE).read_text())
            if saved.get("identity") != identity:
                raise MicrocaeError(f"{state}: saved attack stages belong to another run")
            self.saved = saved

    def score(self, decoder: nn.Module) -> ReconstructionScores:
        return scores(decode_all(decoder, self.latents), self.targets)

    def trained(self, name: str, build: Callable[[], nn.Module], batches: Batches,
                view: Callable[[nn.Module], nn.Module] = lambda m: m) -> nn.Module:
        """Train stage ``name`` (or restore it from the state), scoring ``view(module)``."""
        weights = None if self.state is None else self.state / f"{name}.safetensors"
        torch.manual_seed(self.seed * 2**20 + zlib.crc32(name.encode()) % 2**20)
        module = build()
        if name in self.saved["curves"] and weights is not None and weights.is_file():
            module.load_state_dict(load_file(str(weights)))
            curve = [(int(p["step"]), ReconstructionScores(p["mse"], p["psnr_db"], p["ssim"]))
                     for p in self.saved["curves"][name]]
        else:
            started, curve = time.perf_counter(), []
            rng = np.random.default_rng([self.seed, zlib.crc32(name.encode())])
            fit(module, batches(rng), self.steps, at=self.at,
                checkpoint=lambda step, m: curve.append((step, self.score(view(m)))))
            self._save(name, module, curve, time.perf_counter() - started)
        self.curves[name], self.results[name] = curve, curve[-1][1]
        self.log(f"{name}: " + ", ".join(f"{step} steps {score.psnr_db:.2f} dB"
                                         for step, score in curve))
        return module.eval()

    def _save(self, name: str, module: nn.Module, curve: Curve, seconds: float) -> None:
        self.saved["curves"][name] = [{"step": step, **score.as_dict()} for step, score in curve]
        self.saved["seconds"][name] = round(seconds, 1)
        self.fresh += seconds
        if self.state is None:
            return
        self.state.mkdir(parents=True, exist_ok=True)
        with atomic_path(self.state / f"{name}.safetensors") as tmp:
            save_file({k: v.detach().contiguous() for k, v in module.state_dict().items()},
                      str(tmp))
        write_text_atomic(self.state / STATE_FILE, json.dumps(self.saved, indent=1))

    def training_seconds(self) -> float:
        """Return the trained stages' wall time, including that of earlier, resumed processes."""
        return float(sum(self.saved["seconds"].values()))


STATE_FILE = "stages.json"
"""File of the finished stages in an attack's ``state`` folder."""


def _adversary_autoencoder(owner: CAE) -> nn.Module:
    """Return a fresh CAE of the owner's configuration as encoder -> decoder (tensor output)."""
    model = CAE(owner.config)
    return nn.Sequential(model.encoder, model.decoder)


def _train_adversaries(run: _Stages, owner: CAE, owned: tuple[np.ndarray, np.ndarray],
                       public: np.ndarray, leaked: Sequence[np.ndarray], batch: int) -> None:
    """Train the stats-match, leaked-pair and encoder-known adversaries as stages of ``run``.

    ``owned`` holds the owner's (N, S, S) tiles and their (N, C, h, w) file latents;
    ``public`` the (P, S, S) public tiles; ``leaked`` the owner-tile indices of each leak size.
    """
    owner_tiles, owner_latents = owned
    down = owner.downsample

    def matched(own: nn.Module) -> nn.Module:
        encoder, decoder = own
        adapter = stats_matched_adapter(owner_latents, run_batched(encoder, public[:, None]))
        return nn.Sequential(adapter, decoder)

    own = run.trained("stats-match", lambda: _adversary_autoencoder(owner),
                      lambda r: lambda: image_crops(public, batch, r), matched)
    adapter = matched(own)[0]
    for indices in leaked:
        pairs = lambda r, indices=indices: lambda: random_crops(  # noqa: E731
            owner_tiles[indices], owner_latents[indices], batch, down, r)
        run.trained(f"leak-{len(indices)}-scratch", lambda: build_decoder(owner.config), pairs)
        run.trained(f"leak-{len(indices)}-adapted", lambda: nn.Sequential(
            copy.deepcopy(adapter), copy.deepcopy(own[1])), pairs)
    public_latents = run_batched(owner.encoder, public[:, None])
    run.trained("encoder-known", lambda: build_decoder(owner.config),
                lambda r: lambda: random_crops(public, public_latents, batch, down, r))


def decoder_attack(owner: CAE, prepared: PreparedSet, eval_tiles: int = 24,
                   leaks: Sequence[int] = (1, 4, 16), steps: int = 400, batch: int = 16,
                   seed: int = 0, log: Callable[[str], None] | None = None,
                   state: str | Path | None = None) -> AttackResult:
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
        Numbers of leaked (image, latent) pairs tried (0 leaks: the scenarios without pairs).
    steps
        Adam steps of every training stage (64×64 crops); :func:`owner_budget_steps` gives the
        owner's budget.
    batch
        Crops per step.
    seed
        Seeds the crops, the choice of leaked tiles and weight initialisation.
    log
        Called with one line per finished training stage (its curve).
    state
        Folder where each finished stage is kept (weights and curve); a run restarted with the
        same folder and settings continues after its last finished stage.

    Returns
    -------
    AttackResult
        Settings, wall time, the final scores of every scenario and the training curves.
    """
    rng = np.random.default_rng(seed)
    started = time.perf_counter()
    leaks = [k for k in leaks if k > 0]
    owner_tiles = round_to_8bit(prepared.tiles[prepared.indices("test")])
    public = round_to_8bit(prepared.tiles[prepared.indices("train")])
    if len(owner_tiles) <= max(leaks, default=0):
        raise MicrocaeError(f"{len(owner_tiles)} owner tiles cannot leak {max(leaks)} pairs and "
                            "leave tiles to score")
    order = rng.permutation(len(owner_tiles))
    leaked = [order[:k] for k in leaks]
    evaluation = order[max(leaks, default=0):][:eval_tiles]
    owner_latents = file_latents(owner, owner_tiles)
    identity = {"owner": owner.fingerprint(), "data": prepared.manifest_sha256,
                "eval_tiles": eval_tiles, "leaks": leaks, "steps": steps, "batch": batch,
                "crop": CROP, "seed": seed}
    run = _Stages(owner_tiles[evaluation], owner_latents[evaluation], steps, seed, log,
                  None if state is None else Path(state), identity)
    run.results["owner"] = run.score(owner.decoder)
    run.results["mean-image"] = scores(np.full_like(run.targets, public.mean()), run.targets)
    run.results["latent-view"] = latent_view(run.latents, run.targets, public, owner.downsample)
    _train_adversaries(run, owner, (owner_tiles, owner_latents), public, leaked, batch)
    return AttackResult(
        owner.fingerprint(), prepared.manifest_sha256, len(owner_tiles), len(public),
        len(evaluation), tuple(leaks), steps, batch, CROP, seed,
        round(time.perf_counter() - started - run.fresh + run.training_seconds(), 1),
        run.results, run.curves)
