"""Integer code tables and range coding: exact round trips, escapes, sizes, validation."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import laplace_tables

from microcae.entropy.code_tables import (
    TOTAL,
    VALUE_MAX,
    VALUE_MIN,
    EntropyTables,
    quantise_pmf,
    validate,
)
from microcae.entropy.range_coder import decode_symbols, encode_symbols
from microcae.util.errors import MicrocaeError


def test_round_trip_is_exact_including_escapes_and_clamping():
    tables = laplace_tables(3)
    rng = np.random.default_rng(0)
    symbols = rng.integers(-4, 9, size=(5, 3, 6, 6))  # table covers -2..5; the rest escapes
    symbols[0, 0, 0, :3] = [1000, -777, 40000]  # far out, and beyond int16 (clamped)
    symbols[4, 2, 5, 5] = -50000
    data = encode_symbols(symbols, tables)
    assert len(data) % 4 == 0
    decoded = decode_symbols(data, tables, symbols.shape, "t")
    assert decoded.dtype == np.int32
    np.testing.assert_array_equal(decoded, np.clip(symbols, VALUE_MIN, VALUE_MAX))


def test_coded_size_is_the_information_content_of_the_tables():
    tables = laplace_tables(2)
    rng = np.random.default_rng(1)
    count = 4000
    symbols = np.empty((1, 2, count, 1), dtype=np.int64)
    bits = 0.0
    for c in range(2):
        p = tables.freqs[c, :8] / tables.freqs[c, :8].sum()
        index = rng.choice(8, size=count, p=p)
        symbols[0, c, :, 0] = index + tables.offsets[c]
        bits += float(-np.log2(tables.freqs[c, index] / TOTAL).sum())
    coded = 8 * len(encode_symbols(symbols, tables))
    assert bits <= coded <= bits * 1.01 + 64


@pytest.mark.parametrize("n", [2, 7, 300])
def test_quantised_pmf_is_normalised_positive_and_close(n):
    pmf = np.random.default_rng(n).dirichlet(np.ones(n) * 0.3)
    freqs = quantise_pmf(pmf)
    assert freqs.sum() == TOTAL and freqs.min() >= 1
    big = pmf > 0.01
    np.testing.assert_allclose(freqs[big] / TOTAL, pmf[big], rtol=0.01, atol=n / TOTAL)


def test_broken_tables_are_refused():
    good = laplace_tables(2)
    validate(good, "t")
    freqs = good.freqs.copy()
    freqs[0, 0] += 1  # no longer sums to 2**16
    zero = good.freqs.copy()
    zero[1, 3], zero[1, 4] = 0, zero[1, 4] + zero[1, 3]  # a symbol that could not be coded
    cases = [
        EntropyTables(good.offsets, good.lengths, freqs),
        EntropyTables(good.offsets, good.lengths, zero),
        EntropyTables(good.offsets, np.array([9, 1], dtype=np.int32), good.freqs),
        EntropyTables(np.array([0, VALUE_MAX], dtype=np.int32), good.lengths, good.freqs),
        EntropyTables(good.offsets[:1], good.lengths, good.freqs),
    ]
    for tables in cases:
        with pytest.raises(MicrocaeError):
            validate(tables, "t")


def test_damaged_streams_give_the_project_error_only():
    tables = laplace_tables(2)
    data = encode_symbols(np.random.default_rng(2).integers(-3, 7, size=(2, 2, 8, 8)), tables)
    with pytest.raises(MicrocaeError, match="does not fit"):
        decode_symbols(data[:-1], tables, (2, 2, 8, 8), "t")
    with pytest.raises(MicrocaeError, match="beyond the last latent"):
        decode_symbols(data + data, tables, (2, 2, 8, 8), "t")
    rng = np.random.default_rng(3)
    for _ in range(200):  # garbage either decodes to something or is refused
        junk = rng.integers(0, 256, size=4 * int(rng.integers(0, 40)), dtype=np.uint8)
        try:
            out = decode_symbols(junk.tobytes(), tables, (2, 2, 8, 8), "t")
        except MicrocaeError:
            continue
        assert out.shape == (2, 2, 8, 8)
