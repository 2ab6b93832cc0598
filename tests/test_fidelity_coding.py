"""The reproduction's fidelity stage: CAE tiles and classical files matched to their bytes."""

from __future__ import annotations

import imagecodecs
import numpy as np
import pytest
from conftest import synthetic_micrograph

from microcae.codec import decode_bytes, encode_image
from microcae.data.images import uint8_tile
from microcae.evaluation.fidelity import CAE_NAME, FIDELITY_CODECS, FidelityResult, code_tiles
from microcae.metrics.fidelity import fidelity_scores
from microcae.metrics.reconstruction import reconstruction_scores


def _scores(original: np.ndarray, decoded: np.ndarray) -> dict[str, float]:
    a, b = original / 255.0, decoded / 255.0
    return {**reconstruction_scores(a, b).as_dict(), **fidelity_scores(a, b).as_dict()}


def test_each_codec_tile_is_the_largest_file_within_the_cae_files_bytes(tiny_model):
    tiles = np.stack([synthetic_micrograph(64, 64, seed=seed) for seed in (2, 3)])
    coded = code_tiles(tiny_model, tiles, "m.png", codecs=("jpeg", "jpeg2000"))
    assert [t.codec for t in coded] == [CAE_NAME, "jpeg", "jpeg2000"] * 2
    assert {t.image for t in coded} == {"m.png"}
    for tile, (cae, jpeg, j2k) in zip(tiles, (coded[:3], coded[3:]), strict=True):
        data = encode_image(tiny_model, uint8_tile(tile), "uint8", True, tile=64)
        assert cae.bytes == len(data) and not cae.over_budget
        direct = _scores(tile, decode_bytes(tiny_model, data, "t").stored)
        # the stage decodes in float32 batches, microcae decode in float64: 8-bit results agree
        assert cae.scores["psnr_db"] == pytest.approx(direct["psnr_db"], rel=1e-4)
        # a linear scan over every JPEG quality (sizes grow with quality on these tiles)
        files = {q: bytes(imagecodecs.jpeg8_encode(tile, level=q, optimize=True))
                 for q in range(1, 101)}
        sizes = [len(f) for f in files.values()]
        assert sizes == sorted(sizes)
        best = max((q for q, f in files.items() if len(f) <= cae.bytes), default=1)
        assert jpeg.bytes == len(files[best]) <= cae.bytes and not jpeg.over_budget
        assert jpeg.scores == _scores(tile, imagecodecs.jpeg8_decode(files[best]))
        assert j2k.over_budget == (j2k.bytes > cae.bytes)
        assert j2k.bytes <= cae.bytes or j2k.over_budget


def test_the_stage_compares_jpeg_webp_and_jpeg2000_and_summarises_them(tiny_model):
    tiles = np.stack([synthetic_micrograph(64, 64, seed=seed) for seed in (6, 7)])
    result = FidelityResult(code_tiles(tiny_model, tiles[:1], "a")
                            + code_tiles(tiny_model, tiles[1:], "b"))
    assert FIDELITY_CODECS == ("jpeg", "webp", "jpeg2000")
    assert result.codecs() == [CAE_NAME, *FIDELITY_CODECS]
    rows = {row["codec"]: row for row in result.rows()}
    for codec in FIDELITY_CODECS:
        chosen = [t for t in result.tiles if t.codec == codec]
        assert rows[codec]["tiles"] == 2
        assert rows[codec]["bytes"] == np.mean([t.bytes for t in chosen])
        assert rows[codec]["over_budget"] == sum(t.over_budget for t in chosen)
