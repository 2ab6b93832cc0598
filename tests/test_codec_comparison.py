"""Whole-image codec comparison: byte-budget search, BD-rate, MS-SSIM, rates of real files, CLI."""

from __future__ import annotations

import copy
import json
import re

import numpy as np
import pytest
import torch
from conftest import synthetic_micrograph, write_png
from hypothesis import given
from hypothesis import strategies as st
from numpy.lib.stride_tricks import sliding_window_view
from PIL import Image
from skimage.metrics import structural_similarity

from microcae.cli import main
from microcae.codec import decode_bytes, encode_image
from microcae.data.images import to_uint8
from microcae.evaluation.codec_comparison import (
    CLASSICAL_CODECS,
    CodecComparison,
    CodecFiles,
    Row,
    _micrograph,
    compare_codecs,
    highest_within,
    markdown_report,
    write_comparison,
)
from microcae.metrics.rate import MS_SSIM_WEIGHTS, bd_psnr, bd_rate, ms_ssim, ms_ssim_scales
from microcae.models.hyperprior import HyperpriorCodec, HyperpriorConfig
from microcae.models.refinement import Refinement
from microcae.models.registry import save_model
from microcae.util.errors import MicrocaeError


@pytest.fixture(scope="module")
def codec() -> HyperpriorCodec:
    torch.manual_seed(0)
    model = HyperpriorCodec(HyperpriorConfig(N=8, M=12)).eval()
    model.update()
    return model


@given(steps=st.lists(st.integers(0, 50), min_size=1, max_size=60), budget=st.integers(0, 2000))
def test_binary_search_agrees_with_a_linear_scan(steps, budget):
    sizes = np.cumsum(steps).tolist()
    fitting = [i for i, size in enumerate(sizes) if size <= budget]
    expected = fitting[-1] if fitting else 0
    assert highest_within(lambda i: sizes[i], len(sizes), budget) == expected


@pytest.mark.parametrize("name", list(CLASSICAL_CODECS))
def test_the_budget_search_keeps_within_budget_and_the_next_setting_is_over(name):
    pixels = synthetic_micrograph(48, 64, seed=3)
    files = CodecFiles(CLASSICAL_CODECS[name], pixels)
    smallest = len(files.file(0)[0])
    for bpp in (0.5, 1.5, 3.0):
        budget = int(bpp * pixels.size / 8)
        index = files.best_within(budget)
        if budget < smallest:
            assert index == 0
            continue
        data = files.file(index)[0]
        assert len(data) <= budget
        assert data == CLASSICAL_CODECS[name].encode(pixels, files.codec.settings[index])
        if index + 1 < len(files.codec.settings):
            assert len(files.file(index + 1)[0]) > budget


@pytest.mark.parametrize("name", list(CLASSICAL_CODECS))
def test_each_codec_decodes_its_own_file_to_the_image_shape_and_nearly_the_pixels(name):
    pixels = synthetic_micrograph(48, 64, seed=1)
    codec = CLASSICAL_CODECS[name]
    decoded = codec.decode(codec.encode(pixels, codec.settings[-1]))
    assert decoded.shape == pixels.shape and decoded.dtype == np.uint8
    # the best setting of every codec is within a few grey levels on average
    assert np.abs(decoded.astype(int) - pixels).mean() < 4


def test_bd_rate_of_a_curve_needing_half_the_rate_is_minus_50_percent():
    psnr = np.array([28.0, 31.0, 34.0, 37.0, 40.0])
    rate = np.exp(-3.0 + 0.12 * psnr - 0.0004 * psnr**3 / 10)  # a cubic in PSNR: exact fit
    assert bd_rate(rate, psnr, 2 * rate, psnr) == pytest.approx(-50.0, abs=1e-9)
    assert bd_rate(2 * rate, psnr, rate, psnr) == pytest.approx(100.0, abs=1e-9)
    assert bd_rate(rate[2:3], psnr[2:3], 2 * rate, psnr) == pytest.approx(-50.0, abs=1e-9)


def test_bd_rate_integrates_over_the_shared_psnr_interval_only():
    # log r_a - log r_b = c (PSNR - 30): the mean over the shared interval [32, 38] is 5 c
    c = 0.05
    psnr_a, psnr_b = np.linspace(32, 44, 5), np.linspace(26, 38, 6)
    rate_b = np.exp(0.1 * psnr_b - 2)
    rate_a = np.exp(0.1 * psnr_a - 2 + c * (psnr_a - 30))
    assert bd_rate(rate_a, psnr_a, rate_b, psnr_b) == pytest.approx(
        100 * (np.exp(5 * c) - 1), abs=1e-9)
    assert np.isnan(bd_rate(rate_a, psnr_a + 20, rate_b, psnr_b))


def test_bd_psnr_of_a_curve_1_5_db_better_at_every_rate_is_1_5():
    rate = np.array([0.1, 0.2, 0.4, 0.8, 1.6])
    psnr = 24 + 3 * np.log(rate) - 0.1 * np.log(rate) ** 3
    assert bd_psnr(rate, psnr + 1.5, rate, psnr) == pytest.approx(1.5, abs=1e-9)
    assert bd_psnr(rate[1:2], psnr[1:2] - 2, rate, psnr) == pytest.approx(-2.0, abs=1e-9)
    # rates shifted by 2x and PSNR linear in log-rate with slope s: the gap is s * ln 2
    line = 30 + 4 * np.log(rate)
    assert bd_psnr(rate / 2, line, rate, line) == pytest.approx(4 * np.log(2), abs=1e-9)


def _direct_ms_ssim(x: np.ndarray, y: np.ndarray, scales: int) -> float:
    """Textbook MS-SSIM: explicit 11x11 Gaussian windows over every valid position."""
    g = np.exp(-(np.arange(-5, 6) ** 2) / (2 * 1.5**2))
    window = np.outer(g, g) / np.outer(g, g).sum()
    c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2
    weights = np.array(MS_SSIM_WEIGHTS[:scales]) / sum(MS_SSIM_WEIGHTS[:scales])
    score = 1.0
    for j in range(scales):
        px, py = sliding_window_view(x, (11, 11)), sliding_window_view(y, (11, 11))
        mx, my = (px * window).sum((2, 3)), (py * window).sum((2, 3))
        vx = (px**2 * window).sum((2, 3)) - mx**2
        vy = (py**2 * window).sum((2, 3)) - my**2
        cxy = (px * py * window).sum((2, 3)) - mx * my
        cs = (2 * cxy + c2) / (vx + vy + c2)
        if j == scales - 1:
            score *= np.mean((2 * mx * my + c1) / (mx**2 + my**2 + c1) * cs) ** weights[j]
        else:
            score *= np.mean(cs) ** weights[j]
            h, w = x.shape[0] // 2 * 2, x.shape[1] // 2 * 2
            x = x[:h, :w].reshape(h // 2, 2, w // 2, 2).mean((1, 3))
            y = y[:h, :w].reshape(h // 2, 2, w // 2, 2).mean((1, 3))
    return float(score)


def test_ms_ssim_matches_a_direct_computation_and_is_one_for_identical_images():
    rng = np.random.default_rng(2)
    x = synthetic_micrograph(50, 61, seed=2).astype(np.float64)
    y = np.clip(x + rng.normal(0, 15, x.shape), 0, 255)
    assert ms_ssim_scales(x.shape) == 3  # 50, 25, 12 px
    assert ms_ssim(x, y) == pytest.approx(_direct_ms_ssim(x, y, 3), rel=1e-10)
    assert ms_ssim(x, x) == 1.0
    small = (x[:20, :20], y[:20, :20])
    reference = structural_similarity(*small, gaussian_weights=True, sigma=1.5,
                                      use_sample_covariance=False, data_range=255)
    assert ms_ssim(*small) == pytest.approx(reference, rel=1e-10)
    assert [ms_ssim_scales((s, 300)) for s in (11, 12, 191, 192)] == [0, 1, 4, 5]
    with pytest.raises(ValueError, match="smaller than"):
        ms_ssim(x[:11], y[:11])


def test_every_row_rate_is_its_real_files_bits_per_pixel(codec, tiny_model):
    pixels = synthetic_micrograph(40, 56, seed=7)
    result = compare_codecs([("img", pixels)], [("hp", codec), ("cae", tiny_model)],
                            bpp_targets=(0.5, 2.0), codecs=("jpeg", "jpeg2000"),
                            progress=False)
    assert len(result.rows) == 2 * (1 + 2) + 2 * 2
    for row in result.rows:
        assert row.bpp == 8 * row.bytes / pixels.size
    own = {r.codec: r for r in result.rows if r.target == "own"}
    for name, model in (("hp", codec), ("cae", tiny_model)):
        data = encode_image(model, _micrograph("img", pixels))
        assert own[name].bytes == len(data)
        decoded = to_uint8(decode_bytes(model, data, "img").pixels)
        mse = np.mean((decoded.astype(float) - pixels) ** 2)
        assert own[name].psnr_db == pytest.approx(10 * np.log10(255**2 / mse), abs=1e-12)
    for row in result.rows:
        if row.target.startswith("model:"):
            assert row.bytes <= own[row.target[6:]].bytes or row.over_budget
        elif row.target.startswith("bpp:"):
            assert row.bytes <= float(row.target[4:]) * pixels.size / 8 or row.over_budget
    jpeg = next(r for r in result.rows if r.codec == "jpeg" and r.target == "bpp:2")
    data = CLASSICAL_CODECS["jpeg"].encode(pixels, float(jpeg.setting.split("=")[1]))
    assert len(data) == jpeg.bytes
    report = result.as_dict()
    again = CodecComparison.from_dict(json.loads(json.dumps(report)))
    assert again.rows == result.rows and again.models == result.models
    with pytest.raises(MicrocaeError, match="model names in both comparisons: cae, hp"):
        result.merged(again)
    assert [r["model"] for r in report["bd_rate_percent"]] == ["hp", "cae"]
    assert "whole images" in markdown_report(result)


def test_refined_codecs_get_their_own_rows_and_the_other_models_stay_as_they_are(codec,
                                                                                tiny_model):
    pixels = synthetic_micrograph(40, 56, seed=9)
    refinable = copy.deepcopy(codec)
    refinable.lmbda = 0.01
    refine = Refinement(steps=3)
    result = compare_codecs([("img", pixels)], [("hp", refinable), ("cae", tiny_model)],
                            bpp_targets=(), codecs=("jpeg",), progress=False, refine=refine)
    assert result.models == {
        "hp+refine3": {"kind": "microcae.hyperprior+refine3",
                       "fingerprint": codec.fingerprint()},
        "cae": {"kind": tiny_model.kind, "fingerprint": tiny_model.fingerprint()}}
    own = {r.codec: r.bytes for r in result.rows if r.target == "own"}
    image = _micrograph("img", pixels)
    assert own["hp+refine3"] == len(encode_image(refinable, image, refine=refine))
    assert own["cae"] == len(encode_image(tiny_model, image))


def test_throughput_is_megabytes_of_8_bit_pixels_per_second():
    """Two files of 1000 × 1000 px (1 MB of 8-bit pixels each), encoded in 0.5 s and 1.5 s and
    decoded in 0.25 s each: 2 MB / 2 s = 1 MB/s encode, 2 MB / 0.5 s = 4 MB/s decode."""
    scores = {"psnr_db": 30.0, "ms_ssim": 0.9, "phase_fraction_error": 0.0,
              "two_point_error": 0.0, "boundary_f": 1.0}
    rows = [Row(f"i{k}", "jpeg", False, "bpp:1", "q", 125000, 1.0, False, **scores,
                encode_s=seconds, decode_s=0.25) for k, seconds in enumerate((0.5, 1.5))]
    (table,) = CodecComparison(rows, [("i0", 1000, 1000), ("i1", 1000, 1000)], None,
                               {}).throughput()
    assert table == {"codec": "jpeg", "files": 2, "encode_MB_s": 1.0, "decode_MB_s": 4.0}


def test_kind_groups_are_the_kinds_with_two_or_more_models_in_order():
    models = {name: {"kind": kind, "fingerprint": name} for name, kind in (
        ("a", "k1"), ("b", "k2"), ("c", "k1"), ("d", "k3"), ("e", "k1"), ("f", "k3"))}
    comparison = CodecComparison([], [], None, models)
    assert comparison.kind_groups() == {"k1": ["a", "c", "e"], "k3": ["d", "f"]}


def test_a_centre_crop_is_measured_and_said_and_models_merge(tiny_model, codec):
    pixels = synthetic_micrograph(40, 90, seed=8)
    result = compare_codecs([("img", pixels)], [("cae", tiny_model)], bpp_targets=(1.0,),
                            codecs=("jpeg",), crop=32, progress=False)
    extra = compare_codecs([("img", pixels)], [("hp", codec)], bpp_targets=(),
                           codecs=("jpeg",), crop=32, progress=False)
    merged = extra.merged(result)
    assert list(merged.models) == ["cae", "hp"] and len(merged.rows) == 2 + 1 + 2
    with pytest.raises(MicrocaeError, match="same"):
        extra.merged(compare_codecs([("img", pixels)], [], bpp_targets=(1.0,),
                                    codecs=("jpeg",), progress=False))
    assert result.images == [("img", 32, 32)]
    (row,) = [r for r in result.rows if r.target == "bpp:1"]
    centre = pixels[4:36, 29:61]
    assert row.bytes == len(CLASSICAL_CODECS["jpeg"].encode(centre, float(row.setting[8:])))
    assert "centre-cropped to at most 32×32 px" in markdown_report(result)


def test_a_models_point_is_its_mean_over_images_and_jpeg_meets_its_bytes(tiny_model):
    images = [(f"t{seed}", synthetic_micrograph(64, 64, seed=seed)) for seed in (4, 5)]
    result = compare_codecs(images, [("cae", tiny_model)], bpp_targets=(), codecs=("jpeg",),
                            progress=False)
    sizes, psnrs = [], []
    for label, pixels in images:
        data = encode_image(tiny_model, _micrograph(label, pixels))
        decoded = to_uint8(decode_bytes(tiny_model, data, label).pixels)
        sizes.append(len(data))
        psnrs.append(10 * np.log10(255**2 / np.mean((decoded.astype(float) - pixels) ** 2)))
    point = result.learned_points()["cae"]
    assert point["bytes"] == np.mean(sizes) and point["bpp"] == 8 * np.mean(sizes) / 4096
    assert point["psnr_db"] == pytest.approx(np.mean(psnrs), abs=1e-12) and point["images"] == 2
    jpeg = [r for r in result.rows if r.codec == "jpeg"]
    assert [(r.image, r.target) for r in jpeg] == [("t4", "model:cae"), ("t5", "model:cae")]
    for row, (_, pixels), size in zip(jpeg, images, sizes, strict=True):
        quality = int(row.setting.removeprefix("quality="))
        assert not row.over_budget and row.bytes <= size and quality < 100
        # the best quality: one step more needs more bytes than the CAE file
        assert len(CLASSICAL_CODECS["jpeg"].encode(pixels, quality + 1)) > size
    matched = result.matched()
    assert [m["codec"] for m in matched] == ["**cae**", "jpeg"]
    assert matched[1]["over_budget"] == 0 and matched[1]["images"] == 2
    assert matched[1]["bytes"] == np.mean([r.bytes for r in jpeg]) <= point["bytes"]


def test_an_rd_models_rows_tables_and_written_files(tiny_rd, tmp_path):
    model = tiny_rd[0]
    images = [(f"t{seed}", synthetic_micrograph(64, 64, seed=seed)) for seed in (30, 31)]
    result = compare_codecs(images, [("tiny", model)], bpp_targets=(0.5, 2.0),
                            codecs=("jpeg2000",), progress=False)
    sizes = [len(encode_image(model, _micrograph(label, pixels))) for label, pixels in images]
    point = result.learned_points()["tiny"]
    assert point["bytes"] == np.mean(sizes) and point["bpp"] == 8 * np.mean(sizes) / 4096
    assert result.models == {"tiny": {"kind": model.kind, "fingerprint": model.fingerprint()}}
    own, matched = result.matched()
    assert (own["at bytes of"], own["codec"]) == ("tiny", "**tiny**")
    assert (matched["at bytes of"], matched["codec"]) == ("tiny", "jpeg2000")
    assert matched["bytes"] <= own["bytes"] or matched["over_budget"] > 0
    text = markdown_report(result)
    assert "| tiny | **tiny** |" in text and "| tiny | jpeg2000 |" in text
    written = write_comparison(result, tmp_path / "out")
    again = CodecComparison.from_dict(json.loads(written["json"].read_text()))
    assert again.rows == result.rows and again.models == result.models
    assert written["markdown"].read_text() == text
    assert len(written["csv"].read_text().splitlines()) == 1 + len(result.rows)
    assert written["figure"].stat().st_size > 10_000


@pytest.mark.parametrize(("images", "crop", "message"), [
    ([], None, "no images to compare"),
    ([("rgb", np.zeros((20, 20, 3), np.uint8))], None,
     "rgb: codecs compare (H, W) uint8 images, got uint8 of shape (20, 20, 3)"),
    ([("f", np.zeros((20, 20)))], None, "got float64"),
    ([("small", np.zeros((11, 40), np.uint8))], None, "small: 11×40 px (after any crop)"),
    ([("c", np.zeros((40, 40), np.uint8))], 11, "c: 11×11 px (after any crop)"),
])
def test_images_the_codecs_cannot_compare_are_refused(images, crop, message):
    with pytest.raises(MicrocaeError, match=re.escape(message)):
        compare_codecs(images, [], bpp_targets=(2.0,), codecs=("jpeg",), crop=crop,
                       progress=False)
    smallest = compare_codecs([("ok", synthetic_micrograph(12, 12))], [], bpp_targets=(2.0,),
                              codecs=("jpeg",), progress=False)
    assert smallest.images == [("ok", 12, 12)]


def _one_line_error(capsys, rc: int) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and err[0].startswith("microcae: error: ")
    return err[0]


def test_evaluate_command_writes_json_markdown_and_plot(tmp_path, codec, capsys):
    image = write_png(tmp_path / "raw" / "a.png", synthetic_micrograph(48, 80, seed=1))
    save_model(codec, tmp_path / "hp.safetensors")
    out = tmp_path / "eval"
    assert main(["evaluate", str(image), "-o", str(out), "-m", str(tmp_path / "hp.safetensors"),
                 "--codec", "webp", "--codec", "avif", "--bpp", "1", "--bpp", "2",
                 "--no-progress"]) == 0
    report = json.loads((out / "codecs.json").read_text())
    assert set(report["curves"]) == {"webp", "avif"} and list(report["models"]) == ["hp"]
    assert [p["target_bpp"] for p in report["curves"]["avif"]] == [1.0, 2.0]
    assert "| hp | **hp** |" in (out / "codecs.md").read_text()
    with Image.open(out / "rd.png") as plot:
        assert plot.size[0] > 500
    assert "## Bjøntegaard delta rate" in capsys.readouterr().out


def test_evaluate_errors_are_one_line_and_write_nothing(tmp_path, capsys):
    image = write_png(tmp_path / "a.png", synthetic_micrograph(48, 48, seed=1))
    out = tmp_path / "eval"
    rc = main(["evaluate", str(image), "-o", str(out), "-m", str(tmp_path / "nope.safetensors")])
    assert "nope.safetensors" in _one_line_error(capsys, rc)
    rc = main(["evaluate", str(tmp_path / "missing.png"), "-o", str(out), "-m", "study"])
    assert "missing.png" in _one_line_error(capsys, rc)
    rc = main(["evaluate", str(image), "-o", str(out), "-m", "study", "-m", "study"])
    assert "different names" in _one_line_error(capsys, rc)
    rc = main(["evaluate", str(image), "-o", str(out), "--bpp", "0", "-m", "study"])
    assert rc == 2 and "--bpp" in capsys.readouterr().err
    rc = main(["evaluate", str(image), "-o", str(out), "--crop", "8", "-m", "study"])
    assert "8×8 px (after any crop) is too small" in _one_line_error(capsys, rc)
    rc = main(["evaluate", str(image), "-o", str(out), "--refine", "2", "-m", "study"])
    assert "no --model is one" in _one_line_error(capsys, rc)
    save_model(HyperpriorCodec(HyperpriorConfig(N=8, M=12)), tmp_path / "hp.safetensors")
    rc = main(["evaluate", str(image), "-o", str(out), "--refine", "2", "-m",
               str(tmp_path / "hp.safetensors")])
    assert "records none" in _one_line_error(capsys, rc)
    assert not out.exists()
