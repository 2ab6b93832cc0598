"""Secrets: NFC passphrases, tamper vs wrong key, unneeded keys, shared key files."""

from __future__ import annotations

import os
import unicodedata
import warnings

import numpy as np
import pytest
from conftest import synthetic_micrograph, write_png
from cryptography.hazmat.primitives.kdf.scrypt import Scrypt

from microcae.cli import main
from microcae.codec import Secret, crypto, generate_key, read_key_file, write_key_file
from microcae.codec.container import FIXED_HEADER_BYTES, SourceInfo, read_container, write_container
from microcae.util.errors import MicrocaeError, MicrocaeWarning

SOURCE = SourceInfo((30, 30), "uint8", "full", (0.0, 255.0))
LATENTS = np.random.default_rng(4).random((4, 4, 4, 4)).astype(np.float32)
NFC, NFD = unicodedata.normalize("NFC", "café crème"), unicodedata.normalize("NFD", "café crème")
KEY_ID = slice(FIXED_HEADER_BYTES + 1, FIXED_HEADER_BYTES + 9)
SALT = slice(FIXED_HEADER_BYTES + 21, FIXED_HEADER_BYTES + 37)


def _encrypted(secret: Secret) -> bytes:
    return write_container(LATENTS, SOURCE, 16, "ef" * 32, "float32", False, secret)


def _legacy_key_block(secret: Secret) -> tuple[crypto.KeyBlock, bytes]:
    """The writer before normalisation: scrypt over the passphrase's bytes as typed."""
    salt, nonce = os.urandom(16), os.urandom(12)
    key = Scrypt(salt=salt, length=32, n=2**15, r=8, p=1).derive(secret.passphrase.encode())
    return crypto.KeyBlock(2, crypto.key_id(key), nonce, salt, 15, 8, 1), key


def test_nfc_and_nfd_passphrases_give_the_same_key():
    assert NFC != NFD
    data = _encrypted(Secret(passphrase=NFD))  # typed on macOS
    _, latents = read_container(data, "f", Secret(passphrase=NFC))  # typed on Linux
    np.testing.assert_array_equal(latents, LATENTS)
    salt = data[SALT]
    expected = Scrypt(salt=salt, length=32, n=2**15, r=8, p=1).derive(NFC.encode("utf-8"))
    assert data[KEY_ID] == crypto.key_id(expected)  # the NFC bytes went into scrypt


@pytest.mark.parametrize(("written", "typed"), [(NFD, NFD), (NFD, NFC), (NFC, NFD)])
def test_files_written_before_normalisation_still_open(monkeypatch, written, typed):
    monkeypatch.setattr(crypto, "new_key_block", _legacy_key_block)
    data = _encrypted(Secret(passphrase=written))
    monkeypatch.undo()
    _, latents = read_container(data, "f", Secret(passphrase=typed))
    np.testing.assert_array_equal(latents, LATENTS)
    with pytest.raises(MicrocaeError, match="f: wrong passphrase"):
        read_container(data, "f", Secret(passphrase="cafe creme"))


def test_a_damaged_key_id_is_tamper_not_wrong_key():
    key = generate_key()
    data = bytearray(_encrypted(Secret(key=key)))
    data[KEY_ID.start + 3] ^= 0x10
    with pytest.raises(MicrocaeError) as caught:
        read_container(bytes(data), "f", Secret(key=key))
    assert str(caught.value) == ("f: corrupt or tampered header (the key id was changed; the key "
                                 "is right)")
    with pytest.raises(MicrocaeError, match="f: wrong key \\(the file was encrypted with another"):
        read_container(bytes(data), "f", Secret(key=generate_key()))
    pass_data = bytearray(_encrypted(Secret(passphrase=NFC)))
    pass_data[KEY_ID.start] ^= 0x01
    with pytest.raises(MicrocaeError, match="f: corrupt or tampered header"):
        read_container(bytes(pass_data), "f", Secret(passphrase=NFD))


def test_a_damaged_salt_says_it_cannot_be_told_from_a_wrong_passphrase():
    data = bytearray(_encrypted(Secret(passphrase=NFC)))
    data[SALT.start] ^= 0x01
    with pytest.raises(MicrocaeError) as caught:
        read_container(bytes(data), "f", Secret(passphrase=NFC))
    assert str(caught.value) == ("f: wrong passphrase (the file was encrypted with another one, "
                                 "or its salt is damaged: the two cannot be told apart)")


def test_a_key_for_a_plain_file_is_a_warning(tmp_path, capsys, tiny_model_file):
    key = write_key_file(tmp_path / "k.key", generate_key())
    write_png(tmp_path / "raw" / "a.png", synthetic_micrograph(40, 40))
    assert main(["encode", str(tmp_path / "raw"), "-m", str(tiny_model_file), "-o",
                 str(tmp_path / "lat"), "--no-progress"]) == 0
    capsys.readouterr()
    assert main(["decode", str(tmp_path / "lat" / "a.mcl"), "-m", str(tiny_model_file), "-o",
                 str(tmp_path / "dec"), "--key", str(key), "--no-progress"]) == 0
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"microcae: warning: {tmp_path / 'lat' / 'a.mcl'}: the file is not encrypted; "
                   "the key or passphrase given was not needed"]
    assert (tmp_path / "dec" / "a.png").exists()


@pytest.mark.skipif(os.name != "posix", reason="POSIX permission bits")
def test_a_key_file_others_can_read_gets_a_warning(tmp_path):
    path = write_key_file(tmp_path / "k.key", generate_key())
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        read_key_file(path)  # 0600: silent
    path.chmod(0o644)
    with pytest.warns(MicrocaeWarning, match=r"k.key: key file can be read or changed by other "
                                             r"users \(mode 0644\); make it private with: "
                                             r"chmod 600"):
        read_key_file(path)
    path.chmod(0o640)
    with pytest.warns(MicrocaeWarning, match="by its group"):
        read_key_file(path)
