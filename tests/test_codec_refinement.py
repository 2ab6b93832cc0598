"""Encoder-side latent refinement of microcae's codec (microcae.models.refinement)."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import synthetic_micrograph, write_png

from microcae.cli import main
from microcae.codec import RateBudget, encode_image
from microcae.codec.latent_files import model_for_file
from microcae.data.images import read_micrograph, uint8_tile
from microcae.models.hyperprior import HyperpriorCodec, HyperpriorConfig, pad_to_multiple
from microcae.models.inference import compress_whole, decompress_whole, inference_copy
from microcae.models.refinement import (
    Refinement,
    _distortion_backward,
    _optimise,
    rd_cost,
    refine_latents,
)
from microcae.models.registry import load_model, read_model_file, trained_lmbda
from microcae.util.errors import MicrocaeError

SAMPLE = Path(__file__).parents[1] / "src/microcae/assets/samples/aisi1045_core.png"

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def level_1() -> HyperpriorCodec:
    """The bundled smallest level (trained, so refinement has something to improve)."""
    return inference_copy(load_model("codec-1"))


@pytest.fixture(scope="module")
def sample() -> torch.Tensor:
    """(1, 1, 96, 112) crop of a bundled micrograph, 8-bit values in [0, 1]."""
    pixels = read_micrograph(SAMPLE).pixels[200:296, 300:412]
    return torch.from_numpy(np.ascontiguousarray(pixels, dtype=np.float32))[None, None]


def latents(codec: HyperpriorCodec, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    with torch.no_grad():
        y = codec.encoder(pad_to_multiple(x))
        return y, codec.hyper_encoder(y)


def test_strip_gradient_equals_the_gradient_of_one_whole_pass():
    """float64: the distortion gradient summed over 16-row strips equals autograd of the whole
    loss on one pass (independent computation), to rounding."""
    torch.manual_seed(0)
    codec = HyperpriorCodec(HyperpriorConfig(N=8, M=12)).double().eval()
    x = torch.rand(1, 1, 75, 70, dtype=torch.float64)
    y = torch.randn(1, 12, 8, 8, dtype=torch.float64)
    noise = torch.rand_like(y) - 0.5
    lmbda = 0.01
    whole = y.clone().requires_grad_(True)
    out = codec.decoder(whole + noise)[:, :, :75, :70]
    (lmbda * 255.0**2 * (out - x).square().mean()).backward()
    for strip in (16, 32, 128):
        part = y.clone().requires_grad_(True)
        _distortion_backward(codec, x, part, noise, lmbda, strip)
        assert torch.allclose(part.grad, whole.grad, rtol=1e-10, atol=1e-13), strip
    assert whole.grad.abs().sum() > 0


def test_the_optimisation_runs_on_the_device_of_the_model():
    """On PyTorch's meta device (standing in for a GPU): a tensor made on the CPU inside the
    loop would fail to combine with the model's; the latents come back on the device."""
    codec = HyperpriorCodec(HyperpriorConfig(N=8, M=12)).eval().to("meta")
    x = torch.rand(1, 1, 64, 64, device="meta")
    y, z = torch.rand(1, 12, 4, 4, device="meta"), torch.rand(1, 8, 1, 1, device="meta")
    ry, rz = _optimise(codec, x, y, z, 0.01, steps=2, lr=0.02, seed=0, strip=32)
    assert (ry.device.type, rz.device.type) == ("meta", "meta")
    assert ry.shape == y.shape and rz.shape == z.shape
    assert all(p.requires_grad for p in codec.parameters())  # left as it was


def test_rd_cost_equals_the_eval_forward_of_the_codec(level_1, sample):
    """rd_cost of the analysis latents = lmbda·255²·MSE + bpp of the model's own eval forward
    (rounded latents, the same continuous densities)."""
    y, z = latents(level_1, sample)
    cost = rd_cost(level_1, sample, y, z, level_1.lmbda)
    with torch.no_grad():
        out = level_1(sample)
    mse = (out["x_hat"].clamp(0, 1) - sample).double().square().mean()
    expected = float(level_1.lmbda * 255.0**2 * mse + out["bpp"])
    assert cost == pytest.approx(expected, rel=1e-5)


def test_rd_cost_rate_is_close_to_the_real_stream(level_1, sample):
    """The ideal code length rd_cost adds is within 1 % + 40 bytes of the coded stream."""
    y, z = latents(level_1, sample)
    pixels = sample.numel()
    q = level_1.symbols_of(y, z)
    with torch.no_grad():
        x_hat = level_1.synthesis(q["y"].float() + q["mean"].float() / 16, 96)[..., :112]
    mse = float((x_hat.clamp(0, 1) - sample).double().square().mean())
    ideal_bits = (rd_cost(level_1, sample, y, z, level_1.lmbda)
                  - level_1.lmbda * 255.0**2 * mse) * pixels
    stream_bits = 8 * len(level_1.compress(sample)["strings"])
    assert abs(stream_bits - ideal_bits) < 0.01 * stream_bits + 320


def test_refinement_lowers_the_cost_and_the_file_decodes_with_the_same_decoder(level_1,
                                                                               sample):
    y, z = latents(level_1, sample)
    refine = Refinement(steps=40)
    ry, rz = refine_latents(level_1, sample, y, z, refine)
    start = rd_cost(level_1, sample, y, z, level_1.lmbda)
    refined = rd_cost(level_1, sample, ry, rz, level_1.lmbda)
    assert refined < 0.95 * start
    pixels = sample[0, 0].numpy()
    stream = compress_whole(level_1, pixels, refine=refine)
    assert stream == compress_whole(level_1, pixels, refine=refine)  # seeded: reproducible
    assert stream != compress_whole(level_1, pixels)
    decoded = decompress_whole(level_1, stream, pixels.shape)
    q = level_1.symbols_of(ry, rz)
    y_hat = q["y"].double() + q["mean"].double() / 16
    with torch.no_grad():
        direct = level_1.double().synthesis(y_hat)[0, 0, :96, :112].clamp(0, 1).numpy()
    level_1.float()
    assert np.abs(decoded - direct).max() < 1e-12  # the file holds exactly the refined symbols


def test_a_progress_bar_counts_the_steps_only_when_asked(level_1, sample, capsys):
    y, z = latents(level_1, sample)
    refine_latents(level_1, sample, y, z, Refinement(steps=3))
    assert "refine" not in capsys.readouterr().err
    refine_latents(level_1, sample, y, z, Refinement(steps=3, progress=True))
    err = capsys.readouterr().err
    assert "refine:" in err and "0/3 [" in err  # the bar, cleared when done (leave=False)


def test_refinement_keeps_the_analysis_latents_when_it_would_cost_more(level_1, sample):
    """A learning rate that wrecks the latents: the unrefined stream is kept, byte for byte."""
    pixels = sample[0, 0].numpy()
    wrecked = compress_whole(level_1, pixels, refine=Refinement(steps=2, lr=1e4))
    assert wrecked == compress_whole(level_1, pixels)


def test_refinement_settings_and_models_without_a_lambda_are_refused(level_1, sample):
    for bad in ({"steps": 0}, {"steps": True}, {"lr": 0.0}, {"lr": math.nan},
                {"strip_pixels": 0}):
        with pytest.raises(MicrocaeError):
            Refinement(**bad)
    codec = HyperpriorCodec(HyperpriorConfig(N=8, M=12)).eval()
    codec.update()
    assert codec.lmbda is None
    y, z = latents(codec, sample)
    with pytest.raises(MicrocaeError, match="lambda"):
        refine_latents(codec, sample, y, z, Refinement(steps=1))
    with pytest.raises(MicrocaeError, match="codec only"):
        encode_image(load_model("study"), uint8_tile(sample[0, 0].numpy()),
                     refine=Refinement(steps=1))


def test_trained_lambda_comes_from_the_provenance():
    for k, expected in ((1, 0.00018), (4, 0.01), (6, 0.12)):
        loaded = read_model_file(f"codec-{k}")
        assert loaded.provenance["settings"]["lmbda"] == expected
        assert loaded.model.lmbda == expected
    assert load_model("study").lmbda is None
    for bad in ({}, {"settings": []}, {"settings": {"lmbda": "0.1"}},
                {"settings": {"lmbda": -1.0}}, {"settings": {"lmbda": math.inf}},
                {"settings": {"lmbda": True}}):
        assert trained_lmbda(bad) is None
    assert trained_lmbda({"settings": {"lmbda": 2}}) == 2.0


def test_rate_budget_chooses_levels_by_their_refined_files(sample):
    """With --refine the budget compares refined files: the exact refined size of level 2
    picks level 2, one byte less picks level 1."""
    image = uint8_tile(sample[0, 0].numpy())
    levels = [load_model("codec-1"), load_model("codec-2")]
    refine = Refinement(steps=5)
    sizes = [len(encode_image(level, image, refine=refine)) for level in levels]
    assert sizes[0] < sizes[1]
    pixels = image.pixels.size
    for budget, level in ((sizes[1], 1), (sizes[1] - 1, 0)):
        data = RateBudget(levels, 8 * budget / pixels).encode(image, refine=refine)
        assert data == encode_image(levels[level], image, refine=refine)


def test_encode_refine_command_writes_files_that_decode(tmp_path, capsys):
    source = write_png(tmp_path / "m.png", synthetic_micrograph(150, 170))

    def encode(out: str, *extra: str) -> int:
        return main(["encode", str(source), "-o", str(tmp_path / out), "--no-progress",
                     *extra])

    assert encode("plain", "-q", "1") == 0
    assert encode("refined", "-q", "1", "--refine", "10") == 0
    coded = (tmp_path / "refined" / "m.mcl").read_bytes()
    assert coded != (tmp_path / "plain" / "m.mcl").read_bytes()
    assert model_for_file(coded, "m").fingerprint() == load_model("codec-1").fingerprint()
    assert main(["decode", str(tmp_path / "refined"), "-o", str(tmp_path / "back"),
                 "--no-progress"]) == 0
    assert read_micrograph(tmp_path / "back" / "m.png").pixels.shape == (150, 170)
    assert encode("budget", "--bpp", "0.5", "--refine", "3") == 0
    budget = (tmp_path / "budget" / "m.mcl").read_bytes()
    assert 8 * len(budget) <= 0.5 * 150 * 170
    capsys.readouterr()
    for model in ("study", "rd-wide"):
        assert encode("bad", "--refine", "3", "-m", model) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and "codec only" in err[0], err
        assert not (tmp_path / "bad").exists() or not any((tmp_path / "bad").iterdir())
