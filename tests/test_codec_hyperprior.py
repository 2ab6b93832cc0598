"""Mean-scale hyperprior codec: GDN, integer hyper-synthesis, tables, range coding, determinism."""

from __future__ import annotations

import copy
import hashlib
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import image_tensor as image
from scipy import stats

import microcae
from microcae.entropy.code_tables import TAIL_MASS, TOTAL, VALUE_MAX, VALUE_MIN
from microcae.entropy.gaussian import decode_stream, encode_stream, gaussian_tables
from microcae.models.gdn import GDN, PEDESTAL
from microcae.models.hyperprior import (
    MAX_Z_POSITIONS,
    HyperpriorCodec,
    HyperpriorConfig,
    pad_to_multiple,
)
from microcae.models.integer_network import FLOAT32_EXACT_LIMIT
from microcae.util.errors import MicrocaeError

GENERATE_EXPECTED = os.environ.get("MICROCAE_GENERATE_EXPECTED") == "1"
EXPECTED = Path(__file__).parent / "expected" / "codec_hyperprior.json"
CFG = HyperpriorConfig(N=8, M=12)


def seeded_model(seed: int = 0, config: HyperpriorConfig = CFG) -> HyperpriorCodec:
    """A random model whose hyper-synthesis is perturbed so that every code path is exercised
    (QReLU clipping at both ends, many different scale indices and means)."""
    torch.manual_seed(seed)
    model = HyperpriorCodec(config)
    with torch.no_grad():
        for layer in (model.hyper_decoder.conv1, model.hyper_decoder.conv2,
                      model.hyper_decoder.conv3):
            layer.weight.mul_(4.0)
            layer.bias.add_(torch.randn_like(layer.bias))
    return model.eval()




pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def updated() -> HyperpriorCodec:
    model = seeded_model()
    model.update()
    return model


# ------------------------------------------------------------------------------------------ GDN
def gdn_loop(x: torch.Tensor, beta: torch.Tensor, gamma: torch.Tensor,
             inverse: bool) -> torch.Tensor:
    """Textbook GDN in float64, one output channel and one input channel at a time."""
    outputs = []
    for i in range(x.shape[1]):
        norm = beta[i] + torch.zeros_like(x[:, 0])
        for j in range(x.shape[1]):
            norm = norm + gamma[i, j] * x[:, j] * x[:, j]
        outputs.append(x[:, i] * torch.sqrt(norm) if inverse else x[:, i] / torch.sqrt(norm))
    return torch.stack(outputs, dim=1)


@pytest.mark.parametrize("inverse", [False, True])
@pytest.mark.parametrize("channels_last", [False, True])
def test_gdn_matches_a_float64_loop_forward_and_backward(inverse, channels_last):
    torch.manual_seed(1)
    layer = GDN(5, inverse=inverse).double()
    with torch.no_grad():
        layer.beta_sqrt.add_(torch.rand(5))
        layer.gamma_sqrt.add_(0.4 * torch.rand(5, 5))
    x = torch.randn(2, 5, 6, 7, dtype=torch.float64)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    x.requires_grad_(True)
    beta, gamma = layer.beta.detach(), layer.gamma.detach()
    assert float(gamma[0, 1]) > 0  # off-diagonal terms take part
    expected = gdn_loop(x.detach(), beta, gamma, inverse)
    out = layer(x)
    torch.testing.assert_close(out, expected, rtol=1e-13, atol=1e-13)
    with torch.no_grad():  # the in-place inference path
        torch.testing.assert_close(layer(x), expected, rtol=1e-13, atol=1e-13)
    torch.testing.assert_close(layer.reference(x).detach(), expected, rtol=1e-13, atol=1e-13)
    # the fused backward against autograd through the loop
    weights = torch.randn_like(expected)
    params = [x, layer.beta_sqrt, layer.gamma_sqrt]
    fused = torch.autograd.grad((out * weights).sum(), params)
    looped = torch.autograd.grad((gdn_loop(x, layer.beta, layer.gamma, inverse) * weights).sum(),
                                 params)
    for a, b in zip(fused, looped, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-11, atol=1e-12)


def test_gdn_parameters_stay_above_their_bounds_after_a_step_that_pushes_them_negative():
    layer = GDN(4, beta_min=1e-3).double()
    optimizer = torch.optim.SGD(layer.parameters(), lr=100.0)
    for _ in range(3):
        optimizer.zero_grad()
        (layer.beta.sum() + layer.gamma.sum()).backward()  # descent lowers beta and gamma
        optimizer.step()
    bound = math.sqrt(1e-3 + PEDESTAL)
    assert torch.all(layer.beta_sqrt < bound) and torch.all(layer.gamma_sqrt < 0)  # raw: pushed
    torch.testing.assert_close(layer.beta, torch.full((4,), 1e-3, dtype=torch.float64))
    gamma = layer.gamma.detach()
    assert torch.all(gamma >= 0) and float(gamma.abs().max()) < 1e-15
    x = torch.randn(1, 4, 3, 3, dtype=torch.float64)
    torch.testing.assert_close(layer(x), x / math.sqrt(1e-3))
    # and the gradient still passes where descent moves the parameter back inside
    optimizer.zero_grad()
    (-layer.beta.sum()).backward()
    assert torch.all(layer.beta_sqrt.grad < 0)


# ----------------------------------------------------------------------------- shapes and cost
@pytest.mark.parametrize("size", [(64, 64), (32, 48), (70, 130), (1, 1), (128, 64)])
def test_forward_shapes_for_any_image_size(size):
    model = seeded_model()
    model.train()
    x = torch.rand(2, 1, *size)
    out = model(x)
    hz, wz = -(-size[0] // 64), -(-size[1] // 64)
    assert out["x_hat"].shape == x.shape
    assert out["likelihoods"]["y"].shape == (2, CFG.M, 4 * hz, 4 * wz)
    assert out["likelihoods"]["z"].shape == (2, CFG.N, hz, wz)
    assert out["bpp"].ndim == 0 and float(out["bpp"].detach()) > 0
    out["bpp"].backward()
    assert pad_to_multiple(x).shape[-2:] == (64 * hz, 64 * wz)


def test_parameter_count_equals_an_independent_count():
    n, m = 10, 14
    h1, h2 = m, 3 * m // 2
    encoder = (25 * n + n) + 2 * (25 * n * n + n) + (25 * n * m + m) + 3 * (n + n * n)
    decoder = ((9 * m * 4 * n + 4 * n) + 2 * (9 * n * 4 * n + 4 * n) + (9 * n * 4 + 4)
               + 3 * (n + n * n))
    hyper_encoder = (9 * m * n + n) + 2 * (25 * n * n + n)
    hyper_decoder = ((9 * n * 4 * h1 + 4 * h1) + (9 * h1 * 4 * h2 + 4 * h2)
                     + (9 * h2 * 2 * m + 2 * m))
    prior = n * ((3 + 9 + 9 + 3) + (3 + 3 + 3 + 1) + (3 + 3 + 3))
    model = HyperpriorCodec(HyperpriorConfig(N=n, M=m))

    def count(module):
        return sum(p.numel() for p in module.parameters())

    assert count(model.encoder) == encoder
    assert count(model.decoder) == decoder
    assert count(model.hyper_encoder) == hyper_encoder
    assert count(model.hyper_decoder) == hyper_decoder
    assert count(model) == encoder + decoder + hyper_encoder + hyper_decoder + prior


def test_macs_per_pixel_equal_the_layer_shape_formula():
    n, m = 10, 14
    h1, h2 = m, 3 * m // 2
    macs = HyperpriorCodec(HyperpriorConfig(N=n, M=m)).macs_per_pixel()
    encoder = (25 * n / 4 + n * n / 4 + 25 * n * n / 16 + n * n / 16 + 25 * n * n / 64
               + n * n / 64 + 25 * n * m / 256)
    decoder = (36 * n * m / 256 + n * n / 64 + 36 * n * n / 64 + n * n / 16 + 36 * n * n / 16
               + n * n / 4 + 36 * n / 4)
    hyper_encoder = 9 * m * n / 256 + 25 * n * n / 1024 + 25 * n * n / 4096
    hyper_decoder = 36 * n * h1 / 4096 + 36 * h1 * h2 / 1024 + 18 * h2 * m / 256
    assert macs["encoder"] == pytest.approx(encoder, rel=1e-12)
    assert macs["decoder"] == pytest.approx(decoder, rel=1e-12)
    assert macs["hyper_encoder"] == pytest.approx(hyper_encoder, rel=1e-12)
    assert macs["hyper_decoder"] == pytest.approx(hyper_decoder, rel=1e-12)
    assert macs["total"] == pytest.approx(encoder + decoder + hyper_encoder + hyper_decoder)


def test_config_json_round_trip_and_validation():
    config = HyperpriorConfig(N=32, M=48, mean_frac_bits=3, scale_max=128.0)
    assert HyperpriorConfig.from_json(config.to_json()) == config
    with pytest.raises(ValueError):
        HyperpriorConfig.from_json(json.dumps({**json.loads(config.to_json()), "extra": 1}))
    with pytest.raises(ValueError, match="2\\*\\*53"):
        HyperpriorConfig(M=1024, act_bits=16, weight_max=(1 << 24) - 1)
    assert HyperpriorConfig(M=1024, act_bits=16).worst_case_accumulator() < 2**53
    with pytest.raises(ValueError):
        HyperpriorConfig(N=8.0)


# -------------------------------------------------------------- integer hyper-synthesis
def random_z(shape: tuple[int, ...], seed: int, spread: int = 12) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(-spread, spread + 1, shape, generator=g, dtype=torch.int64)


def test_exact_path_equals_the_fake_quantised_float32_training_path():
    model = seeded_model(3)
    z = random_z((2, CFG.N, 3, 5), seed=4)
    exact = model.entropy_parameters(z, peak=True)
    shift_max = CFG.weight_frac_bits + CFG.act_frac_bits
    # the condition under which the float32 path is exact (IntegerHyperSynthesis notes)
    assert exact["peak"] + (1 << (shift_max - 1)) < FLOAT32_EXACT_LIMIT
    with torch.no_grad():
        mean, index = model.hyper_decoder(z.float())
    assert mean.dtype == torch.float32
    assert torch.equal(mean.to(torch.int64), exact["mean"])
    assert torch.equal(index.to(torch.int64), exact["index"])
    assert len(torch.unique(exact["index"])) > 10 and len(torch.unique(exact["mean"])) > 50
    # ... and the training path in float64 too (float32 == float64 under the same condition)
    double = copy.deepcopy(model.hyper_decoder).double()
    with torch.no_grad():
        mean64, index64 = double(z.double())
    assert torch.equal(mean64.to(torch.int64), exact["mean"])
    assert torch.equal(index64.to(torch.int64), exact["index"])


def test_exact_path_hits_the_clamps_and_matches_integer_reference():
    """One layer recomputed with Python integers (no floating point at all)."""
    model = seeded_model(5)
    layer = model.hyper_decoder.conv1
    z = random_z((1, CFG.N, 2, 3), seed=6, spread=CFG.z_max)
    out, _ = layer.exact(z)
    w = np.clip(np.round(layer.weight.detach().double().numpy() * 2**CFG.weight_frac_bits),
                -CFG.weight_max, CFG.weight_max).astype(np.int64)
    b = np.clip(np.round(layer.bias.detach().double().numpy() * 2**CFG.weight_frac_bits),
                -CFG.bias_max, CFG.bias_max).astype(np.int64)
    padded = np.pad(z[0].numpy(), ((0, 0), (1, 1), (1, 1)))
    shift = CFG.weight_frac_bits - CFG.act_frac_bits
    for o in range(0, w.shape[0], 7):
        for i in range(2):
            for j in range(3):
                acc = int(b[o]) + sum(int(v) for v in
                                      (w[o] * padded[:, i : i + 3, j : j + 3]).reshape(-1))
                assert int(out[0, o, i, j]) == (acc + (1 << (shift - 1))) >> shift
    hidden = model.hyper_decoder.shuffle1(out.clamp(0, 255))
    assert int(hidden.min()) == 0 and int(hidden.max()) == 255  # QReLU clips at both ends


def test_exact_path_is_bit_identical_with_one_and_two_threads():
    model = seeded_model(7)
    z = random_z((1, CFG.N, 6, 7), seed=8)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = model.entropy_parameters(z)
        torch.set_num_threads(2)
        two = model.entropy_parameters(z)
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(one["mean"], two["mean"]) and torch.equal(one["index"], two["index"])


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_exact_path_is_bit_identical_on_the_gpu():
    model = seeded_model(7)
    z = random_z((1, CFG.N, 6, 7), seed=8)
    mean, index, _ = model.hyper_decoder.exact(z)
    on_gpu = copy.deepcopy(model.hyper_decoder).cuda()
    gpu_mean, gpu_index, _ = on_gpu.exact(z.cuda())
    assert gpu_mean.device.type == "cuda"
    assert torch.equal(gpu_mean.cpu(), mean) and torch.equal(gpu_index.cpu(), index)


def test_exact_path_stays_on_the_device_of_its_input():
    # "meta" stands in for a GPU on a CPU-only machine: a constant made on the CPU without
    # device= fails there as it would on CUDA (the training path: tests/test_training_loop.py)
    hyper = HyperpriorCodec(CFG).hyper_decoder.to("meta")
    mean, index, _ = hyper.exact(torch.zeros(1, CFG.N, 2, 2, dtype=torch.int64, device="meta"))
    assert mean.device.type == index.device.type == "meta"
    assert mean.shape == index.shape == (1, CFG.M, 8, 8)


def symbols_digest() -> str:
    """sha256 of the integers a seeded model codes for a fixed image (run in a subprocess too)."""
    model = seeded_model(11)
    q = model.quantise(image(80, 150, seed=2))
    h = hashlib.sha256()
    for name in ("z", "y", "mean", "index"):
        h.update(q[name].numpy().astype("<i8").tobytes())
    return h.hexdigest()


def test_symbols_are_identical_in_a_fresh_subprocess():
    src = str(Path(microcae.__file__).resolve().parents[1])
    code = ("import sys, torch; torch.set_num_threads(1); sys.path.insert(0, sys.argv[1]); "
            "from test_codec_hyperprior import symbols_digest; print(symbols_digest())")
    result = subprocess.run([sys.executable, "-c", code, str(Path(__file__).parent)],
                            capture_output=True, text=True, timeout=120, check=True,
                            env={**os.environ, "PYTHONPATH": src})
    assert result.stdout.strip() == symbols_digest()


# ------------------------------------------------------------------------------------ tables
def test_tables_are_normalised_with_every_frequency_at_least_one(updated):
    for tables in (updated.z_tables, updated.y_tables):
        for row, length in zip(tables.freqs, tables.lengths, strict=True):
            assert np.all(row[:length] >= 1) and np.all(row[length:] == 0)
            assert int(row.astype(np.int64).sum()) == TOTAL
    assert updated.y_tables.channels == CFG.scale_levels and updated.z_tables.channels == CFG.N
    tensors = updated.tables_tensors()
    assert all(t.dtype == torch.int32 for t in tensors.values())


@pytest.mark.parametrize("scale", [0.11, 0.7, 3.0, 40.0, 256.0])
def test_gaussian_table_matches_scipy_to_the_quantisation_error(scale):
    tables = gaussian_tables(np.array([scale]))
    t, length = -int(tables.offsets[0]), int(tables.lengths[0])
    assert length == 2 * t + 2
    k = np.arange(-t, t + 1)
    pmf = stats.norm.cdf(k + 0.5, scale=scale) - stats.norm.cdf(k - 0.5, scale=scale)
    escape = 2 * stats.norm.sf(t + 0.5, scale=scale)
    assert escape <= TAIL_MASS  # the range is wide enough ...
    if t > 1:  # ... and no wider than needed
        assert 2 * stats.norm.sf(t - 0.5, scale=scale) > TAIL_MASS
    freqs = tables.freqs[0, :length] / TOTAL
    # quantise_pmf: 1 + floor(p (TOTAL - n)), the remainder (< n) on the most probable entry
    bound = (length + 1) / TOTAL
    np.testing.assert_array_less(np.abs(freqs - np.append(pmf, escape)), bound)
    assert np.argmax(freqs) == t  # the mode is symbol 0


def test_tables_survive_safetensors_and_broken_tables_are_refused(updated, tmp_path):
    from safetensors.torch import load_file, save_file

    x = image(40, 70, seed=3)
    path = tmp_path / "codec.safetensors"
    save_file({**updated.state_dict(), **updated.tables_tensors()}, str(path),
              metadata={"config": updated.config.to_json()})
    tensors = load_file(str(path))
    fresh = HyperpriorCodec(HyperpriorConfig.from_json(json.dumps(
        json.loads(updated.config.to_json()))))
    fresh.load_state_dict({k: v for k, v in tensors.items() if not k.startswith("tables.")})
    fresh.load_tables(tensors)
    assert fresh.compress(x)["strings"] == updated.compress(x)["strings"]
    # the stored integer weights are what both coder sides use, not the float parameters
    for k, layer in enumerate(updated._int_layers(), start=1):
        weight, bias = layer.integer_parameters()
        assert torch.equal(tensors[f"tables.hyper.conv{k}.weight"].long(), weight)
        assert torch.equal(bias, torch.floor(layer.bias.detach().double() * layer.bias_scale
                                             + 0.5).long())
    with torch.no_grad():
        for p in fresh.hyper_decoder.parameters():
            p.zero_()
    assert fresh.compress(x)["strings"] == updated.compress(x)["strings"]
    broken = dict(tensors)
    broken["tables.y.freqs"] = broken["tables.y.freqs"].clone()
    broken["tables.y.freqs"][3, 0] += 1
    with pytest.raises(MicrocaeError, match="normalised"):
        fresh.load_tables(broken)
    with pytest.raises(MicrocaeError, match="missing"):
        fresh.load_tables({k: v for k, v in tensors.items() if k != "tables.z.offsets"})
    with pytest.raises(MicrocaeError, match="missing"):
        fresh.load_tables({k: v for k, v in tensors.items() if k != "tables.hyper.conv2.bias"})
    hostile = dict(tensors)
    hostile["tables.hyper.conv1.weight"] = hostile["tables.hyper.conv1.weight"].clone()
    hostile["tables.hyper.conv1.weight"][0, 0, 0, 0] = CFG.weight_max + 1
    with pytest.raises(MicrocaeError, match="out of range"):
        fresh.load_tables(hostile)
    with pytest.raises(MicrocaeError, match="no code tables"):
        HyperpriorCodec(CFG).compress(x)


# -------------------------------------------------------------------------------- round trip
@pytest.mark.parametrize("size", [(40, 90), (64, 64), (130, 70)])
def test_round_trip_decodes_exactly_the_encoded_symbols(updated, size):
    x = image(*size, seed=1)
    q = updated.quantise(x)
    compressed = updated.compress(x)
    assert compressed["shape"] == (-(-size[0] // 64), -(-size[1] // 64))
    assert compressed["image_shape"] == size
    decoded = updated.decode_symbols(compressed["strings"], compressed["shape"])
    for name in ("z", "y", "mean", "index"):
        assert torch.equal(decoded[name], q[name]), name
    out = updated.decompress(compressed["strings"], compressed["shape"],
                             compressed["image_shape"])["x_hat"]
    assert out.shape == (1, 1, *size)
    y_hat = q["y"].float() + q["mean"].float() / 2**CFG.mean_frac_bits
    with torch.no_grad():
        expected = updated.decoder(y_hat)[..., : size[0], : size[1]].clamp(0, 1)
    torch.testing.assert_close(out, expected, rtol=1e-6, atol=1e-6)
    padded = updated.decompress(compressed["strings"], compressed["shape"])["x_hat"]
    assert padded.shape[-2:] == (64 * compressed["shape"][0], 64 * compressed["shape"][1])


def test_stream_round_trip_with_escapes_and_every_scale(updated):
    """Values far outside every table go through the escape; every table row is used."""
    rng = np.random.default_rng(2)
    n, h, w = CFG.N, 2, 3
    z = rng.integers(-3, 4, size=(n, h, w))
    z[0, 0, 0], z[3, 1, 2] = VALUE_MAX, VALUE_MIN
    index = rng.integers(0, CFG.scale_levels, size=(CFG.M, 4 * h, 4 * w))
    index.reshape(-1)[: CFG.scale_levels] = np.arange(CFG.scale_levels)
    y = np.round(rng.normal(size=index.shape) * updated.config.scales()[index]).astype(np.int64)
    y[0, 0, :4] = [VALUE_MAX, VALUE_MIN, 5000, -1]
    data = encode_stream(z, y, index, updated.z_tables, updated.y_tables)
    z_back, y_back = decode_stream(data, (n, h, w), lambda _z: index, updated.z_tables,
                                   updated.y_tables)
    np.testing.assert_array_equal(z_back, z)
    np.testing.assert_array_equal(y_back, y)


def test_estimated_rate_matches_the_coded_size_after_training():
    torch.manual_seed(0)
    model = HyperpriorCodec(CFG)
    with torch.no_grad():  # spread y over many symbols so that y, not z, carries the rate
        model.encoder[-1].weight.mul_(30.0)
    x = image(128, 128, seed=4)
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    model.train()
    for _ in range(30):
        optimizer.zero_grad()
        out = model(x)
        (255**2 * torch.mean((out["x_hat"] - x) ** 2) + out["bpp"]).backward()
        optimizer.step()
    model.eval()
    model.update()
    with torch.no_grad():
        estimate_bits = float(model(x)["bpp"]) * x.numel()  # eval mode: the rounded symbols
    q = model.quantise(x)
    assert estimate_bits > 1000 and float((q["y"] != 0).float().mean()) > 0.3
    coded_bits = 8 * len(model.compress(x)["strings"])
    # tolerance: 2 % for the integer tables (every frequency >= 1/2**16, 16-bit rounding, the
    # tails in the escape) plus 96 bits of constant overhead (32-bit sentinel, <= 64-bit flush)
    assert abs(coded_bits - estimate_bits) <= 0.02 * estimate_bits + 96, (coded_bits,
                                                                         estimate_bits)


# --------------------------------------------------------------------------------- pinned bytes
def test_compressed_bytes_are_pinned(updated):
    data = updated.compress(image(48, 80, seed=5))["strings"]
    found = {"sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data)}
    if GENERATE_EXPECTED:
        EXPECTED.parent.mkdir(parents=True, exist_ok=True)
        EXPECTED.write_text(json.dumps(found, indent=2) + "\n")
    assert found == json.loads(EXPECTED.read_text())


# ----------------------------------------------------------------------------- damaged input
@pytest.fixture(scope="module")
def coded(updated):
    x = image(70, 100, seed=6)
    return updated.compress(x), updated.quantise(x)


def test_every_truncation_is_refused(updated, coded):
    compressed, _ = coded
    data, shape = compressed["strings"], compressed["shape"]
    assert len(data) > 64
    for cut in [*range(0, len(data), 4), *range(len(data) - 11, len(data))]:
        with pytest.raises(MicrocaeError):
            updated.decode_symbols(data[:cut], shape)


def test_every_bit_flip_is_refused(updated, coded):
    compressed, _ = coded
    data, shape = compressed["strings"], compressed["shape"]
    rng = np.random.default_rng(0)
    for bit in rng.choice(8 * len(data), size=40, replace=False):
        damaged = bytearray(data)
        damaged[bit // 8] ^= 1 << (bit % 8)
        with pytest.raises(MicrocaeError):
            updated.decode_symbols(bytes(damaged), shape)
    for bit in range(8 * len(data) - 32, 8 * len(data)):  # the final flush's slack bits too
        damaged = bytearray(data)
        damaged[bit // 8] ^= 1 << (bit % 8)
        with pytest.raises(MicrocaeError):
            updated.decode_symbols(bytes(damaged), shape)


def test_junk_and_hostile_headers_are_refused_without_allocating(updated, coded):
    compressed, _ = coded
    data, shape = compressed["strings"], compressed["shape"]
    with pytest.raises(MicrocaeError):
        updated.decode_symbols(data + b"\0\0\0\0", shape)  # data beyond the sentinel
    with pytest.raises(MicrocaeError):
        updated.decode_symbols(data + b"\xff\xff\xff\xff", shape)
    with pytest.raises(MicrocaeError):
        updated.decode_symbols(data + b"\0", shape)
    with pytest.raises(MicrocaeError):
        updated.decode_symbols(bytes(np.random.default_rng(1).integers(0, 256, 400,
                                                                       dtype=np.uint8)), shape)
    with pytest.raises(MicrocaeError):
        updated.decode_symbols("text", shape)
    for bad in [(0, 2), (-1, 3), (MAX_Z_POSITIONS, 2), (1 << 40, 1 << 40), ("a", 1), (1,)]:
        with pytest.raises(MicrocaeError):
            updated.decode_symbols(data, bad)
    with pytest.raises(MicrocaeError):
        updated.decode_symbols(data, (shape[0] + 1, shape[1]))
    with pytest.raises(MicrocaeError, match="image size"):
        updated.decompress(data, shape, (200, 100))
