"""The reproduction report: verdict rules, the quick run end to end, and bad input."""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import synthetic_micrograph, write_png

from microcae.cli import main
from microcae.data.dataset import prepare_dataset
from microcae.evaluation.attack import AttackResult
from microcae.evaluation.reproduction import claims
from microcae.evaluation.reproduction.exactness import autograd_columns
from microcae.evaluation.reproduction.results import MethodStats, StorageRow
from microcae.metrics.reconstruction import ReconstructionScores
from microcae.models.cae import CAE, load_model

SAMPLES = Path(__file__).resolve().parents[1] / "src" / "microcae" / "assets" / "samples"


@pytest.mark.parametrize(("train", "test", "verdict"), [
    (0.001, 0.002, "holds"), (0.003, 0.004, "partly"), (0.01, 0.02, "does not hold")])
def test_mse_verdicts(train, test, verdict):
    assert claims.mse_claim(train, test).verdict == verdict


def test_bytes_verdict_counts_the_storages_that_reach_32():
    rows = [StorageRow("float32", 8280.0, 7.9, 1.01),
            StorageRow("uint8 + zstd", 1234.0, 53.1, 0.15)]
    claim = claims.bytes_claim(rows)
    assert claim.verdict == "partly" and "uint8 + zstd 53.1" in claim.measured
    assert claims.bytes_claim(rows[1:]).verdict == "holds"
    assert claims.bytes_claim(rows[:1]).verdict == "does not hold"


def attack_result(psnr: dict[str, float]) -> AttackResult:
    """An attack result with the given mean PSNR per scenario (other scores unused)."""
    return AttackResult("f", "m", 10, 20, 6, (4,), 2, 2, 64, 0, 1.0,
                        {k: ReconstructionScores(10 ** (-v / 10), v, 0.5) for k, v in psnr.items()})


def test_key_verdict_separates_blind_and_leaked_adversaries():
    def results(blind: float, leaked: float) -> AttackResult:
        return attack_result({"owner": 20.0, "mean-image": 10.0, "latent-view": blind,
                              "leak-4-adapted": leaked})

    assert claims.key_claim(results(15.0, 16.0)).verdict == "holds"
    partly = claims.key_claim(results(15.0, 19.5))
    assert partly.verdict == "partly" and "leak-4-adapted" in partly.measured
    assert claims.key_claim(results(18.0, 19.5)).verdict == "does not hold"


def stats(**values: float) -> MethodStats:
    """Method stats with the given values, NaN elsewhere."""
    fields = {f.name: math.nan for f in dataclasses.fields(MethodStats)}
    return MethodStats(**{**fields, "tiles": 4, **values})


def test_consistency_verdict_skips_unmeasured_measures():
    def row(noise: float, share: float, sanity: float) -> MethodStats:
        return stats(noise_rho=noise, dark_share=share, sanity_pass=sanity)

    methods = {"complex-step": row(0.9, 1.0, math.nan), "gbp": row(0.95, 0.5, math.nan),
               "lrp-w2": row(0.8, 0.7, math.nan)}
    claim = claims.consistency_claim(methods)
    assert claim.verdict == "partly" and "randomisation" not in claim.measured
    methods["complex-step"] = row(0.99, 1.0, math.nan)
    assert claims.consistency_claim(methods).verdict == "holds"


def test_microstructure_verdict_needs_mean_and_agreement():
    values = {"dark_auroc": 0.8, "dark_share": 1.0, "boundary_auroc": 0.7, "boundary_share": 0.9}
    clear = stats(**values)
    assert claims.microstructure_claim(clear, "steels").verdict == "holds"
    split = stats(**{**values, "boundary_share": 0.5})
    assert claims.microstructure_claim(split, "steels").verdict == "partly"


def test_autograd_columns_match_a_finite_difference():
    torch.manual_seed(0)
    encoder = CAE().encoder.double().eval()
    x = torch.rand(1, 1, 32, 32, dtype=torch.float64)
    got = autograd_columns(encoder, x, 3)
    step = 1e-6
    for pixel in range(3):
        bump = torch.zeros(32 * 32, dtype=torch.float64)
        bump[pixel] = step
        with torch.no_grad():
            plus = encoder(x + bump.view_as(x))
            minus = encoder(x - bump.view_as(x))
        expected = ((plus - minus) / (2 * step)).norm()
        torch.testing.assert_close(got[pixel], expected, rtol=1e-6, atol=0)


def test_quick_report_end_to_end(tmp_path, capsys):
    out = tmp_path / "docs"
    assert main(["report", str(SAMPLES), "--out", str(out), "--quick", "--no-progress"]) == 0
    printed = capsys.readouterr().out
    numbers = json.loads((out / "reproduction" / "report.json").read_text())
    assert [c["verdict"] for c in numbers["claims"]][:2] == ["holds", "holds"]
    assert len(numbers["claims"]) == 8 and "CAE size" in printed
    model = load_model()
    assert sum(p.numel() for p in model.parameters()) == claims.STUDY_PARAMETERS
    prepared = prepare_dataset([SAMPLES], tmp_path / "set", progress=False)
    test = np.asarray(prepared.tiles[prepared.indices("test")], dtype=np.float32)
    with torch.no_grad():
        rebuilt = model(torch.from_numpy(test)[:, None])[:, 0].numpy()
    expected_mse = float(np.mean((rebuilt - test) ** 2))
    assert numbers["reconstruction"]["test_mse"] == pytest.approx(expected_mse, rel=1e-5)
    assert numbers["data"]["test_tiles"] == len(test)
    assert numbers["exactness"]["max_rel_diff_literal_vs_autograd"] < 1e-12
    uint8 = next(r for r in numbers["storage"] if r["label"] == "uint8")
    assert uint8["ratio"] == pytest.approx(256 * 256 / uint8["bytes"])
    assert 2048 < uint8["bytes"] < 2048 * 1.1  # one byte per latent value plus the header
    text = (out / "REPRODUCTION.md").read_text()
    assert "Quick mode" in text
    assert f"    microcae report {SAMPLES} --out {out} --quick\n" in text
    assert f"{numbers['reconstruction']['test_mse']:.4f}" in text
    for name in ("fig10_reconstructions.png", "fig11_saliency.png"):
        assert (out / "reproduction" / name).read_bytes()[:4] == b"\x89PNG"
        assert f"reproduction/{name}" in text


@pytest.mark.parametrize(("extra", "needle"), [
    ([], "no images"),
    (["--study-like", "steel"], "not among"),
])
def test_bad_report_input_is_one_line_and_writes_nothing(tmp_path, capsys, extra, needle):
    folder = tmp_path / "raw"
    folder.mkdir()
    if extra:
        for i in range(3):
            write_png(folder / "alloy" / f"a{i}.png", synthetic_micrograph(256, 256, seed=i))
    rc = main(["report", str(folder), "--out", str(tmp_path / "docs"), "--quick",
               "--no-progress", *extra])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and needle in err[0]
    assert not (tmp_path / "docs").exists()
