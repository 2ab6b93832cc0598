"""The attack benchmark runs end to end on a tiny set and writes its report."""

from __future__ import annotations

import json
import runpy
import sys
from pathlib import Path

import pytest
from conftest import synthetic_micrograph, write_png

from microcae.cli import main

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "attack_decoder.py"


def test_attack_script_reports_every_scenario(tmp_path, tiny_model_file, monkeypatch, capsys):
    for i in range(4):
        write_png(tmp_path / "raw" / f"m{i}.png", synthetic_micrograph(64, 128, seed=i))
    assert main(["prepare", str(tmp_path / "raw"), "-o", str(tmp_path / "ds"), "--tile", "64",
                 "--test-fraction", "0.5", "--no-progress"]) == 0
    out = tmp_path / "attack"
    monkeypatch.setattr(sys, "argv", [str(SCRIPT), str(tmp_path / "ds"), "--model",
                                      str(tiny_model_file), "--out", str(out), "--steps", "2",
                                      "--batch", "2", "--leaks", "1", "--eval-tiles", "2"])
    runpy.run_path(str(SCRIPT), run_name="__main__")
    report = json.loads((out / "attack.json").read_text())
    assert list(report["results"]) == ["owner", "mean-image", "latent-view", "stats-match",
                                       "leak-1-scratch", "leak-1-adapted", "encoder-known"]
    assert report["eval_tiles"] == 2
    assert (out / "attack.md").read_text().count("\n") == 2 + 7


def test_owner_budget_and_curve_checkpoints():
    from microcae.evaluation.attack import curve_steps, owner_budget_steps
    from microcae.util.errors import MicrocaeError

    provenance = {"epochs_completed": 50, "data": {"train_tiles": 63}}
    # 50 epochs × 63 tiles × 256² px = 3150 steps × 16 crops × 64² px
    assert owner_budget_steps(provenance, tile=256, batch=16) == 3150
    assert owner_budget_steps(provenance, tile=256, batch=32) == 1575
    assert owner_budget_steps({**provenance, "epochs_completed": 1}, 100, 16) == 10  # 9.6
    assert curve_steps(3150) == [25, 50, 100, 200, 400, 800, 1600, 3150]
    assert curve_steps(25) == [25] and curve_steps(2) == [2]
    with pytest.raises(MicrocaeError, match="training budget"):
        owner_budget_steps({}, 256, 16)


def test_attack_curves_end_at_the_reported_scores(tmp_path, tiny_model):
    from microcae.data.dataset import prepare_dataset
    from microcae.evaluation.attack import AttackResult, decoder_attack

    for i in range(4):
        write_png(tmp_path / "raw" / f"m{i}.png", synthetic_micrograph(64, 128, seed=i))
    data = prepare_dataset([tmp_path / "raw"], tmp_path / "ds", tile=64, test_fraction=0.5,
                           progress=False)
    result = decoder_attack(tiny_model, data, eval_tiles=2, leaks=(0, 1), steps=30, batch=2)
    assert result.leaks == (1,)  # 0 leaks: the scenarios without pairs
    assert set(result.curves) == {"stats-match", "leak-1-scratch", "leak-1-adapted",
                                  "encoder-known"}
    for name, curve in result.curves.items():
        assert [step for step, _ in curve] == [25, 30]
        assert curve[-1][1] == result.scenarios[name]
    again = AttackResult.from_json(json.loads(json.dumps(result.to_json())))
    assert again == result
    table = result.curve_table().markdown()
    assert table.splitlines()[0] == "| scenario | 25 steps | 30 steps |"
    assert f"| {result.curves['encoder-known'][0][1].psnr_db:.2f} |" in table


def test_stored_attack_runs_are_checked_against_owner_and_data(tmp_path, tiny_model):
    from microcae.data.dataset import prepare_dataset
    from microcae.evaluation.attack import AttackResult
    from microcae.evaluation.reproduction.stages import load_stored_attack
    from microcae.metrics.reconstruction import ReconstructionScores
    from microcae.util.errors import MicrocaeError
    from microcae.util.table_writer import json_text

    write_png(tmp_path / "raw" / "m.png", synthetic_micrograph(64, 64))
    data = prepare_dataset([tmp_path / "raw"], tmp_path / "ds", tile=64, progress=False)
    run = AttackResult(tiny_model.fingerprint(), data.manifest_sha256, 4, 8, 2, (1,), 30,
                       2, 64, 0, 1.0, {"owner": ReconstructionScores(0.01, 20.0, 0.5)})
    path = tmp_path / "attack.json"
    path.write_text(json_text({**run.to_json(), "budget": "owner", "threads": 1}))
    stored = load_stored_attack(path, tiny_model, data)
    assert stored.result == run and (stored.budget, stored.threads) == ("owner", 1)
    path.write_text(json_text({**run.to_json(), "data_manifest_sha256": "0" * 64}))
    with pytest.raises(MicrocaeError, match="other micrographs"):
        load_stored_attack(path, tiny_model, data)
    path.write_text("{")
    with pytest.raises(MicrocaeError, match="not a readable stored attack run"):
        load_stored_attack(path, tiny_model, data)


def test_attack_resumes_from_its_finished_stages(tmp_path, tiny_model):
    from microcae.data.dataset import prepare_dataset
    from microcae.evaluation.attack import STATE_FILE, decoder_attack
    from microcae.util.errors import MicrocaeError

    for i in range(4):
        write_png(tmp_path / "raw" / f"m{i}.png", synthetic_micrograph(64, 128, seed=i))
    data = prepare_dataset([tmp_path / "raw"], tmp_path / "ds", tile=64, test_fraction=0.5,
                           progress=False)
    state = tmp_path / "state"
    first = decoder_attack(tiny_model, data, eval_tiles=2, leaks=(1,), steps=30, batch=2,
                           state=state)
    saved = json.loads((state / STATE_FILE).read_text())
    assert set(saved["curves"]) == set(first.curves)
    # A killed run: the last stage is lost; the restart trains only that one, to the same result.
    del saved["curves"]["encoder-known"], saved["seconds"]["encoder-known"]
    (state / STATE_FILE).write_text(json.dumps(saved))
    lines = []
    again = decoder_attack(tiny_model, data, eval_tiles=2, leaks=(1,), steps=30, batch=2,
                           state=state, log=lines.append)
    assert again.scenarios == first.scenarios and again.curves == first.curves
    assert len(lines) == 4 and lines[-1].startswith("encoder-known")
    with pytest.raises(MicrocaeError, match="another run"):
        decoder_attack(tiny_model, data, eval_tiles=2, leaks=(1,), steps=31, batch=2,
                       state=state)
