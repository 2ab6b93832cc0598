"""The attack benchmark runs end to end on a tiny set and writes its report."""

from __future__ import annotations

import json
import runpy
import sys
from pathlib import Path

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
