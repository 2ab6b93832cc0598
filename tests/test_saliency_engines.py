"""Engines against torch.func.jacrev column norms, footprints, colourings, kinks, invariants."""

from __future__ import annotations

import pytest
import torch
from conftest import zoo_encoder
from torch import nn

from microcae.models.cae import CAE, CAEConfig
from microcae.models.registry import BUNDLED_MODEL, load_model
from microcae.saliency import METHODS, relevance
from microcae.saliency.engines import passes
from microcae.saliency.footprint import alignment, encoder_footprint
from microcae.saliency.kinks import kink_pixels
from microcae.util.errors import MicrocaeError

pytestmark = pytest.mark.filterwarnings("ignore:.*torch.jit.script.*:FutureWarning")

ENGINES = ["complex-step-coloured", "complex-step-naive", "jvp", "vjp"]
FAST = ["complex-step-coloured", "jvp", "vjp"]


def jacobian_norms(encoder: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Reference: the full Jacobian per image (small inputs only), column norms."""
    rows = []
    for image in x:
        jac = torch.func.jacrev(lambda z: encoder(z[None])[0])(image)
        rows.append(jac.reshape(-1, image.numel()).norm(dim=0).view(image.shape[1:]))
    return torch.stack(rows)


def narrow_cae(seed: int = 0) -> nn.Sequential:
    """The study's 4-stage layout (receptive field 46, stride 16) with few channels: fast."""
    torch.manual_seed(seed)
    return CAE(CAEConfig(channels=(8, 6, 6, 4))).encoder.double().eval()


def briefly_trained_cae() -> nn.Sequential:
    """A 3-stage CAE after 40 Adam steps on smooth random images (non-random weights)."""
    torch.manual_seed(1)
    model = CAE(CAEConfig(channels=(8, 6, 4))).double()
    optimiser = torch.optim.Adam(model.parameters(), lr=1e-2)
    images = torch.nn.functional.avg_pool2d(torch.rand(8, 1, 36, 36, dtype=torch.float64), 5, 1)
    for _ in range(40):
        optimiser.zero_grad()
        loss = torch.nn.functional.mse_loss(model(images)["x_hat"], images)
        loss.backward()
        optimiser.step()
    return model.encoder.eval()


def global_head_encoder() -> nn.Sequential:
    torch.manual_seed(4)
    return nn.Sequential(
        nn.Conv2d(1, 3, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.AdaptiveAvgPool2d(2),
        nn.Flatten(), nn.Linear(12, 5), nn.Tanh(),
    ).double().eval()


ARCHITECTURES = {
    "narrow-cae": (narrow_cae, (48, 64)),
    "trained-cae": (briefly_trained_cae, (64, 48)),
    "zoo": (zoo_encoder, (24, 40)),
    "global-head": (global_head_encoder, (10, 12)),
}


@pytest.mark.parametrize("method", ENGINES)
@pytest.mark.parametrize("name", sorted(ARCHITECTURES))
def test_engines_equal_jacrev_in_float64(name, method):
    make, (height, width) = ARCHITECTURES[name]
    encoder = make()
    if method == "complex-step-naive":  # one pass per pixel: keep it small
        height, width = min(height, 32), min(width, 32)
    seeded = torch.Generator().manual_seed(5)
    x = torch.rand(1, 1, height, width, dtype=torch.float64, generator=seeded)
    expected = jacobian_norms(encoder, x)
    got = relevance(encoder, x, method)
    assert got.shape == (1, height, width) and got.dtype == torch.float64
    assert (expected > 0).double().mean() > 0.5  # not a trivially dead network
    torch.testing.assert_close(got, expected, rtol=1e-10, atol=1e-12 * expected.max().item())


@pytest.mark.parametrize("shape", [(32, 32), (48, 80), (80, 48), (64, 64)])
def test_vjp_equals_jacrev_on_the_study_encoder(shape):
    torch.manual_seed(0)
    encoder = CAE().encoder.double().eval()
    x = torch.rand(1, 1, *shape, dtype=torch.float64)
    torch.testing.assert_close(relevance(encoder, x, "vjp"), jacobian_norms(encoder, x),
                               rtol=1e-10, atol=0)


@pytest.mark.skipif(not BUNDLED_MODEL.is_file(), reason="bundled model not trained yet")
def test_vjp_equals_jacrev_on_the_bundled_trained_model():
    encoder = load_model().encoder.double()
    x = torch.rand(1, 1, 64, 48, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    torch.testing.assert_close(relevance(encoder, x, "vjp"), jacobian_norms(encoder, x),
                               rtol=1e-10, atol=0)


@pytest.mark.parametrize("method", ENGINES)
def test_engines_in_single_precision(method):
    encoder = narrow_cae(2)
    size = (16, 24) if method == "complex-step-naive" else (48, 48)
    x = torch.rand(1, 1, *size, dtype=torch.float64)
    expected = jacobian_norms(encoder, x)
    got = relevance(encoder.float(), x.float(), method)
    assert got.dtype == torch.float32
    torch.testing.assert_close(got.double(), expected, rtol=1e-5, atol=1e-6 * expected.max().item())


def test_coloured_complex_step_equals_the_literal_one_on_64x64():
    encoder = narrow_cae(3)
    x = torch.rand(1, 1, 64, 64, dtype=torch.float64)
    naive = relevance(encoder, x, "complex-step-naive")
    torch.testing.assert_close(relevance(encoder, x, "complex-step-coloured"), naive, rtol=1e-14,
                               atol=0)


@pytest.mark.slow
@pytest.mark.parametrize("method", ["complex-step-coloured", "jvp"])
def test_study_encoder_forward_engines_equal_the_literal_complex_step_on_64x64(method):
    torch.manual_seed(0)
    encoder = CAE().encoder.double().eval()
    x = torch.rand(1, 1, 64, 64, dtype=torch.float64)
    naive = relevance(encoder, x, "complex-step-naive")
    torch.testing.assert_close(relevance(encoder, x, method), naive, rtol=1e-13, atol=0)


@pytest.mark.parametrize("method", FAST)
def test_batched_equals_one_by_one_and_chunking_does_not_matter(method):
    torch.manual_seed(4)
    encoder = CAE(CAEConfig(channels=(4, 4))).encoder.double().eval()
    x = torch.rand(3, 1, 32, 48, dtype=torch.float64)
    together = relevance(encoder, x, method)
    alone = torch.cat([relevance(encoder, x[i : i + 1], method) for i in range(3)])
    assert torch.equal(together, alone)
    torch.testing.assert_close(relevance(encoder, x, method, chunk=7), together,
                               rtol=1e-13, atol=0)


@pytest.mark.parametrize("method", ENGINES)
def test_engines_leave_the_model_unchanged(method):
    encoder = CAE(CAEConfig(channels=(4, 4))).encoder.eval()
    before = {k: v.clone() for k, v in encoder.state_dict().items()}
    strides = [p.stride() for p in encoder.parameters()]
    relevance(encoder, torch.rand(1, 1, 8, 8), method)
    relevance(encoder, torch.rand(1, 1, 8, 8), method, precision="complex128")
    assert all(torch.equal(before[k], v) for k, v in encoder.state_dict().items())
    assert [p.stride() for p in encoder.parameters()] == strides
    assert all(p.grad is None and p.dtype == torch.float32 for p in encoder.parameters())
    assert not encoder.training
    assert not any(m._forward_hooks or m._forward_pre_hooks or m._backward_hooks
                   for m in encoder.modules())


def test_study_footprint_receptive_field_and_pass_counts():
    encoder = CAE().encoder.eval()
    x = torch.zeros(1, 1, 256, 256)
    footprint = encoder_footprint(encoder, x)
    first, last = footprint.rows.supports()
    assert (last - first + 1)[1:-1].tolist() == [46] * 14  # receptive field of a latent unit
    assert (first[2:] - first[1:-1]).tolist() == [16] * 14  # latent stride
    assert alignment(footprint, (256, 256)) == 16
    assert footprint.forward_periods == (46, 46)
    assert footprint.reverse_periods == (3, 3)
    assert passes(encoder, x, "complex-step-naive") == 65536
    assert passes(encoder, x, "complex-step-coloured") == passes(encoder, x, "jvp") == 2116
    assert passes(encoder, x, "complex-step") == 72  # the study's name: the fastest engine
    assert passes(encoder, x, "vjp") == 72


@pytest.mark.parametrize("make", [narrow_cae, zoo_encoder])
def test_derived_footprint_contains_the_true_influence(make):
    encoder = make()
    x = torch.rand(1, 1, 40, 32, dtype=torch.float64)
    footprint = encoder_footprint(encoder, x)
    jac = torch.func.jacrev(encoder)(x)[0]  # (C, h, w, 1, 1, H, W)
    influence = (jac.abs().sum(0) > 0).reshape(*jac.shape[1:3], *x.shape[2:])  # (h, w, H, W)
    rows = torch.arange(influence.shape[0])[:, None]
    cols = torch.arange(influence.shape[1])[:, None]
    lo_r, hi_r = torch.from_numpy(footprint.rows.lo), torch.from_numpy(footprint.rows.hi)
    lo_c, hi_c = torch.from_numpy(footprint.cols.lo), torch.from_numpy(footprint.cols.hi)
    inside_r = (rows >= lo_r) & (rows <= hi_r)
    inside_c = (cols >= lo_c) & (cols <= hi_c)
    allowed = inside_r[:, None, :, None] & inside_c[None, :, None, :]
    assert not (influence & ~allowed).any()


def test_conv_only_footprint_is_tight():
    torch.manual_seed(0)
    encoder = nn.Sequential(nn.Conv2d(1, 2, 3, padding=1), nn.Tanh(),
                            nn.Conv2d(2, 2, 5, stride=2, padding=1)).double()
    x = torch.rand(1, 1, 21, 18, dtype=torch.float64)
    footprint = encoder_footprint(encoder, x)
    jac = torch.func.jacrev(encoder)(x)[0]
    influence = (jac.abs().sum(0) > 0).reshape(*jac.shape[1:3], *x.shape[2:])
    for i in range(21):
        touched = influence[:, :, i, :].any(dim=(1, 2)).nonzero()[:, 0]
        assert (touched.min().item(), touched.max().item()) == (footprint.rows.lo[i],
                                                                footprint.rows.hi[i])


def test_kinks_follow_torch_conventions_and_are_reported():
    torch.manual_seed(0)
    encoder = CAE(CAEConfig(channels=(4, 4))).encoder.double().eval()
    with torch.no_grad():
        encoder[0].bias.zero_()
    x = torch.rand(1, 1, 32, 32, dtype=torch.float64)
    x[:, :, 8:20, 8:20] = 0.0  # first-layer inputs exactly 0 there: ReLU kinks
    affected = kink_pixels(encoder, x)
    assert affected[0, 13, 13] and not affected[0, 0, 31]
    assert 0 < affected.sum() < 32 * 32
    expected = jacobian_norms(encoder, x)  # torch's one-sided conventions
    for method in FAST:
        torch.testing.assert_close(relevance(encoder, x, method), expected, rtol=1e-10, atol=0)


def test_maxpool_ties_are_reported_and_generic_inputs_have_none():
    encoder = nn.Sequential(nn.MaxPool2d(2), nn.Conv2d(1, 2, 3, padding=1)).double()
    x = torch.rand(1, 1, 16, 16, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    assert kink_pixels(encoder, x).sum() == 0
    x[0, 0, 4, 4] = x[0, 0, 4, 5] = 2.0  # a tied maximum in window (2, 2)
    affected = kink_pixels(encoder, x)[0]
    assert affected[4:6, 4:6].all() and affected.sum() == 4
    torch.testing.assert_close(relevance(encoder, x, "vjp"), jacobian_norms(encoder, x),
                               rtol=1e-12, atol=0)


def test_relevance_rejects_bad_requests():
    encoder = CAE(CAEConfig(channels=(4, 4))).encoder.eval()
    with pytest.raises(MicrocaeError, match="unknown relevance method"):
        relevance(encoder, torch.rand(1, 1, 8, 8), "nope")
    with pytest.raises(MicrocaeError, match=r"\(N, 1, H, W\)"):
        relevance(encoder, torch.rand(1, 8, 8), "vjp")
    with pytest.raises(MicrocaeError, match="precision"):
        relevance(encoder, torch.rand(1, 1, 8, 8), "vjp", precision="complex32")
    with pytest.raises(MicrocaeError, match="GELU"):
        relevance(nn.Sequential(nn.Conv2d(1, 1, 3), nn.GELU()), torch.rand(1, 1, 8, 8), "vjp")
    assert set(ENGINES) <= set(METHODS)


def test_literal_complex_step_can_stop_after_some_pixels():
    encoder = narrow_cae(5)
    x = torch.rand(1, 1, 16, 16, dtype=torch.float64)
    full = relevance(encoder, x, "complex-step-naive")
    part = relevance(encoder, x, "complex-step-naive", limit=20)
    assert torch.equal(part.flatten()[:20], full.flatten()[:20])
    assert part.flatten()[20:].isnan().all()


@pytest.mark.parametrize("method", ["complex-step-coloured", "jvp"])
def test_forward_engines_can_stop_after_some_colour_classes(method):
    from microcae.saliency.footprint import pixel_classes

    encoder = narrow_cae(5)
    x = torch.rand(1, 1, 48, 48, dtype=torch.float64)
    periods = encoder_footprint(encoder, x).forward_periods
    full = relevance(encoder, x, method)
    part = relevance(encoder, x, method, limit=100)
    done = pixel_classes((48, 48), periods, range(100), torch.float64).sum(0).bool()
    assert 0 < done.sum() < 48 * 48
    assert torch.equal(part[0][done], full[0][done]) and part[0][~done].isnan().all()


def test_blocks_of_latent_units_add_up_to_the_squared_relevance():
    from microcae.saliency.engines import reverse_squares

    encoder = narrow_cae(6)
    x = torch.rand(1, 1, 80, 48, dtype=torch.float64)
    bands = [range(0, 2), range(2, 3), range(3, 5)]  # the 5 latent rows, unevenly
    columns = [range(0, 1), range(1, 3)]  # and the 3 latent columns
    parts = sum(reverse_squares(encoder, x, rows, cols) for rows in bands for cols in columns)
    torch.testing.assert_close(parts, jacobian_norms(encoder, x) ** 2, rtol=1e-12, atol=0)
    corner = reverse_squares(encoder, x, range(0, 1), range(0, 1))[0]
    assert corner[60:].abs().max() == 0 and corner[:, 40:].abs().max() == 0  # out of reach


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("method", ["vjp", "jvp", "complex-step-coloured", "gbp", "lrp-w2"])
def test_engines_on_the_gpu_agree_with_the_cpu(method):
    torch.manual_seed(0)
    encoder = CAE().encoder.double().eval()
    x = torch.rand(2, 1, 64, 48, dtype=torch.float64)
    on_cpu = relevance(encoder, x, method)
    on_gpu = relevance(encoder.cuda(), x.cuda(), method)
    assert on_gpu.device.type == "cuda"
    torch.testing.assert_close(on_gpu.cpu(), on_cpu, rtol=1e-10,
                               atol=1e-12 * on_cpu.abs().max().item())


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_whole_micrograph_on_the_gpu_agrees_with_the_cpu():
    import numpy as np

    from microcae.saliency.maps import micrograph_relevance

    torch.manual_seed(0)
    encoder = CAE().encoder.eval()
    pixels = np.random.default_rng(0).random((300, 280)).astype(np.float32)
    on_cpu = micrograph_relevance(encoder, pixels, mode="whole")
    on_gpu = micrograph_relevance(encoder.cuda(), pixels, mode="whole")
    np.testing.assert_allclose(on_gpu.relevance, on_cpu.relevance, rtol=1e-4, atol=1e-6)
    assert on_gpu.kink_pixels == on_cpu.kink_pixels
