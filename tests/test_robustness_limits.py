"""Never gigabytes from a few bytes: crafted images, latent files, scrypt costs and JSON."""

from __future__ import annotations

import json
import os
import random
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest
import tifffile
import torch
import zstandard
from conftest import synthetic_micrograph, write_png

from microcae.codec import Secret, crypto
from microcae.codec.container import (
    FIXED_HEADER_BYTES,
    LatentHeader,
    SourceInfo,
    _pack_header,
    parse_header,
    read_container,
    write_container,
)
from microcae.codec.quantise import payload_size
from microcae.data.dataset import load_dataset, prepare_dataset
from microcae.data.images import read_micrograph
from microcae.models.cae import CAE, CAEConfig
from microcae.models.registry import save_model
from microcae.util import safe_json
from microcae.util.errors import MicrocaeError
from microcae.util.limits import DEFAULT_MAX_PIXELS, MAX_PIXELS_ENV, max_image_pixels
from microcae.util.safe_json import loads_bounded, nesting_depth

SRC = Path(__file__).resolve().parents[1] / "src"


def bomb_tiff(path: Path, side: int = 60000, tile: int = 1024) -> Path:
    """A tiled, deflated uint8 TIFF claiming ``side`` × ``side`` pixels in ~30 KB.

    Every tile offset points at the same compressed all-zero tile.
    """
    data = zlib.compress(bytes(tile * tile), 9)
    count = (-(-side // tile)) ** 2
    short, long_ = 3, 4
    entries = [(256, long_, side), (257, long_, side), (258, short, 8), (259, short, 8),
               (262, short, 1), (277, short, 1), (284, short, 1), (322, short, tile),
               (323, short, tile)]
    ifd_size = 2 + 12 * (len(entries) + 2) + 4
    offsets_at = 8 + ifd_size
    counts_at = offsets_at + 4 * count
    data_at = counts_at + 4 * count
    ifd = struct.pack("<H", len(entries) + 2)
    for tag, kind, value in entries:
        packed = struct.pack("<I", value) if kind == long_ else struct.pack("<HH", value, 0)
        ifd += struct.pack("<HHI", tag, kind, 1) + packed
    ifd += struct.pack("<HHII", 324, long_, count, offsets_at)
    ifd += struct.pack("<HHII", 325, long_, count, counts_at) + struct.pack("<I", 0)
    path.write_bytes(b"II*\x00" + struct.pack("<I", 8) + ifd + struct.pack(f"<{count}I", *[
        data_at] * count) + struct.pack(f"<{count}I", *[len(data)] * count) + data)
    return path


def png_header_only(path: Path, width: int, height: int) -> Path:
    """A PNG whose IHDR claims ``width`` × ``height`` grey pixels, with an empty image stream."""
    def chunk(kind: bytes, body: bytes) -> bytes:
        return (struct.pack(">I", len(body)) + kind + body
                + struct.pack(">I", zlib.crc32(kind + body)))
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr)
                     + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b""))
    return path


def bomb_latent_file(path: Path, model: CAE, side: int = 46340) -> Path:
    """A ~1 KB plain latent file with a valid CRC claiming ``side`` × ``side`` pixels for ``model``.

    The payload is a zstd frame of all-zero uint8 latents (``model`` must downsample by 16).
    """
    tiles = (-(-side // 256)) ** 2
    channels = model.config.latent_channels
    raw = payload_size("uint8", (tiles, channels, 16, 16))
    body = zstandard.ZstdCompressor(level=19, write_content_size=True).compress(bytes(raw))
    header = LatentHeader(SourceInfo((side, side), "uint8", "full", (0.0, 255.0)), 256, channels,
                          16, "uint8", True, model.fingerprint(), None, len(body))
    data = _pack_header(header) + body
    path.write_bytes(data + struct.pack("<I", zlib.crc32(data)))
    return path


@pytest.fixture(scope="module")
def model16(tmp_path_factory) -> Path:
    """A random CAE with a 16× downsampling encoder (4 stages of 4 channels), saved."""
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("m16") / "m16.safetensors"
    save_model(CAE(CAEConfig(channels=(4, 4, 4, 4))).eval(), path)
    return path


# ---------------------------------------------------------------- image readers (item 7)

def test_a_tiff_claiming_60000_squared_pixels_is_refused_before_reading(tmp_path):
    path = bomb_tiff(tmp_path / "bomb.tif")
    assert path.stat().st_size < 40_000
    with pytest.raises(MicrocaeError) as caught:
        read_micrograph(path)
    assert str(caught.value) == (
        f"{path}: the file claims 60000x60000 pixels, more than the limit of "
        f"{DEFAULT_MAX_PIXELS} (set MICROCAE_MAX_PIXELS to allow larger images)")


def test_png_headers_are_checked_against_the_limit_and_pillows_bomb_check(tmp_path):
    with pytest.raises(MicrocaeError, match="claims 12000x12000 pixels, more than the limit"):
        read_micrograph(png_header_only(tmp_path / "big.png", 12000, 12000))  # Pillow would warn
    with pytest.raises(MicrocaeError, match="the file claims too many pixels .*exceeds limit"):
        read_micrograph(png_header_only(tmp_path / "huge.png", 30000, 30000))  # Pillow refuses


def test_the_pixel_limit_is_configurable(tmp_path, monkeypatch, capsys, tiny_model_file):
    image = write_png(tmp_path / "a.png", synthetic_micrograph(40, 50))
    monkeypatch.setenv(MAX_PIXELS_ENV, "1999")
    with pytest.raises(MicrocaeError, match="claims 40x50 pixels, more than the limit of 1999"):
        read_micrograph(image)
    tiff = tmp_path / "a.tif"
    tifffile.imwrite(tiff, synthetic_micrograph(40, 50))
    with pytest.raises(MicrocaeError, match="a.tif: the file claims 40x50 pixels"):
        read_micrograph(tiff)
    monkeypatch.setenv(MAX_PIXELS_ENV, "2000")
    assert read_micrograph(image).shape == read_micrograph(tiff).shape == (40, 50)
    monkeypatch.setenv(MAX_PIXELS_ENV, "lots")
    assert main_one_line(capsys, ["reconstruct", str(image), "-m", str(tiny_model_file), "-o",
                                  str(tmp_path / "o"), "--no-progress"]) == (
        "microcae: error: $MICROCAE_MAX_PIXELS='lots': expected a positive whole number of "
        "pixels")
    monkeypatch.delenv(MAX_PIXELS_ENV)
    assert max_image_pixels() == DEFAULT_MAX_PIXELS == 8192 * 8192


def main_one_line(capsys, argv: list[str]) -> str:
    from microcae.cli import main

    rc = main(argv)
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1, err
    return err[0]


# ---------------------------------------------------------------- latent headers (item 9)

def test_a_latent_file_claiming_46340_squared_pixels_is_refused_by_its_header(tmp_path):
    model = CAE(CAEConfig(channels=(4, 4, 4, 4)))
    data = bomb_latent_file(tmp_path / "bomb.mcl", model).read_bytes()
    assert len(data) < 2048
    with pytest.raises(MicrocaeError, match="bomb: the header claims 46340x46340 pixels, more "
                                            "than the limit"):
        parse_header(data, "bomb")


def test_zstd_latents_may_not_claim_more_than_the_payload_can_hold(monkeypatch):
    monkeypatch.setenv(MAX_PIXELS_ENV, str(1 << 31))
    latents = np.zeros((1, 4, 4, 4), dtype=np.float32)
    data = bytearray(write_container(latents, SourceInfo((16, 16), "uint8", "full", (0.0, 1.0)),
                                     16, "ab" * 32, "uint8", True))
    struct.pack_into("<II", data, 16, 40000, 40000)  # 6.25 M tiles from a ~30-byte frame
    body = bytes(data[:-4])
    with pytest.raises(MicrocaeError, match="bytes of latents cannot come from .* bytes of zstd"):
        read_container(body + struct.pack("<I", zlib.crc32(body)), "f")


# ---------------------------------------------------------------- memory-limited runs (7 and 9)

LIMITED = """
import json, resource, sys
import torch
torch.set_num_threads(1)
from microcae.cli import main
size = next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("VmSize"))
limit = size * 1024 + (1 << 30)  # what is mapped now + 1 GiB
resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
for argv in json.loads(sys.argv[1]):
    print(main(argv), flush=True)
    print("--", file=sys.stderr, flush=True)
"""


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="needs Linux /proc")
def test_crafted_inputs_under_a_memory_limit_give_one_line(tmp_path, model16):
    """Unfixed, these ask for 3.4 GiB (TIFF) and 16.2 GiB (latent file) and die of MemoryError."""
    from microcae.models.registry import load_model

    tiff = bomb_tiff(tmp_path / "bomb.tif")
    latent = bomb_latent_file(tmp_path / "bomb.mcl", load_model(model16))
    common = ["-m", str(model16), "-o", str(tmp_path / "out"), "--no-progress"]
    runs = [["encode", str(tiff), *common], ["decode", str(latent), *common]]
    env = {k: v for k, v in os.environ.items() if k != MAX_PIXELS_ENV} | {"PYTHONPATH": str(SRC)}
    run = subprocess.run([sys.executable, "-c", LIMITED, json.dumps(runs)], capture_output=True,
                         text=True, env=env, timeout=300)
    assert run.returncode == 0 and run.stdout.split() == ["2", "2"], run.stderr[-2000:]
    errors = [part.strip().splitlines() for part in run.stderr.split("--\n")[:2]]
    assert errors == [
        [f"microcae: error: {tiff}: the file claims 60000x60000 pixels, more than the limit of "
         f"{DEFAULT_MAX_PIXELS} (set MICROCAE_MAX_PIXELS to allow larger images)"],
        [f"microcae: error: {latent}: the header claims 46340x46340 pixels, more than the "
         f"limit of {DEFAULT_MAX_PIXELS} (set MICROCAE_MAX_PIXELS to allow larger images)"],
    ]
    assert not (tmp_path / "out").exists()


# ---------------------------------------------------------------- scrypt cost (item 10)

@pytest.mark.parametrize(("offset", "value", "shown"), [(37, 20, "log2 N=20, r=8, p=1"),
                                                        (37, 14, "log2 N=14, r=8, p=1"),
                                                        (38, 32, "log2 N=15, r=32, p=1"),
                                                        (39, 16, "log2 N=15, r=8, p=16")])
def test_only_microcaes_own_scrypt_cost_is_accepted(offset, value, shown, monkeypatch):
    secret = Secret(passphrase="correct horse")
    data = bytearray(write_container(np.ones((1, 4, 4, 4), np.float32),
                                     SourceInfo((16, 16), "uint8", "full", (0.0, 1.0)), 16,
                                     "ab" * 32, "float32", False, secret))
    data[FIXED_HEADER_BYTES + offset] = value

    def no_scrypt(*args: object) -> bytes:
        raise AssertionError("scrypt ran on a cost read from an edited header")

    monkeypatch.setattr(crypto, "_scrypt", no_scrypt)
    with pytest.raises(MicrocaeError) as caught:
        read_container(bytes(data), "f", secret)
    assert str(caught.value) == (f"f: corrupt header (scrypt cost {shown} is not the 15, 8, 1 "
                                 "microcae writes)")


# ---------------------------------------------------------------- JSON (item 11)

def _depth(value: object) -> int:
    """Recursive reference for nesting depth (fine for the small documents below)."""
    if isinstance(value, list):
        return 1 + max(map(_depth, value), default=0)
    if isinstance(value, dict):
        return 1 + max(map(_depth, value.values()), default=0)
    return 0


def _document(rng: random.Random, level: int = 0) -> object:
    roll = rng.random()
    if level > 6 or roll < 0.3:
        return rng.choice(['a\\', '\\"[', "{]", 1, None, "\\\\", '"', "é[", 2.5])
    if roll < 0.65:
        return [_document(rng, level + 1) for _ in range(rng.randint(0, 3))]
    return {rng.choice(["k", "[", '\\"{', "}"]): _document(rng, level + 1)
            for _ in range(rng.randint(0, 3))}


@pytest.mark.parametrize("chunk", [1, 2, 3, 7, 1 << 20])
def test_nesting_depth_matches_a_recursive_count_across_chunk_boundaries(monkeypatch, chunk):
    monkeypatch.setattr(safe_json, "_CHUNK", chunk)
    rng = random.Random(chunk)
    for _ in range(300):
        document = _document(rng)
        text = json.dumps(document, ensure_ascii=rng.random() < 0.5)
        assert nesting_depth(text) == nesting_depth(text.encode()) == _depth(document), text


def test_deep_or_large_json_is_a_value_error_not_a_recursion_error():
    deep = "[" * 100_000 + "]" * 100_000
    with pytest.raises(ValueError, match="JSON nested 100000 levels deep, more than the limit "
                                         "of 64"):
        loads_bounded(deep)
    assert loads_bounded('{"a": [[1]]}') == {"a": [[1]]}
    assert loads_bounded("[" * 64 + "]" * 64) == json.loads("[" * 64 + "]" * 64)
    with pytest.raises(ValueError, match="larger than the limit of 10"):
        loads_bounded('["0123456789"]', max_bytes=10)
    with pytest.raises(ValueError):
        loads_bounded("[1, 2")
    with pytest.raises(ValueError, match="too deeply"):  # a limit above Python's recursion limit
        loads_bounded(deep, max_depth=10**6, max_bytes=None)


def test_a_deeply_nested_prepared_set_manifest_is_one_line(tmp_path):
    write_png(tmp_path / "raw" / "a.png", synthetic_micrograph(64, 64))
    prepare_dataset([tmp_path / "raw"], tmp_path / "ds", tile=32, progress=False)
    manifest = tmp_path / "ds" / "manifest.json"
    text = manifest.read_text()
    manifest.write_text(text[:-1] + ', "x": ' + "[" * 100_000 + "]" * 100_000 + "}")
    with pytest.raises(MicrocaeError, match="corrupt prepared data set \\(JSON nested 100001"):
        load_dataset(tmp_path / "ds")
    damaged = json.loads(text)
    damaged["tiles"][0]["split"] = 3
    manifest.write_text(json.dumps(damaged))
    with pytest.raises(MicrocaeError, match="bad tile records"):
        load_dataset(tmp_path / "ds")
