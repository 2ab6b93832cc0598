"""Whole-image stream files of the hyperprior codec: round trip, encryption, damage, determinism."""

from __future__ import annotations

import hashlib
import subprocess
import sys

import numpy as np
import pytest
import torch
from conftest import synthetic_micrograph

from microcae.codec import Secret
from microcae.codec.container import STREAM, parse_header, unseal
from microcae.codec.latent_files import decode_bytes, encode_image
from microcae.data.images import micrograph_from_array
from microcae.models import save_model
from microcae.models.hyperprior import HyperpriorCodec, HyperpriorConfig
from microcae.models.inference import decompress_whole
from microcae.util.errors import MicrocaeError

KEY = Secret(key=bytes(range(32)))


@pytest.fixture(scope="module")
def codec() -> HyperpriorCodec:
    torch.manual_seed(0)
    model = HyperpriorCodec(HyperpriorConfig(N=8, M=12)).eval()
    model.update()
    return model


@pytest.fixture(scope="module")
def image() -> np.ndarray:
    return synthetic_micrograph(90, 140, seed=4)


def test_a_stream_file_round_trips_to_the_models_own_decode(codec, image):
    micrograph = micrograph_from_array(image, scaling="full")
    data = encode_image(codec, micrograph)
    header = parse_header(data, "x")
    assert header.latent_dtype == STREAM and header.source.shape == (90, 140)
    assert header.fingerprint == codec.fingerprint()
    decoded = decode_bytes(codec, data, "x")
    _, body = unseal(data, "x")
    with torch.no_grad():
        direct = codec.double().decompress(body, (2, 3), (90, 140))["x_hat"][0, 0].numpy()
    codec.float()
    np.testing.assert_array_equal(decoded.pixels, np.clip(direct, 0, 1).astype(np.float32))
    assert decoded.stored.dtype == np.uint8 and decoded.stored.shape == (90, 140)


def test_encrypted_streams_need_the_key_and_detect_tampering(codec, image):
    data = encode_image(codec, micrograph_from_array(image, scaling="full"), secret=KEY)
    plain = decode_bytes(codec, encode_image(codec, micrograph_from_array(image, scaling="full")),
                         "p")
    np.testing.assert_array_equal(decode_bytes(codec, data, "e", KEY).pixels, plain.pixels)
    with pytest.raises(MicrocaeError, match="encrypted"):
        decode_bytes(codec, data, "e")
    flipped = bytearray(data)
    flipped[-20] ^= 1
    with pytest.raises(MicrocaeError):
        decode_bytes(codec, bytes(flipped), "e", KEY)


def test_every_truncation_and_many_bit_flips_of_a_stream_file_are_one_line_errors(codec, image):
    data = encode_image(codec, micrograph_from_array(image, scaling="full"))
    rng = np.random.default_rng(0)
    damaged = [data[:n] for n in range(0, len(data), 7)]
    for position in rng.integers(0, len(data), 60):
        flipped = bytearray(data)
        flipped[position] ^= 1 << int(rng.integers(8))
        damaged.append(bytes(flipped))
    for bad in damaged:
        with pytest.raises(MicrocaeError) as caught:
            decode_bytes(codec, bad, "bad")
        assert "\n" not in str(caught.value) and str(caught.value).startswith("bad: ")


def test_a_dtype_option_is_refused_for_whole_image_codecs(codec, image):
    with pytest.raises(MicrocaeError, match="does not apply"):
        encode_image(codec, micrograph_from_array(image, scaling="full"), latent_dtype="uint8")


def test_decoded_bits_do_not_depend_on_threads_or_the_process(codec, image, tmp_path):
    data = encode_image(codec, micrograph_from_array(image, scaling="full"))
    _, body = unseal(data, "x")
    threads = torch.get_num_threads()
    digests = []
    try:
        for count in (1, 2):
            torch.set_num_threads(count)
            digests.append(hashlib.sha256(decompress_whole(codec, body, (90, 140))).hexdigest())
    finally:
        torch.set_num_threads(threads)
    model_path, stream_path = tmp_path / "codec.safetensors", tmp_path / "x.bin"
    save_model(codec, model_path)
    stream_path.write_bytes(body)
    code = (
        "import hashlib, pathlib\n"
        "from microcae.models import load_model\n"
        "from microcae.models.inference import decompress_whole\n"
        f"model = load_model({str(model_path)!r})\n"
        f"body = pathlib.Path({str(stream_path)!r}).read_bytes()\n"
        "print(hashlib.sha256(decompress_whole(model, body, (90, 140))).hexdigest())\n"
    )
    fresh = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                           timeout=300, check=True).stdout.strip()
    assert digests[0] == digests[1] == fresh


def test_whole_images_have_no_tile_seams(codec):
    # a tiled codec's error concentrates on its tile borders; a whole-image codec's does not
    image = synthetic_micrograph(512, 512, seed=9)
    decoded = decode_bytes(codec, encode_image(codec, micrograph_from_array(image,
                                                                            scaling="full")), "s")
    error = (decoded.pixels.astype(np.float64) - image) ** 2
    grid = [255, 256]  # the pixel rows/columns either side of the old 256-px tile border
    on_grid = np.concatenate([error[grid, :].ravel(), error[:, grid].ravel()]).mean()
    inner = np.delete(np.delete(error, grid, axis=0), grid, axis=1)
    assert on_grid <= 1.5 * inner.mean()
