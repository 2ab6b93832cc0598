"""Gaussian conditional code tables and the range-coded stream of the hyperprior codec.

One table per scale of a fixed log-spaced scale table (integer frequencies summing to 2^16, an
escape for the tails), built once when a model is saved and stored in its file; the stream codes
the hyper-latent under the factorized prior's tables, then each latent residual under the table
of its integer scale index (``constriction`` range coder, exact binary-fraction models), so the
decoder depends on integers only.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from scipy import special

from microcae.entropy.code_tables import (
    MAX_SYMBOLS,
    TAIL_MASS,
    TOTAL,
    VALUE_MAX,
    VALUE_MIN,
    EntropyTables,
    build_tables,
    quantise_pmf,
    validate,
)
from microcae.entropy.factorized import LIKELIHOOD_FLOOR, FactorizedPrior
from microcae.util.errors import MicrocaeError

SENTINEL = (0xC0DE, 0x5EED)
"""Two 16-bit values coded after all symbols; a damaged or truncated stream decodes others."""
RAW_SIZE = VALUE_MAX - VALUE_MIN + 1


def gaussian_likelihood(residual: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """Mass of N(0, scale²) on ``[residual - 1/2, residual + 1/2]``, floored at 1e-9.

    Computed as ``Phi((1/2 - |r|)/s) - Phi((-1/2 - |r|)/s)`` (both arguments on the accurate
    side of the normal CDF). Shapes broadcast; returns the broadcast shape.
    """
    r = residual.abs()
    upper = torch.special.ndtr((0.5 - r) / scale)
    lower = torch.special.ndtr((-0.5 - r) / scale)
    return (upper - lower).clamp_min(LIKELIHOOD_FLOOR)


def gaussian_tables(scales: np.ndarray) -> EntropyTables:
    """Integer code tables of zero-mean quantised Gaussians, one row per scale.

    Row ``i`` codes symbols ``-T_i .. T_i`` (``T_i`` the smallest integer whose two tails beyond
    ``± (T_i + 1/2)`` carry at most :data:`~microcae.entropy.code_tables.TAIL_MASS`) as in
    :mod:`microcae.entropy.code_tables`, plus the escape symbol with the remaining mass;
    frequencies by :func:`~microcae.entropy.code_tables.quantise_pmf` (each >= 1, rows summing
    to ``2**16``).

    Parameters
    ----------
    scales
        (L,) float64 standard deviations.

    Returns
    -------
    EntropyTables
        With ``channels == L``, ``offsets[i] == -T_i``, ``lengths[i] == 2 T_i + 2``.
    """
    z_tail = -float(special.ndtri(TAIL_MASS / 2))
    rows, offsets = [], []
    for s in np.asarray(scales, dtype=np.float64):
        t = int(min(max(math.ceil(z_tail * s - 0.5), 1), (MAX_SYMBOLS - 1) // 2))
        k = np.abs(np.arange(-t, t + 1, dtype=np.float64))
        pmf = special.ndtr((0.5 - k) / s) - special.ndtr((-0.5 - k) / s)
        rows.append(quantise_pmf(np.append(pmf, max(1.0 - float(pmf.sum()), 0.0))))
        offsets.append(-t)
    return _stack_tables(offsets, rows)


def _stack_tables(offsets: list[int], rows: list[np.ndarray]) -> EntropyTables:
    width = max(len(r) for r in rows)
    freqs = np.zeros((len(rows), width), dtype=np.int32)
    for i, row in enumerate(rows):
        freqs[i, : len(row)] = row
    tables = EntropyTables(np.asarray(offsets, dtype=np.int32),
                           np.asarray([len(r) for r in rows], dtype=np.int32), freqs)
    validate(tables, "hyperprior")
    return tables


def factorized_tables(prior: FactorizedPrior, chunk: int = 16) -> EntropyTables:
    """Return :func:`~microcae.entropy.code_tables.build_tables` of ``prior``, ``chunk`` at a time.

    Same tables as one call on the whole prior, with memory bounded by ``chunk`` channels.
    """
    offsets: list[int] = []
    rows: list[np.ndarray] = []
    for start in range(0, prior.channels, chunk):
        stop = min(start + chunk, prior.channels)
        part = FactorizedPrior(stop - start, prior.filters)
        part.load_state_dict({k: v[start:stop] for k, v in prior.state_dict().items()})
        tables = build_tables(part)
        offsets.extend(int(o) for o in tables.offsets)
        rows.extend(tables.freqs[c, : tables.lengths[c]] for c in range(tables.channels))
    return _stack_tables(offsets, rows)


def _categoricals(tables: EntropyTables) -> list[Any]:
    """One constriction model per table row from the integer frequencies.

    ``freqs / 2**16`` are exact binary fractions summing to exactly 1, so constriction's
    fixed-point model (24-bit) is the same on every machine.
    """
    import constriction

    categorical = constriction.stream.model.Categorical
    return [categorical(tables.freqs[c, : tables.lengths[c]].astype(np.float64) / TOTAL,
                        perfect=False) for c in range(tables.channels)]


@dataclass
class Coders:
    """constriction models for every row of the z and y tables (built once per table set)."""

    z: list[Any]
    y: list[Any]

    @classmethod
    def build(cls, z_tables: EntropyTables, y_tables: EntropyTables) -> Coders:
        """Models of both table sets."""
        return cls(_categoricals(z_tables), _categoricals(y_tables))


def _split(values: np.ndarray, offsets: np.ndarray,
           lengths: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Table symbols (escape where out of range) and the escaped values, elementwise."""
    index = values - offsets
    outside = (index < 0) | (index >= lengths - 1)
    return np.where(outside, lengths - 1, index).astype(np.int32), values[outside]


def _grouping(index: np.ndarray, levels: int) -> tuple[np.ndarray, list[int]]:
    """Stable order grouping flat positions by scale index, and the size of each group."""
    order = np.argsort(index, kind="stable")
    return order, np.bincount(index, minlength=levels).tolist()


def encode_stream(z_symbols: np.ndarray, y_symbols: np.ndarray, index: np.ndarray,
                  z_tables: EntropyTables, y_tables: EntropyTables,
                  coders: Coders | None = None) -> bytes:
    """Range-code ``ẑ`` and the symbols of ``y`` in one stream.

    Parameters
    ----------
    z_symbols
        (N, h, w) integers within the int16 range; channel ``c`` under z table row ``c``.
    y_symbols
        (M, 4h, 4w) integers within the int16 range.
    index
        (M, 4h, 4w) integer scale indices: the y table row of each symbol.
    z_tables, y_tables
        The stored integer tables.
    coders
        Prebuilt constriction models of these tables (optional cache).

    Returns
    -------
    bytes
        32-bit little-endian words. Order: z channel by channel (C order), the escaped z values,
        the y symbols grouped by scale index (ascending; C order within a group), the escaped y
        values (same order), :data:`SENTINEL`. An escaped value ``v`` is ``v + 2**15`` under a
        uniform model on ``0 .. 2**16 - 1``.
    """
    import constriction

    coders = coders or Coders.build(z_tables, y_tables)
    uniform = constriction.stream.model.Uniform(RAW_SIZE)
    encoder = constriction.stream.queue.RangeEncoder()
    n = z_symbols.shape[0]
    z_flat = z_symbols.reshape(n, -1).astype(np.int64)
    escaped = []
    for c in range(n):
        symbols, out = _split(z_flat[c], int(z_tables.offsets[c]), int(z_tables.lengths[c]))
        encoder.encode(symbols, coders.z[c])
        escaped.append(out)
    raw = np.concatenate(escaped)
    if raw.size:
        encoder.encode((raw - VALUE_MIN).astype(np.int32), uniform)
    flat_index = index.reshape(-1).astype(np.int64)
    order, counts = _grouping(flat_index, y_tables.channels)
    grouped = y_symbols.reshape(-1).astype(np.int64)[order]
    escaped, start = [], 0
    for i, count in enumerate(counts):
        if count:
            symbols, out = _split(grouped[start : start + count], int(y_tables.offsets[i]),
                                  int(y_tables.lengths[i]))
            encoder.encode(symbols, coders.y[i])
            escaped.append(out)
            start += count
    raw = np.concatenate(escaped) if escaped else np.zeros(0, dtype=np.int64)
    if raw.size:
        encoder.encode((raw - VALUE_MIN).astype(np.int32), uniform)
    encoder.encode(np.asarray(SENTINEL, dtype=np.int32), uniform)
    return encoder.get_compressed().astype("<u4").tobytes()


_DECODER_ERRORS = (ValueError, RuntimeError, AssertionError, OverflowError, TypeError)


def decode_stream(data: bytes, z_shape: tuple[int, int, int],
                  y_index: Callable[[np.ndarray], np.ndarray], z_tables: EntropyTables,
                  y_tables: EntropyTables,
                  coders: Coders | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Invert :func:`encode_stream`.

    Parameters
    ----------
    data
        The stream (a multiple of 4 bytes).
    z_shape
        (N, h, w).
    y_index
        Callable mapping the (N, h, w) int64 ``ẑ`` to the (M, 4h, 4w) int64 scale indices (the
        integer hyper-synthesis); called once, between decoding z and y.
    z_tables, y_tables
        The stored integer tables.
    coders
        Prebuilt constriction models of these tables (optional cache).

    Returns
    -------
    tuple
        ``ẑ`` (N, h, w) int64 and the y symbols (M, 4h, 4w) int64.

    Raises
    ------
    MicrocaeError
        If the stream is not whole words, runs out or does not end in :data:`SENTINEL`, or if
        it is not byte for byte the canonical stream of what it decodes to (re-encoded here,
        about a tenth of the decoding time): so no damage, padding or appended data is accepted.
    """
    import constriction

    coders = coders or Coders.build(z_tables, y_tables)
    n, h, w = z_shape
    if len(data) % 4 or not data:
        raise MicrocaeError("corrupt payload (coded stream is not a whole number of words)")
    uniform = constriction.stream.model.Uniform(RAW_SIZE)
    try:
        decoder = constriction.stream.queue.RangeDecoder(np.frombuffer(data, "<u4").copy())
        z = np.stack([np.asarray(decoder.decode(coders.z[c], h * w), dtype=np.int64)
                      for c in range(n)])
        lengths = z_tables.lengths.astype(np.int64)[:, None]
        escape = z == lengths - 1
        z += z_tables.offsets.astype(np.int64)[:, None]
        if escape.any():
            z[escape] = np.asarray(decoder.decode(uniform, int(escape.sum())),
                                   dtype=np.int64) + VALUE_MIN
    except _DECODER_ERRORS as exc:
        raise MicrocaeError(f"corrupt payload (range decoder: {exc})") from None
    z = z.reshape(n, h, w)
    index = np.asarray(y_index(z), dtype=np.int64)
    flat_index = index.reshape(-1)
    order, counts = _grouping(flat_index, y_tables.channels)
    rows = flat_index[order]
    try:
        grouped = np.empty(flat_index.size, dtype=np.int64)
        start = 0
        for i, count in enumerate(counts):
            if count:
                grouped[start : start + count] = decoder.decode(coders.y[i], count)
                start += count
        escape = grouped == y_tables.lengths.astype(np.int64)[rows] - 1
        grouped += y_tables.offsets.astype(np.int64)[rows]
        if escape.any():
            grouped[escape] = np.asarray(decoder.decode(uniform, int(escape.sum())),
                                         dtype=np.int64) + VALUE_MIN
        sentinel = tuple(int(v) for v in decoder.decode(uniform, len(SENTINEL)))
        complete = decoder.maybe_exhausted()
    except _DECODER_ERRORS as exc:
        raise MicrocaeError(f"corrupt payload (range decoder: {exc})") from None
    if sentinel != SENTINEL:
        raise MicrocaeError("corrupt payload (coded stream damaged or truncated)")
    if not complete:
        raise MicrocaeError("corrupt payload (coded data beyond the end of the stream)")
    y = np.empty_like(grouped)
    y[order] = grouped
    y = y.reshape(index.shape)
    if bytes(data) != encode_stream(z, y, index, z_tables, y_tables, coders):
        raise MicrocaeError("corrupt payload (not the canonical coded stream of its symbols)")
    return z, y
