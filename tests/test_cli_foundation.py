import json

import numpy as np
import pytest
from conftest import synthetic_micrograph, write_png
from PIL import Image

from microcae.cli import main
from microcae.models.inference import reconstruct_micrograph
from microcae.models.registry import load_model


def _one_line_error(capsys, rc):
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2
    assert len(err) == 1 and err[0].startswith("microcae: error: ")
    return err[0]


def test_prepare_train_reconstruct_end_to_end(tmp_path, capsys):
    for i in range(3):
        write_png(tmp_path / "raw" / f"m{i}.png", synthetic_micrograph(64, 80, seed=i))
    assert main(["prepare", str(tmp_path / "raw"), "-o", str(tmp_path / "ds"), "--tile", "32",
                 "--no-progress"]) == 0
    assert "tiles" in capsys.readouterr().out
    model_path = tmp_path / "m.safetensors"
    assert main(["train", str(tmp_path / "ds"), "-o", str(model_path), "--epochs", "2",
                 "--batch-size", "4", "--channels", "4,4", "--no-progress"]) == 0
    assert "epoch 2:" in capsys.readouterr().out
    odd = write_png(tmp_path / "odd.png", synthetic_micrograph(45, 71, seed=9))
    out = tmp_path / "rec"
    assert main(["reconstruct", str(odd), "-m", str(model_path), "-o", str(out),
                 "--no-progress"]) == 0
    written = np.asarray(Image.open(out / "odd.reconstruction.png"))
    assert written.shape == (45, 71)
    expected = reconstruct_micrograph(load_model(model_path),
                                      synthetic_micrograph(45, 71, seed=9) / np.float32(255))
    np.testing.assert_array_equal(written, np.clip(np.rint(expected * 255), 0, 255))
    row = json.loads((out / "metrics.json").read_text())[0]
    original = synthetic_micrograph(45, 71, seed=9) / 255.0
    assert row["mse"] == pytest.approx(np.mean((original - np.clip(expected, 0, 1)) ** 2), rel=1e-5)
    assert (out / "reconstructions.png").exists() and (out / "metrics.md").exists()


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["reconstruct", "{tmp}/missing.png", "-o", "{tmp}/o"], "no such file"),
        (["reconstruct", "{tmp}/empty", "-o", "{tmp}/o"], "no images"),
        (["reconstruct", "{tmp}/bad.png", "-o", "{tmp}/o"], "not a readable image"),
        (["reconstruct", "{tmp}/flat.png", "-o", "{tmp}/o"], "constant"),
        (["prepare", "{tmp}/small", "-o", "{tmp}/o"], "nothing to tile"),
        (["train", "{tmp}/empty", "-o", "{tmp}/o/m.safetensors"], "not a prepared data set"),
        (["reconstruct", "{tmp}/good.png", "-m", "{tmp}/bad.png", "-o", "{tmp}/o"],
         "not a valid safetensors"),
        (["train", "{tmp}/empty", "-o", "{tmp}/o/m.safetensors", "--channels", "4,x"],
         "channels"),
        (["train", "{tmp}/empty", "-o", "{tmp}/o/m.safetensors", "--device", "tpu"], "device"),
    ],
)
def test_bad_input_gives_one_line_exit_2_and_no_output(tmp_path, capsys, tiny_model_file,
                                                        args, needle):
    (tmp_path / "empty").mkdir()
    (tmp_path / "bad.png").write_bytes(b"\x89PNG\r\n\x1a\nbroken")
    write_png(tmp_path / "flat.png", np.full((40, 40), 9, dtype=np.uint8))
    write_png(tmp_path / "good.png", synthetic_micrograph(40, 40))
    write_png(tmp_path / "small" / "s.png", synthetic_micrograph(20, 20))
    argv = [a.format(tmp=tmp_path) for a in args]
    if argv[0] == "reconstruct" and "-m" not in argv:
        argv += ["-m", str(tiny_model_file)]
    line = _one_line_error(capsys, main(argv + ["--no-progress"]))
    assert needle in line
    assert not (tmp_path / "o").exists() or not any((tmp_path / "o").iterdir())


def test_console_script_exit_code(tmp_path):
    import subprocess
    import sys

    run = subprocess.run([sys.executable, "-m", "microcae", "reconstruct", str(tmp_path / "x.png"),
                          "-o", str(tmp_path / "o")], capture_output=True, text=True)
    assert run.returncode == 2
    assert run.stderr.strip().splitlines() == [f"microcae: error: {tmp_path / 'x.png'}: "
                                               "no such file or folder"]


def test_demo_writes_figure_and_metrics(tmp_path, capsys, tiny_model_file):
    assert main(["demo", "-o", str(tmp_path / "d"), "-m", str(tiny_model_file),
                 "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "reconstructions figure" in out
    rows = json.loads((tmp_path / "d" / "reconstruction_metrics.json").read_text())
    assert {r["image"] for r in rows} >= {"aisi1045_core.png", "zr_hydride_10.png"}
    methods = {r["method"] for r in json.loads(
        (tmp_path / "d" / "comparison" / "comparison.json").read_text())["summary"]}
    assert {"complex-step", "gbp", "lrp-w2", "lrp-zbeta"} <= methods
    assert (tmp_path / "d" / "comparison" / "aisi1045_core.comparison.png").exists()
    relevance = np.load(tmp_path / "d" / "saliency" / "zr_hydride_10.relevance.npy")
    assert relevance.shape == (371, 373) and relevance.dtype == np.float32
