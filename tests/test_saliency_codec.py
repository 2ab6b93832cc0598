"""Saliency of microcae's codec: the GDN twin, every exact engine on the analysis transform.

The codec's encoder (4 × conv 5×5 stride 2 with GDN between) is mapped with the real
:class:`microcae.models.gdn.GDN` (non-negative reparametrisation, fused forward and backward),
checked against textbook float64 formulas, torch's autograd through the fused GDN and
``torch.func.jacrev`` column norms.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import eval_batchnorm, synthetic_micrograph, write_png
from torch import nn

from microcae.cli import main
from microcae.data.images import read_micrograph
from microcae.models.gdn import GDN, PEDESTAL
from microcae.models.hyperprior import HyperpriorConfig, build_encoder
from microcae.models.registry import BUNDLED, load_model
from microcae.saliency import registry, relevance
from microcae.saliency.engines import passes, reverse_macs
from microcae.saliency.footprint import encoder_footprint
from microcae.saliency.kinks import kink_pixels
from microcae.saliency.layers import LayerKind, complexify, pointwise_reach, register_layer_kind
from microcae.saliency.patches import patch_macs, patch_squares
from microcae.saliency.twins import GDNTwin
from microcae.util.errors import MicrocaeError

pytestmark = pytest.mark.filterwarnings("ignore:.*torch.jit.script.*:FutureWarning")

ENGINES = ["complex-step-coloured", "complex-step-naive", "jvp", "patches", "vjp"]
HAS_CODEC = "codec-2" in BUNDLED and BUNDLED["codec-2"].is_file()


def jacobian_norms(encoder: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Reference: the full Jacobian per image by ``torch.func.jacrev``, column norms."""
    rows = []
    for image in x:
        jac = torch.func.jacrev(lambda z: encoder(z[None])[0])(image)
        rows.append(jac.detach().reshape(-1, image.numel()).norm(dim=0).view(image.shape[1:]))
    return torch.stack(rows)


def randomise(layer: GDN, seed: int) -> GDN:
    """Random stored parameters; some ``gamma_sqrt`` below the bound (effective gamma 0 there)."""
    generator = torch.Generator().manual_seed(seed)
    channels = layer.channels
    with torch.no_grad():
        layer.beta_sqrt.copy_(0.6 + torch.rand(channels, generator=generator))
        layer.gamma_sqrt.copy_(0.7 * torch.rand(channels, channels, generator=generator) - 0.1)
    return layer


def effective(layer: GDN) -> tuple[np.ndarray, np.ndarray]:
    """(gamma, beta) from the stored square roots, written out (Ballé 2017, sec. 3.3)."""
    gamma_sqrt = layer.gamma_sqrt.detach().double().numpy()
    beta_sqrt = layer.beta_sqrt.detach().double().numpy()
    gamma = np.maximum(gamma_sqrt, PEDESTAL**0.5) ** 2 - PEDESTAL
    beta = np.maximum(beta_sqrt, (layer.beta_min + PEDESTAL) ** 0.5) ** 2 - PEDESTAL
    return gamma, beta


def small_codec_encoder(seed: int = 0) -> nn.Sequential:
    """The codec's analysis transform (``build_encoder``) with few channels, random GDNs."""
    torch.manual_seed(seed)
    encoder = build_encoder(HyperpriorConfig(N=6, M=4)).double().eval()
    for position, layer in enumerate(encoder):
        if isinstance(layer, GDN):
            randomise(layer, seed + position)
    return encoder


def gdn_igdn_encoder() -> nn.Sequential:
    """GDN and IGDN (the synthesis transform's inverse) between strided convolutions."""
    torch.manual_seed(7)
    return nn.Sequential(
        nn.Conv2d(1, 6, 5, stride=2, padding=2), randomise(GDN(6), 1),
        nn.Conv2d(6, 6, 5, stride=2, padding=2), randomise(GDN(6, inverse=True), 2),
        nn.Conv2d(6, 4, 5, stride=2, padding=2),
    ).double().eval()


@pytest.fixture(scope="module")
def bundled_codec() -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    """codec-2's encoder in float64, a 32×32 input and its jacrev column norms."""
    if not HAS_CODEC:
        pytest.skip("bundled codec not available")
    encoder = load_model("codec-2").encoder.double()
    x = torch.rand(1, 1, 32, 32, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    return encoder, x, jacobian_norms(encoder, x)


# --------------------------------------------------------------------------------- the GDN twin
@pytest.mark.parametrize("inverse", [False, True])
@pytest.mark.parametrize("channels_last", [False, True])
def test_complex_step_through_the_codec_gdn_is_the_analytic_derivative(inverse, channels_last):
    layer = randomise(GDN(4, inverse=inverse), seed=3).double()
    gamma, beta = effective(layer)
    rng = np.random.default_rng(0)
    a, v = rng.normal(size=(2, 4, 5, 6)), rng.normal(size=(2, 3, 4, 5, 6))  # K = 3 per sample
    power = 0.5 if inverse else -0.5
    norm = np.einsum("ij,njhw->nihw", gamma, a * a) + beta[None, :, None, None]
    mixed = np.einsum("ij,nkjhw->nkihw", gamma, 2 * a[:, None] * v)
    slope = power * norm[:, None] ** (power - 1)  # r'(n)
    analytic = v * norm[:, None] ** power + a[:, None] * slope * mixed
    re = torch.from_numpy(a)
    if channels_last:  # the fused GDN's row layout
        re = re.contiguous(memory_format=torch.channels_last)
    h = 1e-24
    twin = complexify(layer)
    with torch.no_grad():
        out, im = twin((re, torch.from_numpy(h * v.reshape(6, 4, 5, 6))))
        assert torch.equal(out, layer(re))  # the real part is the fused forward itself
    np.testing.assert_allclose(im.numpy() / h, analytic.reshape(6, 4, 5, 6), rtol=1e-12,
                               atol=1e-14)
    # its transpose equals the fused GDN's hand-written backward (plain autograd)
    ct = torch.from_numpy(rng.normal(size=(6, 4, 5, 6)))
    with torch.no_grad():
        _, state = twin.real(re)
        got = twin.cotangent(state, ct)
    for row in range(6):
        x = re[row // 3 : row // 3 + 1].detach().clone().requires_grad_(True)
        (expected,) = torch.autograd.grad(layer(x), x, ct[row : row + 1])
        torch.testing.assert_close(got[row : row + 1], expected, rtol=1e-12, atol=1e-14)


def test_gdn_twin_is_the_complex_function_with_z_times_z():
    layer = randomise(GDN(3), seed=5).double()
    gamma, beta = effective(layer)
    rng = np.random.default_rng(1)
    a, b = rng.normal(size=(2, 3, 4, 5)), 0.5 * rng.normal(size=(2, 3, 4, 5))  # a large step
    z = a + 1j * b
    norm = np.einsum("ij,njhw->nihw", gamma, z * z) + beta[None, :, None, None]  # z·z, not |z|²
    with torch.no_grad():
        _, im = complexify(layer)((torch.from_numpy(a), torch.from_numpy(b)))
    np.testing.assert_allclose(im.numpy(), (z / np.sqrt(norm)).imag, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("inverse", [False, True])
def test_the_fused_gdn_works_under_torch_func(inverse):
    layer = randomise(GDN(3, inverse=inverse), seed=4).double()
    x = torch.randn(2, 3, 4, 5, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    v = torch.randn(x.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    for layout in (torch.contiguous_format, torch.channels_last):
        inputs = x.contiguous(memory_format=layout)
        torch.testing.assert_close(torch.func.jacrev(layer)(inputs),
                                   torch.func.jacrev(layer.reference)(inputs), rtol=1e-13,
                                   atol=1e-15)
        tangent = torch.func.jvp(layer, (inputs,), (v,))[1]  # the fused GDN's forward mode
        torch.testing.assert_close(tangent, torch.func.jvp(layer.reference, (x,), (v,))[1],
                                   rtol=1e-13, atol=1e-15)
    # forward mode in the parameters too (the fused path: they require grad)
    tangents = {name: torch.randn(p.shape, dtype=torch.float64)
                for name, p in layer.named_parameters()}
    with torch.autograd.forward_ad.dual_level():
        duals = {name: torch.autograd.forward_ad.make_dual(p.detach().requires_grad_(True),
                                                           tangents[name])
                 for name, p in layer.named_parameters()}
        fused = torch.autograd.forward_ad.unpack_dual(
            torch.func.functional_call(layer, duals, (x,))).tangent
    expected = torch.func.jvp(lambda params: torch.func.functional_call(layer, params, (x,)),
                              ({n: p.detach() for n, p in layer.named_parameters()},),
                              (tangents,))[1]
    torch.testing.assert_close(fused, expected, rtol=1e-12, atol=1e-14)


# ------------------------------------------------------------------------- engines on the codec
ARCHITECTURES = {"codec": small_codec_encoder, "gdn-igdn": gdn_igdn_encoder}


@pytest.mark.parametrize("method", ENGINES)
@pytest.mark.parametrize("name", sorted(ARCHITECTURES))
def test_engines_equal_jacrev_on_codec_transforms(name, method):
    encoder = ARCHITECTURES[name]()
    shape = (32, 24) if method == "complex-step-naive" else (48, 40)
    x = torch.rand(1, 1, *shape, dtype=torch.float64, generator=torch.Generator().manual_seed(5))
    expected = jacobian_norms(encoder, x)
    got = relevance(encoder, x, method)
    assert got.shape == (1, *shape) and got.dtype == torch.float64
    torch.testing.assert_close(got, expected, rtol=1e-10, atol=1e-12 * expected.max().item())


@pytest.mark.parametrize("method", ENGINES)
def test_engines_equal_jacrev_on_the_bundled_codec_encoder(bundled_codec, method):
    encoder, x, expected = bundled_codec
    torch.testing.assert_close(relevance(encoder, x, method), expected, rtol=1e-10,
                               atol=1e-13 * expected.max().item())


def test_complex64_on_the_bundled_codec_encoder_is_exact_to_single_precision(bundled_codec):
    encoder, x, expected = bundled_codec
    got = relevance(encoder, x.float(), "vjp", precision="complex64")  # on a converted copy
    assert got.dtype == torch.float32 and encoder[0].weight.dtype == torch.float64
    torch.testing.assert_close(got.double(), expected, rtol=2e-5,
                               atol=1e-6 * expected.max().item())


def test_codec_footprint_and_pass_counts_on_a_tile():
    encoder = build_encoder(HyperpriorConfig(N=4, M=96)).eval()
    x = torch.zeros(1, 1, 256, 256)
    footprint = encoder_footprint(encoder, x)
    first, last = footprint.rows.supports()
    assert (last - first + 1)[2:-2].tolist() == [61] * 12  # 1 + 4·(1 + 2 + 4 + 8)
    assert footprint.forward_periods == (61, 61) and footprint.reverse_periods == (4, 4)
    assert passes(encoder, x, "vjp") == 4 * 4 * 96
    assert passes(encoder, x, "jvp") == passes(encoder, x, "complex-step-coloured") == 61 * 61
    assert passes(encoder, x, "complex-step-naive") == 256 * 256
    assert passes(encoder, x, "patches") == passes(encoder, x, "complex-step") == 1  # fastest


def test_gdn_has_no_kinks_and_the_engines_leave_the_codec_unchanged():
    encoder = small_codec_encoder(1)
    before = {k: v.clone() for k, v in encoder.state_dict().items()}
    x = torch.rand(1, 1, 32, 32, dtype=torch.float64)
    x[:, :, 8:24, 8:24] = 0.0  # zeros are smooth for GDN (no ReLU)
    assert not kink_pixels(encoder, x).any()
    for method in ("vjp", "jvp"):
        relevance(encoder, x, method)
    assert all(torch.equal(before[k], v) for k, v in encoder.state_dict().items())
    assert all(p.grad is None for p in encoder.parameters())


def test_the_gradient_baseline_runs_through_the_fused_gdn_backward():
    encoder = small_codec_encoder(2)
    x = torch.rand(2, 1, 32, 32, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    got = relevance(encoder, x, "gradient")
    for n in range(2):
        latent = encoder(x[n : n + 1]).detach().flatten()
        jac = torch.func.jacrev(lambda z: encoder(z[None]).flatten())(x[n]).reshape(
            latent.numel(), -1)
        expected = (latent @ jac / latent.norm()).abs().view(32, 32)  # |J^T f / ||f|| |
        torch.testing.assert_close(got[n], expected, rtol=1e-10, atol=1e-14)


@pytest.mark.parametrize("method", ["gbp", "lrp-w2", "lrp-zbeta"])
def test_relu_network_baselines_refuse_gdn_in_one_line(method):
    with pytest.raises(MicrocaeError, match=rf"method '{method}' is defined for encoders of "
                                            r".*not for layer 'encoder\.1' \(GDN\)"):
        relevance(small_codec_encoder(), torch.rand(1, 1, 32, 32, dtype=torch.float64), method)


def test_compare_defaults_to_the_methods_defined_for_the_encoder():
    from microcae.evaluation.comparison import CONTROLS, PREFERRED_METHODS, default_methods
    from microcae.models.cae import CAE

    relu_only = {"gbp", "lrp-w2", "lrp-zbeta"}
    codec_methods = default_methods(small_codec_encoder())
    assert codec_methods == tuple(m for m in PREFERRED_METHODS if m not in relu_only) + CONTROLS
    assert "complex-step" in codec_methods and "gradient" in codec_methods
    assert default_methods(CAE().encoder) == default_methods()
    assert relu_only <= set(default_methods())


# ---------------------------------------------------------------------------- patches engine
def pointwise_zoo() -> nn.Sequential:
    """Every pointwise layer kind between convolutions with odd kernels, strides and dilation."""
    torch.manual_seed(9)
    bn = eval_batchnorm(4)
    return nn.Sequential(
        nn.Conv2d(1, 4, (3, 5), stride=(1, 2), padding=(1, 2)), bn, nn.LeakyReLU(0.1),
        nn.Sequential(nn.Conv2d(4, 4, 3, padding=2, dilation=2), nn.Tanh()),
        nn.Conv2d(4, 3, 3, stride=(2, 1)), nn.ELU(0.7), randomise(GDN(3), 11), nn.Sigmoid(),
        nn.Conv2d(3, 3, 1), nn.ReLU(), nn.Dropout(0.3), nn.Identity(),
        randomise(GDN(3, inverse=True), 12), nn.Conv2d(3, 2, 3, stride=2, padding=1),
    ).double().eval()


@pytest.mark.parametrize("shape", [(29, 37), (40, 24)])
def test_patches_equal_jacrev_on_every_pointwise_layer_and_odd_geometry(shape):
    encoder = pointwise_zoo()
    x = torch.rand(2, 1, *shape, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(relevance(encoder, x, "patches"), jacobian_norms(encoder, x),
                               rtol=1e-10, atol=0)


def test_patches_on_pointwise_layers_only_in_blocks():
    encoder = nn.Sequential(randomise(GDN(1), 13), nn.Tanh()).double().eval()
    x = torch.rand(1, 1, 9, 7, dtype=torch.float64, generator=torch.Generator().manual_seed(4))
    expected = jacobian_norms(encoder, x) ** 2
    for chunk in (None, 4):  # one block; blocks of 2 × 2 pixels, each on its own window
        torch.testing.assert_close(patch_squares(encoder, x, chunk=chunk), expected,
                                   rtol=1e-12, atol=0)


def test_patch_blocks_and_unit_partitions_add_up_to_the_squared_relevance():
    encoder = small_codec_encoder(4)
    x = torch.rand(1, 1, 64, 48, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    expected = jacobian_norms(encoder, x) ** 2  # latent grid 4 × 3
    for chunk in (3, 5):  # blocks of units, each on its own window of x
        torch.testing.assert_close(patch_squares(encoder, x, chunk=chunk), expected,
                                   rtol=1e-12, atol=0)
    bands, columns = [range(0, 1), range(1, 4)], [range(0, 2), range(2, 3)]
    parts = sum(patch_squares(encoder, x, rows, cols) for rows in bands for cols in columns)
    torch.testing.assert_close(parts, expected, rtol=1e-12, atol=0)


def test_patches_refuse_other_layers_in_one_line():
    encoder = nn.Sequential(nn.Conv2d(1, 2, 3), nn.ReLU(), nn.MaxPool2d(2)).double()
    with pytest.raises(MicrocaeError, match=r"engine 'patches' needs an encoder of convolutions "
                                            r"and pointwise layers: layer 'encoder\.2' "
                                            r"\(MaxPool2d\) is neither.*; use 'vjp'"):
        relevance(encoder, torch.rand(1, 1, 16, 16, dtype=torch.float64), "patches")
    assert patch_macs(encoder, torch.zeros(1, 1, 16, 16)) is None


def test_the_study_method_runs_the_cheapest_exact_engine_for_each_encoder():
    from microcae.models.cae import CAE

    tile = torch.zeros(1, 1, 256, 256)
    codec = build_encoder(HyperpriorConfig(N=64, M=96)).eval()
    assert patch_macs(codec, tile) < reverse_macs(codec, tile) / 10  # 69 G against 1 T
    assert registry.fastest_exact(codec, tile) == "patches"
    assert registry.fastest_exact(CAE().encoder, tile) == "vjp"  # max-pools: no patches
    deep = nn.Sequential(*[nn.Conv2d(1 if i == 0 else 4, 4, 5, stride=2 if i < 4 else 1,
                                     padding=2) for i in range(8)], nn.Conv2d(4, 1, 5))
    assert patch_macs(deep, tile) > reverse_macs(deep, tile)  # large field, one channel
    assert registry.fastest_exact(deep, tile) == "vjp"
    assert registry.fastest_exact() == "vjp"  # without an encoder: the study's
    from microcae.pipelines.batch.jobs import saliency_job

    assert saliency_job(encoder=codec).options == {"method": "patches"}  # batch picks it too
    assert saliency_job(encoder=CAE().encoder).options == {"method": "vjp"}


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("method", ["patches", "vjp", "jvp"])
def test_codec_engines_on_the_gpu_agree_with_the_cpu(method):
    encoder = small_codec_encoder(5)
    x = torch.rand(2, 1, 64, 48, dtype=torch.float64, generator=torch.Generator().manual_seed(6))
    on_cpu = relevance(encoder, x, method)
    on_gpu = relevance(encoder.cuda(), x.cuda(), method)
    assert on_gpu.device.type == "cuda"
    torch.testing.assert_close(on_gpu.cpu(), on_cpu, rtol=1e-10,
                               atol=1e-12 * on_cpu.abs().max().item())


# ------------------------------------------------------------------------------ whole images
def test_whole_mode_on_the_codec_in_pieces_equals_one_pass(monkeypatch):
    from microcae.saliency import maps

    encoder = small_codec_encoder(3)
    pixels = synthetic_micrograph(100, 60, seed=4).astype(np.float64) / 255
    whole = torch.from_numpy(np.pad(pixels, ((0, 12), (0, 4)), mode="symmetric"))[None, None]
    expected = relevance(encoder, whole, "vjp")[0, :100, :60].numpy()  # latent stride 16
    monkeypatch.setattr(maps, "WHOLE_PIXELS", 40 * whole.shape[3])  # several blocks of units
    monkeypatch.setattr(maps, "MIN_BAND", 1)
    for method in ("vjp", "patches"):  # blocks of latent units
        pieces = maps.micrograph_relevance(encoder, pixels, method, mode="whole")
        assert pieces.mode == "whole" and pieces.kink_pixels == 0
        np.testing.assert_allclose(pieces.relevance, expected, rtol=1e-6, atol=0)


# ------------------------------------------------------------------------------ command line
@pytest.mark.skipif(not HAS_CODEC, reason="bundled codec not available")
def test_saliency_command_maps_the_bundled_codec_encoder(tmp_path, capsys):
    path = write_png(tmp_path / "wide.png", synthetic_micrograph(16, 264, seed=5))
    out = tmp_path / "out"
    assert main(["saliency", str(path), "--model", "codec-2", "--out", str(out),
                 "--no-progress"]) == 0
    assert "(whole mode), 0 kink-affected pixels" in capsys.readouterr().out
    pixels = read_micrograph(path).pixels
    canvas = torch.from_numpy(np.pad(pixels, ((0, 0), (0, 8)), mode="symmetric"))[None, None]
    expected = relevance(load_model("codec-2").encoder, canvas)[0, :, :264].numpy()  # patches
    np.testing.assert_allclose(np.load(out / "wide.relevance.npy"), expected, rtol=1e-5, atol=0)
    assert (out / "wide.saliency.png").is_file()


@pytest.mark.skipif(not HAS_CODEC, reason="bundled codec not available")
@pytest.mark.parametrize("method", ["gbp", "lrp-w2"])
def test_saliency_command_refuses_relu_baselines_on_the_codec(tmp_path, capsys, method):
    path = write_png(tmp_path / "a.png", synthetic_micrograph(32, 32))
    out = tmp_path / "out"
    rc = main(["saliency", str(path), "--model", "codec-2", "--method", method, "--out",
               str(out), "--no-progress"])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1
    assert err.startswith("microcae: error: ") and "(GDN)" in err
    assert not out.exists() or not any(out.iterdir())


# ---------------------------------------------------------------------- a user's own layer kind
class UserGDN(nn.Module):
    """A user's GDN written from its formula (not a microcae type): x / sqrt(β + Γ(x·x))."""

    def __init__(self, channels: int, seed: int = 0) -> None:
        super().__init__()
        generator = torch.Generator().manual_seed(seed)
        self.beta = nn.Parameter(0.5 + torch.rand(channels, generator=generator))
        self.gamma = nn.Parameter(0.3 * torch.rand(channels, channels, generator=generator))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        norm = nn.functional.conv2d(x * x, self.gamma[:, :, None, None], self.beta)
        return x / norm.sqrt()


def test_a_user_layer_type_is_registered_once_and_then_mapped_exactly(monkeypatch):
    from microcae.saliency import layers

    monkeypatch.setattr(layers, "_BY_TYPE", dict(layers._BY_TYPE))  # undone after the test
    encoder = nn.Sequential(nn.Conv2d(1, 3, 5, stride=2, padding=2), UserGDN(3, seed=1),
                            nn.Conv2d(3, 2, 5, stride=2, padding=2)).double().eval()
    x = torch.rand(1, 1, 24, 20, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    with pytest.raises(MicrocaeError, match=r"layer 'encoder\.1' \(UserGDN\) has no complex twin"):
        relevance(encoder, x, "vjp")
    register_layer_kind(LayerKind((UserGDN,), GDNTwin, pointwise_reach))
    with pytest.raises(ValueError, match="already have a kind"):
        register_layer_kind(LayerKind((UserGDN,), GDNTwin, pointwise_reach))
    with pytest.raises(ValueError, match=r"\['GDN'\] already have a kind"):
        register_layer_kind(LayerKind((GDN,), GDNTwin, pointwise_reach))
    torch.testing.assert_close(relevance(encoder, x, "vjp"), jacobian_norms(encoder, x),
                               rtol=1e-10, atol=0)
