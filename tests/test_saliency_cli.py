"""``microcae saliency``: outputs, their values, modes, choices and errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import SHARED_MICROGRAPHS, synthetic_micrograph, write_png
from PIL import Image

from microcae.cli import main
from microcae.data.images import read_micrograph
from microcae.figures.saliency import smooth
from microcae.models.registry import load_model
from microcae.saliency import relevance
from microcae.saliency.kinks import kink_pixels
from microcae.saliency.maps import micrograph_relevance


def reflect_pad(pixels: np.ndarray, height: int, width: int) -> np.ndarray:
    return np.pad(pixels, ((0, height - pixels.shape[0]), (0, width - pixels.shape[1])),
                  mode="symmetric")


def test_writes_raw_map_and_figure_per_image(tmp_path, tiny_model_file, capsys):
    small = write_png(tmp_path / "in" / "small.png", synthetic_micrograph(40, 56, seed=1))
    wide = write_png(tmp_path / "in" / "sub" / "wide.png", synthetic_micrograph(48, 300, seed=2))
    out = tmp_path / "out"
    rc = main(["saliency", str(tmp_path / "in"), "--model", str(tiny_model_file),
               "--out", str(out), "--mode", "tile", "--no-progress"])
    assert rc == 0
    encoder = load_model(tiny_model_file).encoder
    for path in (small, wide):
        pixels = read_micrograph(path).pixels
        raw = np.load(out / f"{path.stem}.relevance.npy")
        assert raw.dtype == np.float32 and raw.shape == pixels.shape
        # tile mode: each reflect-padded 256x256 tile on its own, cropped back
        canvas = reflect_pad(pixels, 256, 512 if pixels.shape[1] > 256 else 256)
        tiles = torch.from_numpy(canvas).view(1, 1, 256, -1)
        expected = np.concatenate(
            [relevance(encoder, tiles[..., x : x + 256], "vjp")[0].numpy()
             for x in range(0, canvas.shape[1], 256)], axis=1)[: pixels.shape[0], : pixels.shape[1]]
        np.testing.assert_allclose(raw, expected, rtol=1e-6, atol=0)
        with Image.open(out / f"{path.stem}.saliency.png") as figure:
            assert figure.format == "PNG" and figure.width > figure.height
    stdout = capsys.readouterr().out
    assert "small.png: max relevance" in stdout and "(tile mode)" in stdout
    assert "kink-affected pixels" in stdout
    assert not list(out.glob(".*.tmp"))


def test_whole_mode_is_the_relevance_of_the_whole_image(tmp_path, tiny_model_file):
    path = write_png(tmp_path / "odd.png", synthetic_micrograph(70, 90, seed=3))
    out = tmp_path / "out"
    rc = main(["saliency", str(path), "--model", str(tiny_model_file), "--out", str(out),
               "--mode", "whole", "--method", "complex-step", "--no-progress"])
    assert rc == 0
    pixels = read_micrograph(path).pixels
    whole = torch.from_numpy(reflect_pad(pixels, 72, 92))[None, None]  # multiple of 4
    expected = relevance(load_model(tiny_model_file).encoder, whole, "vjp")[0, :70, :90].numpy()
    np.testing.assert_allclose(np.load(out / "odd.relevance.npy"), expected, rtol=2e-5, atol=0)


@pytest.mark.parametrize("method", ["vjp", "jvp"])  # bands of latent rows; pixel strips
@pytest.mark.parametrize("channels", [(4, 4), (6, 4, 4, 3)])  # latent stride 4; 16
def test_whole_mode_in_pieces_equals_one_pass_over_the_image(monkeypatch, method, channels):
    from microcae.models.cae import CAE, CAEConfig
    from microcae.saliency import maps

    torch.manual_seed(1)
    encoder = CAE(CAEConfig(channels=channels)).encoder.double().eval()
    pixels = synthetic_micrograph(150, 70, seed=4).astype(np.float64) / 255
    pixels[60:100, 20:50] = 0.5  # flat: tied max-pool windows, i.e. kinks
    stride = maps.latent_stride(encoder)
    height = -(-150 // stride) * stride
    whole = torch.from_numpy(reflect_pad(pixels, height, -(-70 // stride) * stride))[None, None]
    expected = relevance(encoder, whole, method)[0, :150, :70].numpy()
    monkeypatch.setattr(maps, "WHOLE_PIXELS", 40 * whole.shape[3])  # several pieces
    monkeypatch.setattr(maps, "MIN_BAND", 1)
    monkeypatch.setattr(maps, "MIN_CORE", 16)
    pieces = micrograph_relevance(encoder, pixels, method, mode="whole")
    assert pieces.mode == "whole" and pieces.relevance.dtype == np.float32
    np.testing.assert_allclose(pieces.relevance, expected, rtol=1e-6, atol=0)
    kinks = kink_pixels(encoder, whole)[0, :150, :70]
    assert pieces.kink_pixels == int(kinks.sum()) > 0


def test_the_default_mode_is_whole_for_images_larger_than_a_tile(tmp_path, tiny_model_file,
                                                                 capsys):
    wide = write_png(tmp_path / "wide.png", synthetic_micrograph(40, 300, seed=2))
    small = write_png(tmp_path / "small.png", synthetic_micrograph(40, 56, seed=1))
    assert main(["saliency", str(wide), str(small), "--model", str(tiny_model_file), "--out",
                 str(tmp_path / "out"), "--no-progress"]) == 0
    stdout = capsys.readouterr().out
    assert "wide.png: max relevance" in stdout and "(whole mode)" in stdout
    assert "small.png: max relevance" in stdout and "(tile mode)" in stdout
    pixels = read_micrograph(wide).pixels
    latent = torch.from_numpy(reflect_pad(pixels, 40, 300))[None, None]  # stride 4: no padding
    expected = relevance(load_model(tiny_model_file).encoder, latent, "vjp")[0].numpy()
    np.testing.assert_allclose(np.load(tmp_path / "out" / "wide.relevance.npy"), expected,
                               rtol=2e-5, atol=0)


def test_method_choices_are_read_from_the_registry():
    from microcae.cli.cmd_saliency import command
    from microcae.saliency import METHODS

    assert {"vjp", "complex-step", "complex-step-naive", "jvp", "gbp"} <= set(METHODS)
    choice = command.params[[p.name for p in command.params].index("method")].type
    assert sorted(choice.choices) == sorted(METHODS) == sorted(choice.registry_names())


@pytest.mark.parametrize("args,message", [
    (["--method", "nope"], "nope"),
    (["--method", "gbp", "--mode", "whole"], "--mode whole needs"),
    (["--method", "gbp", "--precision", "complex128"], "--precision applies"),
    (["--clip", "50", "10"], "--clip needs 0 <= LOW < HIGH <= 100"),
    (["--device", "tpu"], "device"),
])
def test_bad_options_fail_with_one_line_and_no_output(tmp_path, tiny_model_file, capsys, args,
                                                      message):
    path = write_png(tmp_path / "a.png", synthetic_micrograph(32, 32))
    out = tmp_path / "out"
    rc = main(["saliency", str(path), "--model", str(tiny_model_file), "--out", str(out),
               "--no-progress", *args])
    assert rc == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1
    assert not out.exists() or not any(out.iterdir())


def test_a_bad_image_stops_the_job_before_anything_is_written(tmp_path, tiny_model_file, capsys):
    write_png(tmp_path / "in" / "a.png", synthetic_micrograph(32, 32))
    (tmp_path / "in" / "b.png").write_bytes(b"not a png")
    out = tmp_path / "out"
    rc = main(["saliency", str(tmp_path / "in"), "--model", str(tiny_model_file),
               "--out", str(out), "--no-progress"])
    assert rc == 2
    assert "b.png" in capsys.readouterr().err
    assert not out.exists() or not any(out.iterdir())


def test_inputs_with_the_same_stem_are_refused(tmp_path, tiny_model_file, capsys):
    first = write_png(tmp_path / "x" / "same.png", synthetic_micrograph(32, 32))
    second = write_png(tmp_path / "y" / "same.png", synthetic_micrograph(32, 32, seed=1))
    rc = main(["saliency", str(first), str(second), "--model", str(tiny_model_file),
               "--out", str(tmp_path / "out"), "--no-progress"])
    assert rc == 2 and "same file name stem" in capsys.readouterr().err


def test_figure_smoothing_is_a_unit_gaussian():
    spike = np.zeros((21, 21), dtype=np.float32)
    spike[10, 10] = 1.0
    blurred = smooth(spike)
    offsets = np.arange(-3, 4)
    kernel = np.exp(-(offsets**2) / 2)
    kernel /= kernel.sum()
    np.testing.assert_allclose(blurred[10, 7:14], kernel * kernel[3], rtol=1e-3)
    assert blurred.sum() == pytest.approx(1.0, rel=1e-6)


@pytest.mark.slow
def test_real_micrograph_full_size(tmp_path, tiny_model_file):
    image = SHARED_MICROGRAPHS / "aisi1045_decarb_optical" / "1a1str.png"
    if not image.is_file():
        pytest.skip("shared micrographs not available")
    rc = main(["saliency", str(image), "--model", str(tiny_model_file), "--out", str(tmp_path),
               "--no-progress"])
    assert rc == 0
    raw = np.load(tmp_path / "1a1str.relevance.npy")
    assert raw.shape == read_micrograph(image).pixels.shape


def test_whole_mode_needs_blocks_aligned_with_the_latent_grid(tiny_model):
    from microcae.util.errors import MicrocaeError

    pixels = np.zeros((40, 40), dtype=np.float32)
    with pytest.raises(MicrocaeError, match="multiple of the latent stride 4"):
        micrograph_relevance(tiny_model.encoder, pixels, "vjp", mode="tile", tile=30)
    with pytest.raises(MicrocaeError, match="mode must be"):
        micrograph_relevance(tiny_model.encoder, pixels, "vjp", mode="strips")
