"""Tile-level rate–distortion of CAE latent files against Pillow's JPEG, WebP and JPEG 2000.

Whole-image comparisons with the strongest codecs (``microcae evaluate``) live in
:mod:`microcae.evaluation.codec_comparison`; this module measures the study CAE's storage
types (float32, float16, uint8, each with and without zstd) tile by tile, for the
reproduction report.

RD models (:mod:`microcae.rd`) are measured the same way: one entropy-coded latent file per
tile, the classical codecs matched to its bytes tile by tile.

Every rate is the size of a real file (headers included) divided by the tile's pixel count
(bits per pixel, bpp; the 8-bit source is 8 bpp). For each CAE storage configuration the
classical codecs are run per tile at the highest quality whose file is no larger than the CAE's
file for that tile (binary search over the codec's quality settings), so the comparison is at
equal bytes or fewer for the classical codec. Quality is measured on the 8-bit decoded images
with :func:`microcae.metrics.reconstruction.reconstruction_scores` (MSE: lower is better;
PSNR in dB and SSIM (Wang et al. 2004): higher is better).
"""

from __future__ import annotations

import io
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
from PIL import Image
from tqdm import tqdm

from microcae.codec import decode_bytes, encode_image
from microcae.codec.quantise import LATENT_DTYPES
from microcae.data.images import uint8_tile
from microcae.evaluation.codec_comparison import highest_within
from microcae.metrics.reconstruction import reconstruction_scores
from microcae.models.cae import CAE
from microcae.models.rdcae import RDCAE
from microcae.util.table_writer import Column, Table


@dataclass(frozen=True)
class ClassicalCodec:
    """A Pillow codec with quality settings ordered from the lowest to the highest rate.

    Attributes
    ----------
    settings
        Parameter values, ascending in file size (JPEG/WebP quality; JPEG 2000 compression
        ratios, descending).
    save
        ``save(image, setting) -> bytes`` for an 8-bit greyscale PIL image.
    label
        How a setting is written in reports, e.g. ``"quality={}"``.
    """

    settings: tuple[float, ...]
    save: Callable[[Image.Image, float], bytes]
    label: str


def _pillow(fmt: str, **fixed: object) -> Callable[[Image.Image, float], bytes]:
    def save(image: Image.Image, setting: float) -> bytes:
        buffer = io.BytesIO()
        if fmt == "JPEG2000":
            image.save(buffer, format=fmt, quality_mode="rates", quality_layers=[setting],
                       **fixed)
        else:
            image.save(buffer, format=fmt, quality=int(setting), **fixed)
        return buffer.getvalue()

    return save


CLASSICAL_CODECS: dict[str, ClassicalCodec] = {
    "jpeg": ClassicalCodec(tuple(range(1, 101)), _pillow("JPEG", optimize=True), "quality={:g}"),
    "webp": ClassicalCodec(tuple(range(0, 101)), _pillow("WEBP", method=6), "quality={:g}"),
    "jpeg2000": ClassicalCodec(
        tuple(float(r) for r in np.geomspace(1024.0, 1.5, 96).round(3)),
        _pillow("JPEG2000", irreversible=True, no_jp2=True),
        "ratio={:g}",
    ),
}
"""Registry of classical codecs (Pillow): JPEG (optimised Huffman tables), WebP (method 6),
JPEG 2000 (OpenJPEG, 9/7 wavelet, raw J2K code-stream without the JP2 box wrapper)."""

CURVE_POINTS = 12
"""Number of settings per classical codec drawn as an RD curve (spread over its range)."""


def decode_image(data: bytes) -> np.ndarray:
    """Decode any Pillow-readable image bytes to (H, W) uint8 greyscale."""
    with Image.open(io.BytesIO(data)) as image:
        return np.asarray(image.convert("L"))


def png_bytes(tile: np.ndarray) -> int:
    """Size in bytes of (H, W) uint8 ``tile`` saved as an optimised lossless PNG."""
    buffer = io.BytesIO()
    Image.fromarray(tile).save(buffer, format="PNG", optimize=True)
    return len(buffer.getvalue())


class _TileCache:
    """Encodings of one tile by one classical codec, computed once per setting."""

    def __init__(self, codec: ClassicalCodec, tile: np.ndarray) -> None:
        self.codec, self.image, self.files = codec, Image.fromarray(tile), {}

    def bytes_at(self, index: int) -> bytes:
        if index not in self.files:
            self.files[index] = self.codec.save(self.image, self.codec.settings[index])
        return self.files[index]

    def best_within(self, budget: int) -> int:
        """Index of the highest setting whose file is at most ``budget`` bytes (0 if none)."""
        return highest_within(lambda i: len(self.bytes_at(i)), len(self.codec.settings), budget)


def _score_row(original: np.ndarray, decoded: np.ndarray, size: int) -> dict[str, float]:
    scores = reconstruction_scores(original / 255.0, decoded / 255.0)
    return {"bytes": float(size), "bpp": 8.0 * size / original.size, **scores.as_dict()}


def _mean(rows: list[dict[str, float]]) -> dict[str, float]:
    return {key: float(np.mean([row[key] for row in rows])) for key in rows[0]}


def _matched_rows(caches: dict[str, _TileCache], tile: np.ndarray,
                  budget: int) -> dict[str, tuple[dict[str, float], bool]]:
    """Per codec: the score row at the best setting within ``budget`` bytes, and if it is over.

    "Over" means even the codec's lowest setting needs more than ``budget`` bytes.
    """
    out = {}
    for name, cache in caches.items():
        stored = cache.bytes_at(cache.best_within(budget))
        out[name] = (_score_row(tile, decode_image(stored), len(stored)), len(stored) > budget)
    return out


def cae_configurations(dtypes: Sequence[str] = tuple(LATENT_DTYPES)) -> list[tuple[str, bool]]:
    """(latent dtype, zstd) pairs evaluated for the CAE: every dtype with and without zstd."""
    return [(dtype, compress) for dtype in dtypes for compress in (False, True)]


def rate_distortion(
    model: CAE,
    tiles: np.ndarray,
    codecs: Sequence[str] = tuple(CLASSICAL_CODECS),
    dtypes: Sequence[str] = tuple(LATENT_DTYPES),
    progress: bool = True,
    rd_models: Sequence[tuple[str, RDCAE]] = (),
) -> dict[str, object]:
    """Measure the CAE's latent files and classical codecs on the same 8-bit tiles.

    Parameters
    ----------
    model
        The autoencoder; each tile is encoded as its own latent file (header included).
    tiles
        (N, S, S) uint8 tiles, S a multiple of ``model.config.downsample``.
    codecs
        Keys of :data:`CLASSICAL_CODECS`.
    dtypes
        Latent storage types to evaluate (each with and without zstd).
    progress
        Show a progress bar on stderr.
    rd_models
        (name, RD model) pairs; each tile is also encoded as one entropy-coded latent file per
        RD model.

    Returns
    -------
    dict
        JSON-ready report: ``cae`` (one row per storage configuration), ``matched`` (one row
        per configuration and classical codec at the CAE's per-tile bytes), ``rd`` and
        ``rd_matched`` (the same for each RD model), ``curves`` (classical RD curves at fixed
        settings), ``png_bpp`` (lossless reference) and context. Rows hold means over tiles of
        ``bytes``, ``bpp``, ``mse``, ``psnr_db`` and ``ssim``.
    """
    tiles = np.asarray(tiles)
    if tiles.ndim != 3 or tiles.dtype != np.uint8 or len(tiles) == 0:
        raise ValueError(f"tiles must be a non-empty (N, S, S) uint8 array, got {tiles.shape}")
    configs = cae_configurations(dtypes)
    cae_rows: dict[tuple[str, bool], list] = {c: [] for c in configs}
    matched: dict[tuple[str, bool, str], list] = {(*c, k): [] for c in configs for k in codecs}
    over_budget = dict.fromkeys(matched, 0)
    rd_rows: dict[str, list] = {name: [] for name, _ in rd_models}
    rd_matched: dict[tuple[str, str], list] = {(n, k): [] for n, _ in rd_models for k in codecs}
    rd_over = dict.fromkeys(rd_matched, 0)
    curve_index = {k: np.unique(np.linspace(0, len(CLASSICAL_CODECS[k].settings) - 1,
                                            CURVE_POINTS).round().astype(int)) for k in codecs}
    curves: dict[str, list[list]] = {k: [[] for _ in curve_index[k]] for k in codecs}
    png_sizes = []
    for tile in tqdm(tiles, desc="rate-distortion", unit="tile", disable=not progress):
        micrograph = uint8_tile(tile)
        png_sizes.append(png_bytes(tile))
        decoded_by_dtype: dict[str, np.ndarray] = {}
        caches = {k: _TileCache(CLASSICAL_CODECS[k], tile) for k in codecs}
        for dtype, compress in configs:
            data = encode_image(model, micrograph, dtype, compress, tile=tile.shape[0])
            if dtype not in decoded_by_dtype:  # zstd is lossless: decode once per dtype
                decoded_by_dtype[dtype] = decode_bytes(model, data, "tile").stored
            cae_rows[(dtype, compress)].append(_score_row(tile, decoded_by_dtype[dtype], len(data)))
            for name, (row, over) in _matched_rows(caches, tile, len(data)).items():
                over_budget[(dtype, compress, name)] += over
                matched[(dtype, compress, name)].append(row)
        for label, rd_model in rd_models:
            data = encode_image(rd_model, micrograph, tile=tile.shape[0])
            decoded = decode_bytes(rd_model, data, "tile").stored
            rd_rows[label].append(_score_row(tile, decoded, len(data)))
            for name, (row, over) in _matched_rows(caches, tile, len(data)).items():
                rd_over[(label, name)] += over
                rd_matched[(label, name)].append(row)
        for name, cache in caches.items():
            for slot, index in enumerate(curve_index[name]):
                stored = cache.bytes_at(int(index))
                curves[name][slot].append(_score_row(tile, decode_image(stored), len(stored)))
    return {
        "tiles": int(len(tiles)),
        "tile_shape": [int(tiles.shape[1]), int(tiles.shape[2])],
        "source_bpp": 8.0,
        "model_fingerprint": model.fingerprint(),
        "png_bpp": float(np.mean(png_sizes) * 8.0 / tiles[0].size),
        "cae": [{"latent_dtype": d, "zstd": z, **_mean(cae_rows[(d, z)])} for d, z in configs],
        "matched": [
            {"latent_dtype": d, "zstd": z, "codec": k, "over_budget_tiles": over_budget[(d, z, k)],
             **_mean(matched[(d, z, k)])}
            for d, z, k in matched
        ],
        "rd": [{"model": name, "fingerprint": rd_model.fingerprint(),
                "channels": list(rd_model.config.cae.channels), **_mean(rd_rows[name])}
               for name, rd_model in rd_models],
        "rd_matched": [{"model": n, "codec": k, "over_budget_tiles": rd_over[(n, k)],
                        **_mean(rd_matched[(n, k)])} for n, k in rd_matched],
        "curves": {
            name: [{"setting": CLASSICAL_CODECS[name].label.format(
                        CLASSICAL_CODECS[name].settings[int(index)]), **_mean(rows)}
                   for index, rows in zip(curve_index[name], curves[name], strict=True)]
            for name in codecs
        },
    }


RD_COLUMNS = (Column("storage", "CAE storage"), Column("codec"), Column("bpp", spec=".4f"),
              Column("ratio", "ratio vs 8 bpp", ".1f"), Column("psnr_db", "PSNR (dB)", ".2f"),
              Column("ssim", "SSIM", ".4f"), Column("mse", "MSE", ".5f"))
"""Columns of the rate–distortion table."""


def markdown_table(report: dict) -> str:
    """Render a :func:`rate_distortion` report as a Markdown table (one block per CAE rate)."""
    caption = (
        f"Rate–distortion on {report['tiles']} tiles of "
        f"{report['tile_shape'][0]}×{report['tile_shape'][1]} px (source 8 bpp; lossless PNG "
        f"{report['png_bpp']:.3f} bpp). Means over tiles; bpp from real file sizes, headers "
        "included; classical codecs at the highest quality whose file is no larger than the "
        "CAE file of the same tile."
    )

    def row(storage: str, codec: str, entry: dict) -> dict:
        return {"storage": storage, "codec": codec, "ratio": 8.0 / entry["bpp"],
                **{k: entry[k] for k in ("bpp", "psnr_db", "ssim", "mse")}}

    def codec_row(storage: str, entry: dict) -> dict:
        over = entry["over_budget_tiles"]
        return row(storage, entry["codec"] + (f" ({over} tiles over)" if over else ""), entry)

    rows = []
    for cae in report["cae"]:
        storage = f"{cae['latent_dtype']}{' + zstd' if cae['zstd'] else ''}"
        rows.append(row(storage, "**CAE**", cae))
        rows += [codec_row(storage, entry) for entry in report["matched"]
                 if (entry["latent_dtype"], entry["zstd"]) == (cae["latent_dtype"], cae["zstd"])]
    for rd in report.get("rd", []):
        storage = f"RD model {rd['model']} (entropy)"
        rows.append(row(storage, "**RD CAE**", rd))
        rows += [codec_row(storage, entry) for entry in report["rd_matched"]
                 if entry["model"] == rd["model"]]
    return caption + "\n\n" + Table.of(rows, RD_COLUMNS).markdown()
