"""Confidence intervals over micrographs: the cluster (case) bootstrap of a mean.

Tiles of one micrograph are not independent (same specimen, etch, illumination), so intervals
resample whole micrographs with replacement and take the tile-weighted mean of the values of the
drawn micrographs; resampling the top level only is the scheme Ren et al. (2010) recommend for
hierarchical data. With few micrographs the interval is coarse, and with one it is a point
that says nothing (:attr:`Estimate.spread` is False): it reports the spread between
micrographs, not between tiles.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

RESAMPLES = 2000
LEVEL = 0.95


@dataclass(frozen=True)
class Estimate:
    """A mean with its bootstrap confidence interval.

    Attributes
    ----------
    value
        Mean over the finite values.
    low, high
        Percentile interval of the resampled means (NaN when there are no values).
    values, clusters
        Finite values used and micrographs they came from.
    """

    value: float
    low: float
    high: float
    values: int
    clusters: int

    @property
    def spread(self) -> bool:
        """Whether the interval says anything: it needs values from two micrographs or more."""
        return self.clusters >= 2

    def above(self, point: float) -> bool:
        """Tell whether the whole interval lies above ``point`` (False without a spread)."""
        return self.spread and self.low > point

    def below(self, point: float) -> bool:
        """Tell whether the whole interval lies below ``point`` (False without a spread)."""
        return self.spread and self.high < point

    def text(self, spec: str = ".2f") -> str:
        """``value [low, high]`` with the given format spec (no interval from one micrograph)."""
        if not self.spread:
            return f"{self.value:{spec}} (one micrograph: no interval)"
        return f"{self.value:{spec}} [{self.low:{spec}}, {self.high:{spec}}]"

    def as_dict(self) -> dict[str, float | int]:
        """JSON-ready copy."""
        return asdict(self)


def cluster_bootstrap(values: np.ndarray, clusters: np.ndarray, resamples: int = RESAMPLES,
                      level: float = LEVEL, seed: int = 0) -> Estimate:
    """Mean of ``values`` and its percentile interval by resampling whole clusters.

    Parameters
    ----------
    values
        (N,) per-tile values; NaNs are left out.
    clusters
        (N,) label of each value's cluster (e.g. the micrograph's path).
    resamples
        Bootstrap resamples.
    level
        Coverage of the interval (0.95: the 2.5 % and 97.5 % percentiles).
    seed
        Seed of the resampling.

    Returns
    -------
    Estimate
        The tile-weighted mean and the interval of the means of the resampled sets of clusters.

    References
    ----------
    Davison & Hinkley (1997), *Bootstrap Methods and their Application*, §3.8 (cluster
    resampling); Ren et al. (2010), J. Applied Statistics 37(9), 1487-1498.
    """
    values = np.asarray(values, dtype=np.float64)
    clusters = np.asarray(clusters)
    keep = np.isfinite(values)
    values, clusters = values[keep], clusters[keep]
    if values.size == 0:
        return Estimate(float("nan"), float("nan"), float("nan"), 0, 0)
    names, index = np.unique(clusters, return_inverse=True)
    sums = np.bincount(index, weights=values)
    sizes = np.bincount(index).astype(np.float64)
    draws = np.random.default_rng(seed).integers(0, len(names), (resamples, len(names)))
    counts = np.zeros((resamples, len(names)))
    np.add.at(counts, (np.arange(resamples)[:, None], draws), 1.0)
    means = (counts @ sums) / (counts @ sizes)
    tail = (1.0 - level) / 2.0
    low, high = np.quantile(means, [tail, 1.0 - tail])
    return Estimate(float(values.mean()), float(low), float(high), int(values.size),
                    int(len(names)))
