"""Microstructure fidelity of the study CAE and of classical codecs at the same bytes.

Each 8-bit tile is stored as a CAE latent file (uint8 latents + zstd, header included: the
study's ≈ 0.25 bpp) and by each of :data:`FIDELITY_CODECS` at its best setting whose file is no
larger (:meth:`microcae.evaluation.codec_comparison.CodecFiles.best_within`, the codecs and
files of ``microcae evaluate``). Each decoded tile is scored against
the original by :func:`microcae.metrics.fidelity.fidelity_scores` (phase fraction, two-point
correlation, boundary F-score) and :func:`microcae.metrics.reconstruction.reconstruction_scores`.
Intervals are cluster bootstraps over micrographs (:mod:`microcae.metrics.bootstrap`).

The CAE's latents are read back from its files and decoded in float32 batches (``microcae
decode`` runs float64, one file at a time; the two agree to float32 rounding before the 8-bit
rounding).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field

import numpy as np

from microcae.codec import encode_image
from microcae.codec.latent_files import open_latent_file
from microcae.data.images import to_uint8, uint8_tile
from microcae.evaluation._batching import run_batched
from microcae.evaluation.codec_comparison import CLASSICAL_CODECS, CodecFiles
from microcae.metrics import fidelity
from microcae.metrics.bootstrap import Estimate, cluster_bootstrap
from microcae.metrics.reconstruction import reconstruction_scores
from microcae.models.cae import CAE
from microcae.util.table_writer import Column, Table

CAE_STORAGE = ("uint8", True)
"""Latent dtype and zstd of the CAE files compared (its smallest storage)."""
CAE_NAME = "study CAE"
MEASURES = tuple(m.name for m in fidelity.METRICS)
BETTER = {m.name: m.better for m in fidelity.METRICS}
FIDELITY_CODECS = ("jpeg", "webp", "jpeg2000")
"""Classical codecs the CAE is compared with (keys of
:data:`~microcae.evaluation.codec_comparison.CLASSICAL_CODECS`): the study's JPEG 2000 and the
two common web codecs."""


@dataclass(frozen=True)
class CodedTile:
    """One tile stored by one codec and decoded.

    Attributes
    ----------
    image
        Micrograph the tile comes from (the bootstrap's cluster).
    codec
        :data:`CAE_NAME` or a key of :data:`~microcae.evaluation.codec_comparison.CLASSICAL_CODECS`.
    bytes
        File size (headers included).
    over_budget
        Even the codec's lowest setting exceeds the CAE file's bytes.
    scores
        ``mse``, ``psnr_db``, ``ssim`` and the :data:`MEASURES`.
    """

    image: str
    codec: str
    bytes: int
    over_budget: bool
    scores: dict[str, float]


def matched_file(codec: str, tile: np.ndarray, budget: int) -> tuple[bytes, np.ndarray]:
    """Return ``codec``'s file of (H, W) uint8 ``tile`` at its best setting within ``budget``.

    Parameters
    ----------
    codec
        A key of :data:`~microcae.evaluation.codec_comparison.CLASSICAL_CODECS`.
    tile
        (H, W) uint8 pixels.
    budget
        Largest file size wanted, bytes.

    Returns
    -------
    tuple of bytes and numpy.ndarray
        The file (the lowest setting's when even that is larger than ``budget`` bytes) and its
        (H, W) uint8 decoding.
    """
    files = CodecFiles(CLASSICAL_CODECS[codec], np.ascontiguousarray(tile))
    data = files.file(files.best_within(budget))[0]
    return data, files.codec.decode(data)


def code_tiles(model: CAE, tiles: np.ndarray, image: str,
               codecs: Sequence[str] = FIDELITY_CODECS) -> list[CodedTile]:
    """Store (N, S, S) uint8 ``tiles`` of ``image`` with the CAE and each codec; score them.

    Parameters
    ----------
    model
        The study CAE; each tile becomes one latent file of :data:`CAE_STORAGE`.
    tiles
        (N, S, S) uint8 tiles, S a multiple of the model's downsampling.
    image
        Label of the micrograph the tiles come from.
    codecs
        Keys of :data:`~microcae.evaluation.codec_comparison.CLASSICAL_CODECS`.

    Returns
    -------
    list[CodedTile]
        Per tile: the CAE row, then one row per codec at the CAE file's bytes.
    """
    tiles = np.asarray(tiles, dtype=np.uint8)
    dtype, compress = CAE_STORAGE
    files = [encode_image(model, uint8_tile(tile), dtype, compress, tile=tile.shape[0])
             for tile in tiles]
    latents = np.concatenate([open_latent_file(model, data, image)[1] for data in files])
    decoded = to_uint8(run_batched(model.decoder, latents)[:, 0])
    out = []
    for tile, data, rebuilt in zip(tiles, files, decoded, strict=True):
        out.append(CodedTile(image, CAE_NAME, len(data), False, _scores(tile, rebuilt)))
        for name in codecs:
            file, rebuilt_by_codec = matched_file(name, tile, len(data))
            out.append(CodedTile(image, name, len(file), len(file) > len(data),
                                 _scores(tile, rebuilt_by_codec)))
    return out


def _scores(original: np.ndarray, decoded: np.ndarray) -> dict[str, float]:
    a, b = original / 255.0, decoded / 255.0
    return {**reconstruction_scores(a, b).as_dict(), **fidelity.fidelity_scores(a, b).as_dict()}


@dataclass
class FidelityResult:
    """Coded tiles of every codec, summarised with intervals over micrographs.

    Attributes
    ----------
    tiles
        Every :class:`CodedTile`, in order.
    note
        Which model coded which micrographs (for the report).
    """

    tiles: list[CodedTile] = field(default_factory=list)
    note: str = ""

    def codecs(self) -> list[str]:
        """Return the codec names in first-seen order."""
        return list(dict.fromkeys(t.codec for t in self.tiles))

    def estimate(self, codec: str, key: str) -> Estimate:
        """Return the mean of ``key`` (a score or ``bytes``) of ``codec``, interval over images."""
        chosen = [t for t in self.tiles if t.codec == codec]
        values = [float(t.bytes) if key == "bytes" else t.scores[key] for t in chosen]
        return cluster_bootstrap(np.array(values), np.array([t.image for t in chosen]))

    def advantage(self, key: str, codec: str, reference: str = CAE_NAME) -> Estimate:
        """Return by how much ``reference`` beats ``codec`` on ``key`` (per tile; > 0: better).

        For a lower-is-better measure the difference is codec − reference, else reference −
        codec; the interval is over micrographs.
        """
        ours = [t for t in self.tiles if t.codec == reference]
        theirs = [t for t in self.tiles if t.codec == codec]
        sign = 1.0 if BETTER.get(key, "higher") == "higher" else -1.0
        difference = [sign * (a.scores[key] - b.scores[key])
                      for a, b in zip(ours, theirs, strict=True)]
        return cluster_bootstrap(np.array(difference), np.array([t.image for t in ours]))

    def rows(self) -> list[dict[str, object]]:
        """One row per codec: mean bpp, PSNR, SSIM and each measure with its interval."""
        out = []
        for codec in self.codecs():
            chosen = [t for t in self.tiles if t.codec == codec]
            row: dict[str, object] = {"codec": codec, "tiles": len(chosen),
                                      "bytes": float(np.mean([t.bytes for t in chosen])),
                                      "over_budget": sum(t.over_budget for t in chosen)}
            for key in ("psnr_db", "ssim"):
                row[key] = self.estimate(codec, key).value
            for key in MEASURES:
                row[key] = self.estimate(codec, key).text(".3f")
            out.append(row)
        return out

    def advantage_table(self, reference: str = CAE_NAME) -> Table:
        """Per measure and codec: by how much ``reference`` beats it (interval over micrographs)."""
        rows = [{"measure": key, **{f"vs {codec}": self.advantage(key, codec, reference).text(".3f")
                                    for codec in self.codecs() if codec != reference}}
                for key in MEASURES]
        return Table.of(rows)

    def to_json(self) -> dict[str, object]:
        """Estimates per codec and measure, advantages of the CAE, and every coded tile."""
        keys = ("bytes", "psnr_db", "ssim", *MEASURES)
        return {
            "note": self.note,
            "estimates": {codec: {k: self.estimate(codec, k).as_dict() for k in keys}
                          for codec in self.codecs()},
            "advantage_of_cae": {codec: {k: self.advantage(k, codec).as_dict() for k in MEASURES}
                                 for codec in self.codecs() if codec != CAE_NAME},
            "tiles": [asdict(t) for t in self.tiles],
        }

    def to_table(self) -> Table:
        """Return the :meth:`rows` with headers (arrows: the better side)."""
        arrows = {k: "↓" if v == "lower" else "↑" for k, v in BETTER.items()}
        return Table.of(self.rows(), [
            Column("codec"), Column("tiles"), Column("bytes", "mean bytes", ".0f"),
            Column("over_budget", "tiles over"), Column("psnr_db", "PSNR (dB)", ".2f"),
            Column("ssim", "SSIM", ".3f"),
            *(Column(k, f"{k} {arrows[k]} [95 % CI]") for k in MEASURES)])
