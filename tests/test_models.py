"""The model base: one loader for every kind, configuration checked before building, no mutation."""

from __future__ import annotations

import copy
import json
import subprocess
import sys

import numpy as np
import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from microcae.models import BUNDLED, MODEL_KINDS, load_model, read_model_file, save_model
from microcae.models.base import WHOLE_MODEL
from microcae.models.cae import CAE, CAEConfig
from microcae.models.hyperprior import HyperpriorCodec, HyperpriorConfig
from microcae.models.inference import decode_latents, encode_micrograph, reconstruct_micrograph
from microcae.models.rdcae import RDCAE, RDConfig
from microcae.models.registry import CODEC_LEVELS, bundled_model_for, pack_model
from microcae.util.errors import MicrocaeError


def _metadata(path) -> dict[str, str]:
    with safe_open(str(path), framework="pt") as handle:
        return dict(handle.metadata())


def _state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def test_every_bundled_name_loads_and_its_kind_is_registered():
    for name, path in BUNDLED.items():
        model = load_model(name)
        assert type(model) is MODEL_KINDS[_metadata(path)["format"]]
        assert model.fingerprint() == load_model(path).fingerprint()
        assert not model.training


def test_fingerprint_parts_are_the_decoder_by_default_and_everything_on_request():
    torch.manual_seed(0)
    model = CAE(CAEConfig(channels=(4, 4)))
    decoding, whole = model.fingerprint(), model.fingerprint(WHOLE_MODEL)
    with torch.no_grad():
        model.encoder[0].bias.add_(1.0)
    assert model.fingerprint() == decoding and model.fingerprint(WHOLE_MODEL) != whole


def test_a_config_claiming_a_huge_network_is_refused_before_anything_is_built(tmp_path):
    source = tmp_path / "small.safetensors"
    save_model(CAE(CAEConfig(channels=(4,))), source)
    metadata = _metadata(source)
    metadata["config"] = json.dumps({"channels": [4096] * 8, "in_channels": 1,
                                     "kernel_size": 15})
    hostile = tmp_path / "hostile.safetensors"
    save_file(load_file(str(source)), str(hostile), metadata=metadata)
    assert hostile.stat().st_size < 10_000
    code = (
        "import resource, sys\n"
        "resource.setrlimit(resource.RLIMIT_AS, (8 << 30, 8 << 30))\n"
        "from microcae.models import load_model\n"
        "from microcae.util.errors import MicrocaeError\n"
        "try:\n"
        f"    load_model({str(hostile)!r})\n"
        "except MicrocaeError as exc:\n"
        "    print(exc)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr
    assert "weights do not match the stored configuration" in done.stdout


def test_deeply_nested_provenance_is_a_one_line_error_not_a_recursion_error(tmp_path):
    path = tmp_path / "m.safetensors"
    save_model(CAE(CAEConfig(channels=(4,))), path)
    metadata = _metadata(path)
    metadata["provenance"] = "[" * 100_000 + "]" * 100_000
    save_file(load_file(str(path)), str(path), metadata=metadata)
    with pytest.raises(MicrocaeError, match="provenance: JSON nested"):
        read_model_file(path)


def test_rd_models_round_trip_through_the_one_saver_and_loader(tmp_path):
    torch.manual_seed(1)
    model = RDCAE(RDConfig(CAEConfig(channels=(4, 4)))).eval()
    save_model(model, tmp_path / "rd.safetensors", {"note": "test"})
    loaded = read_model_file(tmp_path / "rd.safetensors")
    assert isinstance(loaded.model, RDCAE) and loaded.provenance == {"note": "test"}
    assert loaded.model.fingerprint() == model.fingerprint()
    assert np.array_equal(loaded.model.tables.freqs, model.tables.freqs)


@pytest.mark.parametrize("kind", [CAE, RDCAE])
def test_inference_never_changes_the_callers_model(kind):
    torch.manual_seed(2)
    model = kind(CAEConfig(channels=(4, 4))) if kind is CAE else kind(
        RDConfig(CAEConfig(channels=(4, 4))))
    model.update()
    model.train()
    before, layout = _state(model), [p.is_contiguous() for p in model.parameters()]
    pixels = np.random.default_rng(0).random((40, 52), dtype=np.float32)
    latents, grid = encode_micrograph(model, pixels, tile=16)
    decode_latents(model, latents, grid, torch.float64)
    reconstruct_micrograph(model, pixels, tile=16)
    assert model.training and all(m.training for m in model.modules())
    assert [p.is_contiguous() for p in model.parameters()] == layout
    assert all(p.dtype == torch.float32 for p in model.parameters())
    after = _state(model)
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_the_one_decode_path_equals_the_decoder_on_each_tile_in_float64():
    torch.manual_seed(3)
    model = CAE(CAEConfig(channels=(4, 4))).eval()
    pixels = np.random.default_rng(1).random((32, 48), dtype=np.float32)
    latents, grid = encode_micrograph(model, pixels, tile=16)
    image = decode_latents(model, latents, grid, torch.float64)
    decoder = copy.deepcopy(model.decoder).double()
    tile = decoder(torch.from_numpy(latents[4:5].astype(np.float64)))[0, 0].detach().numpy()
    top, left = grid.positions[4]
    assert image.dtype == np.float64
    np.testing.assert_array_equal(image[top:top + 16, left:left + 16], tile)


def test_a_latent_files_fingerprint_finds_its_bundled_model():
    for name in BUNDLED:
        wanted = load_model(name)
        found = bundled_model_for(wanted.fingerprint())
        assert type(found) is type(wanted) and found.fingerprint() == wanted.fingerprint()
    assert bundled_model_for("0" * 64) is None


def test_the_models_command_lists_every_bundled_model_with_its_kind(capsys):
    from microcae.cli import main

    assert main(["models"]) == 0
    lines = [line for line in capsys.readouterr().out.splitlines() if not line.startswith(" ")]
    assert [line.split(":")[0] for line in lines] == [n for n, p in BUNDLED.items() if p.is_file()]
    for line in lines:
        name = line.split(":")[0]
        assert f": {load_model(name).kind}, " in line


def _dtypes(path) -> dict[str, torch.dtype]:
    with safe_open(str(path), framework="pt") as handle:
        return {name: handle.get_slice(name).get_dtype() for name in handle.keys()}


def test_pack_stores_kernels_as_float16_and_keeps_every_table_and_integer(tmp_path):
    torch.manual_seed(0)
    save_model(HyperpriorCodec(HyperpriorConfig(N=8, M=8)), tmp_path / "full.safetensors")
    pack_model(tmp_path / "full.safetensors", tmp_path / "packed.safetensors", note="a test")
    full, packed = (read_model_file(tmp_path / f"{n}.safetensors") for n in ("full", "packed"))
    dtypes = _dtypes(tmp_path / "packed.safetensors")
    full_state = full.model.state_dict()
    for name, value in packed.model.state_dict().items():
        if name.startswith("hyper_decoder."):
            continue  # left out of the file, derived from the integers (checked below)
        if full_state[name].dim() == 4:
            assert dtypes[name] == "F16", name
            assert torch.equal(value, full_state[name].half().float()), name
        else:
            assert dtypes[name] == "F32" and torch.equal(value, full_state[name]), name
    hyper_weights = [n for n in dtypes if n.startswith("tables.hyper.") and n.endswith("weight")]
    assert len(hyper_weights) == 3 and all(dtypes[n] in ("I8", "I16") for n in hyper_weights)
    assert not any(n.startswith("hyper_decoder.") for n in dtypes)  # derived on loading
    for packed_layer, full_layer in zip(packed.model._int_layers(), full.model._int_layers(),
                                        strict=True):
        packed_layer.frozen = None  # the derived floats round back to the stored integers
        assert all(torch.equal(a, b) for a, b in zip(packed_layer.integer_parameters(),
                                                     full_layer.integer_parameters(), strict=True))
    full_tables, packed_tables = full.model.stored_tensors(), packed.model.stored_tensors()
    assert full_tables.keys() == packed_tables.keys()
    assert all(torch.equal(full_tables[k], packed_tables[k]) for k in full_tables)
    assert packed.provenance["note"] == "a test Packed by 'microcae models pack': " \
        "convolution kernels stored as float16."
    image = torch.rand(1, 1, 70, 90, generator=torch.Generator().manual_seed(1))
    coded = packed.model.compress(image)
    again = read_model_file(tmp_path / "packed.safetensors").model
    assert again.fingerprint() == packed.model.fingerprint() != full.model.fingerprint()
    assert torch.equal(again.decompress(coded["strings"], coded["shape"], (70, 90))["x_hat"],
                       packed.model.decompress(coded["strings"], coded["shape"],
                                               (70, 90))["x_hat"])


def test_the_bundled_codec_levels_are_packed():
    for name in CODEC_LEVELS:
        dtypes = _dtypes(BUNDLED[name])
        kernels = [k for k, v in load_model(name).state_dict().items()
                   if v.dim() == 4 and not k.startswith("hyper_decoder.")]
        assert not any(k.startswith("hyper_decoder.") for k in dtypes)
        assert kernels and {dtypes[k] for k in kernels} == {"F16"}, name


def test_the_pack_command_writes_a_packed_copy_and_never_replaces_a_file_unasked(tmp_path,
                                                                                capsys):
    from microcae.cli import main

    torch.manual_seed(0)
    save_model(HyperpriorCodec(HyperpriorConfig(N=8, M=8)), tmp_path / "full.safetensors")
    target = tmp_path / "packed.safetensors"
    assert main(["models", "pack", str(tmp_path / "full.safetensors"), str(target)]) == 0
    assert capsys.readouterr().out.startswith(f"{target}: ")
    written = target.read_bytes()
    assert main(["models", "pack", str(tmp_path / "full.safetensors"), str(target)]) != 0
    assert "exists (use --force" in capsys.readouterr().err
    assert target.read_bytes() == written
    assert main(["models", "pack", str(tmp_path / "missing.safetensors"), str(tmp_path / "x")]) != 0
    assert not (tmp_path / "x").exists()
