"""Latent storage types: float32, float16, and uint8 with a per-channel scale and offset.

uint8 storage maps channel ``c`` of the latents linearly onto 0..255:
``q = round((z - offset_c) / scale_c)`` with ``offset_c = min z_c`` and
``scale_c = (max z_c - min z_c) / 255``; decoding returns ``offset_c + q * scale_c``. The error
per value is at most ``scale_c / 2``. The CAE's latents come out of ReLU and max-pool, so they
are non-negative and ``offset_c`` is usually 0: zero activations stay exactly zero.
"""

from __future__ import annotations

from typing import Literal

import numpy as np

from microcae.util.errors import MicrocaeError

LatentDtype = Literal["float32", "float16", "uint8"]
LATENT_DTYPES: dict[str, int] = {"float32": 4, "float16": 2, "uint8": 1}
"""Storage type name -> bytes per latent value (the registry behind ``--dtype``)."""

_FLOAT16_MAX = float(np.finfo(np.float16).max)
_FLOAT32_MAX = float(np.finfo(np.float32).max)


def params_size(dtype: str, channels: int) -> int:
    """Bytes of quantisation parameters stored before the values (8 per channel for uint8)."""
    return 8 * channels if dtype == "uint8" else 0


def payload_size(dtype: str, shape: tuple[int, int, int, int]) -> int:
    """Bytes of the uncompressed payload for (T, C, h, w) latents ``shape`` stored as ``dtype``."""
    count = shape[0] * shape[1] * shape[2] * shape[3]
    return params_size(dtype, shape[1]) + count * LATENT_DTYPES[dtype]


def quantise(latents: np.ndarray, dtype: str) -> bytes:
    """Serialise latents in a storage type.

    Parameters
    ----------
    latents
        (T, C, h, w) finite float array.
    dtype
        A key of :data:`LATENT_DTYPES`.

    Returns
    -------
    bytes
        Little-endian values in C order, preceded for uint8 by ``offset`` (float32[C]) and
        ``scale`` (float32[C]); :func:`payload_size` bytes in all.
    """
    latents = np.asarray(latents, dtype=np.float32)
    if latents.ndim != 4:
        raise ValueError(f"latents must be (T, C, h, w), got shape {latents.shape}")
    if not np.all(np.isfinite(latents)):
        raise ValueError("latents contain NaN or infinite values")
    if dtype == "float32":
        return latents.astype("<f4").tobytes()
    if dtype == "float16":
        if latents.size and float(np.abs(latents).max()) > _FLOAT16_MAX:
            raise MicrocaeError("latent values exceed the float16 range; use --dtype float32")
        return latents.astype("<f2").tobytes()
    if dtype != "uint8":
        raise ValueError(f"unknown latent dtype {dtype!r}")
    if latents.size:
        low = latents.min(axis=(0, 2, 3))
        high = latents.max(axis=(0, 2, 3))
    else:
        low = high = np.zeros(latents.shape[1], dtype=np.float32)
    scale = ((high.astype(np.float64) - low) / 255.0).astype(np.float32)
    safe = np.where(scale > 0, scale, 1.0).astype(np.float64)[None, :, None, None]
    steps = np.rint((latents - low[None, :, None, None].astype(np.float64)) / safe)
    codes = np.clip(steps, 0, 255).astype(np.uint8)
    return low.astype("<f4").tobytes() + scale.astype("<f4").tobytes() + codes.tobytes()


def dequantise(
    payload: bytes, dtype: str, shape: tuple[int, int, int, int], label: str
) -> np.ndarray:
    """Invert :func:`quantise`.

    Parameters
    ----------
    payload
        Exactly :func:`payload_size` bytes.
    dtype, shape
        Storage type and (T, C, h, w) latent shape, from the file header.
    label
        File name for messages.

    Returns
    -------
    np.ndarray
        (T, C, h, w) float32 latents.

    Raises
    ------
    MicrocaeError
        If the payload has the wrong size or holds non-finite values or negative scales.
    """
    expected = payload_size(dtype, shape)
    if len(payload) != expected:
        raise MicrocaeError(f"{label}: corrupt payload ({len(payload)} bytes, expected {expected})")
    channels = shape[1]
    with np.errstate(invalid="ignore", over="ignore"):  # damaged bytes may hold NaN or inf:
        # they are refused below, not warned about (a signalling NaN warns when cast)
        if dtype == "uint8":
            offset = np.frombuffer(payload, "<f4", channels, 0).astype(np.float64)
            scale = np.frombuffer(payload, "<f4", channels, 4 * channels).astype(np.float64)
            if not (np.all(np.isfinite(offset)) and np.all(np.isfinite(scale))
                    and np.all(scale >= 0)):
                raise MicrocaeError(f"{label}: corrupt quantisation parameters")
            codes = np.frombuffer(payload, np.uint8, offset=8 * channels).reshape(shape)
            values = offset[None, :, None, None] + codes * scale[None, :, None, None]
        else:
            values = np.frombuffer(payload, "<f4" if dtype == "float32" else "<f2").reshape(shape)
        if not np.all(np.isfinite(values)) or (
            values.size and float(np.abs(values).max()) > _FLOAT32_MAX
        ):
            raise MicrocaeError(f"{label}: corrupt payload (latent values are not finite float32)")
    return np.asarray(values, dtype=np.float32)
