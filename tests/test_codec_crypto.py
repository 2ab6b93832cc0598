"""Encryption: AES-256-GCM with the header as associated data; key files; passphrases."""

from __future__ import annotations

import stat

import numpy as np
import pytest
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.scrypt import Scrypt

from microcae.codec import Secret, generate_key, read_key_file, write_key_file
from microcae.codec.container import FIXED_HEADER_BYTES, SourceInfo, read_container, write_container
from microcae.codec.quantise import quantise
from microcae.util.errors import MicrocaeError

SOURCE = SourceInfo((30, 30), "uint8", "full", (0.0, 255.0))
LATENTS = np.random.default_rng(2).random((4, 4, 4, 4)).astype(np.float32)


def _encrypted(secret: Secret, dtype: str = "float32", compress: bool = False) -> bytes:
    return write_container(LATENTS, SOURCE, 16, "ef" * 32, dtype, compress, secret)


def test_key_file_round_trip_is_private_and_never_overwritten(tmp_path):
    key = generate_key()
    path = write_key_file(tmp_path / "k.key", key)
    assert read_key_file(path) == key and len(key) == 32
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert path.read_text().splitlines()[0] == "microcae secret key v1"
    with pytest.raises(MicrocaeError, match="already exists"):
        write_key_file(path, generate_key())
    assert read_key_file(path) == key
    assert generate_key() != generate_key()


@pytest.mark.parametrize("text", ["", "hello\n", "microcae secret key v1\n!!!\n",
                                  "microcae secret key v1\nAAAA\n"])
def test_bad_key_files_are_refused(tmp_path, text):
    path = tmp_path / "bad.key"
    path.write_text(text)
    with pytest.raises(MicrocaeError, match="key file"):
        read_key_file(path)


def test_ciphertext_is_aes_gcm_of_the_payload_with_the_header_as_associated_data():
    key = generate_key()
    data = _encrypted(Secret(key=key))
    head_end = FIXED_HEADER_BYTES + 40
    nonce = data[FIXED_HEADER_BYTES + 9 : FIXED_HEADER_BYTES + 21]
    plain = AESGCM(key).decrypt(nonce, data[head_end:], data[:head_end])  # independent decrypt
    assert plain == quantise(LATENTS, "float32")
    _, latents = read_container(data, "f", Secret(key=key))
    np.testing.assert_array_equal(latents, LATENTS)


def test_every_file_gets_a_fresh_nonce():
    secret = Secret(key=generate_key())
    first, second = _encrypted(secret), _encrypted(secret)
    assert first[FIXED_HEADER_BYTES + 9 : FIXED_HEADER_BYTES + 21] != (
        second[FIXED_HEADER_BYTES + 9 : FIXED_HEADER_BYTES + 21]
    )
    assert first[-100:] != second[-100:]


def test_passphrase_key_is_scrypt_with_the_stored_salt_and_cost():
    data = _encrypted(Secret(passphrase="correct horse"), "uint8", compress=True)
    block = data[FIXED_HEADER_BYTES : FIXED_HEADER_BYTES + 40]
    assert block[0] == 2 and tuple(block[37:40]) == (15, 8, 1)
    salt, nonce = block[21:37], block[9:21]
    key = Scrypt(salt=salt, length=32, n=2**15, r=8, p=1).derive(b"correct horse")
    AESGCM(key).decrypt(nonce, data[FIXED_HEADER_BYTES + 40 :], data[: FIXED_HEADER_BYTES + 40])
    _, latents = read_container(data, "f", Secret(passphrase="correct horse"))
    assert np.abs(latents - LATENTS).max() < 1 / 255
    with pytest.raises(MicrocaeError, match="f: wrong passphrase"):
        read_container(data, "f", Secret(passphrase="correct horse "))


def test_missing_wrong_or_mismatched_secrets_are_named():
    data = _encrypted(Secret(key=generate_key()))
    with pytest.raises(MicrocaeError, match="f: the file is encrypted; give --key KEYFILE"):
        read_container(data, "f")
    with pytest.raises(MicrocaeError, match="f: wrong key"):
        read_container(data, "f", Secret(key=generate_key()))
    with pytest.raises(MicrocaeError, match="encrypted with a key file; give --key"):
        read_container(data, "f", Secret(passphrase="x"))


def test_tampering_with_header_or_ciphertext_fails_authentication():
    secret = Secret(key=generate_key())
    data = bytearray(_encrypted(secret))
    data[24] ^= 0x01  # low byte of value_range's low end: still a valid header
    with pytest.raises(MicrocaeError, match="authentication failed"):
        read_container(bytes(data), "f", secret)
    data[24] ^= 0x01
    data[-20] ^= 0x80
    with pytest.raises(MicrocaeError, match="authentication failed"):
        read_container(bytes(data), "f", secret)
