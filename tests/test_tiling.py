import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from microcae.data.tiling import TileGrid, extract_tiles, stitch_tiles


def test_drop_mode_counts_only_whole_tiles():
    grid = TileGrid((1000, 2552), tile=256, stride=256, remainder="drop")
    assert grid.counts == (3, 9) and len(grid) == 27
    assert grid.positions[0] == (0, 0) and grid.positions[-1] == (512, 2048)
    assert len(TileGrid((255, 400), remainder="drop")) == 0


def test_tiles_are_the_slices_of_the_image():
    rng = np.random.default_rng(0)
    image = rng.random((70, 90)).astype(np.float32)
    grid = TileGrid(image.shape, tile=32, stride=16, remainder="drop")
    tiles = extract_tiles(image, grid)
    for (y, x), tile in zip(grid.positions, tiles, strict=True):
        np.testing.assert_array_equal(tile, image[y : y + 32, x : x + 32])


@settings(max_examples=40, deadline=None)
@given(st.integers(1, 90), st.integers(1, 90), st.integers(4, 32), st.integers(1, 32))
def test_pad_mode_stitches_back_to_the_exact_image(height, width, tile, stride):
    stride = min(stride, tile)
    image = np.random.default_rng(height * 100 + width).random((height, width))
    grid = TileGrid((height, width), tile=tile, stride=stride, remainder="pad")
    padded_h, padded_w = grid.padded_shape
    assert padded_h >= height and padded_w >= width
    assert (padded_h - tile) % stride == 0 and (padded_w - tile) % stride == 0
    np.testing.assert_allclose(stitch_tiles(extract_tiles(image, grid), grid), image, rtol=1e-12)


def test_drop_mode_leaves_uncovered_border_as_nan():
    image = np.ones((40, 40))
    grid = TileGrid(image.shape, tile=32, stride=32, remainder="drop")
    merged = stitch_tiles(extract_tiles(image, grid), grid)
    assert np.all(merged[:32, :32] == 1) and np.isnan(merged[32:, :]).all()


def test_pad_mode_mirrors_the_border():
    image = np.arange(12.0).reshape(3, 4)
    grid = TileGrid(image.shape, tile=4, stride=4, remainder="pad")
    tile = extract_tiles(image, grid)[0]
    np.testing.assert_array_equal(tile[3], image[2])  # symmetric padding repeats the edge row


def test_invalid_grid_settings():
    with pytest.raises(ValueError):
        TileGrid((10, 10), tile=0)
    with pytest.raises(ValueError):
        TileGrid((10, 10), remainder="wrap")
