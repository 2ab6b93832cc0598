"""Microstructure fidelity of a decoded micrograph: what a metallographer measures, compared.

MSE and PSNR say how far the grey values moved; a metallographer segments the phases and measures
them. Each function here segments the original and the decoded image the same way (each by its
own Otsu threshold, darker pixels = the dark phase: pearlite, carbides, boundaries) and compares
what the segmentations give:

- the **phase fraction** (area share of the dark phase; ASTM E562 estimates it by point counting),
- the **two-point correlation** S2(r) of the dark phase (the probability that two pixels r apart
  both lie in it; it carries the phase fraction at r = 0, the sizes and spacings of the
  particles, and their anisotropy), computed by FFT without periodic wrap-around,
- the **boundary F-score**: how many boundary pixels of one segmentation lie within a few pixels
  of a boundary pixel of the other.

The measures take (H, W) bool phase masks; :func:`fidelity_scores` takes the two (H, W) float
images on one intensity scale (e.g. [0, 1]) and segments them. All functions are pure.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
from scipy.ndimage import distance_transform_edt
from skimage.segmentation import find_boundaries

from microcae.metrics.metric import Metric
from microcae.metrics.microstructure import otsu_dark

MAX_SHIFT = 32
"""Largest displacement (px, along each axis) over which two-point correlations are compared."""
BOUNDARY_TOLERANCE = 2.0
"""Distance (px) within which a boundary pixel counts as matched."""

_E562 = "ASTM E562-19, systematic manual point count (volume fraction = area fraction)"
_S2 = ("Torquato (2002), Random Heterogeneous Materials, Springer, ch. 2 (two-point probability "
       "function S2); FFT estimate as in Berryman (1985), J. Appl. Phys. 57, 2374")
_BF = ("Csurka, Larlus & Perronnin (2013), BMVC, boundary F1 score with a distance tolerance; "
       "after Martin, Fowlkes & Malik (2004), IEEE TPAMI 26(5)")
METRICS = (
    Metric("phase_fraction_error", "lower", _E562,
           "absolute difference of the Otsu dark-phase area fractions of original and decoded"),
    Metric("two_point_error", "lower", _S2,
           f"RMS difference of the dark phase's two-point correlation S2 over displacements up "
           f"to {MAX_SHIFT} px along each axis"),
    Metric("boundary_f", "higher", _BF,
           f"F-score of the decoded phase boundaries against the original's, tolerance "
           f"{BOUNDARY_TOLERANCE:g} px"),
)


@dataclass(frozen=True)
class FidelityScores:
    """Fidelity of one decoded image (see :data:`METRICS`).

    Attributes
    ----------
    phase_fraction_error
        |φ(original) − φ(decoded)|, area fractions in [0, 1] (lower is better).
    two_point_error
        RMS difference of the two-point correlations (lower is better).
    boundary_f
        Boundary F-score in [0, 1] (higher is better).
    """

    phase_fraction_error: float
    two_point_error: float
    boundary_f: float

    def as_dict(self) -> dict[str, float]:
        """Return the scores as a plain dictionary."""
        return asdict(self)


def dark_phase(image: np.ndarray) -> np.ndarray:
    """(H, W) bool mask of the pixels at or below ``image``'s own Otsu threshold."""
    return otsu_dark(np.asarray(image, dtype=np.float64))[0]


def two_point_correlation(phase: np.ndarray, max_shift: int = MAX_SHIFT) -> np.ndarray:
    """Two-point probability function S2 of a binary phase, without periodic wrap-around.

    Parameters
    ----------
    phase
        (H, W) bool (or 0/1) indicator of the phase.
    max_shift
        Largest displacement along each axis; must be smaller than H and W.

    Returns
    -------
    np.ndarray
        (2 m + 1, 2 m + 1) float64 with m = ``max_shift``: entry ``[m + dy, m + dx]`` is the share
        of the pixel pairs ((y, x), (y + dy, x + dx)) inside the image that both lie in the phase.
        ``S2[m, m]`` is the phase fraction.

    References
    ----------
    Torquato (2002), *Random Heterogeneous Materials*, ch. 2; Berryman (1985), J. Appl. Phys.
    57, 2374 (FFT measurement).
    """
    indicator = np.asarray(phase, dtype=np.float64)
    height, width = indicator.shape
    if not 0 <= max_shift < min(height, width):
        raise ValueError(f"max_shift must be in [0, {min(height, width)}), got {max_shift}")
    shape = (height + max_shift, width + max_shift)  # room for every shift: no wrap-around
    spectrum = np.fft.rfft2(indicator, shape)
    pairs = np.fft.irfft2(spectrum * np.conj(spectrum), shape)
    shifts = np.arange(-max_shift, max_shift + 1)
    window = pairs[np.ix_(shifts % shape[0], shifts % shape[1])]
    counts = np.outer(height - np.abs(shifts), width - np.abs(shifts))
    return window / counts


def phase_fraction_error(reference: np.ndarray, candidate: np.ndarray) -> float:
    """|area fraction of phase ``reference`` − that of ``candidate``| (lower is better).

    Parameters
    ----------
    reference, candidate
        (H, W) bool phase masks (e.g. :func:`dark_phase` of the original and of the decoded).

    References
    ----------
    ASTM E562 (volume fraction by point count).
    """
    return float(abs(np.mean(reference, dtype=np.float64) - np.mean(candidate, dtype=np.float64)))


def two_point_error(reference: np.ndarray, candidate: np.ndarray,
                    max_shift: int = MAX_SHIFT) -> float:
    """RMS difference of two phases' two-point correlations (lower is better).

    Parameters
    ----------
    reference, candidate
        (H, W) bool phase masks.
    max_shift
        Displacements compared: every (dy, dx) with |dy|, |dx| ≤ ``max_shift``.

    References
    ----------
    Torquato (2002), *Random Heterogeneous Materials*, ch. 2.
    """
    difference = (two_point_correlation(reference, max_shift)
                  - two_point_correlation(candidate, max_shift))
    return float(np.sqrt(np.mean(difference**2)))


def boundary_f_score(reference: np.ndarray, candidate: np.ndarray,
                     tolerance: float = BOUNDARY_TOLERANCE) -> float:
    """F-score of ``candidate``'s phase boundaries against ``reference``'s (higher is better).

    Parameters
    ----------
    reference, candidate
        (H, W) bool phase masks. Their boundaries are the phase pixels next to a non-phase pixel.
    tolerance
        A boundary pixel matches if a boundary pixel of the other mask lies within this
        Euclidean distance (px).

    Returns
    -------
    float
        ``2 P R / (P + R)`` with precision P (share of candidate boundary pixels matched) and
        recall R (share of reference boundary pixels matched); 1 if neither mask has a boundary,
        0 if only one has.

    References
    ----------
    Csurka, Larlus & Perronnin (2013), "What is a good evaluation measure for semantic
    segmentation?", BMVC; Martin, Fowlkes & Malik (2004), IEEE TPAMI 26(5).
    """
    edges = [find_boundaries(np.asarray(m, dtype=bool), mode="inner") for m in (reference,
                                                                                candidate)]
    counts = [int(e.sum()) for e in edges]
    if counts == [0, 0]:
        return 1.0
    if 0 in counts:
        return 0.0
    near = [distance_transform_edt(~e) <= tolerance for e in edges]
    precision = float(near[0][edges[1]].mean())
    recall = float(near[1][edges[0]].mean())
    return 0.0 if precision + recall == 0 else 2 * precision * recall / (precision + recall)


def fidelity_scores(original: np.ndarray, decoded: np.ndarray, max_shift: int = MAX_SHIFT,
                    tolerance: float = BOUNDARY_TOLERANCE) -> FidelityScores:
    """All fidelity measures of ``decoded`` against ``original``.

    Parameters
    ----------
    original, decoded
        (H, W) float images on the same intensity scale (e.g. [0, 1]); both segmented by their own
        Otsu threshold.
    max_shift
        Largest displacement of the two-point comparison (px).
    tolerance
        Boundary matching distance (px).

    Returns
    -------
    FidelityScores
        Phase-fraction error, two-point error and boundary F-score.
    """
    original, decoded = np.asarray(original, np.float64), np.asarray(decoded, np.float64)
    if original.shape != decoded.shape or original.ndim != 2:
        raise ValueError(f"shapes differ or are not 2-D: {original.shape}, {decoded.shape}")
    reference, candidate = dark_phase(original), dark_phase(decoded)
    return FidelityScores(phase_fraction_error(reference, candidate),
                          two_point_error(reference, candidate, max_shift),
                          boundary_f_score(reference, candidate, tolerance))
