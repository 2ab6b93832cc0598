"""Entropy-coded latent files of RD models: round trips, encryption, determinism, CLI."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest
import torch
from conftest import laplace_tables, synthetic_micrograph, write_png

from microcae.cli import main
from microcae.codec import Secret, decode_bytes, encode_image, parse_header
from microcae.codec.container import (
    FIXED_HEADER_BYTES,
    SourceInfo,
    read_container,
    write_container,
)
from microcae.data.images import micrograph_from_array
from microcae.entropy.code_tables import EntropyTables
from microcae.models.cae import CAEConfig
from microcae.models.inference import encode_micrograph
from microcae.models.rdcae import RDCAE, RDConfig
from microcae.models.registry import read_model_file
from microcae.util.errors import MicrocaeError

# Regenerate (only after an intended format, coder or decoder change) by printing the digests.
FILE_SHA256 = "516d88f05aa7024a2dda723de704e30bc3d4d750bd83bd68d2ea639adac56844"
DECODED_SHA256 = "0e77aeb8c4f36daa434abd09ea8d1f8288f14aa6c3135d5caca60a982baa012b"
PINNED_FREQS = [[4257, 11571, 31459, 11571, 4257, 1566, 577, 212, 66],
                [7106, 11715, 19318, 11715, 7106, 4310, 2614, 1586, 66],
                [7853, 10959, 15298, 10959, 7853, 5627, 4032, 2889, 66],
                [8108, 10410, 13372, 10410, 8108, 6314, 4918, 3830, 66]]


@pytest.mark.parametrize("shape", [(45, 71), (300, 20), (64, 64)])
def test_round_trip_of_odd_sizes_decodes_the_rounded_latents(tiny_rd, shape):
    model = tiny_rd[0]
    image = micrograph_from_array(synthetic_micrograph(*shape, seed=shape[0]), scaling="full")
    data = encode_image(model, image, tile=64)
    header = parse_header(data, "t")
    assert header.latent_dtype == "entropy" and not header.compressed
    assert header.fingerprint == model.fingerprint()
    latents, _ = encode_micrograph(model, image.pixels, tile=64)
    _, stored = read_container(data, "t", tables=model.tables)
    np.testing.assert_array_equal(stored, np.rint(latents))
    decoded = decode_bytes(model, data, "t")
    assert decoded.stored.shape == shape and decoded.stored.dtype == np.uint8
    with pytest.raises(MicrocaeError, match="need the RD model"):
        read_container(data, "t")


def test_encrypted_round_trip_and_wrong_key(tiny_rd):
    model = tiny_rd[0]
    image = micrograph_from_array(synthetic_micrograph(70, 90, seed=3), scaling="full")
    key = Secret(key=bytes(range(32)))
    data = encode_image(model, image, secret=key, tile=64)
    plain = decode_bytes(model, encode_image(model, image, tile=64), "p").stored
    np.testing.assert_array_equal(decode_bytes(model, data, "e", key).stored, plain)
    with pytest.raises(MicrocaeError, match="wrong key"):
        decode_bytes(model, data, "e", Secret(key=bytes(32)))
    with pytest.raises(MicrocaeError, match="is encrypted"):
        decode_bytes(model, data, "e")


def test_files_are_tied_to_the_model_and_its_tables(tiny_rd, tiny_model):
    model = tiny_rd[0]
    image = micrograph_from_array(synthetic_micrograph(64, 64, seed=4), scaling="full")
    data = encode_image(model, image, tile=64)
    with pytest.raises(MicrocaeError, match="made for another decoder"):
        decode_bytes(tiny_model, data, "t")
    other = RDCAE(model.config)
    other.load_state_dict(model.state_dict())
    other.tables = laplace_tables(4)
    with pytest.raises(MicrocaeError, match="made for another decoder"):
        decode_bytes(other, data, "t")
    with pytest.raises(MicrocaeError, match="needs an RD model"):
        encode_image(tiny_model, image, "entropy", tile=64)


def _pinned_model() -> RDCAE:
    torch.manual_seed(77)
    model = RDCAE(RDConfig(CAEConfig(channels=(8, 4)))).eval()
    with torch.no_grad():  # spread the random decoder's output over the 8-bit range
        model.decoder[-1].weight.mul_(4.0)
        model.decoder[-1].bias.fill_(0.4)
    model.tables = EntropyTables(np.full(4, -2, np.int32), np.full(4, 9, np.int32),
                                 np.asarray(PINNED_FREQS, np.int32))  # integers: no float math
    return model


def test_file_and_decoded_bytes_are_pinned():
    model = _pinned_model()
    latents = np.random.default_rng(9).laplace(1.0, 2.0, size=(6, 4, 16, 16)).astype(np.float32)
    latents[0, 0, 0, 0] = 99.0  # an escape
    source = SourceInfo((120, 150), "uint8", "full", (0.0, 255.0))  # 2 x 3 tiles of 64
    data = write_container(latents, source, 64, model.fingerprint(), "entropy",
                           compress=False, tables=model.tables)
    decoded = decode_bytes(model, data, "fixed")
    assert decoded.stored.shape == (120, 150) and len(np.unique(decoded.stored)) > 100
    assert hashlib.sha256(data).hexdigest() == FILE_SHA256
    assert hashlib.sha256(decoded.stored.tobytes()).hexdigest() == DECODED_SHA256


def _one_line_error(capsys, rc: int) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and err[0].startswith("microcae: error: ")
    return err[0]


def test_encode_decode_commands_take_an_rd_model(tmp_path, tiny_rd, tiny_model_file, capsys):
    model, path, _ = tiny_rd
    write_png(tmp_path / "raw" / "a.png", synthetic_micrograph(45, 71, seed=1))
    lat, dec = tmp_path / "lat", tmp_path / "dec"
    assert main(["encode", str(tmp_path / "raw"), "-m", str(path), "-o", str(lat),
                 "--no-progress"]) == 0
    assert parse_header((lat / "a.mcl").read_bytes(), "a").latent_dtype == "entropy"
    assert main(["decode", str(lat), "-m", str(path), "-o", str(dec), "--no-progress"]) == 0
    expected = decode_bytes(model, (lat / "a.mcl").read_bytes(), "a").stored
    from PIL import Image

    np.testing.assert_array_equal(np.asarray(Image.open(dec / "a.png")), expected)
    capsys.readouterr()
    rc = main(["decode", str(lat), "-m", str(tiny_model_file), "-o", str(tmp_path / "d2"),
               "--no-progress"])
    assert "made for another decoder" in _one_line_error(capsys, rc)
    rc = main(["encode", str(tmp_path / "raw"), "-m", str(tiny_model_file), "-o",
               str(tmp_path / "l2"), "--dtype", "entropy", "--no-progress"])
    assert "needs an RD model" in _one_line_error(capsys, rc)
    assert not (tmp_path / "d2").exists() and not (tmp_path / "l2").exists()


def test_rd_training_command_and_its_errors(tmp_path, capsys, tiny_model_file):
    for i in range(3):
        write_png(tmp_path / "raw" / f"m{i}.png", synthetic_micrograph(64, 128, seed=i))
    assert main(["prepare", str(tmp_path / "raw"), "-o", str(tmp_path / "ds"), "--tile", "64",
                 "--test-fraction", "0.3", "--no-progress"]) == 0
    out = tmp_path / "m" / "rd.safetensors"
    base = ["train", str(tmp_path / "ds"), "--arch", "rd-study", "--out", str(out),
            "--no-progress"]
    capsys.readouterr()
    assert "--channels" in _one_line_error(capsys, main([*base, "--channels", "4,x"]))
    assert "device" in _one_line_error(capsys, main([*base, "--device", "tpu"]))
    rc = main(["train", str(tmp_path / "nope"), "--arch", "rd-study", "--out", str(out)])
    assert "not a prepared data set" in _one_line_error(capsys, rc)
    assert not out.parent.exists()
    assert main([*base, "--channels", "4,4", "--epochs", "2", "--lmbda", "0.05"]) == 0
    assert "trained 2 epochs" in capsys.readouterr().out
    assert read_model_file(out).model.config.cae.channels == (4, 4)


def test_header_stays_84_bytes_for_entropy_files(tiny_rd):
    image = micrograph_from_array(synthetic_micrograph(64, 64, seed=5), scaling="full")
    data = encode_image(tiny_rd[0], image, tile=64)
    header = parse_header(data, "t")
    assert header.header_bytes == FIXED_HEADER_BYTES == 84
    assert len(data) == 84 + header.payload_bytes + 4 and header.payload_bytes % 4 == 0
