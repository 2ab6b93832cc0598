"""``microcae keygen / encode / decode`` in-process: outputs, errors, nothing written on error."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import synthetic_micrograph, write_png
from PIL import Image

from microcae.cli import main
from microcae.codec import decode_bytes
from microcae.models.cae import CAE, CAEConfig
from microcae.models.registry import load_model, save_model


def _one_line_error(capsys, rc: int) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2
    assert len(err) == 1 and err[0].startswith("microcae: error: ")
    return err[0]


@pytest.fixture
def images(tmp_path):
    folder = tmp_path / "raw"
    write_png(folder / "a.png", synthetic_micrograph(45, 71, seed=1))
    write_png(folder / "sub" / "b.png", synthetic_micrograph(300, 20, seed=2))
    return folder


def _encode(tmp_path, images, model, *extra: str) -> list:
    out = tmp_path / "lat"
    assert main(["encode", str(images), "-m", str(model), "-o", str(out), "--no-progress",
                 *extra]) == 0
    return sorted(out.glob("*.mcl"))


def test_encode_decode_round_trip_folder(tmp_path, images, tiny_model_file, capsys):
    files = _encode(tmp_path, images, tiny_model_file)
    assert [f.name for f in files] == ["a.mcl", "b.mcl"]
    assert "2 latent files" in capsys.readouterr().out
    out = tmp_path / "dec"
    assert main(["decode", str(tmp_path / "lat"), "-m", str(tiny_model_file), "-o", str(out),
                 "--no-progress"]) == 0
    model = load_model(tiny_model_file)
    for name, shape in (("a", (45, 71)), ("b", (300, 20))):
        written = np.asarray(Image.open(out / f"{name}.png"))
        assert written.shape == shape and written.dtype == np.uint8
        expected = decode_bytes(model, (tmp_path / "lat" / f"{name}.mcl").read_bytes(), name)
        np.testing.assert_array_equal(written, expected.stored)


def test_keygen_encrypt_decode_and_key_errors(tmp_path, images, tiny_model_file, capsys):
    key, other = tmp_path / "k.key", tmp_path / "other.key"
    assert main(["keygen", str(key)]) == 0 and main(["keygen", str(other)]) == 0
    assert "already exists" in _one_line_error(capsys, main(["keygen", str(key)]))
    files = _encode(tmp_path, images, tiny_model_file, "--encrypt", str(key), "--dtype", "float16")
    out = tmp_path / "dec"
    base = ["decode", *map(str, files), "-m", str(tiny_model_file), "-o", str(out),
            "--no-progress"]
    assert "is encrypted; give --key" in _one_line_error(capsys, main(base))
    assert "wrong key" in _one_line_error(capsys, main([*base, "--key", str(other)]))
    assert not out.exists()
    assert main([*base, "--key", str(key)]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["a.png", "b.png"]


def test_passphrase_from_environment(tmp_path, images, tiny_model_file, capsys, monkeypatch):
    monkeypatch.setenv("MICROCAE_PASSPHRASE", "s3cret words")
    files = _encode(tmp_path, images, tiny_model_file, "--passphrase")
    out = tmp_path / "dec"
    base = ["decode", *map(str, files), "-m", str(tiny_model_file), "-o", str(out),
            "--no-progress"]
    monkeypatch.setenv("MICROCAE_PASSPHRASE", "s3cret word")
    assert "wrong passphrase" in _one_line_error(capsys, main([*base, "--passphrase"]))
    monkeypatch.setenv("MICROCAE_PASSPHRASE", "s3cret words")
    assert main([*base, "--passphrase"]) == 0 and (out / "a.png").exists()


def test_wrong_decoder_truncation_and_tampering_write_nothing(tmp_path, images, tiny_model_file,
                                                              capsys):
    files = _encode(tmp_path, images, tiny_model_file)
    torch.manual_seed(99)
    other_model = tmp_path / "other.safetensors"
    save_model(CAE(CAEConfig(channels=(4, 4))), other_model)
    out = tmp_path / "dec"

    def decode(paths, model=tiny_model_file) -> str:
        rc = main(["decode", *map(str, paths), "-m", str(model), "-o", str(out), "--no-progress"])
        return _one_line_error(capsys, rc)

    assert "made for another decoder" in decode(files, other_model)
    data = files[1].read_bytes()
    cut = tmp_path / "cut.mcl"
    cut.write_bytes(data[:-7])
    assert "cut.mcl: truncated" in decode([files[0], cut])
    flipped = tmp_path / "flip.mcl"
    flipped.write_bytes(data[:100] + bytes([data[100] ^ 4]) + data[101:])
    assert "flip.mcl: corrupt file (checksum mismatch)" in decode([files[0], flipped])
    assert "not a microcae latent file" in decode([images / "a.png"])
    assert not out.exists()


def test_encode_errors_write_nothing(tmp_path, images, tiny_model_file, capsys):
    (images / "c.png").write_bytes(b"not an image")
    out = tmp_path / "lat"
    rc = main(["encode", str(images), "-m", str(tiny_model_file), "-o", str(out), "--no-progress"])
    assert "not a readable image" in _one_line_error(capsys, rc)
    rc = main(["encode", str(images / "a.png"), "-m", str(tiny_model_file), "-o", str(out),
               "--encrypt", str(tmp_path / "k.key"), "--passphrase"])
    assert "not both" in _one_line_error(capsys, rc)
    assert not out.exists()


def test_rate_control_picks_bundled_levels_by_quality_or_default():
    from microcae.models.registry import CODEC_LEVELS, DEFAULT_CODEC_LEVEL, codec_level
    from microcae.util.errors import MicrocaeError

    assert codec_level(None) == CODEC_LEVELS[DEFAULT_CODEC_LEVEL - 1]
    levels = len(CODEC_LEVELS)
    assert [codec_level(None, quality=q) for q in range(1, levels + 1)] == list(CODEC_LEVELS)
    assert codec_level("study") == "study"
    for bad in (0, levels + 1):
        with pytest.raises(MicrocaeError, match=f"--quality must be 1..{levels}"):
            codec_level(None, quality=bad)
    with pytest.raises(MicrocaeError, match="exclude each other"):
        codec_level("study", quality=1)


@pytest.fixture(scope="module")
def level_files(tmp_path_factory):
    """A 200 × 180 crop of a bundled sample (PNG), the bundled levels and each one's file of it."""
    from microcae.codec import encode_image
    from microcae.data.images import read_micrograph
    from microcae.models.registry import ASSETS, CODEC_LEVELS

    pixels = np.asarray(Image.open(ASSETS / "samples" / "aisi1045_core.png"))[:200, :180]
    image = write_png(tmp_path_factory.mktemp("crop") / "crop.png", pixels)
    micrograph = read_micrograph(image)
    models = [load_model(name) for name in CODEC_LEVELS]
    return image, micrograph, models, [encode_image(m, micrograph) for m in models]


def test_rate_budget_takes_the_highest_level_whose_file_fits(level_files):
    from microcae.codec import RateBudget

    _, micrograph, models, files = level_files
    pixels = 200 * 180
    rates = [8 * len(f) / pixels for f in files]
    assert rates == sorted(rates) and len(set(rates)) == len(rates), rates
    for k, rate in enumerate(rates):
        assert RateBudget(models, rate).encode(micrograph) == files[k]  # exactly at the budget
        if k:
            assert RateBudget(models, rate - 8 / pixels).encode(micrograph) == files[k - 1]
    assert RateBudget(models, rates[0] / 2).encode(micrograph) == files[0]  # none fits
    assert RateBudget(models, 100.0).encode(micrograph) == files[-1]


def test_rate_budget_counts_the_encryption_and_seals_only_the_chosen_file(level_files,
                                                                           monkeypatch):
    from microcae.codec import RateBudget, Secret, crypto, decode_bytes
    from microcae.codec.container import CHECKSUM_BYTES

    _, micrograph, models, files = level_files
    pixels = 200 * 180
    derivations = []
    scrypt = crypto._scrypt

    def counted(passphrase: str, salt: bytes) -> bytes:
        derivations.append(salt)
        return scrypt(passphrase, salt)

    monkeypatch.setattr(crypto, "_scrypt", counted)
    secret = Secret(passphrase="lab 7")
    # the key block and the tag instead of the CRC-32
    overhead = crypto.KEY_BLOCK_BYTES + crypto.TAG_BYTES - CHECKSUM_BYTES
    for k in (2, 4):
        budget = 8 * (len(files[k]) + overhead) / pixels  # level k's encrypted file, exactly
        derivations.clear()
        sealed = RateBudget(models, budget).encode(micrograph, secret)
        assert len(sealed) == len(files[k]) + overhead and len(derivations) == 1
        opened = decode_bytes(models[k], sealed, "f", secret)
        assert np.array_equal(opened.stored, decode_bytes(models[k], files[k], "f").stored)
        # the same budget without encryption has room for no more than level k either
        assert RateBudget(models, budget).encode(micrograph) == files[k]
        # one byte less: the encrypted file of level k no longer fits
        smaller = RateBudget(models, budget - 8 / pixels).encode(micrograph, secret)
        assert len(smaller) == len(files[k - 1]) + overhead


def test_encode_bpp_reports_each_files_level_and_excludes_other_choices(tmp_path, level_files,
                                                                       capsys):
    image, _, _, files = level_files
    rate = 8 * len(files[1]) / (200 * 180)
    out = tmp_path / "lat"
    assert main(["encode", str(image), "--bpp", f"{rate + 1e-6:.6f}", "-o", str(out),
                 "--no-progress"]) == 0
    assert (out / "crop.mcl").read_bytes() == files[1]
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == f"crop.mcl: codec-2, {rate:.3f} bpp"
    assert main(["encode", str(image), "--bpp", "0.01", "-o", str(out), "--force",
                 "--no-progress"]) == 0
    assert (out / "crop.mcl").read_bytes() == files[0]
    low = 8 * len(files[0]) / (200 * 180)
    assert capsys.readouterr().out.splitlines()[0] == (
        f"crop.mcl: codec-1, {low:.3f} bpp (over the budget: the smallest file of this image)")
    for extra, message in ((["--quality", "2"], "exclude each other"),
                           (["--model", "study"], "exclude each other"),
                           (["--dtype", "float16"], "--dtype does not apply with --bpp")):
        rc = main(["encode", str(image), "--bpp", "0.5", "-o", str(tmp_path / "x"), *extra])
        assert message in _one_line_error(capsys, rc)
    assert not (tmp_path / "x").exists()


def test_each_quality_level_writes_bigger_files_that_decode_closer_without_options(tmp_path):
    from microcae.models.registry import ASSETS, CODEC_LEVELS

    sample = ASSETS / "samples" / "aisi1045_core.png"
    original = np.asarray(Image.open(sample)).astype(np.float64)
    sizes, errors = [], []
    for quality in range(1, len(CODEC_LEVELS) + 1):
        out = tmp_path / f"q{quality}"
        assert main(["encode", str(sample), "--quality", str(quality), "-o", str(out),
                     "--no-progress"]) == 0
        latent = out / "aisi1045_core.mcl"
        assert main(["decode", str(latent), "-o", str(tmp_path / f"d{quality}"),
                     "--no-progress"]) == 0
        decoded = np.asarray(Image.open(tmp_path / f"d{quality}" / "aisi1045_core.png"),
                             dtype=np.float64)
        assert decoded.shape == original.shape
        sizes.append(latent.stat().st_size)
        errors.append(float(np.mean((decoded - original) ** 2)))
    assert sizes == sorted(sizes) and errors == sorted(errors, reverse=True), (sizes, errors)
