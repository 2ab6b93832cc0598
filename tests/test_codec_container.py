"""Latent container: round trips for every storage type and odd image sizes, header fields."""

from __future__ import annotations

import struct
import zlib

import numpy as np
import pytest
from conftest import synthetic_micrograph

from microcae.codec import decode_bytes, encode_image, parse_header
from microcae.codec.container import (
    FIXED_HEADER_BYTES,
    MAGIC,
    SourceInfo,
    read_container,
    write_container,
)
from microcae.codec.quantise import dequantise, payload_size, quantise
from microcae.data.images import micrograph_from_array, to_uint8
from microcae.models.inference import decode_latents, encode_micrograph

FINGERPRINT = "ab" * 32


def _latents(tiles: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    values = rng.gamma(1.5, 2.0, size=(tiles, 4, 4, 4)).astype(np.float32)
    values[rng.random(values.shape) < 0.3] = 0.0  # ReLU zeros, as in real latents
    return values


@pytest.mark.parametrize("dtype", ["float32", "float16", "uint8"])
@pytest.mark.parametrize("compress", [False, True])
def test_latents_round_trip_within_the_storage_error(dtype, compress):
    source = SourceInfo((37, 50), "uint8", "full", (0.0, 255.0))
    latents = _latents(12)  # 37x50 on 16-px tiles: 3 x 4 tiles
    data = write_container(latents, source, 16, FINGERPRINT, dtype, compress)
    header, back = read_container(data, "f")
    assert header.source == source and header.latent_dtype == dtype
    assert header.compressed is compress and header.fingerprint == FINGERPRINT
    assert back.shape == latents.shape and back.dtype == np.float32
    if dtype == "float32":
        np.testing.assert_array_equal(back, latents)
    elif dtype == "float16":
        np.testing.assert_array_equal(back, latents.astype(np.float16).astype(np.float32))
    else:
        # independent bound: half a step of 255 levels between each channel's min and max
        span = latents.max(axis=(0, 2, 3)) - latents.min(axis=(0, 2, 3))
        error = np.abs(back - latents).max(axis=(0, 2, 3))
        assert np.all(error <= span / 255 / 2 * (1 + 1e-5))
        assert np.all(back[latents == 0] == 0)  # offset = min = 0: zeros stay exact


def test_uncompressed_file_size_is_header_plus_values_plus_checksum():
    source = SourceInfo((256, 512), "uint8", "full", (0.0, 255.0))
    latents = _latents(2)
    for dtype, per_value in (("float32", 4), ("float16", 2), ("uint8", 1)):
        data = write_container(latents, source, 256, FINGERPRINT, dtype, compress=False)
        params = 8 * 4 if dtype == "uint8" else 0
        assert len(data) == FIXED_HEADER_BYTES + params + latents.size * per_value + 4


def test_header_bytes_follow_the_spec():
    source = SourceInfo((300, 700), "uint16", "range", (12.0, 4000.0))
    data = write_container(_latents(6), source, 256, FINGERPRINT, "uint8", compress=False)
    assert data[:8] == MAGIC == b"\x89MCL\r\n\x1a\n"
    assert data[8] == 1 and data[9] == 0 and data[10] == 3 and data[11] == 2 and data[12] == 2
    assert struct.unpack_from("<HII", data, 14) == (256, 300, 700)
    assert struct.unpack_from("<dd", data, 24) == (12.0, 4000.0)
    assert struct.unpack_from("<HH", data, 40) == (4, 4)
    assert data[44:76] == bytes.fromhex(FINGERPRINT)
    assert struct.unpack_from("<Q", data, 76)[0] == 32 + 6 * 64
    assert struct.unpack_from("<I", data, len(data) - 4)[0] == zlib.crc32(data[:-4])
    assert parse_header(data, "f").file_bytes == len(data)


def test_quantise_payload_layout_is_offset_scale_codes():
    latents = np.array([[[[0.0, 2.0]], [[1.0, 1.0]]]], dtype=np.float32)  # (1, 2, 1, 2)
    payload = quantise(latents, "uint8")
    assert len(payload) == payload_size("uint8", latents.shape) == 16 + 4
    offset = np.frombuffer(payload[:8], "<f4")
    scale = np.frombuffer(payload[8:16], "<f4")
    np.testing.assert_array_equal(offset, [0.0, 1.0])
    np.testing.assert_allclose(scale, [2.0 / 255, 0.0])
    assert list(payload[16:]) == [0, 255, 0, 0]  # a constant channel stores zeros
    np.testing.assert_allclose(dequantise(payload, "uint8", latents.shape, "f"), latents)


@pytest.mark.parametrize("shape", [(1, 9), (17, 5), (16, 16), (33, 70), (64, 48)])
@pytest.mark.parametrize("dtype", ["float32", "float16", "uint8"])
def test_micrograph_round_trip_keeps_shape_and_matches_direct_decoding(tiny_model, shape, dtype):
    micrograph = micrograph_from_array(synthetic_micrograph(*shape, seed=3), scaling="full")
    data = encode_image(tiny_model, micrograph, dtype, compress=True, tile=16)
    decoded = decode_bytes(tiny_model, data, "f")
    assert decoded.stored.shape == shape and decoded.stored.dtype == np.uint8
    np.testing.assert_array_equal(decoded.stored, to_uint8(decoded.pixels))
    # independent path: the float32 inference module, no container, no quantisation
    latents, grid = encode_micrograph(tiny_model, micrograph.pixels, tile=16)
    direct = decode_latents(tiny_model, latents, grid)
    tolerance = {"float32": 1e-6, "float16": 2e-3, "uint8": 2e-2}[dtype]
    np.testing.assert_allclose(decoded.pixels, np.clip(direct, 0, 1), atol=tolerance)
    assert decoded.header.fingerprint == tiny_model.fingerprint()


def test_16_bit_source_decodes_to_16_bit_in_its_own_units(tiny_model):
    raw = (synthetic_micrograph(20, 30).astype(np.uint16) * 40 + 1000).astype(np.uint16)
    micrograph = micrograph_from_array(raw)  # 16-bit: scaled by its own range
    data = encode_image(tiny_model, micrograph, "float32", tile=16)
    decoded = decode_bytes(tiny_model, data, "f")
    assert decoded.stored.dtype == np.uint16
    low, high = float(raw.min()), float(raw.max())
    expected = np.rint(low + decoded.pixels.astype(np.float64) * (high - low))
    np.testing.assert_allclose(decoded.stored, expected, atol=1)  # pixels were rounded to f32
