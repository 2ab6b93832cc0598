"""Whole-image comparison of microcae's models with the strongest classical image codecs.

Every rate is the size of a real file divided by the image's pixel count (bits per pixel,
bpp; the 8-bit source is 8 bpp): the complete ``.mcl`` latent file for microcae models, and for
the classical codecs (through imagecodecs) a JFIF JPEG file, a RIFF WebP file, a raw JPEG 2000
code-stream (J2K: its main header is counted, there is no JP2 box wrapper), a bare JPEG XL
code-stream and an AVIF (HEIF) file. Each classical codec is run at the best setting whose
file is no larger than a byte budget (bisection over its settings, files encoded and
measured), with two kinds of budget per image: the bytes of each microcae file (matched rows)
and a fixed grid of bpp targets (the codec's own RD curve).

Quality is measured on 8-bit images (microcae's decoded pixels rounded to 8 bits): PSNR (peak
255), MS-SSIM (:func:`microcae.metrics.rate.ms_ssim`) and the microstructure fidelity of
:func:`microcae.metrics.fidelity.fidelity_scores`. Curves are means over images per target;
Bjøntegaard delta rates (:func:`microcae.metrics.rate.bd_rate`) compare those mean curves.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import imagecodecs
import numpy as np
from tqdm import tqdm

from microcae.codec import decode_bytes, encode_image
from microcae.codec.container import STREAM
from microcae.data.images import Micrograph, to_uint8, uint8_tile
from microcae.figures.rate_distortion import plot_codec_curves
from microcae.metrics.fidelity import MAX_SHIFT, fidelity_scores
from microcae.metrics.rate import WINDOW, bd_psnr, bd_rate, ms_ssim
from microcae.util.atomic import write_text_atomic
from microcae.util.errors import MicrocaeError
from microcae.util.table_writer import csv_text, markdown_table

if TYPE_CHECKING:
    from microcae.models.base import MicrocaeModel
    from microcae.models.refinement import Refinement

BPP_TARGETS = (0.1, 0.15, 0.2, 0.25, 0.4, 0.6, 1.0, 1.5)
"""Rates (bpp) at which each classical codec is run for its own curve."""


@dataclass(frozen=True)
class ClassicalCodec:
    """An imagecodecs codec with settings ordered from the smallest to the largest files.

    Attributes
    ----------
    settings
        Parameter values, ascending in file size.
    encode
        ``encode(pixels, setting) -> bytes``: (H, W) uint8 to the bytes of a real file.
    decode
        ``decode(data) -> (H, W) uint8``.
    label
        How a setting is written in reports, e.g. ``"quality={:g}"``.
    """

    settings: tuple[float, ...]
    encode: Callable[[np.ndarray, float], bytes]
    decode: Callable[[bytes], np.ndarray]
    label: str


def _rgb(pixels: np.ndarray) -> np.ndarray:
    """(H, W) uint8 -> (H, W, 3) contiguous grey RGB (WebP and AVIF take RGB input)."""
    return np.ascontiguousarray(np.repeat(pixels[..., None], 3, axis=2))


def _webp_decode(data: bytes) -> np.ndarray:
    """Decode WebP to grey: the rounded mean of the three decoded channels."""
    return np.rint(imagecodecs.webp_decode(data).mean(axis=2)).astype(np.uint8)


CLASSICAL_CODECS: dict[str, ClassicalCodec] = {
    "jpeg": ClassicalCodec(
        tuple(float(q) for q in range(1, 101)),
        lambda x, q: bytes(imagecodecs.jpeg8_encode(x, level=int(q), optimize=True)),
        imagecodecs.jpeg8_decode, "quality={:g}"),
    "webp": ClassicalCodec(
        tuple(float(q) for q in range(0, 101)),
        lambda x, q: bytes(imagecodecs.webp_encode(_rgb(x), level=int(q), lossless=False,
                                                   method=6)),
        _webp_decode, "quality={:g}"),
    "jpeg2000": ClassicalCodec(
        tuple(float(p) for p in np.arange(16.0, 60.001, 0.1).round(1)),
        lambda x, p: bytes(imagecodecs.jpeg2k_encode(
            x, level=p, codecformat=imagecodecs.JPEG2K.CODEC.J2K, reversible=False)),
        imagecodecs.jpeg2k_decode, "psnr target={:g} dB"),
    "jpegxl": ClassicalCodec(
        tuple(float(d) for d in np.geomspace(25.0, 0.1, 200).round(4)),
        lambda x, d: bytes(imagecodecs.jpegxl_encode(x, distance=d, effort=7)),
        imagecodecs.jpegxl_decode, "distance={:g}"),
    "avif": ClassicalCodec(
        tuple(float(q) for q in range(0, 100)),
        lambda x, q: bytes(imagecodecs.avif_encode(
            _rgb(x), int(q), speed=6, pixelformat=imagecodecs.AVIF.PIXEL_FORMAT.YUV400)),
        imagecodecs.avif_decode, "quality={:g}"),
}
"""Registry of classical codecs: JPEG (libjpeg-turbo, optimised Huffman tables), WebP (lossy,
method 6), JPEG 2000 (OpenJPEG, 9/7 wavelet, raw J2K code-stream, rate set by a PSNR target),
JPEG XL (libjxl, effort 7, Butteraugli distance) and AVIF (libavif/AOM, speed 6, 4:0:0
monochrome)."""


def highest_within(size_at: Callable[[int], int], count: int, budget: int) -> int:
    """Binary search for the highest setting index whose size is at most ``budget``.

    Parameters
    ----------
    size_at
        File size in bytes at setting index 0..count-1, assumed non-decreasing.
    count
        Number of settings.
    budget
        Largest acceptable size in bytes.

    Returns
    -------
    int
        The index, or 0 when even the lowest setting exceeds the budget. Calls ``size_at``
        O(log count) times.
    """
    low, high = 0, count - 1
    if size_at(low) > budget:
        return low
    while low < high:
        middle = (low + high + 1) // 2
        if size_at(middle) <= budget:
            low = middle
        else:
            high = middle - 1
    return low


class CodecFiles:
    """Files of one image by one classical codec, each setting encoded once and timed."""

    def __init__(self, codec: ClassicalCodec, pixels: np.ndarray) -> None:
        self.codec, self.pixels = codec, pixels
        self.files: dict[int, tuple[bytes, float]] = {}

    def file(self, index: int) -> tuple[bytes, float]:
        """Bytes of the file at setting ``index`` and the seconds its encoding took."""
        if index not in self.files:
            start = time.perf_counter()
            data = self.codec.encode(self.pixels, self.codec.settings[index])
            self.files[index] = (data, time.perf_counter() - start)
        return self.files[index]

    def best_within(self, budget: int) -> int:
        """Index of the highest setting whose file is at most ``budget`` bytes (0 if none)."""
        return highest_within(lambda i: len(self.file(i)[0]), len(self.codec.settings), budget)


@dataclass(frozen=True)
class Row:
    """One decoded file of one image.

    Attributes
    ----------
    image
        Image label. ``codec``: classical codec or model name. ``learned``: a microcae model.
    target
        What the file was sized for: ``"own"`` (a microcae file), ``"model:NAME"`` (no larger
        than model NAME's file) or ``"bpp:X"`` (no larger than X bpp).
    setting
        The codec setting used (classical) or the model's kind (learned).
    bytes, bpp
        File size, and ``8 * bytes / pixels``.
    over_budget
        Even the codec's smallest setting exceeded the budget (the row is larger than asked).
    psnr_db, ms_ssim
        8-bit PSNR (dB, peak 255) and MS-SSIM (higher is better).
    phase_fraction_error, two_point_error, boundary_f
        :class:`microcae.metrics.fidelity.FidelityScores`.
    encode_s, decode_s
        Wall-clock seconds of one encode and one decode on this CPU.
    """

    image: str
    codec: str
    learned: bool
    target: str
    setting: str
    bytes: int
    bpp: float
    over_budget: bool
    psnr_db: float
    ms_ssim: float
    phase_fraction_error: float
    two_point_error: float
    boundary_f: float
    encode_s: float
    decode_s: float


def _scored(original: np.ndarray, decoded: np.ndarray) -> dict[str, float]:
    """PSNR, MS-SSIM and fidelity of (H, W) uint8 ``decoded`` against ``original``.

    Two-point correlations reach :data:`~microcae.metrics.fidelity.MAX_SHIFT` px, or one pixel
    less than the image's shorter side when that is smaller.
    """
    mse = float(np.mean((original.astype(np.float64) - decoded) ** 2))
    psnr = float("inf") if mse == 0 else float(10 * np.log10(255.0 ** 2 / mse))
    shift = min(MAX_SHIFT, min(original.shape) - 1)
    fidelity = fidelity_scores(original / 255.0, decoded / 255.0, max_shift=shift)
    return {"psnr_db": psnr, "ms_ssim": ms_ssim(original, decoded), **fidelity.as_dict()}


def centre_crop(pixels: np.ndarray, side: int | None) -> np.ndarray:
    """Return the central ``min(H, side) × min(W, side)`` window of (H, W) ``pixels``.

    ``side`` None returns ``pixels`` unchanged.
    """
    if side is None:
        return pixels
    top, left = max(0, (pixels.shape[0] - side) // 2), max(0, (pixels.shape[1] - side) // 2)
    return pixels[top:top + side, left:left + side]


def _measured_pixels(item: Micrograph | tuple[str, np.ndarray],
                     crop: int | None) -> tuple[str, np.ndarray]:
    """Label and contiguous, centre-cropped (H, W) uint8 pixels of one input image.

    Raises
    ------
    MicrocaeError
        If the pixels are not a 2-D uint8 array, or (after cropping) are smaller than
        ``WINDOW + 1`` = 12 px on a side, the least MS-SSIM measures.
    """
    if isinstance(item, Micrograph):
        label, pixels = item.path, item.as_uint8()
    else:
        label, pixels = item[0], np.asarray(item[1])
    if pixels.ndim != 2 or pixels.dtype != np.uint8:
        raise MicrocaeError(f"{label}: codecs compare (H, W) uint8 images, got "
                            f"{pixels.dtype} of shape {pixels.shape}")
    pixels = np.ascontiguousarray(centre_crop(pixels, crop))
    if min(pixels.shape) <= WINDOW:
        raise MicrocaeError(f"{label}: {pixels.shape[0]}×{pixels.shape[1]} px (after any crop) "
                            f"is too small to compare; at least {WINDOW + 1} px a side")
    return label, pixels


def _learned_row(label: str, name: str, model: MicrocaeModel, pixels: np.ndarray,
                 refine: Refinement | None = None) -> tuple[Row, int]:
    """Encode and decode ``pixels`` with one model; the row and its file's byte count."""
    start = time.perf_counter()
    data = encode_image(model, _micrograph(label, pixels), refine=refine)
    encoded = time.perf_counter()
    decoded = to_uint8(decode_bytes(model, data, label).pixels)
    seconds = (encoded - start, time.perf_counter() - encoded)
    return Row(label, name, True, "own", model.kind, len(data), 8.0 * len(data) / pixels.size,
               False, **_scored(pixels, decoded), encode_s=seconds[0],
               decode_s=seconds[1]), len(data)


def _classical_row(label: str, name: str, files: CodecFiles, target: str,
                   budget: int) -> Row:
    """Score the codec's file within ``budget`` bytes, decoded (timed)."""
    index = files.best_within(budget)
    data, encode_s = files.file(index)
    start = time.perf_counter()
    decoded = files.codec.decode(data)
    decode_s = time.perf_counter() - start
    return Row(label, name, False, target,
               files.codec.label.format(files.codec.settings[index]), len(data),
               8.0 * len(data) / files.pixels.size, len(data) > budget,
               **_scored(files.pixels, decoded), encode_s=encode_s, decode_s=decode_s)


def _micrograph(label: str, pixels: np.ndarray) -> Micrograph:
    """Wrap as an 8-bit grey micrograph the (H, W) uint8 ``pixels`` labelled ``label``."""
    image = uint8_tile(pixels)
    return Micrograph(image.pixels, label, image.source_dtype, image.colour,
                      image.value_range, image.scaling)


@dataclass
class CodecComparison:
    """Every row of a comparison and the summaries computed from them.

    Attributes
    ----------
    rows
        One :class:`Row` per image, codec and target.
    images
        ``(label, height, width)`` of each image as measured (after cropping).
    crop
        Centre-crop side (px) applied to the images, or None.
    models
        ``{name: {"kind", "fingerprint"}}`` of the microcae models.
    """

    rows: list[Row]
    images: list[tuple[str, int, int]]
    crop: int | None
    models: dict[str, dict[str, str]] = field(default_factory=dict)

    @classmethod
    def from_dict(cls, report: dict) -> CodecComparison:
        """Rebuild a comparison from its :meth:`as_dict` (e.g. a ``codecs.json``)."""
        return cls([Row(**row) for row in report["rows"]],
                   [(i["label"], i["height"], i["width"]) for i in report["images"]],
                   report["crop"], report["models"])

    def merged(self, other: CodecComparison) -> CodecComparison:
        """Add the rows and models of ``other``, measured on the same images (``other``'s first).

        Raises
        ------
        MicrocaeError
            If the images or the crop differ, or a model name is in both.
        """
        if (other.images, other.crop) != (self.images, self.crop):
            raise MicrocaeError("comparisons to merge must be on the same (cropped) images")
        if set(other.models) & set(self.models):
            both = sorted(set(other.models) & set(self.models))
            raise MicrocaeError(f"model names in both comparisons: {', '.join(both)}")
        return CodecComparison([*self.rows, *other.rows], self.images, self.crop,
                               {**other.models, **self.models})

    def mean(self, codec: str, target: str) -> dict[str, float]:
        """Means over images of the numeric fields of ``codec``'s rows at ``target``."""
        rows = [r for r in self.rows if r.codec == codec and r.target == target]
        keys = ("bytes", "bpp", "psnr_db", "ms_ssim", "phase_fraction_error",
                "two_point_error", "boundary_f")
        summary = {k: float(np.mean([getattr(r, k) for r in rows])) for k in keys}
        return {**summary, "images": len(rows), "over_budget": sum(r.over_budget for r in rows)}

    def classical(self) -> list[str]:
        """Names of the classical codecs measured, in registry order."""
        present = {r.codec for r in self.rows if not r.learned}
        return [name for name in CLASSICAL_CODECS if name in present]

    def curve(self, codec: str) -> list[dict[str, float]]:
        """Return a classical codec's mean curve over the grid targets, sorted by bpp."""
        targets = sorted({r.target for r in self.rows if r.codec == codec and
                          r.target.startswith("bpp:")}, key=lambda t: float(t[4:]))
        return [{"target_bpp": float(t[4:]), **self.mean(codec, t)} for t in targets]

    def learned_points(self) -> dict[str, dict[str, float]]:
        """Each microcae model's mean point (over images), by model name."""
        return {name: self.mean(name, "own") for name in self.models}

    def kind_groups(self) -> dict[str, list[str]]:
        """Model kind -> its model names, for every kind with two or more models (in order)."""
        groups: dict[str, list[str]] = {}
        for name, info in self.models.items():
            groups.setdefault(info["kind"], []).append(name)
        return {kind: names for kind, names in groups.items() if len(names) > 1}

    def bd_table(self, delta: str = "rate") -> list[dict[str, object]]:
        """BD-rate (%) or BD-PSNR (dB) of each model, and each kind with ≥ 2 models, per codec.

        ``delta`` is ``"rate"`` (:func:`~microcae.metrics.rate.bd_rate`) or ``"psnr"``
        (:func:`~microcae.metrics.rate.bd_psnr`).
        A single model is one point: its rate difference against the codec's fitted curve at
        the model's PSNR. Two or more models of one kind form a curve (points sorted by bpp).
        NaN where the PSNRs do not overlap or the codec's curve has fewer than 2 points.
        """
        measure = {"rate": bd_rate, "psnr": bd_psnr}[delta]
        points = self.learned_points()
        groups: dict[str, list[str]] = {name: [name] for name in self.models}
        for kind, members in self.kind_groups().items():
            groups[f"{kind} ({', '.join(members)})"] = members
        table = []
        for label, members in groups.items():
            ordered = sorted(members, key=lambda n: points[n]["bpp"])
            rate = [points[n]["bpp"] for n in ordered]
            psnr = [points[n]["psnr_db"] for n in ordered]
            row: dict[str, object] = {"model": label, "points": len(members)}
            for codec in self.classical():
                curve = self.curve(codec)
                row[codec] = float("nan") if len(curve) < 2 else measure(
                    rate, psnr, [p["bpp"] for p in curve], [p["psnr_db"] for p in curve])
            table.append(row)
        return table

    def matched(self) -> list[dict[str, object]]:
        """Per model: its mean row, then each classical codec's at the model's bytes."""
        table = []
        for name in self.models:
            table.append({"at bytes of": name, "codec": f"**{name}**", **self.mean(name, "own")})
            table += [{"at bytes of": name, "codec": codec,
                       **self.mean(codec, f"model:{name}")} for codec in self.classical()]
        return table

    def throughput(self) -> list[dict[str, object]]:
        """Encode and decode MB/s of 8-bit pixels per codec: total pixels / total seconds.

        Classical codecs count one encode of each chosen file (not the search's other
        encodes); rows of every target are pooled.
        """
        table = []
        for codec in [*self.models, *self.classical()]:
            rows = [r for r in self.rows if r.codec == codec]
            megabytes = sum(8.0 * r.bytes / r.bpp for r in rows) / 1e6  # 1 byte per pixel
            table.append({"codec": codec, "files": len(rows),
                          "encode_MB_s": megabytes / sum(r.encode_s for r in rows),
                          "decode_MB_s": megabytes / sum(r.decode_s for r in rows)})
        return table

    def as_dict(self) -> dict[str, object]:
        """Everything as JSON-ready data: rows, curves, model points, BD-rates, throughput."""
        return {
            "images": [{"label": label, "height": h, "width": w} for label, h, w in self.images],
            "crop": self.crop, "models": self.models,
            "containers": CONTAINERS,
            "curves": {codec: self.curve(codec) for codec in self.classical()},
            "learned": self.learned_points(), "matched": self.matched(),
            "bd_rate_percent": self.bd_table("rate"), "bd_psnr_db": self.bd_table("psnr"),
            "throughput": self.throughput(),
            "rows": [asdict(r) for r in self.rows],
        }


CONTAINERS = {
    "microcae": ".mcl latent file, header and checksum included",
    "jpeg": "JFIF file", "webp": "RIFF WebP file",
    "jpeg2000": "raw J2K code-stream (main header counted, no JP2 boxes)",
    "jpegxl": "bare JPEG XL code-stream", "avif": "AVIF (HEIF) file",
}
"""What the byte counts of each codec include."""


def refined_name(name: str, refine: Refinement) -> str:
    """``name`` marked as encoded with ``refine``, e.g. ``"codec-4+refine200"``."""
    return f"{name}+refine{refine.steps}"


def compare_codecs(
    images: Sequence[Micrograph | tuple[str, np.ndarray]],
    models: Sequence[tuple[str, MicrocaeModel]],
    bpp_targets: Sequence[float] = BPP_TARGETS,
    codecs: Sequence[str] = tuple(CLASSICAL_CODECS),
    crop: int | None = None,
    progress: bool = True,
    refine: Refinement | None = None,
) -> CodecComparison:
    """Measure microcae models and classical codecs on the same 8-bit whole images.

    Parameters
    ----------
    images
        Micrographs (their pixels rounded to 8 bits) or ``(label, (H, W) uint8)`` pairs.
    models
        ``(name, model)`` pairs, names distinct; each image becomes one latent file per model.
    bpp_targets
        Rates (bpp) of each classical codec's own curve (file no larger than the target).
    codecs
        Keys of :data:`CLASSICAL_CODECS`.
    crop
        Centre-crop each image to at most ``crop × crop`` pixels first (None: whole images).
    progress
        Show a progress bar on stderr.
    refine
        Encode the whole-image codecs with latent refinement
        (:mod:`microcae.models.refinement`); their names and kind get the suffix of
        :func:`refined_name` (their rows form their own curve). The other models are
        measured as they are.

    Returns
    -------
    CodecComparison
        Rows for every image: one per model, one per model and codec (at that model's bytes),
        one per codec and target.

    Raises
    ------
    MicrocaeError
        If there are no images, or one is not (H, W) uint8 of at least 12 px a side.
    """
    if len(images) == 0:
        raise MicrocaeError("no images to compare the codecs on")
    refined = {name for name, model in models
               if refine is not None and model.latent_coding == STREAM}
    models = [(refined_name(name, refine) if name in refined else name, model)
              for name, model in models]
    checked = [_measured_pixels(item, crop) for item in images]  # every one before any work
    rows: list[Row] = []
    for label, pixels in tqdm(checked, desc="codecs", unit="image", disable=not progress):
        files = {name: CodecFiles(CLASSICAL_CODECS[name], pixels) for name in codecs}
        for name, model in models:
            row, size = _learned_row(label, name, model, pixels,
                                     refine if model.latent_coding == STREAM else None)
            rows.append(row)
            rows += [_classical_row(label, codec, files[codec], f"model:{name}", size)
                     for codec in codecs]
        for target in bpp_targets:
            budget = int(target * pixels.size / 8)
            rows += [_classical_row(label, codec, files[codec], f"bpp:{target:g}", budget)
                     for codec in codecs]
    info = {name: {"kind": model.kind + (refined_name("", refine) if refine is not None
                                         and model.latent_coding == STREAM else ""),
                   "fingerprint": model.fingerprint()} for name, model in models}
    return CodecComparison(rows, [(label, *pixels.shape) for label, pixels in checked], crop,
                           info)


_MEAN_COLUMNS = ("bpp", "psnr_db", "ms_ssim", "phase_fraction_error", "two_point_error",
                 "boundary_f", "over_budget")


def markdown_report(comparison: CodecComparison, title: str = "Codec comparison") -> str:
    """Render a :class:`CodecComparison` as Markdown: header, BD-rates, matched rows, curves."""
    pixels = sum(h * w for _, h, w in comparison.images)
    crop = (f"centre-cropped to at most {comparison.crop}×{comparison.crop} px"
            if comparison.crop else "whole images")
    lines = [
        f"# {title}", "",
        f"{len(comparison.images)} images ({crop}; {pixels / 1e6:.2f} Mpx in all), 8-bit. "
        "Rates are real file sizes, headers included: "
        + "; ".join(f"{k}: {v}" for k, v in CONTAINERS.items()) + ". Each classical codec "
        "is at its best setting whose file is no larger than the budget. Means over images.",
        "", "## Bjøntegaard delta rate (%, PSNR; negative: fewer bits than the codec)", "",
        markdown_table(comparison.bd_table("rate")), "",
        "–: the model's PSNR lies outside the codec's curve (below its lowest setting's).", "",
        "## Bjøntegaard delta PSNR (dB at equal rate; positive: better than the codec)", "",
        markdown_table(comparison.bd_table("psnr")), "",
        "## At the bytes of each microcae file", "",
        markdown_table(comparison.matched(), ["at bytes of", "codec", *_MEAN_COLUMNS]), "",
        "## Classical codecs' own curves", "",
        markdown_table([{"codec": codec, **point} for codec in comparison.classical()
                        for point in comparison.curve(codec)],
                       ["codec", "target_bpp", *_MEAN_COLUMNS]), "",
        "## Throughput on this CPU (MB/s of 8-bit pixels)", "",
        markdown_table(comparison.throughput()),
    ]
    return "\n".join(lines)


def write_comparison(comparison: CodecComparison, out_dir: str | Path,
                     title: str = "Codec comparison") -> dict[str, Path]:
    """Write ``codecs.json``, ``codecs.md``, ``codecs.csv`` (every row) and ``rd.png``.

    Returns
    -------
    dict of str to Path
        ``json``, ``markdown``, ``csv`` and ``figure``, each written atomically.
    """
    out_dir = Path(out_dir)
    written = {"json": out_dir / "codecs.json", "markdown": out_dir / "codecs.md",
               "csv": out_dir / "codecs.csv", "figure": out_dir / "rd.png"}
    write_text_atomic(written["json"], json.dumps(comparison.as_dict(), indent=1) + "\n")
    write_text_atomic(written["markdown"], markdown_report(comparison, title))
    write_text_atomic(written["csv"], csv_text([asdict(r) for r in comparison.rows]))
    plot_codec_curves({c: comparison.curve(c) for c in comparison.classical()},
                      comparison.learned_points(), written["figure"], title,
                      {f"{kind.removeprefix('microcae.')} ({len(names)} models)": names
                       for kind, names in comparison.kind_groups().items()})
    return written
