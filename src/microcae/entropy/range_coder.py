"""Range coding of integer latents with stored integer tables (``constriction``).

Stream layout (one range-coder stream, 32-bit words, little-endian when stored): the symbols of
channel 0 of every tile, then channel 1, ... (each channel in (T, h, w) C order) under that
channel's categorical table; then, for every escape symbol in the same order, the value itself
plus 2**15 under a uniform model on 0..2**16-1. Values are first clamped to the int16 range.
The categorical models are built from the integer frequencies divided by ``2**PRECISION``
(exact binary fractions), so encoder and decoder build the same fixed-point model on any machine.
``constriction`` is imported only here, and only when a function is called.
"""

from __future__ import annotations

import numpy as np

from microcae.entropy.code_tables import TOTAL, VALUE_MAX, VALUE_MIN, EntropyTables
from microcae.util.errors import MicrocaeError

RAW_SIZE = VALUE_MAX - VALUE_MIN + 1


def _models(tables: EntropyTables) -> list:
    import constriction

    categorical = constriction.stream.model.Categorical
    return [categorical(tables.freqs[c, : tables.lengths[c]].astype(np.float64) / TOTAL,
                        perfect=False) for c in range(tables.channels)]


def encode_symbols(symbols: np.ndarray, tables: EntropyTables) -> bytes:
    """Range-code integer latents.

    Parameters
    ----------
    symbols
        (T, C, h, w) integer latents, C == ``tables.channels``; values outside the int16 range
        are clamped to it, values outside a channel's table go through the escape.
    tables
        The model's code tables.

    Returns
    -------
    bytes
        The coded stream, a multiple of 4 bytes.
    """
    import constriction

    symbols = np.clip(np.asarray(symbols, dtype=np.int64), VALUE_MIN, VALUE_MAX)
    if symbols.ndim != 4 or symbols.shape[1] != tables.channels:
        raise ValueError(f"symbols of shape {symbols.shape} do not fit {tables.channels} channels")
    per_channel = symbols.transpose(1, 0, 2, 3).reshape(tables.channels, -1)
    encoder = constriction.stream.queue.RangeEncoder()
    escaped = []
    for c, model in enumerate(_models(tables)):
        index = per_channel[c] - int(tables.offsets[c])
        escape = int(tables.lengths[c]) - 1
        outside = (index < 0) | (index >= escape)
        encoder.encode(np.where(outside, escape, index).astype(np.int32), model)
        escaped.append(per_channel[c][outside])
    raw = np.concatenate(escaped) - VALUE_MIN
    if raw.size:
        encoder.encode(raw.astype(np.int32), constriction.stream.model.Uniform(RAW_SIZE))
    return encoder.get_compressed().astype("<u4").tobytes()


def decode_symbols(data: bytes, tables: EntropyTables, shape: tuple[int, int, int, int],
                   label: str) -> np.ndarray:
    """Invert :func:`encode_symbols`.

    Parameters
    ----------
    data
        The coded stream.
    tables
        The same code tables as for encoding.
    shape
        (T, C, h, w) of the latents, from the file header.
    label
        File name for messages.

    Returns
    -------
    np.ndarray
        (T, C, h, w) int32 latents.

    Raises
    ------
    MicrocaeError
        If the stream is not a whole number of words, runs out, or holds data beyond the
        symbols (any damage that the checksum or authentication let through).
    """
    import constriction

    if len(data) % 4 or shape[1] != tables.channels:
        raise MicrocaeError(f"{label}: corrupt payload (coded stream does not fit the model)")
    count = shape[0] * shape[2] * shape[3]
    out = np.empty((shape[1], count), dtype=np.int32)  # 4 bytes per latent, like float32
    try:
        words = np.frombuffer(data, "<u4").astype(np.uint32)
        decoder = constriction.stream.queue.RangeDecoder(words)
        escapes = []
        for c, model in enumerate(_models(tables)):
            index = np.asarray(decoder.decode(model, count), dtype=np.int32)
            escape = int(tables.lengths[c]) - 1
            out[c] = index + int(tables.offsets[c])
            escapes.append(np.flatnonzero(index == escape) + c * count)
        where = np.concatenate(escapes)
        if where.size:
            raw = decoder.decode(constriction.stream.model.Uniform(RAW_SIZE), where.size)
            out.reshape(-1)[where] = np.asarray(raw, dtype=np.int32) + VALUE_MIN
        complete = decoder.maybe_exhausted()
    except (ValueError, RuntimeError, AssertionError, OverflowError) as exc:
        raise MicrocaeError(f"{label}: corrupt payload (range decoder: {exc})") from None
    if not complete:
        raise MicrocaeError(f"{label}: corrupt payload (coded data beyond the last latent)")
    return np.ascontiguousarray(
        out.reshape(shape[1], shape[0], shape[2], shape[3]).transpose(1, 0, 2, 3))
