"""Rate–distortion report: exact file-size rates, search at matched bytes, CLI outputs."""

from __future__ import annotations

import io
import json

import numpy as np
from conftest import synthetic_micrograph, write_png
from hypothesis import given
from hypothesis import strategies as st
from PIL import Image

from microcae.cli import main
from microcae.codec import decode_bytes, encode_image
from microcae.data.images import micrograph_from_array
from microcae.evaluation.rate_distortion import highest_within, rate_distortion
from microcae.metrics.reconstruction import reconstruction_scores


@given(steps=st.lists(st.integers(0, 50), min_size=1, max_size=60), budget=st.integers(0, 2000))
def test_binary_search_agrees_with_a_linear_scan(steps, budget):
    sizes = np.cumsum(steps).tolist()
    fitting = [i for i, size in enumerate(sizes) if size <= budget]
    expected = fitting[-1] if fitting else 0
    assert highest_within(lambda i: sizes[i], len(sizes), budget) == expected


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


def test_evaluate_command_writes_table_json_and_plot(tmp_path, tiny_model_file, capsys):
    for i in range(4):
        write_png(tmp_path / "raw" / f"m{i}.png", synthetic_micrograph(64, 128, seed=i))
    assert main(["prepare", str(tmp_path / "raw"), "-o", str(tmp_path / "ds"), "--tile", "64",
                 "--test-fraction", "0.25", "--no-progress"]) == 0
    out = tmp_path / "rd"
    assert main(["evaluate", str(tmp_path / "ds"), "-m", str(tiny_model_file), "-o", str(out),
                 "--max-tiles", "1", "--codec", "webp", "--no-progress"]) == 0
    report = json.loads((out / "rd.json").read_text())
    assert report["tiles"] == 1 and len(report["cae"]) == 6 and len(report["matched"]) == 6
    assert set(report["curves"]) == {"webp"}
    table = (out / "rd.md").read_text()
    assert table.count("**CAE**") == 6 and "| uint8 + zstd | webp" in table
    with Image.open(out / "rd.png") as plot:
        assert plot.size[0] > 500
    assert "| float32 | **CAE** |" in capsys.readouterr().out
