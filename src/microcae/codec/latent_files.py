"""Micrographs to latent files and back: the library behind ``microcae encode`` / ``decode``.

Decoding runs the decoder in float64 on contiguous (NCHW) tensors. Measured on this project's
machine, its output bits do not change with the thread count, the batch size or with oneDNN
switched off (float32 decoding changes bits with the memory layout, channels-last float64 with
the thread count). Float64 rounding errors (about 1e-16) lie far below the half-step of the 8- or
16-bit output, so other CPUs are expected to give the same image bytes too; that part is an
argument, not a measurement.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from tqdm import tqdm

from microcae.atomic import atomic_path, write_bytes_atomic
from microcae.codec.container import (
    ENTROPY,
    SUFFIX,
    LatentHeader,
    SourceInfo,
    unpack,
    unseal,
    write_container,
)
from microcae.codec.crypto import Secret
from microcae.data.images import Micrograph, find_images, read_micrograph
from microcae.data.tiling import TileGrid, stitch_tiles
from microcae.errors import MicrocaeError
from microcae.inference import encode_micrograph
from microcae.rd.model import RDCAE, CodecModel, model_fingerprint

DECODE_BATCH = 4


@dataclass(frozen=True)
class DecodedImage:
    """One decoded latent file.

    Attributes
    ----------
    pixels
        (H, W) float32 reconstruction on the [0, 1] scale, clipped.
    stored
        (H, W) uint8 or uint16 image as written to PNG (see :func:`to_stored_units`).
    header
        The file's header.
    """

    pixels: np.ndarray
    stored: np.ndarray
    header: LatentHeader


def default_dtype(model: CodecModel) -> str:
    """Latent storage a model encodes with by default: ``"entropy"`` for RD models, else uint8."""
    return ENTROPY if isinstance(model, RDCAE) else "uint8"


def encode_image(
    model: CodecModel,
    micrograph: Micrograph,
    latent_dtype: str | None = None,
    compress: bool = True,
    secret: Secret | None = None,
    tile: int = 256,
) -> bytes:
    """Encode one micrograph into the bytes of a latent file.

    Parameters
    ----------
    model
        The autoencoder (CAE or RD model); its encoder makes the latents, its fingerprint
        (:func:`microcae.rd.model.model_fingerprint`) goes into the header.
    micrograph
        The image, any size (the border is reflect-padded to whole tiles).
    latent_dtype
        ``"float32"`` (4 bytes per latent value), ``"float16"`` (2), ``"uint8"`` (1) or
        ``"entropy"`` (RD models only: rounded latents, range-coded); None:
        :func:`default_dtype`.
    compress
        Add the zstd stage (never applied to entropy-coded latents).
    secret
        Encrypt with this key or passphrase.
    tile
        Tile side in pixels, a multiple of ``model.config.downsample``.
    """
    latent_dtype = latent_dtype or default_dtype(model)
    entropy = latent_dtype == ENTROPY
    if entropy and not isinstance(model, RDCAE):
        raise MicrocaeError("entropy coding needs an RD model (from 'microcae train-rd')")
    if tile % model.config.downsample:
        raise MicrocaeError(f"tile {tile} is not a multiple of {model.config.downsample}")
    latents, _ = encode_micrograph(model, micrograph.pixels, tile=tile)
    source = SourceInfo(micrograph.shape, micrograph.source_dtype, micrograph.scaling,
                        micrograph.value_range)
    return write_container(latents, source, tile, model_fingerprint(model), latent_dtype,
                           compress and not entropy, secret,
                           model.tables if entropy else None)


def open_latent_file(
    model: CodecModel, data: bytes, label: str, secret: Secret | None = None
) -> tuple[LatentHeader, np.ndarray]:
    """Verify a latent file's bytes against ``model`` and return its header and latents.

    Returns
    -------
    header, latents
        The header and (T, C, h, w) float32 latents.

    Raises
    ------
    MicrocaeError
        If the file is damaged, tampered with, needs another secret, or was made for another
        decoder (fingerprint mismatch).
    """
    header, body = unseal(data, label, secret)
    mine = model_fingerprint(model)
    if mine != header.fingerprint:
        raise MicrocaeError(
            f"{label}: made for another decoder (file fingerprint {header.fingerprint[:12]}..., "
            f"this model {mine[:12]}...)"
        )
    if header.latent_channels != model.config.latent_channels or (
        header.tile != header.latent_side * model.config.downsample
    ):
        raise MicrocaeError(f"{label}: corrupt header (latent shape does not fit the decoder)")
    tables = model.tables if isinstance(model, RDCAE) else None
    return header, unpack(header, body, label, tables)


@torch.no_grad()
def decode_tiles(model: CodecModel, latents: np.ndarray, grid: TileGrid) -> np.ndarray:
    """Decode (T, C, h, w) latents in float64 and stitch them into the (H, W) float64 image."""
    decoder = copy.deepcopy(model.decoder).to(torch.float64).eval()
    tiles = np.empty((len(grid), grid.tile, grid.tile), dtype=np.float64)
    for start in range(0, len(grid), DECODE_BATCH):
        chunk = slice(start, min(start + DECODE_BATCH, len(grid)))
        batch = torch.from_numpy(np.ascontiguousarray(latents[chunk], dtype=np.float64))
        tiles[chunk] = decoder(batch)[:, 0].contiguous().numpy()
    return stitch_tiles(tiles, grid)


def to_stored_units(pixels: np.ndarray, source: SourceInfo) -> np.ndarray:
    """Map [0, 1] pixels back to the original's storage type, for writing as PNG.

    8-bit sources become uint8 and 16-bit sources uint16, both in their original units
    (``value_range`` undone); any other source type becomes uint16 on the [0, 1] scale
    (0..65535), since PNG stores no floats.

    Parameters
    ----------
    pixels
        (H, W) float array on the [0, 1] scale.
    source
        The original's type and scaling.
    """
    pixels = np.clip(np.asarray(pixels, dtype=np.float64), 0.0, 1.0)
    if source.source_dtype in ("uint8", "uint16"):
        low, high = source.value_range
        top = 255 if source.source_dtype == "uint8" else 65535
        values = np.clip(np.rint(low + pixels * (high - low)), 0, top)
        return values.astype(np.uint8 if top == 255 else np.uint16)
    return np.rint(pixels * 65535.0).astype(np.uint16)


def render(model: CodecModel, header: LatentHeader, latents: np.ndarray) -> DecodedImage:
    """Decode verified latents (from :func:`open_latent_file`) to an image of the original shape."""
    pixels = np.clip(decode_tiles(model, latents, header.grid), 0.0, 1.0)
    return DecodedImage(pixels.astype(np.float32), to_stored_units(pixels, header.source), header)


def decode_bytes(
    model: CodecModel, data: bytes, label: str, secret: Secret | None = None
) -> DecodedImage:
    """Verify and decode the bytes of one latent file into an image of the original shape."""
    return render(model, *open_latent_file(model, data, label, secret))


def _unique_outputs(inputs: list[Path], out_dir: Path, suffix: str) -> list[Path]:
    targets = [out_dir / f"{path.stem}{suffix}" for path in inputs]
    seen: dict[Path, Path] = {}
    for source, target in zip(inputs, targets, strict=True):
        if target in seen:
            raise MicrocaeError(f"{source}: same output name {target.name} as {seen[target]}")
        seen[target] = source
    return targets


def encode_files(
    model: CodecModel,
    inputs: list[str | Path],
    out_dir: str | Path,
    latent_dtype: str | None = None,
    compress: bool = True,
    secret: Secret | None = None,
    progress: bool = True,
) -> list[Path]:
    """Encode images (files or folders) to ``<stem>.mcl`` files in ``out_dir``.

    Every image is encoded in memory first (latent files are small); files are written, each
    atomically, only when all inputs succeeded, so an error leaves nothing behind.

    Returns
    -------
    list of Path
        The written files, in input order.
    """
    images = find_images(list(inputs))
    targets = _unique_outputs(images, Path(out_dir), SUFFIX)
    blobs = [
        encode_image(model, read_micrograph(path), latent_dtype, compress, secret)
        for path in tqdm(images, desc="encode", unit="image", disable=not progress)
    ]
    for target, blob in zip(targets, blobs, strict=True):
        write_bytes_atomic(target, blob)
    return targets


def decode_files(
    model: CodecModel,
    files: list[str | Path],
    out_dir: str | Path,
    secret: Secret | None = None,
    progress: bool = True,
) -> list[Path]:
    """Decode latent files (or folders of ``.mcl`` files) to ``<stem>.png`` images in ``out_dir``.

    All files are read and verified (signature, checksum or authentication, key, decoder
    fingerprint) before any image is written, so a bad file leaves nothing behind.

    Returns
    -------
    list of Path
        The written PNG files, in input order.
    """
    paths = find_images(list(files), exclude=(), suffixes=(SUFFIX,), what=f"{SUFFIX} files")
    targets = _unique_outputs(paths, Path(out_dir), ".png")
    verified = [open_latent_file(model, path.read_bytes(), str(path), secret) for path in paths]
    for target, (header, latents) in tqdm(list(zip(targets, verified, strict=True)),
                                          desc="decode", unit="file", disable=not progress):
        with atomic_path(target) as tmp:
            Image.fromarray(render(model, header, latents).stored).save(tmp, format="PNG")
    return targets
