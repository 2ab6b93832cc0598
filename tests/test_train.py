import json
import os
from functools import partial

import numpy as np
import pytest
import torch
from conftest import synthetic_micrograph, write_png
from safetensors.torch import load_file

from microcae.cli import main
from microcae.data.dataset import prepare_dataset
from microcae.models.cae import CAE, CAEConfig
from microcae.models.registry import read_model_file
from microcae.training.batches import augment_batch
from microcae.training.loop import train
from microcae.training.settings import TrainSettings
from microcae.util.errors import MicrocaeError

SETTINGS = TrainSettings(epochs=3, batch_size=4, seed=7)
TINY = partial(CAE, CAEConfig(channels=(4, 4)))


def fit(data, out, settings=SETTINGS, **options):
    """The tiny CAE trained with the one loop, without a progress bar."""
    return train(data, out, settings, build_model=TINY, progress=False, **options)


@pytest.fixture
def dataset(tmp_path):
    for i in range(4):
        write_png(tmp_path / "raw" / f"m{i}.png", synthetic_micrograph(64, 96, seed=i))
    return prepare_dataset([tmp_path / "raw"], tmp_path / "ds", tile=32, progress=False)


def _weights(model):
    return {k: v.clone() for k, v in model.state_dict().items()}


def _one_line_error(capsys, rc):
    err = capsys.readouterr().err
    assert rc == 2 and err.startswith("microcae: error: ") and err.count("\n") == 1, err
    return err


def test_training_reduces_loss_and_writes_logs_and_provenance(dataset, tmp_path):
    settings = TrainSettings(epochs=6, batch_size=4, lr=3e-3, seed=1)
    result = fit(dataset, tmp_path / "m.safetensors", settings)
    history = result.history
    assert [row["epoch"] for row in history] == list(range(1, 7))
    assert history[-1]["train_mse"] < 0.5 * history[0]["train_mse"]
    csv_lines = result.files["log_csv"].read_text().splitlines()
    assert len(csv_lines) == 7 and csv_lines[0].startswith("epoch,train_mse,test_mse")
    assert json.loads(result.files["log_json"].read_text()) == history
    assert "loss_png" not in result.files  # the loop draws nothing; the command line does
    stored = read_model_file(result.files["model"])
    assert stored.provenance["data"]["manifest_sha256"] == dataset.manifest_sha256
    assert stored.provenance["settings"]["seed"] == 1
    assert stored.provenance["settings"]["objective"] == "mse"
    assert stored.provenance["model"] == {"kind": "microcae.cae", "config": {
        "channels": [4, 4], "in_channels": 1, "kernel_size": 3}}
    assert stored.provenance["epochs_completed"] == 6
    for split in ("train", "test"):
        x = torch.from_numpy(dataset.tiles[dataset.indices(split)])[:, None]
        with torch.no_grad():
            expected = float(((result.model(x)["x_hat"] - x) ** 2).double().mean())
        assert stored.provenance["final_eval"][f"{split}_mse"] == pytest.approx(expected,
                                                                                rel=1e-5)
    for key, value in result.model.state_dict().items():
        assert torch.equal(stored.model.state_dict()[key], value), key


def test_same_seed_same_weights(dataset, tmp_path):
    a = fit(dataset, tmp_path / "a.safetensors")
    b = fit(dataset, tmp_path / "b.safetensors")
    for key, value in _weights(a.model).items():
        assert torch.equal(value, b.model.state_dict()[key]), key


def test_resume_after_interruption_gives_the_uninterrupted_weights(dataset, tmp_path):
    reference = fit(dataset, tmp_path / "ref.safetensors")

    def stop_after_first_epoch(row):
        if row["epoch"] == 1:
            raise KeyboardInterrupt

    out = tmp_path / "run.safetensors"
    with pytest.raises(KeyboardInterrupt):
        fit(dataset, out, on_epoch=stop_after_first_epoch)
    assert not out.exists()
    with pytest.raises(MicrocaeError, match="--resume"):
        fit(dataset, out)
    resumed = fit(dataset, out, resume=True)
    assert [r["epoch"] for r in resumed.history] == [1, 2, 3]
    for key, value in _weights(reference.model).items():
        assert torch.equal(value, resumed.model.state_dict()[key]), key
    def losses(history):
        return [(r["train_mse"], r["test_mse"]) for r in history]

    assert losses(resumed.history) == losses(reference.history)


def test_a_note_reaches_the_provenance_and_refinishing_keeps_the_weights(dataset, tmp_path):
    first = fit(dataset, tmp_path / "m.safetensors")
    assert "note" not in read_model_file(tmp_path / "m.safetensors").provenance
    with pytest.raises(MicrocaeError, match="already exists.*--force"):
        fit(dataset, tmp_path / "m.safetensors", resume=True)
    again = fit(dataset, tmp_path / "m.safetensors", resume=True, overwrite=True,
                note="epochs 1-3 ran elsewhere")
    stored = read_model_file(tmp_path / "m.safetensors")
    assert stored.provenance["note"] == "epochs 1-3 ran elsewhere"
    assert stored.provenance["epochs_completed"] == 3
    for key, value in first.model.state_dict().items():
        assert torch.equal(again.model.state_dict()[key], value), key


def test_resume_can_extend_a_finished_run_when_forced(dataset, tmp_path):
    reference = fit(dataset, tmp_path / "ref.safetensors")
    out = tmp_path / "run.safetensors"
    fit(dataset, out, TrainSettings(**{**SETTINGS.__dict__, "epochs": 2}))
    extended = fit(dataset, out, resume=True, overwrite=True)
    for key, value in reference.model.state_dict().items():
        assert torch.equal(value, extended.model.state_dict()[key]), key


def test_force_without_resume_starts_afresh_over_a_checkpoint(dataset, tmp_path):
    reference = fit(dataset, tmp_path / "ref.safetensors")
    out = tmp_path / "run.safetensors"
    fit(dataset, out, TrainSettings(**{**SETTINGS.__dict__, "epochs": 2, "seed": 8}))
    again = fit(dataset, out, overwrite=True)
    assert [r["epoch"] for r in again.history] == [1, 2, 3]
    for key, value in reference.model.state_dict().items():
        assert torch.equal(value, again.model.state_dict()[key]), key


def test_resume_refuses_a_checkpoint_of_other_settings(dataset, tmp_path):
    out = tmp_path / "run.safetensors"
    fit(dataset, out, TrainSettings(epochs=1, batch_size=4))
    other = TrainSettings(epochs=2, batch_size=8)
    with pytest.raises(MicrocaeError, match="another run"):
        fit(dataset, out, other, resume=True, overwrite=True)
    with pytest.raises(MicrocaeError, match="another run"):  # another model
        train(dataset, out, TrainSettings(epochs=2, batch_size=4), resume=True, overwrite=True,
              progress=False, build_model=partial(CAE, CAEConfig(channels=(4, 8))))


def test_augmentation_is_a_deterministic_symmetry_of_each_tile():
    batch = np.random.default_rng(0).random((5, 8, 8)).astype(np.float32)
    out = augment_batch(batch, seed=1, epoch=2, step=3)
    np.testing.assert_array_equal(out, augment_batch(batch, seed=1, epoch=2, step=3))
    for tile, moved in zip(batch, out, strict=True):
        variants = [np.rot90(v, k) for v in (tile, tile[:, ::-1]) for k in range(4)]
        assert any(np.array_equal(moved, v) for v in variants)


@pytest.mark.parametrize("name", ["tpu", "meta", "cuda:x"])
def test_unknown_devices_are_refused(dataset, tmp_path, name):
    with pytest.raises(MicrocaeError, match="device"):
        fit(dataset, tmp_path / "m.safetensors", device=name)
    assert not (tmp_path / "m.safetensors").exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_cuda_without_a_gpu_is_a_clear_error(dataset, tmp_path):
    with pytest.raises(MicrocaeError, match="no CUDA GPU"):
        fit(dataset, tmp_path / "m.safetensors", device="cuda")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_a_run_started_on_the_gpu_resumes_on_the_cpu_to_close_weights(dataset, tmp_path):
    cpu = fit(dataset, tmp_path / "cpu.safetensors")
    short = TrainSettings(**{**SETTINGS.to_dict(), "epochs": 2})
    fit(dataset, tmp_path / "mixed.safetensors", short, device="cuda")
    mixed = fit(dataset, tmp_path / "mixed.safetensors", resume=True, overwrite=True)
    assert read_model_file(tmp_path / "mixed.safetensors").provenance["device"] == "cpu"
    for key, value in cpu.model.state_dict().items():
        torch.testing.assert_close(mixed.model.state_dict()[key], value, rtol=1e-3, atol=1e-4)


# --- the command line ---------------------------------------------------------------------

def _cli(dataset, out, *extra):
    return main(["train", str(dataset.path), "--out", str(out), "--channels", "4,4",
                 "--epochs", "2", "--batch-size", "4", "--no-progress", *extra])


def test_train_command_writes_model_logs_and_loss_curve(dataset, tmp_path, capsys):
    out = tmp_path / "m" / "cae.safetensors"
    assert _cli(dataset, out) == 0
    printed = capsys.readouterr().out
    assert printed.count("epoch 1: train MSE") == 1 and "trained 2 epochs" in printed
    assert (tmp_path / "m" / "cae.loss.png").read_bytes()[:4] == b"\x89PNG"
    assert "loss_png: " in printed
    stored = read_model_file(out)
    assert stored.provenance["settings"]["lr_drop"] is None
    assert stored.provenance["settings"]["grad_clip"] is None
    assert stored.model.config.channels == (4, 4)


def test_an_existing_model_is_replaced_only_with_force(dataset, tmp_path, capsys):
    out = tmp_path / "cae.safetensors"
    assert _cli(dataset, out) == 0
    before = out.read_bytes()
    capsys.readouterr()
    for extra in ([], ["--resume"], ["--seed", "3"]):
        err = _one_line_error(capsys, _cli(dataset, out, *extra))
        assert str(out) in err and "--force" in err
        assert out.read_bytes() == before
    assert _cli(dataset, out, "--seed", "3", "--force") == 0
    assert out.read_bytes() != before
    assert read_model_file(out).provenance["settings"]["seed"] == 3


@pytest.mark.parametrize(("option", "value"), [
    ("--lr", "inf"), ("--lr", "nan"), ("--lr", "0"), ("--lr", "-1"), ("--lr", "x"),
    ("--epochs", "0"), ("--batch-size", "0"), ("--seed", "-1"), ("--lmbda", "nan"),
    ("--grad-clip", "inf"), ("--lr-drop", "1.5"), ("--lr-drop", "nan"),
    ("--max-seconds", "0"),
])
def test_bad_numbers_are_refused_while_parsing(tmp_path, capsys, option, value):
    out = tmp_path / "m" / "x.safetensors"
    rc = main(["train", str(tmp_path / "no-data"), "--out", str(out), option, value])
    assert option in _one_line_error(capsys, rc)  # refused before the data is even read
    assert not out.parent.exists()


def test_lmbda_is_for_coding_architectures_only(dataset, tmp_path, capsys):
    err = _one_line_error(capsys, _cli(dataset, tmp_path / "m.safetensors", "--lmbda", "0.1"))
    assert "rd-study" in err and "rd-wide" in err
    assert not any(tmp_path.glob("m.*"))


def test_an_output_that_cannot_be_written_is_refused_before_training(dataset, tmp_path,
                                                                       capsys):
    (tmp_path / "a-file").write_text("not a folder")
    out = tmp_path / "a-file" / "sub" / "m.safetensors"
    rc = _cli(dataset, out)
    captured = capsys.readouterr()
    assert rc == 2 and captured.err.count("\n") == 1 and "epoch" not in captured.out
    assert "cannot write" in captured.err and "a-file" in captured.err
    assert "is a directory" in _one_line_error(capsys, _cli(dataset, tmp_path))
    with pytest.raises(MicrocaeError, match="is a folder"):
        fit(dataset, tmp_path)


@pytest.mark.skipif(os.geteuid() == 0, reason="root may write into read-only folders")
def test_a_read_only_folder_is_refused_before_training(dataset, tmp_path, capsys):
    folder = tmp_path / "locked"
    folder.mkdir()
    folder.chmod(0o500)
    try:
        err = _one_line_error(capsys, _cli(dataset, folder / "new" / "m.safetensors"))
    finally:
        folder.chmod(0o700)
    assert "cannot write" in err and "ermission denied" in err
    assert not any(folder.iterdir())


def test_a_diverging_run_stops_and_writes_no_model(dataset, tmp_path, capsys):
    out = tmp_path / "m.safetensors"
    err = _one_line_error(capsys, _cli(dataset, out, "--lr", "1e6"))
    assert "diverged" in err and "--lr" in err
    assert not out.exists() and not (tmp_path / "m.train.csv").exists()
    checkpoint = tmp_path / "m.checkpoint.safetensors"
    if checkpoint.exists():  # only finite weights are ever checkpointed
        assert all(torch.isfinite(t).all() for t in load_file(str(checkpoint)).values())


def test_non_finite_tiles_are_refused_before_training(dataset, tmp_path, capsys):
    tiles = np.load(dataset.path / "tiles.npy", mmap_mode="r+")
    tiles[5, 3, 4] = np.nan
    tiles.flush()
    del tiles
    out = tmp_path / "m.safetensors"
    err = _one_line_error(capsys, _cli(dataset, out))
    assert "tile 5 of tiles.npy holds NaN" in err
    assert not any(tmp_path.glob("m.*"))
