"""Microstructure fidelity and the cluster bootstrap on images and samples with known answers."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from microcae.metrics.bootstrap import cluster_bootstrap
from microcae.metrics.fidelity import (
    boundary_f_score,
    dark_phase,
    fidelity_scores,
    phase_fraction_error,
    two_point_correlation,
    two_point_error,
)


def disc(side: int, radius: float) -> np.ndarray:
    yy, xx = np.mgrid[:side, :side]
    return (yy - side / 2) ** 2 + (xx - side / 2) ** 2 < radius**2


def test_phase_fraction_of_discs_of_known_area():
    small, large = disc(64, 10.0), disc(64, 20.0)
    image = np.where(large, 0.2, 0.8)  # a dark disc on a bright matrix
    assert np.array_equal(dark_phase(image), large)
    count = sum((y - 32) ** 2 + (x - 32) ** 2 < 400 for y in range(64) for x in range(64))
    assert large.sum() == count and abs(count - np.pi * 400) < 30  # the lattice disc
    assert phase_fraction_error(large, small) == pytest.approx((large.sum() - small.sum()) / 64**2)
    scores = fidelity_scores(image, np.where(small, 0.3, 0.7))
    assert scores.phase_fraction_error == pytest.approx((large.sum() - small.sum()) / 64**2)
    identical = fidelity_scores(image, image)
    assert (identical.phase_fraction_error, identical.two_point_error,
            identical.boundary_f) == (0.0, 0.0, 1.0)


def test_two_point_correlation_matches_a_direct_count():
    phase = np.random.default_rng(0).random((9, 11)) < 0.4
    got = two_point_correlation(phase, max_shift=4)
    for dy, dx in itertools.product(range(-4, 5), repeat=2):
        pairs = [(y, x) for y in range(9) for x in range(11)
                 if 0 <= y + dy < 9 and 0 <= x + dx < 11]
        both = sum(phase[y, x] and phase[y + dy, x + dx] for y, x in pairs)
        assert got[4 + dy, 4 + dx] == pytest.approx(both / len(pairs), abs=1e-12)


def test_two_point_correlation_of_a_square_is_analytic():
    side, a, m = 64, 12, 16
    square = np.zeros((side, side), dtype=bool)
    square[20:20 + a, 30:30 + a] = True
    d = np.arange(-m, m + 1)
    overlap = np.clip(a - np.abs(d), 0, None)
    expected = np.outer(overlap, overlap) / np.outer(side - np.abs(d), side - np.abs(d))
    np.testing.assert_allclose(two_point_correlation(square, m), expected, atol=1e-12)
    assert two_point_correlation(square, m)[m, m] == pytest.approx(a * a / side**2)
    other = np.zeros_like(square)
    other[5:5 + a // 2, 5:5 + a // 2] = True
    half = np.clip(a // 2 - np.abs(d), 0, None)
    expected_other = np.outer(half, half) / np.outer(side - np.abs(d), side - np.abs(d))
    rms = np.sqrt(np.mean((expected - expected_other) ** 2))
    assert two_point_error(square, other, m) == pytest.approx(rms, abs=1e-12)


def stripes(height: int, width: int, period: int) -> np.ndarray:
    """Vertical stripes: the phase fills the first half of every period along x."""
    return np.tile(np.arange(width) % period < period // 2, (height, 1))


def test_two_point_correlation_of_stripes_is_the_triangle_wave():
    period = 8
    s2 = two_point_correlation(stripes(16, 4 * period, period), 12)
    np.testing.assert_allclose(s2[:, 12], 0.5, atol=1e-12)  # shifts along the stripes
    for dx in range(period + 1):
        # with W - dx a whole number of periods the estimate is the periodic one exactly:
        # S2(dx) = |P/2 - dx| / P, the triangle wave (0.5 at 0 and P, 0 at P/2)
        s2 = two_point_correlation(stripes(16, 4 * period + dx, period), dx)
        assert s2[dx, 2 * dx] == pytest.approx(abs(period / 2 - dx) / period, abs=1e-12)


@pytest.mark.parametrize(("shift", "expected"), [(0, 1.0), (2, 1.0), (3, 0.0)])
def test_boundary_f_score_of_a_shifted_edge(shift, expected):
    reference = np.zeros((40, 40), dtype=bool)
    reference[:, :20] = True
    candidate = np.zeros_like(reference)
    candidate[:, :20 + shift] = True
    assert boundary_f_score(reference, candidate, tolerance=2.0) == expected


def test_boundary_f_score_with_a_spurious_particle():
    reference = np.zeros((40, 40), dtype=bool)
    reference[:, :10] = True
    candidate = reference.copy()
    candidate[20:24, 30:34] = True  # 4×4 square: 12 boundary pixels, none near the edge
    precision = 40 / (40 + 12)
    f = 2 * precision / (precision + 1)
    assert boundary_f_score(reference, candidate) == pytest.approx(f)
    assert boundary_f_score(np.zeros((5, 5), bool), np.zeros((5, 5), bool)) == 1.0
    assert boundary_f_score(reference, np.zeros_like(reference)) == 0.0


def test_cluster_bootstrap_of_two_micrographs_has_the_enumerable_interval():
    values = np.array([0.0, 0.0, 1.0, 1.0, np.nan])
    clusters = np.array(["a", "a", "b", "b", "b"])
    # resampled means: 0 (p 1/4), 1/2 (p 1/2), 1 (p 1/4): the 95 % interval is [0, 1]
    estimate = cluster_bootstrap(values, clusters)
    assert (estimate.value, estimate.low, estimate.high) == (0.5, 0.0, 1.0)
    assert (estimate.values, estimate.clusters) == (4, 2)
    narrow = cluster_bootstrap(values, clusters, level=0.4)  # 30 % and 70 %: both 1/2
    assert (narrow.low, narrow.high) == (0.5, 0.5)
    assert estimate.above(-0.1) and not estimate.above(0.0) and estimate.below(1.1)
    assert estimate.text() == "0.50 [0.00, 1.00]"


def test_cluster_bootstrap_weights_tiles_and_is_a_point_for_one_micrograph():
    one = cluster_bootstrap(np.array([0.2, 0.4, 0.9]), np.zeros(3))
    assert (one.low, one.high) == pytest.approx((0.5, 0.5))
    assert not one.spread and not one.above(0.4) and not one.below(0.6)  # one micrograph
    assert one.text() == "0.50 (one micrograph: no interval)"
    # one micrograph of 3 tiles at 0.0 and one of 1 tile at 1.0: the mean is per tile
    uneven = cluster_bootstrap(np.array([0.0, 0.0, 0.0, 1.0]), np.array([0, 0, 0, 1]))
    assert uneven.value == 0.25 and (uneven.low, uneven.high) == (0.0, 1.0)
    assert np.isnan(cluster_bootstrap(np.array([np.nan]), np.zeros(1)).value)
