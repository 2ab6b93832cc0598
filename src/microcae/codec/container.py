"""The latent container file (format version 1): write and parse, nothing else.

Layout (all integers little-endian; the full specification is ``docs/FORMAT.md``)::

    fixed header   84 bytes   magic, version, flags, types, image and tile geometry,
                              value scaling, decoder fingerprint, payload length
    key block      40 bytes   only if encrypted: key kind, key id, nonce, scrypt salt/cost
    payload        n bytes    quantised latents (or range-coded integer latents of an RD
                              model), optionally zstd-compressed, optionally
                              AES-256-GCM encrypted (then the 16-byte tag ends it)
    checksum        4 bytes   only if not encrypted: CRC-32 of every byte before it

The parser checks every field before it allocates anything, so a damaged or hostile file ends
in :class:`~microcae.util.errors.MicrocaeError` and nothing else. A CRC stops accidents, not
attackers, so the claims of a header are also bounded: the image by the pixel limit
(:mod:`microcae.util.limits`, ``MICROCAE_MAX_PIXELS``), the latents by what the payload can
hold (exactly, without zstd; at most :data:`ZSTD_MAX_RATIO` times the payload, with it).
"""

from __future__ import annotations

import struct
import warnings
import zlib
from dataclasses import dataclass

import numpy as np
import zstandard

from microcae.codec import crypto
from microcae.codec.quantise import dequantise, payload_size, quantise
from microcae.data.tiling import TileGrid
from microcae.entropy.code_tables import EntropyTables
from microcae.entropy.range_coder import decode_symbols, encode_symbols
from microcae.util.errors import MicrocaeError, MicrocaeWarning
from microcae.util.limits import check_image_size

MAGIC = b"\x89MCL\r\n\x1a\n"
"""File signature: a non-ASCII byte, "MCL" (microcae latent), and line-ending bytes that
reveal text-mode transfer damage (the PNG idea)."""
FORMAT_VERSION = 1
SUFFIX = ".mcl"

FLAG_ZSTD = 1
FLAG_ENCRYPTED = 2
ZSTD_LEVEL = 19

_FIXED = struct.Struct("<8sBBBBBBHIIddHH32sQ")
FIXED_HEADER_BYTES = _FIXED.size
CHECKSUM_BYTES = 4
MAX_SIDE = 1 << 20
MAX_PIXELS = 1 << 31
MAX_PAYLOAD = 1 << 32
ZSTD_MAX_RATIO = 1 << 15
"""No zstd frame expands by more than this: a block holds at most 128 KiB and takes at least
4 bytes (3-byte block header, 1 byte of run-length data)."""

ENTROPY = "entropy"
"""Latent coding of RD models: integer latents range-coded with the model's stored tables
(:mod:`microcae.entropy.range_coder`); the payload's size depends on the content."""
STREAM = "stream"
"""Latent coding of whole-image codecs (:class:`~microcae.models.hyperprior.HyperpriorCodec`):
the payload is the model's own range-coded stream of the whole image; the header's tile is the
padding unit (:data:`STREAM_UNIT`), so the grid counts the hyper-latent positions."""
STREAM_UNIT = 64
STREAM_SIDE = 4
"""Latent side per padding unit of a stream file (the analysis transform strides by 16)."""
_DTYPE_CODES = {"float32": 1, "float16": 2, "uint8": 3, ENTROPY: 4, STREAM: 5}
_SCALING_CODES = {"full": 1, "range": 2}
_SOURCE_CODES = {
    name: code
    for code, name in enumerate(
        ["other", "uint8", "uint16", "uint32", "int8", "int16", "int32", "float16", "float32",
         "float64", "bool"]
    )
}


def _inverse(table: dict[str, int]) -> dict[int, str]:
    return {code: name for name, code in table.items()}


@dataclass(frozen=True)
class SourceInfo:
    """What the decoder needs to know about the original image.

    Attributes
    ----------
    shape
        (H, W) in pixels.
    source_dtype
        NumPy dtype name of the stored samples (names outside the format's table become
        ``"other"``).
    scaling
        ``"full"`` or ``"range"`` (see :class:`microcae.data.images.Micrograph`).
    value_range
        (low, high) in stored units that was mapped to [0, 1].
    """

    shape: tuple[int, int]
    source_dtype: str
    scaling: str
    value_range: tuple[float, float]


@dataclass(frozen=True)
class LatentHeader:
    """The parsed header of a latent file.

    Attributes
    ----------
    source
        The original image's geometry and scaling.
    tile
        Tile side in pixels (tiles do not overlap; the border is reflect-padded).
    latent_channels, latent_side
        Per tile, the latent is (latent_channels, latent_side, latent_side).
    latent_dtype
        Storage type, a key of :data:`microcae.codec.quantise.LATENT_DTYPES`, or
        :data:`ENTROPY`.
    compressed
        Whether the payload went through zstd.
    fingerprint
        SHA-256 (hex) of the decoder the latents were made for.
    key_block
        Encryption parameters, or None for plain files.
    payload_bytes
        Stored payload length in bytes (including the GCM tag when encrypted).
    """

    source: SourceInfo
    tile: int
    latent_channels: int
    latent_side: int
    latent_dtype: str
    compressed: bool
    fingerprint: str
    key_block: crypto.KeyBlock | None
    payload_bytes: int

    @property
    def grid(self) -> TileGrid:
        """The tile grid over the original image."""
        return TileGrid(self.source.shape, tile=self.tile, stride=self.tile, remainder="pad")

    @property
    def latent_shape(self) -> tuple[int, int, int, int]:
        """(T, C, h, w) of the latents for the whole image."""
        return (len(self.grid), self.latent_channels, self.latent_side, self.latent_side)

    @property
    def header_bytes(self) -> int:
        """Bytes before the payload (84, or 124 when encrypted)."""
        return FIXED_HEADER_BYTES + (crypto.KEY_BLOCK_BYTES if self.key_block else 0)

    @property
    def file_bytes(self) -> int:
        """Total file length implied by the header."""
        trailer = 0 if self.key_block else CHECKSUM_BYTES
        return self.header_bytes + self.payload_bytes + trailer


def _pack_header(header: LatentHeader) -> bytes:
    source = header.source
    flags = (FLAG_ZSTD if header.compressed else 0) | (FLAG_ENCRYPTED if header.key_block else 0)
    fixed = _FIXED.pack(
        MAGIC, FORMAT_VERSION, flags, _DTYPE_CODES[header.latent_dtype],
        _SCALING_CODES[source.scaling], _SOURCE_CODES.get(source.source_dtype, 0), 0,
        header.tile, source.shape[0], source.shape[1], source.value_range[0],
        source.value_range[1], header.latent_channels, header.latent_side,
        bytes.fromhex(header.fingerprint), header.payload_bytes,
    )
    return fixed + (header.key_block.to_bytes() if header.key_block else b"")


def write_container(
    latents: np.ndarray,
    source: SourceInfo,
    tile: int,
    fingerprint: str,
    latent_dtype: str = "uint8",
    compress: bool = True,
    secret: crypto.Secret | None = None,
    tables: EntropyTables | None = None,
) -> bytes:
    """Serialise one image's latents into a latent file.

    Parameters
    ----------
    latents
        (T, C, h, w) float latents of the tiles of ``TileGrid(source.shape, tile)`` in row-major
        tile order, with h == w.
    source
        The original image's shape, dtype and scaling.
    tile
        Tile side in pixels.
    fingerprint
        64 hex characters: :meth:`~microcae.models.base.MicrocaeModel.fingerprint` of the model.
    latent_dtype
        ``"float32"``, ``"float16"``, ``"uint8"`` or ``"entropy"`` (latents rounded to integers
        and range-coded with ``tables``).
    compress
        Pass the quantised payload through zstd (level 19). Must be False for ``"entropy"``.
    secret
        Encrypt with this key or passphrase (AES-256-GCM, header as associated data).
    tables
        The RD model's code tables; required for ``"entropy"``, ignored otherwise.

    Returns
    -------
    bytes
        The complete file.
    """
    if latent_dtype not in _DTYPE_CODES or latent_dtype == STREAM:
        raise ValueError(f"unknown latent dtype {latent_dtype!r} (streams: write_stream)")
    if latent_dtype == ENTROPY and (tables is None or compress):
        raise ValueError("entropy coding needs the model's tables and no zstd stage")
    if source.scaling not in _SCALING_CODES:
        raise ValueError(f"unknown scaling {source.scaling!r}")
    grid = TileGrid(source.shape, tile=tile, stride=tile, remainder="pad")
    latents = np.asarray(latents)
    if latents.ndim != 4 or latents.shape[0] != len(grid) or latents.shape[2] != latents.shape[3]:
        raise ValueError(f"latents of shape {latents.shape} do not fit {len(grid)} square tiles")
    if latent_dtype == ENTROPY:
        if not np.all(np.isfinite(latents)):
            raise ValueError("latents contain NaN or infinite values")
        body = encode_symbols(np.rint(latents), tables)
    else:
        body = quantise(latents, latent_dtype)
    if compress:
        body = zstandard.ZstdCompressor(level=ZSTD_LEVEL, write_content_size=True).compress(body)
    return _seal(body, source, tile, latents.shape[1], latents.shape[2], latent_dtype, compress,
                 fingerprint, secret)


def write_stream(stream: bytes, source: SourceInfo, channels: int, fingerprint: str,
                 secret: crypto.Secret | None = None) -> bytes:
    """Serialise a whole-image codec's coded stream into a latent file (latent dtype ``stream``).

    Parameters
    ----------
    stream
        The model's ``compress(x)["strings"]`` for the image of ``source.shape``.
    source
        The original image's shape, dtype and scaling.
    channels
        Latent channels of the model (recorded, and checked against the decoder).
    fingerprint
        64 hex characters: the model's :meth:`~microcae.models.base.MicrocaeModel.fingerprint`.
    secret
        Encrypt with this key or passphrase (AES-256-GCM, header as associated data).
    """
    if source.scaling not in _SCALING_CODES:
        raise ValueError(f"unknown scaling {source.scaling!r}")
    return _seal(bytes(stream), source, STREAM_UNIT, channels, STREAM_SIDE, STREAM, False,
                 fingerprint, secret)


def stream_file_bytes(stream_bytes: int, encrypted: bool) -> int:
    """Size in bytes of the latent file :func:`write_stream` makes of a ``stream_bytes`` stream.

    The header (plus the key block when ``encrypted``), the stream, and the CRC-32 or the
    AES-GCM tag; lets a rate budget be checked before anything is sealed (no key derivation).
    """
    seal_bytes = crypto.KEY_BLOCK_BYTES + crypto.TAG_BYTES if encrypted else CHECKSUM_BYTES
    return FIXED_HEADER_BYTES + stream_bytes + seal_bytes


def _seal(body: bytes, source: SourceInfo, tile: int, channels: int, side: int,
          latent_dtype: str, compress: bool, fingerprint: str,
          secret: crypto.Secret | None) -> bytes:
    """Header + payload, then the CRC-32 or (encrypted) the AES-GCM seal over both."""
    block, key = crypto.new_key_block(secret) if secret is not None else (None, b"")
    stored = len(body) + (crypto.TAG_BYTES if block else 0)
    header = LatentHeader(
        source=source, tile=tile, latent_channels=channels, latent_side=side,
        latent_dtype=latent_dtype, compressed=compress, fingerprint=fingerprint,
        key_block=block, payload_bytes=stored,
    )
    head = _pack_header(header)
    if block is not None:
        return head + crypto.seal(key, block.nonce, body, head)
    data = head + body
    return data + struct.pack("<I", zlib.crc32(data))


def _check(condition: bool, label: str, what: str) -> None:
    if not condition:
        raise MicrocaeError(f"{label}: corrupt header ({what})")


def _check_payload(header: LatentHeader, label: str) -> None:
    """Check that the payload length a header claims fits its latent dtype and shape.

    Raises
    ------
    MicrocaeError
        If the length is impossible for the claimed latents (see ``docs/FORMAT.md``, limits).
    """
    tag = crypto.TAG_BYTES if header.key_block is not None else 0
    payload, tile, side = header.payload_bytes, header.tile, header.latent_side
    if header.latent_dtype == STREAM:
        values = int(np.prod(header.latent_shape, dtype=np.int64))
        _check(tile == STREAM_UNIT and side == STREAM_SIDE and not header.compressed, label,
               "stream geometry or flags")
        _check(tag <= payload <= 8 * values + 64 + tag, label,
               f"payload length {payload} is more than {values} latents can need")
    elif header.latent_dtype == ENTROPY:
        values = int(np.prod(header.latent_shape, dtype=np.int64))
        _check(4 * values <= MAX_PAYLOAD, label, f"{values} latents is implausibly many")
        _check(not header.compressed, label, "zstd flag on entropy-coded latents")
        _check(tag <= payload <= MAX_PAYLOAD and (payload - tag) % 4 == 0, label,
               f"payload length {payload} is not a whole number of coded words")
    else:
        raw = payload_size(header.latent_dtype, header.latent_shape)
        _check(raw <= MAX_PAYLOAD, label, f"{raw} bytes of latents is implausibly large")
        _check(payload >= tag and (header.compressed or payload == raw + tag), label,
               f"payload length {payload} does not match the latent shape")
        _check(raw <= ZSTD_MAX_RATIO * (payload - tag), label,
               f"{raw} bytes of latents cannot come from {payload - tag} bytes of zstd data")


def parse_header(data: bytes, label: str) -> LatentHeader:
    """Parse and validate the header of a latent file held in ``data``.

    Checks the signature, version, every field's range and the file length implied by the
    header; does not check the checksum or decrypt.

    Raises
    ------
    MicrocaeError
        One line naming ``label`` and what is wrong.
    """
    if len(data) < len(MAGIC) or data[: len(MAGIC)] != MAGIC:
        if MAGIC.startswith(data[: len(MAGIC)]) and len(data) < len(MAGIC):
            raise MicrocaeError(f"{label}: truncated ({len(data)} bytes)")
        raise MicrocaeError(f"{label}: not a microcae latent file (wrong signature)")
    if len(data) > len(MAGIC) and data[len(MAGIC)] != FORMAT_VERSION:
        raise MicrocaeError(
            f"{label}: format version {data[len(MAGIC)]} is not supported "
            f"(this microcae reads version {FORMAT_VERSION})"
        )
    if len(data) < FIXED_HEADER_BYTES:
        raise MicrocaeError(f"{label}: truncated ({len(data)} bytes, header alone is "
                            f"{FIXED_HEADER_BYTES})")
    (_, _, flags, dtype_code, scaling_code, source_code, reserved, tile, height, width, low, high,
     channels, side, fingerprint, payload) = _FIXED.unpack_from(data)
    _check(flags & ~(FLAG_ZSTD | FLAG_ENCRYPTED) == 0, label, f"unknown flags {flags:#x}")
    _check(reserved == 0, label, "reserved byte is not zero")
    dtypes, scalings, sources = (_inverse(t) for t in (_DTYPE_CODES, _SCALING_CODES,
                                                       _SOURCE_CODES))
    _check(dtype_code in dtypes, label, f"unknown latent dtype code {dtype_code}")
    _check(scaling_code in scalings, label, f"unknown scaling code {scaling_code}")
    _check(source_code in sources, label, f"unknown source dtype code {source_code}")
    _check(1 <= height <= MAX_SIDE and 1 <= width <= MAX_SIDE and height * width <= MAX_PIXELS,
           label, f"image shape {height}x{width} out of range")
    check_image_size(height, width, label, "the header claims ")
    _check(bool(np.isfinite(low) and np.isfinite(high) and low < high), label,
           f"value range ({low}, {high}) is not a finite increasing pair")
    _check(16 <= tile <= 4096 and 1 <= side <= tile and tile % side == 0
           and (tile // side) & (tile // side - 1) == 0, label,
           f"tile {tile} and latent side {side} do not fit")
    _check(1 <= channels <= 4096, label, f"{channels} latent channels")
    encrypted = bool(flags & FLAG_ENCRYPTED)
    block = None
    if encrypted:
        if len(data) < FIXED_HEADER_BYTES + crypto.KEY_BLOCK_BYTES:
            raise MicrocaeError(f"{label}: truncated ({len(data)} bytes, in the key block)")
        block = crypto.KeyBlock.from_bytes(
            data[FIXED_HEADER_BYTES : FIXED_HEADER_BYTES + crypto.KEY_BLOCK_BYTES], label
        )
    header = LatentHeader(
        source=SourceInfo((height, width), sources[source_code], scalings[scaling_code],
                          (float(low), float(high))),
        tile=tile, latent_channels=channels, latent_side=side, latent_dtype=dtypes[dtype_code],
        compressed=bool(flags & FLAG_ZSTD), fingerprint=fingerprint.hex(), key_block=block,
        payload_bytes=payload,
    )
    _check_payload(header, label)
    if len(data) < header.file_bytes:
        raise MicrocaeError(f"{label}: truncated ({len(data)} bytes, the header promises "
                            f"{header.file_bytes})")
    if len(data) > header.file_bytes:
        raise MicrocaeError(f"{label}: {len(data) - header.file_bytes} unexpected bytes after "
                            "the end of the file")
    return header


def _decompress(body: bytes, expected: int, label: str) -> bytes:
    try:
        declared = zstandard.frame_content_size(body)
        if declared != expected:
            raise MicrocaeError(f"{label}: corrupt payload (zstd frame declares {declared} bytes, "
                                f"expected {expected})")
        out = zstandard.ZstdDecompressor().decompress(body, max_output_size=expected)
    except zstandard.ZstdError as exc:
        raise MicrocaeError(f"{label}: corrupt payload (zstd: {exc})") from None
    if len(out) != expected:
        raise MicrocaeError(f"{label}: corrupt payload ({len(out)} bytes after zstd, "
                            f"expected {expected})")
    return out


def unseal(
    data: bytes, label: str, secret: crypto.Secret | None = None
) -> tuple[LatentHeader, bytes]:
    """Parse and verify (checksum or authentication tag) a latent file; undo zstd.

    Parameters
    ----------
    data
        The whole file.
    label
        File name for messages.
    secret
        Key or passphrase, needed only for encrypted files.

    Returns
    -------
    header, body
        The parsed header and the stored latents as bytes (for :func:`unpack`).

    Raises
    ------
    MicrocaeError
        For every kind of damage, a missing or wrong secret, and tampering.
    """
    header = parse_header(data, label)
    start, end = header.header_bytes, header.header_bytes + header.payload_bytes
    if header.key_block is not None:
        key = crypto.unlock(secret, header.key_block, label, data[:start], data[start:end])
        body = crypto.open_sealed(key, header.key_block.nonce, data[start:end], data[:start],
                                  label)
    else:
        (stored,) = struct.unpack_from("<I", data, end)
        if zlib.crc32(data[:end]) != stored:
            raise MicrocaeError(f"{label}: corrupt file (checksum mismatch)")
        if secret is not None:
            warnings.warn(f"{label}: the file is not encrypted; the key or passphrase given "
                          "was not needed", MicrocaeWarning, stacklevel=2)
        body = data[start:end]
    if header.compressed:
        body = _decompress(body, payload_size(header.latent_dtype, header.latent_shape), label)
    return header, body


def unpack(header: LatentHeader, body: bytes, label: str,
           tables: EntropyTables | None = None) -> np.ndarray:
    """Turn a verified body (from :func:`unseal`) into (T, C, h, w) float32 latents.

    ``tables`` (the RD model's code tables) are needed for entropy-coded files only; check the
    model's fingerprint against the header before decoding with them.

    Raises
    ------
    MicrocaeError
        If the body is corrupt, or the file is entropy-coded and no tables are given.
    """
    if header.latent_dtype == STREAM:
        raise MicrocaeError(f"{label}: a whole-image stream; decode it with its model "
                            "(microcae.codec.decode_bytes)")
    if header.latent_dtype != ENTROPY:
        return dequantise(body, header.latent_dtype, header.latent_shape, label)
    if tables is None:
        raise MicrocaeError(f"{label}: entropy-coded latents need the RD model they were made "
                            "with")
    return decode_symbols(body, tables, header.latent_shape, label).astype(np.float32)


def read_container(
    data: bytes, label: str, secret: crypto.Secret | None = None,
    tables: EntropyTables | None = None,
) -> tuple[LatentHeader, np.ndarray]:
    """Parse, verify and unpack a latent file: :func:`unseal`, then :func:`unpack`.

    Returns
    -------
    header, latents
        The parsed header and (T, C, h, w) float32 latents (dequantised or decoded).

    Raises
    ------
    MicrocaeError
        For every kind of damage, a missing or wrong secret, tampering, and entropy-coded files
        without ``tables``.
    """
    header, body = unseal(data, label, secret)
    return header, unpack(header, body, label, tables)
