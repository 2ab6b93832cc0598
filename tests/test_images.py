import warnings

import numpy as np
import pytest
import tifffile
from conftest import synthetic_micrograph, write_png
from PIL import Image

from microcae.data.images import find_images, micrograph_from_array, read_micrograph
from microcae.util.errors import MicrocaeError, MicrocaeWarning


def test_8bit_png_is_scaled_by_255(tmp_path):
    array = synthetic_micrograph(40, 50)
    m = read_micrograph(write_png(tmp_path / "a.png", array))
    np.testing.assert_array_equal(m.pixels, (array / 255.0).astype(np.float32))
    assert (m.colour, m.scaling, m.value_range, m.source_dtype) == (
        "grey", "full", (0.0, 255.0), "uint8")


@pytest.mark.parametrize("writer", ["tiff", "png"])
def test_16bit_is_scaled_by_its_true_range(tmp_path, writer):
    array = (synthetic_micrograph(30, 20).astype(np.uint16) * 40 + 1000)
    if writer == "tiff":
        path = tmp_path / "a.tif"
        tifffile.imwrite(path, array)
    else:
        path = tmp_path / "a.png"
        Image.fromarray(array).save(path)
    m = read_micrograph(path)
    low, high = float(array.min()), float(array.max())
    assert m.source_dtype in ("uint16", "int32") and m.scaling == "range"
    assert m.value_range == (low, high)
    np.testing.assert_allclose(m.pixels, (array - low) / (high - low), atol=1e-6)


def test_16bit_full_scaling_is_recorded(tmp_path):
    array = np.array([[0, 65535], [1000, 30000]], dtype=np.uint16)
    path = tmp_path / "a.tif"
    tifffile.imwrite(path, array)
    m = read_micrograph(path, scaling="full")
    assert m.scaling == "full" and m.value_range == (0.0, 65535.0)
    np.testing.assert_allclose(m.pixels, array / 65535.0, atol=1e-7)


def test_rgb_with_equal_channels_is_converted_silently(tmp_path):
    grey = synthetic_micrograph(16, 24)
    path = write_png(tmp_path / "rgb.png", np.stack([grey] * 3, axis=-1))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        m = read_micrograph(path)
    assert m.colour == "rgb-grey"
    np.testing.assert_array_equal(m.pixels, (grey / 255.0).astype(np.float32))


def test_true_colour_warns_and_uses_luma(tmp_path):
    rng = np.random.default_rng(1)
    rgb = rng.integers(0, 256, size=(10, 12, 3), dtype=np.uint8)
    path = write_png(tmp_path / "colour.png", rgb)
    with pytest.warns(MicrocaeWarning, match="true-colour"):
        m = read_micrograph(path)
    luma = rgb @ np.array([0.299, 0.587, 0.114])
    expected = luma / 255.0  # 8-bit colour keeps the 0..255 scale
    assert m.colour == "rgb-colour" and m.value_range == (0.0, 255.0)
    np.testing.assert_allclose(m.pixels, expected, atol=1e-6)


def test_jpeg_matches_pillow_decoding(tmp_path):
    path = tmp_path / "a.jpg"
    Image.fromarray(synthetic_micrograph(32, 32)).save(path, quality=90)
    decoded = np.asarray(Image.open(path))
    expected = (decoded / 255.0).astype(np.float32)
    np.testing.assert_array_equal(read_micrograph(path).pixels, expected)


def test_content_decides_format_not_suffix(tmp_path):
    array = synthetic_micrograph(20, 20)
    png_bytes_path = write_png(tmp_path / "x.png", array)
    misnamed = tmp_path / "x.tiff"
    misnamed.write_bytes(png_bytes_path.read_bytes())
    np.testing.assert_array_equal(read_micrograph(misnamed).pixels, array / np.float32(255))


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda p: p, "no such file"),
        (lambda p: (p.write_text("hello"), p)[1], "not a readable image"),
        (lambda p: (p.write_bytes(b""), p)[1], "not a readable image"),
    ],
)
def test_bad_files_raise_one_clear_error(tmp_path, make, message):
    with pytest.raises(MicrocaeError, match=message):
        read_micrograph(make(tmp_path / "bad.png"))


def test_truncated_png_is_rejected(tmp_path):
    path = write_png(tmp_path / "t.png", synthetic_micrograph(64, 64))
    path.write_bytes(path.read_bytes()[:200])
    with pytest.raises(MicrocaeError, match="not a readable image"):
        read_micrograph(path)


def test_nan_constant_and_empty_images_are_rejected():
    with pytest.raises(MicrocaeError, match="NaN"):
        micrograph_from_array(np.array([[0.1, np.nan], [0.2, 0.3]], dtype=np.float32))
    with pytest.raises(MicrocaeError, match="constant"):
        micrograph_from_array(np.full((8, 8), 7, dtype=np.uint8))
    with pytest.raises(MicrocaeError, match="empty"):
        micrograph_from_array(np.zeros((0, 5), dtype=np.uint8))
    with pytest.raises(MicrocaeError, match="shape"):
        micrograph_from_array(np.zeros((3, 3, 3, 3), dtype=np.uint8))


def test_find_images_skips_masks_and_rejects_empty_folders(tmp_path):
    write_png(tmp_path / "d" / "a.png", synthetic_micrograph(8, 8))
    write_png(tmp_path / "d" / "a_mask.png", synthetic_micrograph(8, 8))
    (tmp_path / "d" / "notes.txt").write_text("x")
    assert [p.name for p in find_images([tmp_path / "d"])] == ["a.png"]
    (tmp_path / "empty").mkdir()
    with pytest.raises(MicrocaeError, match="no images"):
        find_images([tmp_path / "empty"])
    with pytest.raises(MicrocaeError, match="no such file"):
        find_images([tmp_path / "missing"])
