"""Readable saliency figures: robust colour limits, the overlay blend, the files they go to."""

from __future__ import annotations

import numpy as np
import pytest
from matplotlib import colormaps
from PIL import Image

from microcae.figures.saliency import (
    clip_note,
    overlay,
    plot_saliency,
    robust_limits,
    saturation_arrows,
)


def test_robust_limits_ignore_a_handful_of_outliers():
    values = np.arange(10_000, dtype=np.float64).reshape(100, 100)  # 0 .. 9999
    values.flat[:10] = 1e6  # ten outliers (they replace 0 .. 9)
    low, high = robust_limits(values)
    ordered = np.sort(values.ravel())
    # numpy's linear interpolation between order statistics, written out
    def percentile(p):
        position = p / 100 * (ordered.size - 1)
        below = int(np.floor(position))
        return ordered[below] + (position - below) * (ordered[below + 1] - ordered[below])
    assert (low, high) == pytest.approx((percentile(0.5), percentile(99.5)), rel=1e-12)
    assert high < 1e4  # the outliers saturate instead of setting the scale
    assert robust_limits(values, (0, 100)) == (10.0, 1e6)


def test_signed_maps_stay_symmetric_and_constant_maps_get_a_range():
    signed = np.linspace(-2.0, 1.0, 1001)
    bound = np.percentile(np.abs(signed), 99.5)
    assert robust_limits(signed[None]) == pytest.approx((-bound, bound))
    assert robust_limits(np.full((4, 4), 3.0)) == (3.0, 4.0)
    with pytest.raises(ValueError, match="percentiles"):
        robust_limits(signed[None], (50, 10))


def test_overlay_blends_colours_over_grey():
    pixels = np.array([[0.0, 0.5, 1.0]])
    shown = np.array([[0.0, 5.0, 20.0]])  # low end, middle, saturated above the range
    got = overlay(pixels, shown, (0.0, 10.0), alpha=0.6)
    bwr = colormaps["bwr"]
    expected = np.stack([0.4 * np.full(3, p) + 0.6 * np.array(bwr(v)[:3])
                         for p, v in zip(pixels[0], [0.0, 0.5, 1.0], strict=True)])[None]
    np.testing.assert_allclose(got, expected, rtol=1e-12, atol=1e-12)


def test_saturation_arrows_point_where_the_map_leaves_its_limits():
    shown = np.array([[0.0, 1.0], [2.0, 3.0]])
    assert saturation_arrows(shown, (0.0, 3.0)) == "neither"
    assert saturation_arrows(shown, (0.5, 3.0)) == "min"
    assert saturation_arrows(shown, (0.0, 2.5)) == "max"
    assert saturation_arrows(shown, (0.5, 2.5)) == "both"


def test_the_fig11_grid_clips_each_map_to_its_robust_percentiles():
    from microcae.figures.comparison import comparison_grid

    rng = np.random.default_rng(0)
    raw = rng.random((64, 64))
    raw[3, 5] = 1e3  # one outlier pixel must not set the colour scale
    figure = comparison_grid([("tile", rng.random((64, 64)), {"complex-step": raw})])
    image = figure.axes[1].images[0]
    shown = image.get_array()
    assert image.get_clim() == pytest.approx(robust_limits(np.asarray(shown)))
    assert image.get_clim()[1] < 10
    assert "percentiles 0.5–99.5" in figure.axes[-1].get_xlabel()


def test_clip_note_states_the_percentiles():
    assert clip_note((0.5, 99.5)) == "colours clipped to percentiles 0.5–99.5"
    assert clip_note((0, 100)) == "full range"


@pytest.mark.parametrize("style", ["side", "overlay"])
def test_figures_are_written_in_both_styles(tmp_path, style):
    rng = np.random.default_rng(0)
    pixels, relevance = rng.random((40, 60)), rng.random((40, 60))
    path = plot_saliency(pixels, relevance, tmp_path / f"{style}.png", title="t", style=style)
    with Image.open(path) as figure:
        assert figure.format == "PNG" and figure.width > figure.height
    with pytest.raises(ValueError, match="style"):
        plot_saliency(pixels, relevance, tmp_path / "x.png", style="inset")
