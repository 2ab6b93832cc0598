"""Parse JSON from files microcae did not necessarily write, within size and nesting bounds.

``json.loads`` recurses once per nesting level, so a few hundred kilobytes of ``[[[[...`` end in
``RecursionError`` (or, with a raised recursion limit, a crash). :func:`loads_bounded` measures
the nesting depth first, without recursion, and refuses deep or large documents with
``ValueError`` like any other malformed JSON.
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np

MAX_DEPTH = 64
"""Default deepest nesting of arrays and objects (microcae's own documents use at most 4)."""
MAX_BYTES = 64 << 20
"""Default largest document in bytes (UTF-8) or characters."""

_CHUNK = 1 << 20
_QUOTE, _BACKSLASH = ord('"'), ord("\\")
_STEP = np.zeros(256, dtype=np.int64)
_STEP[[ord("["), ord("{")]] = 1
_STEP[[ord("]"), ord("}")]] = -1


def _scan(codes: np.ndarray, inside: bool, run: int, depth: int) -> tuple[bool, int, int, int]:
    """Scan one non-empty chunk given the state after the previous one.

    The state is (inside a string, backslashes ending the previous chunk, depth); returns the
    state after this chunk and the deepest level reached in it.
    """
    index = np.arange(codes.size, dtype=np.int64)
    last_other = np.maximum.accumulate(np.where(codes == _BACKSLASH, -1, index))
    ends = index - last_other + np.where(last_other == -1, run, 0)  # backslash run ending at i
    before = np.concatenate(([run], ends[:-1]))
    quotes = (codes == _QUOTE) & (before % 2 == 0)
    in_string = (np.cumsum(quotes) - quotes + inside) % 2 == 1
    levels = depth + np.cumsum(np.where(in_string, 0, _STEP[codes]))
    inside_after = (int(quotes.sum()) + inside) % 2 == 1
    return inside_after, int(ends[-1]), int(levels[-1]), int(levels.max())


def nesting_depth(text: str | bytes) -> int:
    """Deepest nesting of ``[`` and ``{`` outside strings, computed without recursion.

    Scans the UTF-8 bytes in 1 MiB chunks with NumPy (a quote ends a string unless an odd
    number of backslashes precedes it). Exact for valid JSON; for invalid JSON it is exact up
    to the first invalid token, which is as far as the parser gets.
    """
    raw = text.encode("utf-8", "surrogatepass") if isinstance(text, str) else bytes(text)
    codes = np.frombuffer(raw, dtype=np.uint8)
    inside, run, depth, deepest = False, 0, 0, 0
    for start in range(0, codes.size, _CHUNK):
        inside, run, depth, chunk_deepest = _scan(codes[start : start + _CHUNK], inside, run,
                                                  depth)
        deepest = max(deepest, chunk_deepest)
    return deepest


def loads_bounded(text: str | bytes, max_depth: int = MAX_DEPTH,
                  max_bytes: int | None = MAX_BYTES) -> Any:
    """``json.loads`` that refuses documents nested deeper than ``max_depth`` or too large.

    Parameters
    ----------
    text
        The JSON document (str, or UTF-8 bytes).
    max_depth
        Deepest nesting of arrays and objects allowed (a scalar has depth 0, ``[1]`` depth 1).
    max_bytes
        Largest length allowed (bytes for bytes input, characters for str); None: no limit.

    Returns
    -------
    Any
        The parsed value.

    Raises
    ------
    ValueError
        For malformed JSON (``json.JSONDecodeError``), and with a one-line message for a
        document over either bound.
    """
    if max_bytes is not None and len(text) > max_bytes:
        raise ValueError(f"JSON document of {len(text)} bytes is larger than the limit of "
                         f"{max_bytes}")
    depth = nesting_depth(text)
    if depth > max_depth:
        raise ValueError(f"JSON nested {depth} levels deep, more than the limit of {max_depth}")
    try:
        return json.loads(text)
    except RecursionError:  # only when max_depth exceeds the interpreter's recursion limit
        raise ValueError("JSON nested too deeply to parse") from None
