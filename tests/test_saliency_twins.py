"""Complex twins: textbook float64 replicas, bit-exact real parts, weight sharing, errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import zoo_encoder
from torch import nn

from microcae.models.cae import CAE
from microcae.saliency.engines import complex_step_naive
from microcae.saliency.layers import complexify
from microcae.util.errors import MicrocaeError

RTOL = 1e-12


def complex_input(shape: tuple[int, ...], seed: int, scale: float = 0.5) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.normal(size=shape) + 1j * scale * rng.normal(size=shape)


def run_twin(layer: nn.Module, z: np.ndarray) -> np.ndarray:
    twin = complexify(layer)
    with torch.no_grad():
        re, im = twin((torch.from_numpy(z.real.copy()), torch.from_numpy(z.imag.copy())))
    return re.numpy() + 1j * im.numpy()


def textbook_conv2d(z: np.ndarray, weight: np.ndarray, bias: np.ndarray, stride: int,
                    padding: int, dilation: int) -> np.ndarray:
    n, c, h, w = z.shape
    out_c, _, kh, kw = weight.shape
    padded = np.zeros((n, c, h + 2 * padding, w + 2 * padding), dtype=complex)
    padded[:, :, padding : padding + h, padding : padding + w] = z
    oh = (h + 2 * padding - dilation * (kh - 1) - 1) // stride + 1
    ow = (w + 2 * padding - dilation * (kw - 1) - 1) // stride + 1
    out = np.zeros((n, out_c, oh, ow), dtype=complex)
    for o in range(out_c):
        out[:, o] += bias[o]
        for i in range(c):
            for a in range(kh):
                for b in range(kw):
                    rows = slice(a * dilation, a * dilation + stride * (oh - 1) + 1, stride)
                    cols = slice(b * dilation, b * dilation + stride * (ow - 1) + 1, stride)
                    out[:, o] += weight[o, i, a, b] * padded[:, i, rows, cols]
    return out


def textbook_maxpool(z: np.ndarray, k: int, stride: int) -> np.ndarray:
    n, c, h, w = z.shape
    oh, ow = (h - k) // stride + 1, (w - k) // stride + 1
    out = np.zeros((n, c, oh, ow), dtype=complex)
    for index in np.ndindex(n, c, oh, ow):
        window = z[index[0], index[1], index[2] * stride : index[2] * stride + k,
                   index[3] * stride : index[3] * stride + k].ravel()
        out[index] = window[np.argmax(window.real)]  # first index on ties
    return out


def test_conv2d_twin_matches_textbook_complex_convolution():
    torch.manual_seed(0)
    conv = nn.Conv2d(3, 4, 3, stride=2, padding=2, dilation=2).double()
    z = complex_input((2, 3, 9, 8), seed=1)
    expected = textbook_conv2d(z, conv.weight.detach().numpy(), conv.bias.detach().numpy(), 2, 2, 2)
    np.testing.assert_allclose(run_twin(conv, z), expected, rtol=RTOL, atol=1e-13)


def test_linear_twin_matches_textbook():
    torch.manual_seed(0)
    linear = nn.Linear(5, 3).double()
    z = complex_input((4, 5), seed=2)
    w, b = linear.weight.detach().numpy(), linear.bias.detach().numpy()
    np.testing.assert_allclose(run_twin(linear, z), z @ w.T + b, rtol=RTOL, atol=1e-13)


@pytest.mark.parametrize("slope", [0.0, 0.1])
def test_relu_twins_take_the_mask_from_the_real_part(slope):
    layer = nn.ReLU() if slope == 0 else nn.LeakyReLU(slope)
    z = complex_input((2, 3, 5, 4), seed=3)
    z.real[0, 0, 0, :2] = 0.0  # the kink: slope of the negative side, as torch
    expected = np.where(z.real > 0, z, slope * z)
    np.testing.assert_array_equal(run_twin(layer, z), expected)


@pytest.mark.parametrize("k,stride", [(2, 2), (3, 2), (3, 1)])
def test_maxpool_twin_reads_im_at_the_real_argmax(k, stride):
    z = complex_input((2, 3, 7, 8), seed=4)
    z.real[0, 0, :2, :2] = 1.5  # a tie: the first index wins, as torch's argmax
    np.testing.assert_array_equal(run_twin(nn.MaxPool2d(k, stride), z),
                                  textbook_maxpool(z, k, stride))


@pytest.mark.parametrize("layer,function", [
    (nn.Tanh(), np.tanh),
    (nn.Sigmoid(), lambda z: 1 / (1 + np.exp(-z))),
    (nn.ELU(alpha=0.7), lambda z: np.where(z.real > 0, z, 0.7 * (np.exp(z) - 1))),
])
def test_analytic_twins_equal_the_complex_function(layer, function):
    z = complex_input((3, 4, 5), seed=5, scale=0.8)
    got = run_twin(layer, z)
    # the imaginary part is the complex function's for any step; the real part is the real
    # layer's (Re f(a + ib) = f(a) + O(b²): the same numbers for the tiny steps used)
    np.testing.assert_allclose(got.imag, function(z).imag, rtol=RTOL, atol=1e-14)
    np.testing.assert_array_equal(got.real, layer(torch.from_numpy(z.real.copy())).numpy())
    tiny = z.real + 1e-20j * z.imag
    np.testing.assert_allclose(run_twin(layer, tiny), function(tiny), rtol=RTOL, atol=1e-30)


def test_analytic_twin_has_no_overflow_far_in_the_tails():
    z = np.array([-800.0, -30.0, 30.0, 800.0]) + 1e-30j
    got = run_twin(nn.Tanh(), z)
    decay = np.exp(-2 * np.abs(z.real))
    sech2 = 4 * decay / (1 + decay) ** 2  # where 1 - tanh² has rounded to 0 already at |a| = 30
    np.testing.assert_allclose(got.imag / 1e-30, sech2, rtol=RTOL, atol=0)


def test_linear_layers_match_textbook_complex_versions():
    z = complex_input((2, 3, 6, 8), seed=6)
    averaged = z.reshape(2, 3, 3, 2, 4, 2).mean(axis=(3, 5))
    np.testing.assert_allclose(run_twin(nn.AvgPool2d(2), z), averaged, rtol=RTOL)
    np.testing.assert_allclose(run_twin(nn.AdaptiveAvgPool2d(1), z),
                               z.mean(axis=(2, 3), keepdims=True), rtol=RTOL)
    nearest = z.repeat(2, axis=2).repeat(2, axis=3)
    np.testing.assert_array_equal(run_twin(nn.Upsample(scale_factor=2), z), nearest)
    np.testing.assert_array_equal(run_twin(nn.Flatten(), z), z.reshape(2, -1))
    np.testing.assert_array_equal(run_twin(nn.Identity(), z), z)
    np.testing.assert_array_equal(run_twin(nn.Dropout(0.5).eval(), z), z)


def test_batchnorm_twin_shifts_the_real_part_only():
    bn = nn.BatchNorm2d(3).double().eval()
    with torch.no_grad():
        bn.running_mean.copy_(torch.tensor([0.1, -0.2, 0.3]))
        bn.running_var.copy_(torch.tensor([0.5, 2.0, 1.5]))
        bn.weight.copy_(torch.tensor([1.5, -0.5, 2.0]))
        bn.bias.copy_(torch.tensor([0.2, 0.0, -1.0]))
    z = complex_input((2, 3, 4, 4), seed=7)
    mean, var = bn.running_mean.numpy(), bn.running_var.numpy()
    gamma, beta = bn.weight.detach().numpy(), bn.bias.detach().numpy()
    per_channel = (slice(None), None, None)
    expected = (gamma[per_channel] * (z - mean[per_channel]) / np.sqrt(var + bn.eps)[per_channel]
                + beta[per_channel])
    np.testing.assert_allclose(run_twin(bn, z), expected, rtol=RTOL, atol=1e-14)


@pytest.mark.filterwarnings("ignore:.*torch.jit.script.*:FutureWarning")
def test_bilinear_upsample_twin_is_the_derivative():
    torch.manual_seed(0)
    layer = nn.Upsample(scale_factor=2, mode="bilinear")
    re, im = torch.rand(2, 3, 5, 4, dtype=torch.float64), torch.rand(2, 3, 5, 4).double()
    with torch.no_grad():
        _, got = complexify(layer)((re, im))
    _, expected = torch.func.jvp(layer, (re,), (im,))
    torch.testing.assert_close(got, expected, rtol=RTOL, atol=1e-15)


@pytest.mark.parametrize("make", [lambda: CAE().encoder.double().eval(), zoo_encoder])
def test_real_part_equals_the_real_model_bit_for_bit(make):
    encoder = make()
    x = torch.rand(2, 1, 48, 32, dtype=torch.float64)
    im = torch.rand(6, 1, 48, 32, dtype=torch.float64) * 1e-24
    with torch.no_grad():
        re, _ = complexify(encoder)((x, im))
        assert torch.equal(re, encoder(x))


def test_k_imaginary_parts_per_real_sample_equal_separate_complex_passes():
    encoder = zoo_encoder()
    twin = complexify(encoder)
    x = torch.rand(2, 1, 32, 32, dtype=torch.float64)
    im = torch.rand(2 * 3, 1, 32, 32, dtype=torch.float64)
    with torch.no_grad():
        _, together = twin((x, im))
        for sample in range(2):
            for k in range(3):
                row = sample * 3 + k
                _, alone = twin((x[sample : sample + 1], im[row : row + 1]))
                torch.testing.assert_close(together[row : row + 1], alone, rtol=1e-13, atol=0)


def test_twin_shares_weights_and_leaves_the_model_unchanged():
    encoder = CAE().encoder.eval()
    before = {k: v.clone() for k, v in encoder.state_dict().items()}
    twin = complexify(encoder)
    assert {id(p) for p in twin.parameters()} == {id(p) for p in encoder.parameters()}
    with torch.no_grad():
        twin((torch.rand(1, 1, 32, 32), torch.rand(2, 1, 32, 32)))
    assert all(torch.equal(before[k], v) for k, v in encoder.state_dict().items())
    assert not any(m._forward_hooks or m._forward_pre_hooks or m._backward_hooks
                   for m in encoder.modules())


def test_unsupported_layer_is_named_with_its_path():
    encoder = nn.Sequential(nn.Conv2d(1, 2, 3), nn.Sequential(nn.ReLU(), nn.GELU()))
    with pytest.raises(MicrocaeError, match=r"layer 'encoder\.1\.1' \(GELU\) has no complex twin"):
        complexify(encoder)


@pytest.mark.parametrize("layer,message", [
    (nn.Dropout(0.5), "training mode"),
    (nn.BatchNorm2d(2), "training mode"),
    (nn.ReLU(inplace=True), "in-place"),
    (nn.Upsample(scale_factor=2, mode="bicubic"), "bicubic"),
])
def test_unsupported_settings_are_rejected(layer, message):
    with pytest.raises(MicrocaeError, match=message):
        complexify(nn.Sequential(nn.Conv2d(1, 2, 3), layer))


def small_smooth_encoder() -> nn.Sequential:
    torch.manual_seed(1)
    return nn.Sequential(nn.Conv2d(1, 3, 3, padding=1), nn.Tanh(), nn.MaxPool2d(2),
                         nn.Conv2d(3, 2, 3, padding=1), nn.ELU(), nn.MaxPool2d(2)).double().eval()


def test_step_size_from_1e_8_to_1e_200_gives_the_same_derivative():
    encoder = small_smooth_encoder()
    x = torch.rand(1, 1, 12, 8, dtype=torch.float64)
    reference = complex_step_naive(encoder, x, h=1e-24)
    for h in (1e-8, 1e-50, 1e-100, 1e-200):
        torch.testing.assert_close(complex_step_naive(encoder, x, h=h), reference,
                                   rtol=1e-14, atol=0)


def test_study_step_in_complex64_is_exact_to_single_precision():
    encoder = small_smooth_encoder()
    x = torch.rand(1, 1, 12, 8, dtype=torch.float64)
    truth = complex_step_naive(encoder, x, h=1e-24)
    single = complex_step_naive(encoder, x.float(), h=1e-24, precision="complex64")
    assert single.dtype == torch.float32
    torch.testing.assert_close(single.double(), truth, rtol=2e-6, atol=0)
    assert encoder[0].weight.dtype == torch.float64  # converted on a copy


@pytest.mark.parametrize(("kernel", "padding", "pool", "size"), [
    (3, 1, 2, (20, 26)), (5, 2, 3, (23, 19)), (3, 0, 2, (17, 16))])
@pytest.mark.parametrize("channels_last", [False, True])
def test_fused_input_stage_transposes_like_the_two_twins(kernel, padding, pool, size,
                                                         channels_last):
    from microcae.saliency.canonizers import InputConvPoolTwin, ReLUMaxPoolTwin
    from microcae.saliency.twins import Conv2dTwin

    torch.manual_seed(3)
    conv, relu, maxpool = nn.Conv2d(1, 6, kernel, padding=padding).double(), nn.ReLU(), \
        nn.MaxPool2d(pool)
    fused = complexify(nn.Sequential(conv, relu, maxpool)).twins
    assert len(fused) == 1 and isinstance(fused[0], InputConvPoolTwin)
    separate = [Conv2dTwin(conv), ReLUMaxPoolTwin(relu, maxpool)]
    x = torch.randn(2, 1, *size, dtype=torch.float64)
    out, state = fused[0].real(x)
    mid, conv_state = separate[0].real(x)
    reference_out, pool_state = separate[1].real(mid)
    assert torch.equal(out, reference_out)
    ct = torch.randn(2 * 5, *out.shape[1:], dtype=torch.float64)
    if channels_last:
        ct = ct.contiguous(memory_format=torch.channels_last)
    expected = separate[0].cotangent(conv_state, separate[1].cotangent(pool_state, ct))
    got = fused[0].cotangent(state, ct)
    assert got.shape == (10, 1, *size)
    torch.testing.assert_close(got, expected, rtol=1e-12, atol=1e-12)
    im = torch.randn(10, 1, *size, dtype=torch.float64)
    torch.testing.assert_close(fused[0].tangent(state, im),
                               separate[1].tangent(pool_state, separate[0].tangent(conv_state, im)))


def test_only_a_one_channel_input_convolution_is_fused():
    from microcae.saliency.canonizers import InputConvPoolTwin

    twins = complexify(nn.Sequential(nn.Conv2d(2, 4, 3, padding=1), nn.ReLU(),
                                     nn.MaxPool2d(2))).twins
    assert not any(isinstance(t, InputConvPoolTwin) for t in twins)


TWO_STAGE_GEOMETRIES = [  # (conv1 kernel, padding, pool1), (conv2 kernel, padding, pool2), size
    ((3, 1, 2), (3, 1, 2), (36, 44)),
    (((3, 5), (1, 2), (2, 3)), ((5, 3), (2, 0), (3, 2)), (41, 50)),
    ((3, 0, 2), (3, 0, 2), (35, 29)),
    ((3, 1, 4), (3, 1, 3), (47, 45)),
]


def two_stage(first, second, seed=0):
    torch.manual_seed(seed)
    (k1, p1, s1), (k2, p2, s2) = first, second
    return nn.Sequential(nn.Conv2d(1, 5, k1, padding=p1), nn.ReLU(), nn.MaxPool2d(s1),
                         nn.Conv2d(5, 4, k2, padding=p2), nn.ReLU(), nn.MaxPool2d(s2)).double()


@pytest.mark.parametrize(("first", "second", "size"), TWO_STAGE_GEOMETRIES)
def test_fused_two_stages_transpose_like_the_twins_in_turn(first, second, size):
    from microcae.saliency.canonizers import InputConvPoolTwin, InputTwoStageTwin, ReLUMaxPoolTwin
    from microcae.saliency.twins import Conv2dTwin

    encoder = two_stage(first, second)
    fused = complexify(encoder).twins
    assert len(fused) == 1 and isinstance(fused[0], InputTwoStageTwin)
    parts = [InputConvPoolTwin(Conv2dTwin(encoder[0]), ReLUMaxPoolTwin(encoder[1], encoder[2])),
             Conv2dTwin(encoder[3]), ReLUMaxPoolTwin(encoder[4], encoder[5])]
    x = torch.randn(2, 1, *size, dtype=torch.float64)
    out, state = fused[0].real(x)
    states, value = [], x
    for part in parts:
        value, part_state = part.real(value)
        states.append(part_state)
    assert torch.equal(out, value) and torch.equal(out, encoder(x))
    ct = torch.randn(2 * 3, *out.shape[1:], dtype=torch.float64)
    expected = ct
    for part, part_state in zip(reversed(parts), reversed(states), strict=True):
        expected = part.cotangent(part_state, expected)
    got = fused[0].cotangent(state, ct.contiguous(memory_format=torch.channels_last))
    assert got.shape == (6, 1, *size)
    torch.testing.assert_close(got, expected, rtol=1e-12, atol=1e-12 * expected.abs().max().item())
    torch.testing.assert_close(fused[0].cotangent(state, ct), got, rtol=1e-13, atol=0)  # cached
    im = torch.randn(6, 1, *size, dtype=torch.float64)
    reference = im
    for part, part_state in zip(parts, states, strict=True):
        reference = part.tangent(part_state, reference)
    torch.testing.assert_close(fused[0].tangent(state, im), reference, rtol=1e-13, atol=0)


def test_fused_two_stages_skip_dead_channels(monkeypatch):
    from microcae.saliency import canonizers

    monkeypatch.setattr(canonizers, "BLOCK", 4)  # several blocks on a small image
    encoder = two_stage((3, 1, 2), (3, 1, 2), seed=2)
    with torch.no_grad():
        encoder[3].bias[1] = -1e3  # channel 1 of the second stage never positive: dead
    twin = complexify(encoder).twins[0]
    x = torch.rand(1, 1, 64, 48, dtype=torch.float64)
    out, state = twin.real(x)
    assert not (out[:, 1] > 0).any()
    ct = torch.randn(3, *out.shape[1:], dtype=torch.float64)
    jacobian = torch.func.jacrev(lambda z: encoder(z[None])[0])(x[0])  # (C, h, w, 1, H, W)
    expected = torch.einsum("kchw,chwxy->kxy", ct, jacobian[:, :, :, 0])
    got = twin.cotangent(state, ct)[:, 0]
    torch.testing.assert_close(got, expected, rtol=1e-12, atol=1e-12 * expected.abs().max().item())
    cached = {key: entry[1] for key, entry in state[3][torch.float64].items() if key != "bytes"}
    assert len(cached) == 12 and all(1 not in live.tolist() for live in cached.values())
