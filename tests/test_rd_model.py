"""RD model: training, rate estimate vs real coded size, file round trip, loading, errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import synthetic_micrograph
from safetensors.torch import load_file, save_file

from microcae.entropy.range_coder import encode_symbols
from microcae.models.cae import CAE
from microcae.models.rdcae import RDCAE, RDConfig
from microcae.models.registry import load_model, read_model_file, save_model
from microcae.training.architectures import ARCHITECTURES
from microcae.training.loop import train
from microcae.util.errors import MicrocaeError


def test_training_lowers_the_loss_and_writes_model_log_and_checkpoint(tiny_rd):
    model, path, history = tiny_rd
    assert history[-1]["train_loss"] < 0.7 * history[0]["train_loss"]
    assert history[-1]["lr"] == pytest.approx(3e-4)  # dropped for the last 20 % of epochs
    assert path.with_name("tiny_rd.checkpoint.safetensors").is_file()
    assert path.with_name("tiny_rd.train.csv").read_text().count("\n") == len(history) + 1
    assert path.with_name("tiny_rd.train.csv").read_text().startswith(
        "epoch,train_loss,train_mse,train_bpp,test_mse,test_bpp,lr,")
    assert not model.training and model.tables is not None


def test_estimated_bits_agree_with_the_coded_size(tiny_rd):
    model = tiny_rd[0]
    x = torch.from_numpy(np.stack([synthetic_micrograph(64, 64, seed=s)
                                   for s in (20, 21, 22)]) / np.float32(255))[:, None]
    with torch.no_grad():
        out = model(x)
    estimate = float(out["bpp"]) * x.shape[0] * 64 * 64
    symbols = model.compress(x)["latents"].numpy()
    np.testing.assert_allclose(model.decompress(torch.from_numpy(symbols))["x_hat"],
                               out["x_hat"], atol=1e-6)
    coded = 8 * len(encode_symbols(symbols, model.tables))
    assert estimate > 1000  # a real rate, not an empty code
    assert abs(coded - estimate) <= 0.03 * estimate + 64


def test_model_file_round_trip_keeps_weights_tables_and_fingerprint(tiny_rd, tmp_path):
    model, path, _ = tiny_rd
    loaded = read_model_file(path)
    assert loaded.provenance["settings"]["lmbda"] == 0.01
    for name in ("offsets", "lengths", "freqs"):
        np.testing.assert_array_equal(getattr(loaded.model.tables, name),
                                      getattr(model.tables, name))
    for key, value in model.state_dict().items():
        assert torch.equal(loaded.model.state_dict()[key], value)
    assert loaded.model.fingerprint() == model.fingerprint()
    # the tables are read from the file, not recomputed: edit one, and the fingerprint moves
    tensors = load_file(str(path))
    row = tensors["tables.freqs"][0]
    top = int(row.argmax())
    row[top] -= 1  # move one count from the most probable symbol to another
    row[1 if top == 0 else 0] += 1
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as handle:
        metadata = handle.metadata()
    edited = tmp_path / "edited.safetensors"
    save_file(tensors, str(edited), metadata=metadata)
    assert read_model_file(edited).model.fingerprint() != model.fingerprint()


def test_broken_model_files_are_one_line_errors(tiny_rd, tmp_path, tiny_model_file):
    _, path, _ = tiny_rd
    tensors = load_file(str(path))
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as handle:
        metadata = handle.metadata()
    cases = {
        "not normalised": {**tensors, "tables.freqs": tensors["tables.freqs"] * 2},
        "tables missing": {k: v for k, v in tensors.items() if k != "tables.offsets"},
        "not int32": {**tensors, "tables.lengths": tensors["tables.lengths"].long()},
        "do not match": {**tensors, "decoder.1.bias": torch.zeros(7)},
    }
    for reason, broken in cases.items():
        target = tmp_path / "broken.safetensors"
        save_file(broken, str(target), metadata=metadata)
        with pytest.raises(MicrocaeError, match=reason):
            read_model_file(target)
    # one loader for every kind: the file's format picks the class; an unknown kind is refused
    assert isinstance(read_model_file(tiny_model_file).model, CAE)
    foreign = tmp_path / "foreign.safetensors"
    save_file(tensors, str(foreign), metadata={**metadata, "format": "microcae.other"})
    with pytest.raises(MicrocaeError, match="not a microcae model"):
        read_model_file(foreign)
    (tmp_path / "junk.safetensors").write_bytes(b"\x00" * 40)
    with pytest.raises(MicrocaeError, match="not a valid safetensors"):
        load_model(tmp_path / "junk.safetensors")


def test_codec_model_loader_picks_the_kind_from_the_file(tiny_rd, tiny_model_file):
    assert isinstance(load_model(tiny_rd[1]), RDCAE)
    assert isinstance(load_model(tiny_model_file), CAE)
    assert load_model(None).fingerprint() == load_model().fingerprint()


def test_config_is_stored_not_inferred(tmp_path):
    torch.manual_seed(0)
    wide = RDCAE(RDConfig(filters=(2, 2)))
    save_model(wide, tmp_path / "m.safetensors")
    loaded = read_model_file(tmp_path / "m.safetensors").model
    assert loaded.config == wide.config and loaded.config.cae.channels == (64, 32, 16, 8)
    assert sum(p.numel() for p in loaded.encoder.parameters()) + sum(
        p.numel() for p in loaded.decoder.parameters()) == 50_353


def test_cuda_request_without_cuda_is_a_clear_error(tmp_path):
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    from microcae.data.dataset import PreparedSet

    data = PreparedSet(tmp_path, np.zeros((1, 64, 64), np.float32),
                       {"tiles": [{"index": 0, "split": "train"}]}, "0" * 64)
    with pytest.raises(MicrocaeError, match="cuda"):
        rd = ARCHITECTURES["rd-study"]
        train(data, tmp_path / "m.safetensors", rd.settings(), build_model=rd.build,
              objective=rd.objective(), device="cuda")
    assert not any(tmp_path.iterdir())
