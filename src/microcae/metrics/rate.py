"""Rate metrics for codec comparisons: Bjøntegaard deltas and multi-scale SSIM.

All are pure functions of arrays. :func:`bd_rate` compares two rate–distortion curves
(lower is better: negative means the tested codec needs fewer bits for the same PSNR),
:func:`bd_psnr` the same curves at equal rate (higher is better);
:func:`ms_ssim` scores one decoded image against its original (higher is better, 1 for
identical images).
"""

from __future__ import annotations

import numpy as np
from numpy.polynomial import polynomial
from scipy.ndimage import gaussian_filter, uniform_filter

from microcae.metrics.metric import Metric

MS_SSIM_WEIGHTS = (0.0448, 0.2856, 0.3001, 0.2363, 0.1333)
"""Exponents of the five scales, Wang, Simoncelli & Bovik (2003), fitted to human ratings."""
SSIM_SIGMA = 1.5
"""Standard deviation (px) of the Gaussian window; truncated at 3.5 σ, an 11 × 11 window."""
WINDOW = 11
"""Side of the Gaussian window (px): the smallest scale must be at least this large."""
_TRUNCATE = 3.5
_K1, _K2 = 0.01, 0.03

METRICS = (
    Metric("bd_rate", "lower",
           "Bjøntegaard (2001), ITU-T VCEG-M33, 'Calculation of average PSNR differences "
           "between RD-curves'",
           "mean rate difference (%) of a tested codec against an anchor at equal PSNR"),
    Metric("bd_psnr", "higher", "Bjøntegaard (2001), ITU-T VCEG-M33",
           "mean PSNR difference (dB) of a tested codec against an anchor at equal rate"),
    Metric("ms_ssim", "higher",
           "Wang, Simoncelli & Bovik (2003), 'Multi-scale structural similarity for image "
           "quality assessment', Asilomar Conf. Signals, Systems & Computers",
           "product of contrast-structure terms over 5 dyadic scales and luminance at the "
           "coarsest"),
)


def _mean_gap(x_a: np.ndarray, y_a: np.ndarray, x_b: np.ndarray, y_b: np.ndarray) -> float:
    """Mean of ``fit_a(x) - fit_b(x)`` over the ``x`` interval both curves cover.

    Each fit is a polynomial of degree ``min(3, points - 1)`` of ``y`` against ``x``. With a
    single point on ``a`` the result is ``y_a - fit_b(x_a)``. NaN without overlap.
    """
    low, high = max(x_a.min(), x_b.min()), min(x_a.max(), x_b.max())
    if low > high or (low == high and len(x_a) > 1):
        return float("nan")
    fit_b = polynomial.polyfit(x_b, y_b, min(3, len(x_b) - 1))
    if len(x_a) == 1:
        return float(y_a[0] - polynomial.polyval(x_a[0], fit_b))
    fit_a = polynomial.polyfit(x_a, y_a, min(3, len(x_a) - 1))
    gap = polynomial.polyint(polynomial.polysub(fit_a, fit_b))
    return float((polynomial.polyval(high, gap) - polynomial.polyval(low, gap)) / (high - low))


def _curves(rate_a: np.ndarray, psnr_a: np.ndarray, rate_b: np.ndarray,
            psnr_b: np.ndarray) -> tuple[np.ndarray, ...]:
    """Return validated float64 copies: (log rate a, PSNR a, log rate b, PSNR b)."""
    ra, pa, rb, pb = (np.asarray(v, dtype=np.float64).ravel()
                      for v in (rate_a, psnr_a, rate_b, psnr_b))
    if len(ra) != len(pa) or len(rb) != len(pb) or len(ra) < 1 or len(rb) < 2:
        raise ValueError("Bjøntegaard deltas need matching rate/PSNR lengths, ≥ 1 tested and "
                         "≥ 2 anchor points")
    if np.any(ra <= 0) or np.any(rb <= 0):
        raise ValueError("rates must be positive")
    return np.log(ra), pa, np.log(rb), pb


def bd_rate(rate_a: np.ndarray, psnr_a: np.ndarray, rate_b: np.ndarray,
            psnr_b: np.ndarray) -> float:
    """Bjøntegaard delta rate of curve ``a`` (tested) against curve ``b`` (anchor).

    Fits the natural log of the rate as a polynomial in PSNR for each curve (a cubic, as in
    Bjøntegaard 2001, for 4 or more points; degree ``n - 1`` for fewer points), integrates both
    over the PSNR interval the two curves share and returns ``exp(mean difference) - 1``.

    Parameters
    ----------
    rate_a, psnr_a
        (n,) rates (any positive unit, e.g. bpp) and PSNRs (dB) of the tested codec, n ≥ 1.
        With a single point the result is the rate difference at that PSNR against ``b``'s
        fit (the interval has zero width); the PSNR must lie within ``b``'s range.
    rate_b, psnr_b
        (m,) the same for the anchor, m ≥ 2.

    Returns
    -------
    float
        Mean rate difference in percent: -50 means ``a`` needs half the anchor's rate for the
        same PSNR. NaN if the PSNR intervals do not overlap.
    """
    log_a, pa, log_b, pb = _curves(rate_a, psnr_a, rate_b, psnr_b)
    return float(100.0 * (np.exp(_mean_gap(pa, log_a, pb, log_b)) - 1.0))


def bd_psnr(rate_a: np.ndarray, psnr_a: np.ndarray, rate_b: np.ndarray,
            psnr_b: np.ndarray) -> float:
    """Bjøntegaard delta PSNR (dB) of curve ``a`` against ``b`` at equal rate.

    PSNR is fitted as a polynomial in log-rate (degree as in :func:`bd_rate`) and the mean
    difference taken over the log-rate interval both curves cover; with one point on ``a``,
    its PSNR minus ``b``'s fit at its rate. Arguments as for :func:`bd_rate`.

    Returns
    -------
    float
        Mean PSNR difference in dB (positive: ``a`` is better). NaN without overlap.
    """
    log_a, pa, log_b, pb = _curves(rate_a, psnr_a, rate_b, psnr_b)
    return _mean_gap(log_a, pa, log_b, pb)


def _ssim_terms(x: np.ndarray, y: np.ndarray, data_range: float) -> tuple[float, float]:
    """Mean luminance × contrast-structure term and mean contrast-structure term of one scale.

    Gaussian-weighted local statistics (population covariances), means taken over the pixels
    whose whole window lies inside the image (as :func:`skimage.metrics.structural_similarity`
    with ``gaussian_weights=True, use_sample_covariance=False``).
    """
    c1, c2 = (_K1 * data_range) ** 2, (_K2 * data_range) ** 2

    def blur(image: np.ndarray) -> np.ndarray:
        return gaussian_filter(image, SSIM_SIGMA, truncate=_TRUNCATE)

    mx, my = blur(x), blur(y)
    vx, vy, cxy = blur(x * x) - mx * mx, blur(y * y) - my * my, blur(x * y) - mx * my
    cs = (2 * cxy + c2) / (vx + vy + c2)
    luminance = (2 * mx * my + c1) / (mx * mx + my * my + c1)
    pad = WINDOW // 2
    inner = (slice(pad, -pad), slice(pad, -pad))
    return float(np.mean((luminance * cs)[inner])), float(np.mean(cs[inner]))


def ms_ssim_scales(shape: tuple[int, int]) -> int:
    """Return the number of scales :func:`ms_ssim` uses for an image of ``shape``: at most 5.

    Scale ``j`` (1-based) has side ``min(shape) // 2**(j-1)``; the smallest scale must be at
    least :data:`WINDOW` + 1 pixels (an 11-pixel window and one inner pixel).
    """
    side, scales = min(shape), 0
    while scales < len(MS_SSIM_WEIGHTS) and side >= WINDOW + 1:
        scales, side = scales + 1, side // 2
    return scales


def ms_ssim(original: np.ndarray, decoded: np.ndarray, data_range: float = 255.0) -> float:
    """Multi-scale SSIM of ``decoded`` against ``original`` (Wang et al. 2003).

    Five dyadic scales (2 × 2 mean then subsampling, as the authors' reference code), an
    11 × 11 Gaussian window of σ = 1.5, K1 = 0.01, K2 = 0.03 and the standard exponents
    :data:`MS_SSIM_WEIGHTS`. Contrast-structure terms below 0 are clipped to 0 before the
    fractional powers. Images too small for 5 scales (smaller than 192 px on a side; see
    :func:`ms_ssim_scales`) use as many scales as fit, with the first exponents renormalised
    to sum to 1.

    Parameters
    ----------
    original, decoded
        (H, W) images on the same scale, at least 12 px on each side.
    data_range
        Range of the pixel values (255 for 8-bit images).

    Returns
    -------
    float
        MS-SSIM in [0, 1] (higher is better; 1 for identical images).
    """
    x, y = np.asarray(original, np.float64), np.asarray(decoded, np.float64)
    if x.shape != y.shape or x.ndim != 2:
        raise ValueError(f"shapes differ or are not 2-D: {x.shape}, {y.shape}")
    scales = ms_ssim_scales(x.shape)
    if scales == 0:
        raise ValueError(f"image {x.shape} is smaller than the {WINDOW + 1}-pixel minimum")
    weights = np.asarray(MS_SSIM_WEIGHTS[:scales]) / np.sum(MS_SSIM_WEIGHTS[:scales])
    score = 1.0
    for scale, weight in enumerate(weights):
        ssim, cs = _ssim_terms(x, y, data_range)
        last = scale == scales - 1
        score *= max(ssim if last else cs, 0.0) ** weight
        if not last:
            x, y = (_halve(v) for v in (x, y))
    return float(score)


def _halve(image: np.ndarray) -> np.ndarray:
    """2 × 2 mean filter, then every second pixel: (H, W) -> (H // 2, W // 2)."""
    height, width = (image.shape[0] // 2) * 2, (image.shape[1] // 2) * 2
    return uniform_filter(image, 2, origin=-1)[:height:2, :width:2]
