"""Whole-image coding in strips with exact halos: the stream and pixels of one pass, less memory."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import image_tensor as image
from conftest import synthetic_micrograph
from torch import nn

from microcae.codec.latent_files import decode_bytes, encode_image
from microcae.data.images import micrograph_from_array, read_micrograph
from microcae.models import hyperprior, inference, load_model
from microcae.models.hyperprior import HyperpriorCodec, HyperpriorConfig, pad_to_multiple
from microcae.models.inference import (
    compress_whole,
    decompress_whole,
    inference_copy,
    strip_rows_for,
)
from microcae.models.strips import flatten, halo, input_rows, plan, run_in_strips, run_rows

SAMPLE = Path(__file__).parents[1] / "src" / "microcae" / "assets" / "samples" / "aisi1045_core.png"


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def codec() -> HyperpriorCodec:
    torch.manual_seed(3)
    model = HyperpriorCodec(HyperpriorConfig(N=8, M=12)).eval()
    model.update()
    return model




def one_pass_decode(model: HyperpriorCodec, stream: bytes, size: tuple[int, int]) -> np.ndarray:
    """The decoding before strips: the whole synthesis in one call of the decoder, float64 NCHW."""
    decoding = inference_copy(model, torch.float64, channels_last=False)
    grid = (-(-size[0] // 64), -(-size[1] // 64))
    with torch.no_grad():
        decoded = decoding.decode_symbols(stream, grid)
        y_hat = decoded["y"].double() + decoded["mean"].double() / 16
        x_hat = decoding.decoder(y_hat)[0, 0, : size[0], : size[1]].clamp(0.0, 1.0)
    return x_hat.numpy()


def to_8bit(x: np.ndarray) -> np.ndarray:
    return np.round(x * 255.0).astype(np.uint8)


# ------------------------------------------------------------------------ halos from the layers
def reach(stack: nn.Module, x: torch.Tensor, row: int) -> tuple[int, int]:
    """Input rows that output row ``row`` depends on, found by autograd (float64): [first, last]."""
    x = x.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(stack(x)[:, :, row].sum(), x)
    rows = grad.abs().sum(dim=(0, 1, 3)).nonzero().flatten()
    return int(rows.min()), int(rows.max())


def test_halos_are_the_receptive_fields_the_layers_have(codec):
    encoder = inference_copy(codec.encoder, torch.float64, channels_last=False)
    decoder = inference_copy(codec.decoder, torch.float64, channels_last=False)
    assert halo(encoder) == (30, 15)  # image rows around the 16 rows of one latent row
    assert halo(decoder) == (2, 2)  # latent rows around one latent row's 16 image rows
    torch.manual_seed(0)
    x = torch.rand(1, 1, 192, 32, dtype=torch.float64)
    for o in (4, 5, 7):  # away from the borders: all of the receptive field is image
        # (latent row o reads 30 rows above and 15 below its own 16 rows: the halo)
        first, stop = plan(flatten(encoder), (o, o + 1), 192)[0]
        assert reach(encoder, x, o) == (first, stop - 1) == (16 * o - 30, 16 * o + 30)
    y = torch.randn(1, 12, 12, 4, dtype=torch.float64)
    rows = []
    for o in range(80, 96):  # the 16 image rows of latent row 5
        first, stop = plan(flatten(decoder), (o, o + 1), 12)[0]
        rows.append(reach(decoder, y, o))
        assert rows[-1] == (first, stop - 1)
    assert (min(r[0] for r in rows), max(r[1] for r in rows)) == (5 - 2, 5 + 2)
    hyper = codec.hyper_decoder
    layers = [hyper.conv1, hyper.shuffle1, hyper.conv2, hyper.shuffle2, hyper.conv3]
    assert plan(layers, (40, 48), 20)[0] == (8, 14)  # z rows 10, 11 and two either side
    assert plan(layers, (0, 8), 20)[0] == (0, 4)  # clipped at the top


def test_row_intervals_of_each_layer_kind():
    assert input_rows(nn.Conv2d(1, 1, 5, stride=2, padding=2), (3, 7)) == (4, 15)
    assert input_rows(nn.Conv2d(1, 1, 3, padding=2, dilation=2), (3, 7)) == (1, 9)
    assert input_rows(nn.PixelShuffle(2), (3, 7)) == (1, 4)
    assert input_rows(nn.ReLU(), (3, 7)) == (3, 7)
    with pytest.raises(ValueError, match="MaxPool2d"):
        input_rows(nn.MaxPool2d(2), (0, 1))
    with pytest.raises(ValueError, match="zero padding"):
        input_rows(nn.Conv2d(1, 1, 3, padding=1, padding_mode="reflect"), (0, 1))
    with pytest.raises(ValueError, match="IntConv2d"):  # planned, but run by its exact path
        run_rows([HyperpriorCodec(HyperpriorConfig(N=2, M=2)).hyper_decoder.conv1],
                 torch.zeros(1, 2, 3, 3), (0, 3))
    stack = [nn.Conv2d(2, 3, 3, padding=1), nn.ReLU()]
    with pytest.raises(ValueError, match="not all in the band"):
        run_rows(stack, torch.zeros(1, 2, 4, 5), (7, 8), first=4, height=10)  # needs 6..8


def test_a_generic_stack_in_strips_equals_one_pass():
    torch.manual_seed(1)
    stack = nn.Sequential(nn.Conv2d(2, 8, 5, stride=2, padding=2), nn.ReLU(),
                          nn.Conv2d(8, 8, 3, padding=2, dilation=2), nn.PixelShuffle(2),
                          nn.Conv2d(2, 3, 3, padding=1)).double()
    x = torch.randn(1, 2, 37, 23, dtype=torch.float64)
    with torch.no_grad():
        whole = stack(x)
        for strip in (1, 2, 5, 36, 100):
            assert torch.equal(run_in_strips(stack, x, strip), whole)
            assert torch.equal(run_in_strips(stack, x, strip, chunk_bytes=1), whole)
        assert torch.equal(run_in_strips(stack, x, 4, stop=9), whole[:, :, :9])


# ------------------------------------------------------------------------ encoding
@pytest.mark.parametrize("size", [(200, 150), (333, 97), (64, 64), (130, 700)])
def test_strip_analysis_gives_the_bits_and_the_stream_of_one_pass(codec, size):
    x = image(*size, seed=size[0])
    padded = pad_to_multiple(x).contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        whole = codec.encoder(padded)
    stream = codec.compress(x)["strings"]
    # 16 rows: less than the halo (30 above, 15 below); 80: strips end mid-way through z rows
    for strip_rows in (16, 48, 80, 320):
        assert torch.equal(codec.analysis(padded, strip_rows), whole)
        assert codec.compress(x, strip_rows=strip_rows)["strings"] == stream


def test_banded_integer_hyper_synthesis_gives_the_same_integers(codec):
    z = torch.randint(-6, 7, (1, 8, 7, 3))
    whole = codec.entropy_parameters(z, peak=True)
    for strip_rows in (16, 64, 128, 192):  # bands of 1, 1, 2, 3 rows of z
        banded = codec.entropy_parameters(z, peak=True, strip_rows=strip_rows)
        assert torch.equal(banded["mean"], whole["mean"])
        assert torch.equal(banded["index"], whole["index"])
        assert banded["peak"] == whole["peak"] > 0


# ------------------------------------------------------------------------ decoding
def assert_same_decoding(out: np.ndarray, before: np.ndarray) -> None:
    """The float64 synthesis in other strips or chunks gives the same 8- and 16-bit pixels.

    The float64 values themselves may differ in the last bits: MKL sums a dgemm in an order that
    depends on its shape and on the CPU (on AVX2 machines every shape tested here gave the same
    bits; on AVX-512 machines chunks and strips differ from whole layers by up to 1e-16).
    """
    assert out.dtype == np.float64 and out.shape == before.shape
    np.testing.assert_allclose(out, before, rtol=0, atol=1e-15)
    assert np.array_equal(to_8bit(out), to_8bit(before))
    assert np.array_equal(np.round(out * 65535), np.round(before * 65535))


@pytest.mark.parametrize("size", [(200, 150), (333, 97), (64, 64), (130, 700)])
def test_strip_synthesis_gives_the_pixels_of_the_one_pass_decoding(codec, size):
    stream = codec.compress(image(*size, seed=size[1]))["strings"]
    before = one_pass_decode(codec, stream, size)
    for strip_rows in (16, 48, 80, 320, None):
        assert_same_decoding(decompress_whole(codec, stream, size, strip_rows=strip_rows), before)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = decompress_whole(codec, stream, size, strip_rows=48)
        torch.set_num_threads(2)
        two = decompress_whole(codec, stream, size, strip_rows=48)
    finally:
        torch.set_num_threads(threads)
    assert two.tobytes() == one.tobytes()  # the same strips: the same bits on 1 and 2 threads
    fast = decompress_whole(codec, stream, size, torch.float32)
    for strip_rows in (16, 80):  # float32 (channels-last oneDNN): equal to rounding
        strips = decompress_whole(codec, stream, size, torch.float32, strip_rows=strip_rows)
        np.testing.assert_allclose(strips, fast, rtol=0, atol=2e-6)


def test_strip_rows_must_be_whole_latent_rows(codec):
    x = image(64, 64)
    for bad in (0, -16, 15, 24, 16.0, True):
        with pytest.raises(ValueError, match="multiple of 16"):
            codec.compress(x, strip_rows=bad)
    stream = codec.compress(x)["strings"]
    with pytest.raises(ValueError, match="multiple of 16"):
        codec.decompress(stream, (1, 1), (64, 64), strip_rows=8)


# ------------------------------------------------------------------------ automatic strips
def test_images_over_the_budget_are_coded_in_strips_of_about_that_many_pixels():
    assert inference.STRIP_PIXELS == 1 << 21
    assert strip_rows_for((1542, 2080)) == 800  # padded 1600 x 2112 = 1.6 budgets: 2 strips
    assert strip_rows_for((600, 300)) == 640  # padded 640 x 320: one strip
    assert strip_rows_for((8192, 8192)) == 256  # 32 strips of 2**21 pixels
    assert strip_rows_for((64, 1 << 20)) == 16  # no fewer rows than one latent row
    assert strip_rows_for((1542, 2080), strip_rows=48) == 48
    assert strip_rows_for((200, 150), strip_pixels=8192) == 48  # 256 x 192 = 6 budgets


def test_automatic_strips_keep_the_file_format_and_pixels(codec, monkeypatch):
    pixels = synthetic_micrograph(200, 150, seed=7)
    micrograph = micrograph_from_array(pixels, scaling="full")
    one_pass = encode_image(codec, micrograph)
    decoded = decode_bytes(codec, one_pass, "one pass")
    used = []

    def spy(stack, x, strip=None, *args, **kwargs):
        used.append(strip)
        return run_in_strips(stack, x, strip, *args, **kwargs)

    monkeypatch.setattr(inference, "STRIP_PIXELS", 8192)  # strips of 48 rows
    monkeypatch.setattr(hyperprior, "run_in_strips", spy)
    assert encode_image(codec, micrograph) == one_pass
    assert used == [3]  # the analysis: 3 latent rows per strip
    strips = decode_bytes(codec, one_pass, "strips")
    assert used == [3, 48]  # the synthesis: 48 image rows per strip
    assert np.array_equal(strips.stored, decoded.stored)
    np.testing.assert_allclose(strips.pixels, decoded.pixels, rtol=0, atol=1e-15)


# ------------------------------------------------------------------------ a bundled level
def test_a_bundled_level_codes_a_real_micrograph_in_strips_as_in_one_pass():
    model = load_model("codec-2")
    sample = read_micrograph(SAMPLE).pixels
    pixels = np.ascontiguousarray(np.pad(sample, ((0, 88), (0, 0)), mode="symmetric")[:, :300])
    assert pixels.shape == (600, 300)
    stream = compress_whole(model, pixels, strip_rows=640)  # padded height: one pass
    for strip_rows in (16, 176):
        assert compress_whole(model, pixels, strip_rows=strip_rows) == stream
    before = one_pass_decode(model, stream, pixels.shape)
    for strip_rows in (16, 176, None):
        assert_same_decoding(decompress_whole(model, stream, pixels.shape, strip_rows=strip_rows),
                             before)


# ------------------------------------------------------------------------ memory
MEMORY_PROBE = r"""
import ctypes, json
import numpy as np, torch
from microcae.models.hyperprior import HyperpriorCodec, HyperpriorConfig
from microcae.models.inference import compress_whole, decompress_whole
from microcae.util.runtime import configure_allocator
torch.set_num_threads(1)
configure_allocator()  # now, so that the coder's own call changes nothing; the probe's settings:
libc = ctypes.CDLL(None)
libc.mallopt(-4, 1 << 16)  # M_MMAP_MAX: mapping allowed again (microcae turns it off)
libc.mallopt(-3, 1 << 16)  # M_MMAP_THRESHOLD: blocks of 64 KiB and more are mapped, and
libc.mallopt(-1, 1 << 16)  # M_TRIM_THRESHOLD: unmapped when freed, so the RSS is what is live

def status(key):
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith(key))

def peak_increase(step):
    libc.malloc_trim(0)  # hand freed heap back, so that the step's pages are its own
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # reset the peak resident set (VmHWM) to the current one
    before = status("VmRSS")
    step()
    return status("VmHWM") - before

torch.manual_seed(0)
model = HyperpriorCodec(HyperpriorConfig(N=32, M=16)).eval()
model.update()
warm = np.random.default_rng(0).random((128, 512)).astype(np.float32)
decompress_whole(model, compress_whole(model, warm), warm.shape)  # the libraries' own buffers
out = {}
for height, strips in ((512, (32,)), (1024, (32, 256))):
    img = np.random.default_rng(1).random((height, 512)).astype(np.float32)
    data = compress_whole(model, img, strip_rows=32)
    for strip in strips:
        out[f"encode {height} {strip}"] = peak_increase(
            lambda: compress_whole(model, img, strip_rows=strip))
        out[f"decode {height} {strip}"] = peak_increase(
            lambda: decompress_whole(model, data, img.shape, strip_rows=strip))
print(json.dumps(out))
"""


def test_peak_memory_follows_the_strip_not_the_image():
    if not Path("/proc/self/clear_refs").exists():
        pytest.skip("needs Linux's /proc/self/clear_refs to reset the peak resident set")
    env = {**os.environ, "PYTHONPATH": str(Path(inference.__file__).parents[2])}
    run = subprocess.run([sys.executable, "-c", MEMORY_PROBE], capture_output=True, text=True,
                         timeout=300, check=True, env=env)
    peak = json.loads(run.stdout)
    image_added = (1024 - 512) * 512  # pixels added by doubling the height
    strip_added = (256 - 32) * 512  # pixels added to each strip
    # the largest activation: N = 32 channels at half resolution, float32 (encode) or
    # float64 (decode), in bytes per image pixel
    for step, image_sized, largest in (("encode", 8, 32 * 4 / 4), ("decode", 24, 32 * 8 / 4)):
        # with strips of 32 rows, doubling the image grows only its image-sized arrays (the
        # latents and the entropy coder's int64 copies: M = 16 latents per 16 x 16 pixels, under
        # 256 bytes each; the decoded float64 image: 8 bytes per pixel), not the transforms'
        # activations ...
        grown = peak[f"{step} 1024 32"] - peak[f"{step} 512 32"]
        assert grown <= image_sized * image_added
        # ... which grow with the strip: by more than the largest activation, by less than 4x
        wider = peak[f"{step} 1024 256"] - peak[f"{step} 1024 32"]
        assert largest * strip_added <= wider <= 4 * largest * strip_added
