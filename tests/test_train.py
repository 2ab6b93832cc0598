import json

import numpy as np
import pytest
import torch
from conftest import synthetic_micrograph, write_png

from microcae.data.dataset import prepare_dataset
from microcae.models.cae import CAEConfig
from microcae.models.registry import read_model_file
from microcae.training.loop import TrainSettings, augment_batch, train
from microcae.util.errors import MicrocaeError

SETTINGS = TrainSettings(epochs=3, batch_size=4, seed=7, model=CAEConfig(channels=(4, 4)))


@pytest.fixture
def dataset(tmp_path):
    for i in range(4):
        write_png(tmp_path / "raw" / f"m{i}.png", synthetic_micrograph(64, 96, seed=i))
    return prepare_dataset([tmp_path / "raw"], tmp_path / "ds", tile=32, progress=False)


def _weights(model):
    return {k: v.clone() for k, v in model.state_dict().items()}


def test_training_reduces_loss_and_writes_logs_and_provenance(dataset, tmp_path):
    settings = TrainSettings(epochs=6, batch_size=4, lr=3e-3, seed=1,
                             model=CAEConfig(channels=(4, 4)))
    result = train(dataset, tmp_path / "m.safetensors", settings, progress=False)
    history = result.history
    assert [row["epoch"] for row in history] == list(range(1, 7))
    assert history[-1]["train_mse"] < 0.5 * history[0]["train_mse"]
    csv_lines = result.files["log_csv"].read_text().splitlines()
    assert len(csv_lines) == 7 and csv_lines[0].startswith("epoch,train_mse,test_mse")
    assert json.loads(result.files["log_json"].read_text()) == history
    assert result.files["loss_png"].read_bytes()[:4] == b"\x89PNG"
    stored = read_model_file(result.files["model"])
    assert stored.provenance["data"]["manifest_sha256"] == dataset.manifest_sha256
    assert stored.provenance["settings"]["seed"] == 1
    assert stored.provenance["epochs_completed"] == 6
    for key, value in result.model.state_dict().items():
        assert torch.equal(stored.model.state_dict()[key], value), key


def test_same_seed_same_weights(dataset, tmp_path):
    a = train(dataset, tmp_path / "a.safetensors", SETTINGS, progress=False)
    b = train(dataset, tmp_path / "b.safetensors", SETTINGS, progress=False)
    for key, value in _weights(a.model).items():
        assert torch.equal(value, b.model.state_dict()[key]), key


def test_resume_after_interruption_gives_the_uninterrupted_weights(dataset, tmp_path):
    reference = train(dataset, tmp_path / "ref.safetensors", SETTINGS, progress=False)

    def stop_after_first_epoch(row):
        if row["epoch"] == 1:
            raise KeyboardInterrupt

    out = tmp_path / "run.safetensors"
    with pytest.raises(KeyboardInterrupt):
        train(dataset, out, SETTINGS, progress=False, on_epoch=stop_after_first_epoch)
    assert not out.exists()
    with pytest.raises(MicrocaeError, match="--resume"):
        train(dataset, out, SETTINGS, progress=False)
    resumed = train(dataset, out, SETTINGS, resume=True, progress=False)
    assert [r["epoch"] for r in resumed.history] == [1, 2, 3]
    for key, value in _weights(reference.model).items():
        assert torch.equal(value, resumed.model.state_dict()[key]), key
    def losses(history):
        return [(r["train_mse"], r["test_mse"]) for r in history]

    assert losses(resumed.history) == losses(reference.history)


def test_a_note_reaches_the_provenance_and_refinishing_keeps_the_weights(dataset, tmp_path):
    first = train(dataset, tmp_path / "m.safetensors", SETTINGS, progress=False)
    assert "note" not in read_model_file(tmp_path / "m.safetensors").provenance
    again = train(dataset, tmp_path / "m.safetensors", SETTINGS, resume=True, progress=False,
                  note="epochs 1-3 ran elsewhere")
    stored = read_model_file(tmp_path / "m.safetensors")
    assert stored.provenance["note"] == "epochs 1-3 ran elsewhere"
    assert stored.provenance["epochs_completed"] == 3
    for key, value in first.model.state_dict().items():
        assert torch.equal(again.model.state_dict()[key], value), key


def test_resume_can_extend_a_finished_run(dataset, tmp_path):
    reference = train(dataset, tmp_path / "ref.safetensors", SETTINGS, progress=False)
    out = tmp_path / "run.safetensors"
    train(dataset, out, TrainSettings(**{**SETTINGS.__dict__, "epochs": 2}), progress=False)
    extended = train(dataset, out, SETTINGS, resume=True, progress=False)
    for key, value in reference.model.state_dict().items():
        assert torch.equal(value, extended.model.state_dict()[key]), key


def test_resume_refuses_a_checkpoint_of_other_settings(dataset, tmp_path):
    out = tmp_path / "run.safetensors"
    train(dataset, out, TrainSettings(epochs=1, batch_size=4, model=CAEConfig(channels=(4, 4))),
          progress=False)
    other = TrainSettings(epochs=2, batch_size=8, model=CAEConfig(channels=(4, 4)))
    with pytest.raises(MicrocaeError, match="another run"):
        train(dataset, out, other, resume=True, progress=False)


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
        train(dataset, tmp_path / "m.safetensors", SETTINGS, progress=False, device=name)
    assert not (tmp_path / "m.safetensors").exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_cuda_without_a_gpu_is_a_clear_error(dataset, tmp_path):
    with pytest.raises(MicrocaeError, match="no CUDA GPU"):
        train(dataset, tmp_path / "m.safetensors", SETTINGS, progress=False, device="cuda")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_a_run_started_on_the_gpu_resumes_on_the_cpu_to_close_weights(dataset, tmp_path):
    cpu = train(dataset, tmp_path / "cpu.safetensors", SETTINGS, progress=False)
    short = TrainSettings(**{**SETTINGS.to_dict(), "epochs": 2, "model": SETTINGS.model})
    train(dataset, tmp_path / "mixed.safetensors", short, progress=False, device="cuda")
    mixed = train(dataset, tmp_path / "mixed.safetensors", SETTINGS, resume=True, progress=False)
    assert read_model_file(tmp_path / "mixed.safetensors").provenance["device"] == "cpu"
    for key, value in cpu.model.state_dict().items():
        torch.testing.assert_close(mixed.model.state_dict()[key], value, rtol=1e-3, atol=1e-4)
