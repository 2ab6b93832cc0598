"""One micrograph to the bytes of a latent file and back, in memory (no paths).

Decoding runs the decoder in float64 on contiguous (NCHW) tensors. Measured on this project's
machine, its output bits do not change with the thread count, the batch size or with oneDNN
switched off (float32 decoding changes bits with the memory layout, channels-last float64 with
the thread count). Float64 rounding errors (about 1e-16) lie far below the half-step of the 8- or
16-bit output, so other CPUs are expected to give the same image bytes too; that part is an
argument, not a measurement.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from microcae.codec.container import (
    ENTROPY,
    STREAM,
    LatentHeader,
    SourceInfo,
    parse_header,
    stream_file_bytes,
    unpack,
    unseal,
    write_container,
    write_stream,
)
from microcae.codec.crypto import Secret
from microcae.data.images import Micrograph
from microcae.models.base import MicrocaeModel
from microcae.models.inference import (
    compress_whole,
    decode_latents,
    decompress_whole,
    encode_micrograph,
)
from microcae.models.refinement import Refinement, trained_lmbda_of
from microcae.models.registry import bundled_model_for
from microcae.util.errors import MicrocaeError

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


def default_dtype(model: MicrocaeModel) -> str:
    """Latent storage a model encodes with by default (:attr:`~MicrocaeModel.latent_coding`).

    ``"stream"`` for whole-image codecs, ``"entropy"`` for RD models, ``"uint8"`` for the CAE.
    """
    return model.latent_coding


def encode_image(
    model: MicrocaeModel,
    micrograph: Micrograph,
    latent_dtype: str | None = None,
    compress: bool = True,
    secret: Secret | None = None,
    tile: int = 256,
    refine: Refinement | None = None,
) -> bytes:
    """Encode one micrograph into the bytes of a latent file.

    Parameters
    ----------
    model
        The autoencoder (CAE or RD model); its encoder makes the latents, its fingerprint
        (:meth:`~microcae.models.base.MicrocaeModel.fingerprint`) goes into the header.
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
        Tile side in pixels, a multiple of ``model.downsample``.
    refine
        Whole-image codecs only: optimise the image's latents first
        (:func:`~microcae.models.inference.compress_whole`); None: do not.
    """
    if model.latent_coding == STREAM:
        if latent_dtype not in (None, STREAM):
            raise MicrocaeError(f"--dtype {latent_dtype} does not apply to {model.kind} models "
                                "(they code whole images into one stream)")
        stream = compress_whole(model, micrograph.pixels, refine=refine)
        return _stream_file(model, micrograph, stream, secret)
    if refine is not None:
        check_refinable([model])
    latent_dtype = latent_dtype or default_dtype(model)
    entropy = latent_dtype == ENTROPY
    if entropy and model.latent_coding != ENTROPY:
        raise MicrocaeError("entropy coding needs an RD model (from 'microcae train --arch rd-*')")
    if tile % model.downsample:
        raise MicrocaeError(f"tile {tile} is not a multiple of {model.downsample}")
    latents, _ = encode_micrograph(model, micrograph.pixels, tile=tile)
    return write_container(latents, _source_info(micrograph), tile, model.fingerprint(),
                           latent_dtype, compress and not entropy, secret,
                           model.tables if entropy else None)


def _source_info(micrograph: Micrograph) -> SourceInfo:
    return SourceInfo(micrograph.shape, micrograph.source_dtype, micrograph.scaling,
                      micrograph.value_range)


def _stream_file(model: MicrocaeModel, micrograph: Micrograph, stream: bytes,
                 secret: Secret | None) -> bytes:
    """Return the latent file of a whole-image codec's coded ``stream`` of ``micrograph``."""
    return write_stream(stream, _source_info(micrograph), model.latent_channels,
                        model.fingerprint(), secret)


@dataclass(frozen=True)
class RateBudget:
    """Encode each image at the best codec level whose file fits a rate budget (``--bpp``).

    Attributes
    ----------
    levels
        Whole-image codecs ordered from the smallest files to the best quality (the bundled
        levels); their rates are assumed to grow with the level, as training made them.
    max_bpp
        Budget in bits of the written file (header, and encryption if any, included) per
        pixel of the image.
    """

    levels: Sequence[MicrocaeModel]
    max_bpp: float

    def encode(self, micrograph: Micrograph, secret: Secret | None = None,
               refine: Refinement | None = None) -> bytes:
        """Return the file bytes of the highest level within the budget (bisection).

        The lowest level's file when even that one exceeds the budget (the smallest file
        microcae can make of the image; ``microcae encode`` then says so). The trial streams
        are measured by the size their file will have; only the chosen one is sealed (one
        key derivation with a passphrase). ``refine``: refine every trial stream's latents
        (:func:`encode_image`; the levels are chosen by their refined files).
        """
        if not self.levels or not all(m.latent_coding == STREAM for m in self.levels):
            raise MicrocaeError("a rate budget needs whole-image codec levels")
        pixels = micrograph.shape[0] * micrograph.shape[1]
        streams: dict[int, bytes] = {}

        def fits(level: int) -> bool:
            streams[level] = compress_whole(self.levels[level], micrograph.pixels,
                                            refine=refine)
            size = stream_file_bytes(len(streams[level]), encrypted=secret is not None)
            return 8 * size / pixels <= self.max_bpp

        low, high = 0, len(self.levels) - 1  # answer: highest fitting level in low..high
        if fits(low):
            while low < high:
                middle = (low + high + 1) // 2
                if fits(middle):
                    low = middle
                else:
                    high = middle - 1
        return _stream_file(self.levels[low], micrograph, streams[low], secret)


def check_refinable(models: Sequence[MicrocaeModel]) -> None:
    """Raise :class:`MicrocaeError` unless every model can refine latents (``--refine``).

    That needs a whole-image codec whose file records the ``lmbda`` it was trained with.
    """
    for model in models:
        if model.latent_coding != STREAM:
            raise MicrocaeError(f"--refine applies to microcae's codec only, not to "
                                f"{model.kind} models")
        trained_lmbda_of(model)


def model_for_file(data: bytes, label: str) -> MicrocaeModel:
    """Find the bundled model a latent file was made with, by the fingerprint in its header.

    Raises
    ------
    MicrocaeError
        If the header is damaged or no bundled model has that fingerprint.
    """
    header = parse_header(data, label)
    model = bundled_model_for(header.fingerprint)
    if model is None:
        raise MicrocaeError(f"{label}: made with a model that is not bundled (fingerprint "
                            f"{header.fingerprint[:12]}...); pass it with --model")
    return model


def open_latent_file(
    model: MicrocaeModel, data: bytes, label: str, secret: Secret | None = None
) -> tuple[LatentHeader, np.ndarray | bytes]:
    """Verify a latent file's bytes against ``model`` and return its header and latents.

    Returns
    -------
    header, latents
        The header and (T, C, h, w) float32 latents, or the coded stream (bytes) of a
        whole-image codec's file.

    Raises
    ------
    MicrocaeError
        If the file is damaged, tampered with, needs another secret, or was made for another
        decoder (fingerprint mismatch).
    """
    header, body = unseal(data, label, secret)
    mine = model.fingerprint()
    if mine != header.fingerprint:
        raise MicrocaeError(
            f"{label}: made for another decoder (file fingerprint {header.fingerprint[:12]}..., "
            f"this model {mine[:12]}...)"
        )
    if header.latent_channels != model.latent_channels or (
        header.tile != header.latent_side * model.downsample
    ) or (header.latent_dtype == STREAM) != (model.latent_coding == STREAM):
        raise MicrocaeError(f"{label}: corrupt header (latent shape does not fit the decoder)")
    if header.latent_dtype == STREAM:
        return header, body
    tables = model.tables if model.latent_coding == ENTROPY else None
    return header, unpack(header, body, label, tables)


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


def render(model: MicrocaeModel, header: LatentHeader,
           latents: np.ndarray | bytes) -> DecodedImage:
    """Decode verified latents (from :func:`open_latent_file`) to an image of the original shape."""
    if header.latent_dtype == STREAM:
        pixels = decompress_whole(model, bytes(latents), header.source.shape)
    else:
        pixels = decode_latents(model, latents, header.grid, torch.float64, DECODE_BATCH)
    pixels = np.clip(pixels, 0.0, 1.0)
    return DecodedImage(pixels.astype(np.float32), to_stored_units(pixels, header.source), header)


def decode_bytes(
    model: MicrocaeModel, data: bytes, label: str, secret: Secret | None = None
) -> DecodedImage:
    """Verify and decode the bytes of one latent file into an image of the original shape."""
    return render(model, *open_latent_file(model, data, label, secret))
