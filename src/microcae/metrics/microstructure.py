"""Agreement of relevance maps with microstructure: dark phase, boundaries, label masks.

The study observed that the dark secondary phase (pearlite) and grain boundaries carry the
relevance while the bright matrix (ferrite) carries little. These functions measure that:
the AUROC with which relevance separates dark-phase (or boundary, or labelled) pixels from the
rest, and the relevance mass on the dark phase relative to its area. A Sobel edge map is the
model-free control: grain boundaries are edges, so an edge detector scores well on boundary
AUROC without looking at the model at all.
"""

from __future__ import annotations

import numpy as np
from scipy.stats import rankdata
from skimage.filters import sobel, threshold_otsu
from skimage.segmentation import find_boundaries

from microcae.metrics.metric import Metric

_AUROC = "Hanley & McNeil (1982), Radiology 143(1), 29-36 (AUROC = Mann-Whitney U / (n1 n0))"
_MASS = ("Arras, Osman & Samek (2022), CLEVR-XAI, Information Fusion 81, 14-40 (relevance mass "
         "accuracy), divided by the area fraction")
METRICS = (
    Metric("dark_auroc", "higher", _AUROC,
           "AUROC of |relevance| for pixels darker than the image's Otsu threshold"),
    Metric("boundary_auroc", "higher", _AUROC,
           "AUROC of |relevance| for pixels on the boundary of the Otsu dark phase"),
    Metric("dark_mass_ratio", "higher", _MASS,
           "share of |relevance| on the dark phase over its area share (1 = uniform)"),
    Metric("label_auroc", "higher", _AUROC,
           "AUROC of |relevance| for labelled pixels (second phase, or grain boundaries) of a "
           "label mask"),
    Metric("label_boundary_auroc", "higher", _AUROC,
           "AUROC of |relevance| for pixels on boundaries between labels of a phase mask"),
)

IGNORE = -1
"""Label value of pixels a mask does not cover (they are left out of label metrics)."""


def auroc(scores: np.ndarray, positive: np.ndarray, valid: np.ndarray | None = None) -> float:
    """Area under the ROC curve of ``scores`` for ``positive`` pixels against the rest.

    Parameters
    ----------
    scores
        Any-shape array of scores (higher = predicted positive).
    positive
        Bool array of the same shape.
    valid
        Optional bool array; pixels where it is False are left out.

    Returns
    -------
    float
        P(score of a random positive > score of a random negative), ties counting 1/2;
        0.5 is chance. NaN when either class is empty.

    References
    ----------
    Hanley & McNeil (1982), "The meaning and use of the area under a receiver operating
    characteristic (ROC) curve", Radiology 143(1), 29-36.
    """
    scores, positive = np.asarray(scores).ravel(), np.asarray(positive, dtype=bool).ravel()
    if valid is not None:
        keep = np.asarray(valid, dtype=bool).ravel()
        scores, positive = scores[keep], positive[keep]
    n_pos = int(positive.sum())
    n_neg = positive.size - n_pos
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    ranks = rankdata(scores)  # average ranks for ties
    u = ranks[positive].sum() - n_pos * (n_pos + 1) / 2.0
    return float(u / (n_pos * n_neg))


def mass_ratio(scores: np.ndarray, region: np.ndarray) -> float:
    """Relevance mass in ``region`` divided by its area fraction.

    Parameters
    ----------
    scores
        Non-negative relevance (e.g. ``|r|``), any shape.
    region
        Bool array of the same shape.

    Returns
    -------
    float
        ``(sum(scores[region]) / sum(scores)) / mean(region)``: 1 for relevance spread evenly,
        above 1 when it concentrates in the region. NaN for an empty region or zero scores.

    References
    ----------
    Arras, Osman & Samek (2022), "CLEVR-XAI: a benchmark dataset for the ground truth evaluation
    of neural network explanations", Information Fusion 81 (relevance mass accuracy).
    """
    scores, region = np.asarray(scores, dtype=np.float64), np.asarray(region, dtype=bool)
    if np.any(scores < 0):
        raise ValueError("mass_ratio needs non-negative scores")
    total, area = scores.sum(), region.mean()
    if total == 0 or area == 0:
        return float("nan")
    return float(scores[region].sum() / total / area)


def otsu_dark(pixels: np.ndarray) -> tuple[np.ndarray, float]:
    """Dark-phase mask of a whole micrograph by Otsu's threshold.

    Parameters
    ----------
    pixels
        (H, W) intensities in [0, 1].

    Returns
    -------
    tuple[np.ndarray, float]
        (H, W) bool mask ``pixels <= threshold`` and the threshold.

    References
    ----------
    Otsu (1979), "A threshold selection method from gray-level histograms", IEEE Trans. SMC 9(1).
    """
    threshold = float(threshold_otsu(np.asarray(pixels, dtype=np.float64)))
    return np.asarray(pixels) <= threshold, threshold


def boundaries(labels: np.ndarray) -> np.ndarray:
    """(H, W) bool mask of pixels next to a different label (both sides: 'thick' boundaries)."""
    return find_boundaries(np.asarray(labels), mode="thick")


def sobel_map(pixels: np.ndarray) -> np.ndarray:
    """Control "relevance": Sobel gradient magnitude of (H, W) ``pixels``, float64 (H, W).

    References
    ----------
    Sobel & Feldman (1968), "An isotropic 3×3 image gradient operator" (Stanford AI project).
    """
    return sobel(np.asarray(pixels, dtype=np.float64))


def microstructure_scores(
    relevance: np.ndarray,
    dark: np.ndarray,
    label: np.ndarray | None = None,
    label_kind: str = "phase",
) -> dict[str, float]:
    """All microstructure metrics of one tile's relevance.

    Parameters
    ----------
    relevance
        (H, W) relevance; its magnitude ``|r|`` is scored (see the comparison docs).
    dark
        (H, W) bool dark-phase mask (from :func:`otsu_dark` on the whole micrograph).
    label
        Optional (H, W) int labels with :data:`IGNORE` for uncovered pixels.
    label_kind
        ``"phase"``: labels are phases (their boundaries are phase boundaries) or
        ``"boundary"``: non-zero labels mark grain boundaries.

    Returns
    -------
    dict[str, float]
        Keys of :data:`METRICS` (label metrics NaN without a label, ``label_boundary_auroc`` NaN
        for boundary masks). Undefined values (one class empty) are NaN.
    """
    score = np.abs(np.asarray(relevance, dtype=np.float64))
    result = {
        "dark_auroc": auroc(score, dark),
        "boundary_auroc": auroc(score, boundaries(dark)),
        "dark_mass_ratio": mass_ratio(score, dark),
        "label_auroc": float("nan"),
        "label_boundary_auroc": float("nan"),
    }
    if label is not None:
        covered = label != IGNORE
        result["label_auroc"] = auroc(score, label > 0, valid=covered)
        if label_kind == "phase":
            edges = boundaries(label) & covered & ~boundaries(covered)
            result["label_boundary_auroc"] = auroc(score, edges, valid=covered)
    return result
