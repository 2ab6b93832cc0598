"""Faithfulness, microstructure and sanity metrics on constructed cases with known answers."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
from PIL import Image
from scipy.stats import spearmanr
from torch import nn

from microcae.evaluation.labels import find_label_mask
from microcae.metrics.faithfulness import blurred_copy, perturbation_curves, random_order_map
from microcae.metrics.microstructure import (
    IGNORE,
    auroc,
    mass_ratio,
    microstructure_scores,
    otsu_dark,
    sobel_map,
)
from microcae.metrics.sanity import (
    SANITY_THRESHOLD,
    cascading_randomisations,
    randomisation_test,
    spearman,
)
from microcae.models.cae import CAE, CAEConfig
from microcae.saliency import relevance
from microcae.util.errors import MicrocaeError

SIDE = 20  # 400 pixels: one 5 % step is exactly 20 pixels


class KeepPixels(nn.Module):
    """f(x) = x on a fixed set S of pixels, 0 elsewhere: only S matters."""

    def __init__(self, keep: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("keep", keep)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.keep


@pytest.fixture(scope="module")
def constructed() -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    x = torch.rand(1, 1, SIDE, SIDE, generator=generator, dtype=torch.float64)
    keep = torch.zeros(SIDE * SIDE, dtype=torch.float64)
    keep[torch.randperm(SIDE * SIDE, generator=generator)[:20]] = 1.0
    keep = keep.reshape(1, 1, SIDE, SIDE)
    return {"x": x, "keep": keep, "fill": torch.full_like(x, 0.5)}


def test_deletion_of_a_perfect_map_has_the_known_curve(constructed: dict) -> None:
    x, keep, fill = constructed["x"], constructed["keep"], constructed["fill"]
    encoder = KeepPixels(keep)
    curves = perturbation_curves(encoder, x, keep[:, 0], "deletion", decoder=nn.Identity(),
                                 replacement=fill)
    s = keep.bool()
    d = float(torch.linalg.norm(0.5 - x[s]) / torch.linalg.norm(x[s]))
    expected = np.array([[0.0] + [d] * 20])
    np.testing.assert_allclose(curves.fractions, np.arange(21) / 20)
    np.testing.assert_allclose(curves.latent_change, expected, rtol=1e-12)
    np.testing.assert_allclose(curves.auc()["latent"], [d * (1 - 0.05 / 2)], rtol=1e-12)
    # Decoder = identity: the reconstruction is 0.5 on S and 0 elsewhere from step 1 on.
    mse_after = float(((torch.where(s, 0.5, 0.0) - x) ** 2).mean())
    mse_before = float(((x * keep - x) ** 2).mean())
    np.testing.assert_allclose(curves.reconstruction_mse, [[mse_before] + [mse_after] * 20])


def test_deletion_of_the_reversed_map_moves_only_at_the_end(constructed: dict) -> None:
    x, keep, fill = constructed["x"], constructed["keep"], constructed["fill"]
    curves = perturbation_curves(KeepPixels(keep), x, -keep[:, 0], "deletion", replacement=fill)
    s = keep.bool()
    d = float(torch.linalg.norm(0.5 - x[s]) / torch.linalg.norm(x[s]))
    np.testing.assert_allclose(curves.latent_change, [[0.0] * 20 + [d]], atol=1e-15)
    np.testing.assert_allclose(curves.auc()["latent"], [d * 0.05 / 2], rtol=1e-12)
    assert curves.reconstruction_mse is None


def test_insertion_of_a_perfect_map_restores_at_the_first_step(constructed: dict) -> None:
    x, keep, fill = constructed["x"], constructed["keep"], constructed["fill"]
    curves = perturbation_curves(KeepPixels(keep), x, keep[:, 0], "insertion", replacement=fill)
    s = keep.bool()
    d = float(torch.linalg.norm(0.5 - x[s]) / torch.linalg.norm(x[s]))
    np.testing.assert_allclose(curves.latent_change, [[d] + [0.0] * 20], atol=1e-15)


def test_random_order_lies_between_perfect_and_reversed(constructed: dict) -> None:
    x, keep, fill = constructed["x"], constructed["keep"], constructed["fill"]
    encoder = KeepPixels(keep)
    noise = random_order_map((1, SIDE, SIDE), seed=3).double()
    areas = [perturbation_curves(encoder, x, m, "deletion", replacement=fill).auc()["latent"][0]
             for m in (keep[:, 0], noise, -keep[:, 0])]
    assert areas[0] > areas[1] > areas[2]


def test_blurred_copy_is_the_default_replacement(constructed: dict) -> None:
    x, keep = constructed["x"], constructed["keep"]
    curves = perturbation_curves(KeepPixels(keep), x, keep[:, 0], "deletion", steps=1)
    blur = blurred_copy(x)
    s = keep.bool()
    assert blur.shape == x.shape and not torch.allclose(blur, x)
    d = float(torch.linalg.norm(blur[s] - x[s]) / torch.linalg.norm(x[s]))
    np.testing.assert_allclose(curves.latent_change, [[0.0, d]], rtol=1e-12)


def test_auroc_equals_the_pairwise_count() -> None:
    rng = np.random.default_rng(0)
    scores = rng.integers(0, 4, size=30).astype(float)  # many ties
    positive = rng.random(30) < 0.4
    pairs = list(itertools.product(scores[positive], scores[~positive]))
    expected = sum(1.0 if p > n else 0.5 if p == n else 0.0 for p, n in pairs) / len(pairs)
    assert auroc(scores, positive) == pytest.approx(expected, abs=1e-12)
    valid = np.arange(30) >= 10
    sub = list(itertools.product(scores[valid & positive], scores[valid & ~positive]))
    expected_sub = sum(1.0 if p > n else 0.5 if p == n else 0.0 for p, n in sub) / len(sub)
    assert auroc(scores, positive, valid) == pytest.approx(expected_sub, abs=1e-12)
    assert np.isnan(auroc(scores, np.zeros(30, dtype=bool)))


def test_mass_ratio_by_hand() -> None:
    scores = np.array([[4.0, 0.0], [1.0, 1.0]])
    region = np.array([[True, False], [False, False]])
    assert mass_ratio(scores, region) == pytest.approx((4 / 6) / 0.25)
    assert mass_ratio(np.ones((2, 2)), region) == pytest.approx(1.0)
    with pytest.raises(ValueError):
        mass_ratio(-scores, region)


def test_microstructure_scores_on_a_two_phase_image() -> None:
    yy, xx = np.mgrid[:32, :32]
    disk = (yy - 15.5) ** 2 + (xx - 15.5) ** 2 < 8.0**2
    pixels = np.where(disk, 0.2, 0.8)
    dark, threshold = otsu_dark(pixels)
    assert 0.2 <= threshold < 0.8 and np.array_equal(dark, disk)
    exact = microstructure_scores(disk.astype(float), dark)
    assert exact["dark_auroc"] == 1.0
    assert exact["dark_mass_ratio"] == pytest.approx(1 / disk.mean())
    edges = microstructure_scores(sobel_map(pixels), dark)
    assert edges["boundary_auroc"] == 1.0  # Sobel is non-zero exactly next to the disk's rim
    assert np.isnan(edges["label_auroc"])


def test_label_masks_are_found_and_padded(tmp_path) -> None:
    image = tmp_path / "micrograph.jpg"
    labels = np.zeros((3, 6), dtype=np.uint8)
    labels[1, 2:4] = 2
    Image.fromarray(labels).save(tmp_path / "micrograph_labels.png")
    mask = find_label_mask(image, (5, 6))
    assert mask.kind == "phase"
    np.testing.assert_array_equal(mask.labels[:3], labels)
    assert (mask.labels[3:] == IGNORE).all()
    scores = microstructure_scores(mask.labels.clip(0).astype(float), np.zeros((5, 6), bool),
                                   mask.labels, mask.kind)
    assert scores["label_auroc"] == 1.0
    assert find_label_mask(tmp_path / "other.png", (5, 6)) is None
    with pytest.raises(MicrocaeError):
        find_label_mask(image, (2, 6))


def test_spearman_matches_scipy_and_handles_constants() -> None:
    rng = np.random.default_rng(1)
    a, b = rng.random(50), rng.integers(0, 5, 50).astype(float)
    assert spearman(a, b) == pytest.approx(spearmanr(a, b).statistic, abs=1e-12)
    assert spearman(np.ones(4), np.ones(4)) == 1.0
    assert spearman(np.ones(4), a[:4]) == 0.0


def small_encoder() -> nn.Module:
    torch.manual_seed(0)
    return CAE(CAEConfig(channels=(8, 8, 4))).encoder


def test_cascade_randomises_top_down_and_leaves_the_model_alone() -> None:
    encoder = small_encoder()
    state = {k: v.clone() for k, v in encoder.state_dict().items()}
    rng_before = torch.random.get_rng_state()
    steps = cascading_randomisations(encoder, seed=0)
    assert torch.equal(torch.random.get_rng_state(), rng_before)
    assert [name for name, _ in steps] == ["6", "3", "0"]
    for k, (_, copy) in enumerate(steps):
        changed = {key.split(".")[0] for key, value in copy.state_dict().items()
                   if not torch.equal(value, state[key])}
        assert changed == {"6", "3", "0"}.intersection(["6", "3", "0"][: k + 1])
    for key, value in encoder.state_dict().items():
        assert torch.equal(value, state[key])


def test_randomisation_separates_a_real_method_from_constant_and_edge_maps() -> None:
    encoder = small_encoder()
    yy, xx = torch.meshgrid(torch.arange(32.0), torch.arange(32.0), indexing="ij")
    x = (0.5 + 0.3 * torch.sin(xx / 3) * torch.cos(yy / 5)).reshape(1, 1, 32, 32)
    x = x + 0.05 * torch.rand(x.shape, generator=torch.Generator().manual_seed(2))
    real = randomisation_test(lambda e, b: relevance(e, b, "gradient"), encoder, x)
    constant = randomisation_test(lambda e, b: torch.ones(b.shape[0], 32, 32), encoder, x)
    edges = randomisation_test(
        lambda e, b: torch.from_numpy(sobel_map(b[0, 0].numpy()))[None], encoder, x)
    assert real.rho[0, -1] < SANITY_THRESHOLD and real.passed.all()
    np.testing.assert_array_equal(constant.rho, 1.0)
    np.testing.assert_array_equal(edges.rho, 1.0)
    assert not constant.passed.any() and not edges.passed.any()


def test_noise_stability_separates_steady_from_jumpy_maps() -> None:
    from microcae.metrics.stability import noise_stability

    x = torch.rand(2, 1, 32, 32, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    fixed = torch.rand(2, 32, 32, dtype=torch.float64)
    steady = noise_stability(lambda encoder, inputs: fixed, nn.Identity(), x, fixed)
    np.testing.assert_array_equal(steady, [1.0, 1.0])
    identity = lambda encoder, inputs: inputs[:, 0]  # noqa: E731
    small = noise_stability(identity, nn.Identity(), x, x[:, 0], sigma=1e-4)
    large = noise_stability(identity, nn.Identity(), x, x[:, 0], sigma=1.0)
    expected = [spearmanr(x[n, 0].ravel(), (x[n, 0] + noise).abs().ravel())[0] for n, noise in
                enumerate(torch.randn(x.shape, generator=torch.Generator().manual_seed(0),
                                      dtype=torch.float64)[:, 0] * 1.0)]
    np.testing.assert_allclose(large, expected, rtol=1e-12)
    assert np.all(small > 0.99) and np.all(large < 0.5)
