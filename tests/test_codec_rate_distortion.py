"""Rate–distortion report: exact file-size rates, search at matched bytes, CLI outputs."""

from __future__ import annotations

import io

import numpy as np
from conftest import synthetic_micrograph
from PIL import Image

from microcae.codec import decode_bytes, encode_image
from microcae.data.images import micrograph_from_array
from microcae.evaluation.rate_distortion import rate_distortion
from microcae.metrics.reconstruction import reconstruction_scores


def test_report_rates_and_scores_match_direct_computation(tiny_model):
    tiles = np.stack([synthetic_micrograph(64, 64, seed=s) for s in (4, 5)])
    report = rate_distortion(tiny_model, tiles, codecs=("jpeg",), dtypes=("uint8",),
                             progress=False)
    plain = next(r for r in report["cae"] if not r["zstd"])
    # header 84 + CRC 4 + offset/scale 2*4*4 + 4 channels * 16 * 16 codes = 1144 bytes
    assert plain["bytes"] == 1144 and plain["bpp"] == 8 * 1144 / 4096
    scores = []
    for tile in tiles:
        data = encode_image(tiny_model, micrograph_from_array(tile, scaling="full"), "uint8",
                            compress=False, tile=64)
        decoded = decode_bytes(tiny_model, data, "t").stored
        scores.append(reconstruction_scores(tile / 255.0, decoded / 255.0).psnr_db)
    assert plain["psnr_db"] == np.mean(scores)
    for row in report["matched"]:
        cae = next(r for r in report["cae"] if r["zstd"] == row["zstd"])
        assert row["codec"] == "jpeg" and row["over_budget_tiles"] == 0
        assert row["bytes"] <= cae["bytes"]
    png = np.mean([len(_png(t)) for t in tiles]) * 8 / 4096
    assert report["png_bpp"] == png


def _png(tile):
    buffer = io.BytesIO()
    Image.fromarray(tile).save(buffer, format="PNG", optimize=True)
    return buffer.getvalue()
