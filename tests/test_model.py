import json
import pickle

import pytest
import torch
from safetensors.torch import save_file
from torch import nn

from microcae.models.cae import CAE, CAEConfig
from microcae.models.registry import load_model, read_model_file, save_model
from microcae.util.errors import MicrocaeError


def test_study_architecture_has_50353_parameters_and_the_papers_shapes():
    model = CAE()
    assert sum(p.numel() for p in model.parameters()) == 50_353
    x = torch.rand(2, 1, 256, 256)
    shapes = []
    for layer in model.encoder:
        x = layer(x)
        if isinstance(layer, nn.MaxPool2d):
            shapes.append(tuple(x.shape[1:]))
    assert shapes == [(64, 128, 128), (32, 64, 64), (16, 32, 32), (8, 16, 16)]
    decoded = []
    for layer in model.decoder:
        x = layer(x)
        if isinstance(layer, nn.ReLU):
            decoded.append(tuple(x.shape[1:]))
    assert decoded == [(8, 32, 32), (16, 64, 64), (32, 128, 128), (64, 256, 256)]
    assert tuple(x.shape[1:]) == (1, 256, 256)
    assert isinstance(model.decoder[-1], nn.Conv2d)  # linear output layer


def test_every_layer_is_a_distinct_module_with_study_settings():
    model = CAE()
    modules = list(model.encoder) + list(model.decoder)
    assert len({id(m) for m in modules}) == len(modules)
    for m in modules:
        if isinstance(m, nn.Conv2d):
            assert m.kernel_size == (3, 3) and m.stride == (1, 1) and m.padding == (1, 1)
        if isinstance(m, nn.MaxPool2d):
            assert m.kernel_size == 2 and m.stride == 2
        if isinstance(m, nn.ReLU):
            assert not m.inplace
        if isinstance(m, nn.Upsample):
            assert m.mode == "nearest" and m.scale_factor == 2


def test_configurable_widths_and_latent_shape():
    model = CAE(CAEConfig(channels=(16, 12, 6)))
    assert model.encoder(torch.rand(1, 1, 64, 48)).shape == (1, 6, 8, 6)
    with pytest.raises(ValueError):
        CAEConfig(channels=())
    with pytest.raises(ValueError):
        CAEConfig(kernel_size=4)


def test_save_load_round_trip_keeps_weights_config_and_provenance(tmp_path):
    torch.manual_seed(3)
    model = CAE(CAEConfig(channels=(8, 4)))
    path = tmp_path / "m.safetensors"
    save_model(model, path, {"epochs": 2, "data": "abc"})
    loaded = read_model_file(path)
    assert loaded.model.config == model.config
    assert loaded.provenance == {"epochs": 2, "data": "abc"}
    assert loaded.microcae_version
    x = torch.rand(1, 1, 32, 32)
    assert torch.equal(loaded.model(x)["x_hat"], model.eval()(x)["x_hat"])
    assert not any(p.name.endswith(".tmp") for p in tmp_path.iterdir())


def test_decoder_fingerprint_tracks_decoder_only():
    torch.manual_seed(0)
    model = CAE(CAEConfig(channels=(4, 4)))
    before = model.fingerprint()
    with torch.no_grad():
        model.encoder[0].weight.add_(1.0)
    assert model.fingerprint() == before
    with torch.no_grad():
        model.decoder[-1].bias.add_(1e-6)
    assert model.fingerprint() != before


def test_foreign_and_corrupt_files_are_rejected(tmp_path):
    foreign = tmp_path / "foreign.safetensors"
    save_file({"w": torch.zeros(2)}, str(foreign))
    with pytest.raises(MicrocaeError, match="not a microcae model"):
        load_model(foreign)
    corrupt = tmp_path / "corrupt.safetensors"
    corrupt.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json}xxxxxx")
    with pytest.raises(MicrocaeError, match="not a valid safetensors"):
        load_model(corrupt)
    with pytest.raises(MicrocaeError, match="no such model"):
        load_model(tmp_path / "missing.safetensors")


def test_truncated_model_file_is_rejected(tmp_path):
    path = tmp_path / "m.safetensors"
    save_model(CAE(CAEConfig(channels=(4,))), path)
    path.write_bytes(path.read_bytes()[:-50])
    with pytest.raises(MicrocaeError):
        load_model(path)


def test_weights_not_matching_config_are_rejected(tmp_path):
    model = CAE(CAEConfig(channels=(4,)))
    tensors = {k: v.contiguous() for k, v in model.state_dict().items()}
    meta = {"format": "microcae.cae", "format_version": "1",
            "config": json.dumps({"channels": [8], "in_channels": 1, "kernel_size": 3})}
    path = tmp_path / "m.safetensors"
    save_file(tensors, str(path), metadata=meta)
    with pytest.raises(MicrocaeError, match="do not match"):
        load_model(path)


class _Exploit:
    def __reduce__(self):
        return (open, ("PWNED_MARKER", "w"))


def test_pickle_checkpoints_are_never_unpickled(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    path = tmp_path / "evil.pt"
    path.write_bytes(pickle.dumps(_Exploit()))
    with pytest.raises(MicrocaeError):
        load_model(path)
    assert not (tmp_path / "PWNED_MARKER").exists()
