"""Integer code tables of the entropy model: built once from the prior, stored, validated.

Channel ``c`` codes integer latents ``k`` in ``offset_c .. offset_c + length_c - 2`` as symbol
``k - offset_c`` and everything else as the **escape** symbol ``length_c - 1`` followed by the
value itself (see :mod:`microcae.entropy.range_coder`). Symbol ``i`` has probability
``freqs[c, i] / 2**PRECISION``; every frequency is at least 1, so every symbol can be coded, and
each row sums to exactly ``2**PRECISION``. The tables are computed in float64 when a model is
saved and stored as int32 tensors in the model file, so decoding uses only these integers and
never depends on floating-point evaluation on the decoding machine.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from microcae.entropy.factorized import FactorizedPrior
from microcae.util.errors import MicrocaeError

PRECISION = 16
"""Frequencies of every channel sum to ``2**PRECISION``."""
TOTAL = 1 << PRECISION
MAX_SYMBOLS = 4096
"""Most in-range values per channel (the escape symbol comes on top)."""
TAIL_MASS = 1e-6
"""Probability mass left outside each channel's table range (coded through the escape)."""
VALUE_MIN, VALUE_MAX = -(1 << 15), (1 << 15) - 1
"""Integer latents are clamped to this range (int16) before coding."""


@dataclass(frozen=True)
class EntropyTables:
    """Per-channel integer frequency tables.

    Attributes
    ----------
    offsets
        (C,) int32: the latent value coded as symbol 0.
    lengths
        (C,) int32: table entries per channel, escape included (2..MAX_SYMBOLS + 1).
    freqs
        (C, K) int32, K = max(lengths): frequencies, zero beyond each channel's length.
    """

    offsets: np.ndarray
    lengths: np.ndarray
    freqs: np.ndarray

    @property
    def channels(self) -> int:
        """Latent channels C."""
        return int(self.offsets.shape[0])

    def to_tensors(self) -> dict[str, torch.Tensor]:
        """Return the three arrays as int32 tensors named ``tables.*`` (for safetensors)."""
        return {f"tables.{name}": torch.from_numpy(np.ascontiguousarray(getattr(self, name),
                                                                      dtype=np.int32))
                for name in ("offsets", "lengths", "freqs")}

    @classmethod
    def from_tensors(cls, tensors: dict[str, torch.Tensor], label: str) -> EntropyTables:
        """Read and :func:`validate` the ``tables.*`` tensors of a model file."""
        try:
            arrays = {name: tensors[f"tables.{name}"] for name in ("offsets", "lengths", "freqs")}
        except KeyError as exc:
            raise MicrocaeError(f"{label}: code tables missing ({exc.args[0]})") from None
        if any(a.dtype != torch.int32 for a in arrays.values()):
            raise MicrocaeError(f"{label}: code tables are not int32")
        tables = cls(**{k: v.numpy().copy() for k, v in arrays.items()})
        validate(tables, label)
        return tables


def validate(tables: EntropyTables, label: str) -> None:
    """Check shapes, ranges and normalisation of ``tables``; raise MicrocaeError if broken."""
    offsets, lengths, freqs = tables.offsets, tables.lengths, tables.freqs
    if offsets.ndim != 1 or lengths.shape != offsets.shape or freqs.ndim != 2 or (
        freqs.shape[0] != offsets.shape[0] or not 1 <= offsets.shape[0] <= 4096
    ):
        raise MicrocaeError(f"{label}: code tables have inconsistent shapes")
    if not (np.all(lengths >= 2) and np.all(lengths <= MAX_SYMBOLS + 1)
            and freqs.shape[1] == int(lengths.max())):
        raise MicrocaeError(f"{label}: code table lengths out of range")
    if not (np.all(offsets >= VALUE_MIN)
            and np.all(offsets.astype(np.int64) + lengths - 2 <= VALUE_MAX)):
        raise MicrocaeError(f"{label}: code table offsets out of range")
    inside = np.arange(freqs.shape[1])[None, :] < lengths[:, None]
    if not (np.all(freqs[inside] >= 1) and np.all(freqs[~inside] == 0)
            and np.all(freqs.astype(np.int64).sum(axis=1) == TOTAL)):
        raise MicrocaeError(f"{label}: code table frequencies are not normalised")


def quantise_pmf(pmf: np.ndarray) -> np.ndarray:
    """Integer frequencies, each >= 1 and summing to ``TOTAL``, close to a float pmf.

    Parameters
    ----------
    pmf
        (n,) non-negative float64 probabilities (n <= MAX_SYMBOLS + 1), summing to about 1.

    Returns
    -------
    np.ndarray
        (n,) int64 frequencies: ``1 + floor(p * (TOTAL - n))``, the remainder added to the most
        probable entry.
    """
    pmf = np.clip(np.asarray(pmf, dtype=np.float64), 0.0, None)
    pmf = pmf / pmf.sum()
    freqs = 1 + np.floor(pmf * (TOTAL - len(pmf))).astype(np.int64)
    freqs[int(np.argmax(pmf))] += TOTAL - int(freqs.sum())
    return freqs


def build_tables(prior: FactorizedPrior) -> EntropyTables:
    """Compute the code tables of a trained prior (float64, on the CPU; seconds at most).

    Each channel's range runs from the first integer whose upper half-step carries more than
    ``TAIL_MASS / 2`` of the CDF to the last whose lower half-step is below ``1 - TAIL_MASS / 2``,
    at most ``MAX_SYMBOLS`` values; the escape symbol carries the remaining mass.
    """
    values = np.arange(VALUE_MIN, VALUE_MAX + 1)
    upper = prior.cdf(torch.from_numpy(values + 0.5)).numpy()
    lower = prior.cdf(torch.from_numpy(values - 0.5)).numpy()
    offsets, rows = [], []
    for c in range(prior.channels):
        above = np.flatnonzero(upper[c] > TAIL_MASS / 2)
        below = np.flatnonzero(lower[c] < 1.0 - TAIL_MASS / 2)
        first = int(above[0]) if len(above) else len(values) // 2
        last = int(below[-1]) if len(below) else first
        last = min(max(last, first), first + MAX_SYMBOLS - 1)
        pmf = upper[c, first : last + 1] - lower[c, first : last + 1]
        escape = max(1.0 - float(pmf.sum()), 0.0)
        offsets.append(int(values[first]))
        rows.append(quantise_pmf(np.append(pmf, escape)))
    width = max(len(r) for r in rows)
    freqs = np.zeros((prior.channels, width), dtype=np.int32)
    for c, row in enumerate(rows):
        freqs[c, : len(row)] = row
    tables = EntropyTables(np.asarray(offsets, dtype=np.int32),
                           np.asarray([len(r) for r in rows], dtype=np.int32), freqs)
    validate(tables, "entropy model")
    return tables
