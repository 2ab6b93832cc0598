"""``microcae compare`` end to end, in process, on synthetic and shared micrographs."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import torch
from conftest import SHARED_MICROGRAPHS, synthetic_micrograph, write_png

from microcae.cli import main
from microcae.data.images import read_micrograph
from microcae.evaluation.comparison import compare_images
from microcae.metrics.faithfulness import perturbation_curves
from microcae.metrics.microstructure import sobel_map
from microcae.models.registry import load_model
from microcae.util.errors import MicrocaeError

METHODS = ("gbp", "lrp-w2", "sobel-edges", "random")


@pytest.fixture
def images(tmp_path):
    first = write_png(tmp_path / "in" / "a.png", synthetic_micrograph(64, 96, seed=1))
    second = write_png(tmp_path / "in" / "b.png", synthetic_micrograph(64, 64, seed=2))
    labels = (synthetic_micrograph(48, 64, seed=2) < 80).astype(np.uint8)  # top 48 rows only
    write_png(tmp_path / "in" / "b_labels.png", labels)
    return first, second


def run(capsys, *argv: str) -> tuple[int, str, str]:
    rc = main(list(argv))
    captured = capsys.readouterr()
    return rc, captured.out, captured.err


def test_compare_writes_consistent_tables_and_figures(tmp_path, capsys, images,
                                                      tiny_model_file) -> None:
    out = tmp_path / "out"
    method_args = [arg for m in METHODS for arg in ("--method", m)]
    rc, stdout, stderr = run(capsys, "compare", str(tmp_path / "in"), "--model",
                             str(tiny_model_file), "--out", str(out), "--tile", "32",
                             "--tiles-per-image", "2", "--no-progress", *method_args)
    assert rc == 0, stderr
    report = json.loads((out / "comparison.json").read_text())
    assert {m["name"]: m["better"] for m in report["metrics"]}["insertion_latent_auc"] == "lower"
    assert all(m["reference"] for m in report["metrics"])
    assert [s["method"] for s in report["summary"]] == list(METHODS)
    # a.png: 2 of its 2×3 tiles, (0, 32) and (32, 32); b.png: its labels cover rows 0..47,
    # so only the top row of tiles qualifies.
    rows = report["rows"]
    assert len(rows) == 4 * len(METHODS)
    assert {(r["tile_y"], r["tile_x"]) for r in rows if r["image"].endswith("a.png")} == {
        (0, 32), (32, 32)}
    assert {(r["tile_y"], r["tile_x"]) for r in rows if r["image"].endswith("b.png")} == {
        (0, 0), (0, 32)}
    with open(out / "comparison_tiles.csv", newline="") as handle:
        assert len(list(csv.DictReader(handle))) == len(rows)
    assert "insertion_latent_auc ↓" in (out / "comparison.md").read_text()
    assert "| lrp-w2 |" in stdout
    for name in ("curves.png", "a.comparison.png", "b.comparison.png"):
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    # The reported deletion area of the Sobel control, recomputed independently.
    model = load_model(tiny_model_file)
    tile = read_micrograph(tmp_path / "in" / "a.png").pixels[:32, 32:64]
    x = torch.from_numpy(tile)[None, None]
    sobel = torch.from_numpy(np.abs(sobel_map(tile)))[None].float()
    area = perturbation_curves(model.encoder, x, sobel, "deletion", model.decoder).auc()
    row = next(r for r in rows if r["method"] == "sobel-edges" and r["image"].endswith("a.png")
               and (r["tile_y"], r["tile_x"]) == (0, 32))
    assert row["deletion_latent_auc"] == pytest.approx(area["latent"][0], rel=1e-5)
    assert row["deletion_mse_auc"] == pytest.approx(area["mse"][0], rel=1e-5)
    # Model-free controls never change under randomisation; LRP conserves its seed.
    assert row["sanity_rho_all"] == 1.0 and row["sanity_pass"] == 0.0
    lrp = [r["lrp_conservation"] for r in rows if r["method"] == "lrp-w2"]
    np.testing.assert_allclose(lrp, 1.0, rtol=1e-3)
    label_rows = [r for r in rows if r["image"].endswith("b.png")]
    assert all(r["label_auroc"] is not None for r in label_rows)


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--method", "nonsense"], "unknown method"),
        (["--tile", "128"], "no 128×128 tile fits"),
        (["--tile", "30"], "multiple of 4"),
    ],
)
def test_bad_input_is_one_line_and_writes_nothing(tmp_path, capsys, images, tiny_model_file,
                                                  argv, message) -> None:
    out = tmp_path / "out"
    rc, _, stderr = run(capsys, "compare", str(images[0]), "--model", str(tiny_model_file),
                        "--out", str(out), "--no-progress", *argv)
    assert rc == 2
    assert stderr.count("\n") == 1 and message in stderr
    assert not out.exists()


def test_missing_image_is_reported(tmp_path, capsys, tiny_model_file) -> None:
    rc, _, stderr = run(capsys, "compare", str(tmp_path / "none.png"), "--model",
                        str(tiny_model_file), "--out", str(tmp_path / "out"))
    assert rc == 2 and "none.png" in stderr


@pytest.mark.skipif(not SHARED_MICROGRAPHS.is_dir(), reason="shared micrographs not present")
def test_grain_boundary_labels_of_a_real_micrograph(tiny_model) -> None:
    image = SHARED_MICROGRAPHS / "nist_lowcarbon_steel_optical" / "grain_structures_steel.tif"
    comparison = compare_images(tiny_model, [image], methods=["sobel-edges", "random"],
                                tile=64, tiles_per_image=2, sanity_check=False)
    by_method = {s.method: s.means for s in comparison.summary()}
    # Grain boundaries are edges: the edge detector finds the labelled boundaries, noise not.
    assert by_method["sobel-edges"]["label_auroc"] > 0.75
    assert abs(by_method["random"]["label_auroc"] - 0.5) < 0.05
    assert np.isnan(by_method["random"]["label_boundary_auroc"])  # boundary masks: no phases


def test_complex_step_row_is_the_same_whichever_exact_engine_computes_it(images,
                                                                         tiny_model) -> None:
    runs = {engine: compare_images(tiny_model, [images[0]], methods=["complex-step"], tile=16,
                                   sanity_check=False, exact_engine=engine)
            for engine in ("vjp", "jvp")}
    maps = {engine: run.panels[0][2]["complex-step"] for engine, run in runs.items()}
    np.testing.assert_allclose(maps["jvp"], maps["vjp"], rtol=1e-4, atol=1e-7)
    assert runs["vjp"].settings["complex_step_engine"] == "vjp"
    for key in ("deletion_latent_auc", "insertion_latent_auc", "dark_auroc"):
        assert runs["jvp"].tiles[0].scores[key] == pytest.approx(runs["vjp"].tiles[0].scores[key],
                                                                 rel=1e-4)
    with pytest.raises(MicrocaeError, match="exact engine"):
        compare_images(tiny_model, [images[0]], methods=["gbp"], exact_engine="gbp")
