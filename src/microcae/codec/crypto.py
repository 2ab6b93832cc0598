"""Keys, passphrases and AES-256-GCM sealing of latent payloads.

A latent file is encrypted with a 256-bit key that comes either from a key file written by
:func:`write_key_file` (``microcae keygen``) or from a passphrase stretched with scrypt
(Percival & Josefsson, RFC 7914) and a random per-file salt. The cipher is AES-256-GCM
(NIST SP 800-38D) from ``cryptography``; the file header is the associated data, so a change
to any header byte fails authentication just as a change to the ciphertext does.

Passphrases are Unicode-normalised (NFC) before scrypt, so "café" typed as NFC on one machine and
NFD on another (macOS) gives the same key. A reader accepts only the scrypt cost microcae writes,
so an edited header cannot make it spend gigabytes or minutes before "wrong passphrase".
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import hashlib
import os
import stat
import struct
import unicodedata
import warnings
from dataclasses import dataclass
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.scrypt import Scrypt

from microcae.util.atomic import atomic_path
from microcae.util.errors import MicrocaeError, MicrocaeWarning

KEY_BYTES = 32
NONCE_BYTES = 12
SALT_BYTES = 16
KEY_ID_BYTES = 8
TAG_BYTES = 16
KEY_FILE_TITLE = "microcae secret key v1"

SCRYPT_LOG2_N = 15
"""scrypt cost: N = 2**15, r = 8, p = 1 (32 MiB, about 0.1 s per file). The only cost microcae
writes, and the only one it reads: a header asking for another is corrupt."""
SCRYPT_R = 8
SCRYPT_P = 1

KIND_KEY_FILE = 1
KIND_PASSPHRASE = 2

_BLOCK = struct.Struct(f"<B{KEY_ID_BYTES}s{NONCE_BYTES}s{SALT_BYTES}sBBB")
KEY_BLOCK_BYTES = _BLOCK.size
"""Size in bytes of a serialised :class:`KeyBlock` (40)."""


@dataclass(frozen=True)
class Secret:
    """What the owner holds: a raw 32-byte key (from a key file) or a passphrase.

    Exactly one of ``key`` and ``passphrase`` is set.
    """

    key: bytes | None = None
    passphrase: str | None = None

    def __post_init__(self) -> None:
        if (self.key is None) == (self.passphrase is None):
            raise ValueError("give exactly one of key and passphrase")
        if self.key is not None and len(self.key) != KEY_BYTES:
            raise ValueError(f"a key has {KEY_BYTES} bytes, got {len(self.key)}")
        if self.passphrase is not None and not self.passphrase:
            raise MicrocaeError("the passphrase is empty")

    @property
    def kind(self) -> int:
        """:data:`KIND_KEY_FILE` or :data:`KIND_PASSPHRASE`."""
        return KIND_KEY_FILE if self.key is not None else KIND_PASSPHRASE


@dataclass(frozen=True)
class KeyBlock:
    """The public encryption parameters stored in a file header.

    Attributes
    ----------
    kind
        :data:`KIND_KEY_FILE` or :data:`KIND_PASSPHRASE`.
    key_id
        First 8 bytes of SHA-256 over a domain tag and the key: tells a wrong key from a
        tampered file without revealing anything useful about the key.
    nonce
        12-byte random GCM nonce, fresh for every file.
    salt
        16-byte random scrypt salt (zeros for key files).
    log2_n, r, p
        scrypt cost parameters (zeros for key files).
    """

    kind: int
    key_id: bytes
    nonce: bytes
    salt: bytes = bytes(SALT_BYTES)
    log2_n: int = 0
    r: int = 0
    p: int = 0

    def to_bytes(self) -> bytes:
        """Serialise to :data:`KEY_BLOCK_BYTES` bytes (layout in ``docs/FORMAT.md``)."""
        return _BLOCK.pack(
            self.kind, self.key_id, self.nonce, self.salt, self.log2_n, self.r, self.p
        )

    @classmethod
    def from_bytes(cls, data: bytes, label: str) -> KeyBlock:
        """Parse and validate :meth:`to_bytes` output; raise :class:`MicrocaeError` otherwise."""
        kind, key_id, nonce, salt, log2_n, r, p = _BLOCK.unpack(data)
        if kind == KIND_KEY_FILE:
            if salt != bytes(SALT_BYTES) or (log2_n, r, p) != (0, 0, 0):
                raise MicrocaeError(f"{label}: corrupt header (key-file block with scrypt fields)")
        elif kind == KIND_PASSPHRASE:
            if (log2_n, r, p) != (SCRYPT_LOG2_N, SCRYPT_R, SCRYPT_P):
                raise MicrocaeError(
                    f"{label}: corrupt header (scrypt cost log2 N={log2_n}, r={r}, p={p} is not "
                    f"the {SCRYPT_LOG2_N}, {SCRYPT_R}, {SCRYPT_P} microcae writes)"
                )
        else:
            raise MicrocaeError(f"{label}: corrupt header (unknown key kind {kind})")
        return cls(kind, key_id, nonce, salt, log2_n, r, p)


def generate_key() -> bytes:
    """Return 32 bytes from the operating system's cryptographic random source."""
    return os.urandom(KEY_BYTES)


def key_id(key: bytes) -> bytes:
    """8-byte identifier of a 32-byte key (SHA-256 with a domain-separation prefix)."""
    return hashlib.sha256(b"microcae key id\x00" + key).digest()[:KEY_ID_BYTES]


def write_key_file(path: str | Path, key: bytes, overwrite: bool = False) -> Path:
    """Write ``key`` as a two-line text file readable only by its owner (mode 0600).

    Parameters
    ----------
    path
        Target file, written atomically.
    key
        32 bytes, e.g. from :func:`generate_key`.
    overwrite
        Replace an existing file; otherwise an existing file is an error (keys are not
        replaced by accident: files encrypted with the old key would be lost).
    """
    path = Path(path)
    if path.exists() and not overwrite:
        raise MicrocaeError(f"{path}: already exists (a key is never replaced; use --force)")
    if len(key) != KEY_BYTES:
        raise ValueError(f"a key has {KEY_BYTES} bytes, got {len(key)}")
    text = f"{KEY_FILE_TITLE}\n{base64.b64encode(key).decode('ascii')}\n"
    with atomic_path(path, mode=0o600) as tmp:
        tmp.write_text(text, encoding="ascii")
    return path


def read_key_file(path: str | Path) -> bytes:
    """Read a key written by :func:`write_key_file`.

    Raises
    ------
    MicrocaeError
        If the file is missing or is not a microcae key file.
    """
    path = Path(path)
    if not path.is_file():
        raise MicrocaeError(f"{path}: no such key file")
    lines = path.read_bytes()[:4096].decode("ascii", errors="replace").strip().splitlines()
    if len(lines) != 2 or lines[0].strip() != KEY_FILE_TITLE:
        raise MicrocaeError(f"{path}: not a microcae key file (make one with 'microcae keygen')")
    try:
        key = base64.b64decode(lines[1].strip(), validate=True)
    except (binascii.Error, ValueError):
        raise MicrocaeError(f"{path}: corrupt key file (bad base64)") from None
    if len(key) != KEY_BYTES:
        raise MicrocaeError(f"{path}: corrupt key file ({len(key)} bytes instead of {KEY_BYTES})")
    _warn_if_shared(path)
    return key


def _warn_if_shared(path: Path) -> None:
    """Warn when users other than the owner may read or change a key file (POSIX modes)."""
    mode = stat.S_IMODE(path.stat().st_mode)
    if os.name == "posix" and mode & 0o077:
        who = "other users" if mode & 0o007 else "its group"
        warnings.warn(f"{path}: key file can be read or changed by {who} (mode {mode:04o}); "
                      f"make it private with: chmod 600 {path}", MicrocaeWarning, stacklevel=3)


def passphrase_forms(passphrase: str) -> list[str]:
    """List the passphrase as scrypt gets it (NFC), then the other forms old files may use.

    Files written before normalisation used the passphrase as typed; the typed form and its
    NFD form (macOS input) are tried after NFC, so such files still open.
    """
    forms = [unicodedata.normalize("NFC", passphrase), passphrase,
             unicodedata.normalize("NFD", passphrase)]
    return list(dict.fromkeys(forms))


def _scrypt(passphrase: str, salt: bytes) -> bytes:
    kdf = Scrypt(salt=salt, length=KEY_BYTES, n=2**SCRYPT_LOG2_N, r=SCRYPT_R, p=SCRYPT_P)
    return kdf.derive(passphrase.encode("utf-8"))


def new_key_block(secret: Secret) -> tuple[KeyBlock, bytes]:
    """Make fresh encryption parameters for one file.

    Parameters
    ----------
    secret
        The owner's key or passphrase (normalised to NFC before scrypt).

    Returns
    -------
    block, key
        The header's :class:`KeyBlock` (random nonce, and salt for passphrases) and the
        32-byte AES key to encrypt with.
    """
    nonce = os.urandom(NONCE_BYTES)
    if secret.key is not None:
        return KeyBlock(KIND_KEY_FILE, key_id(secret.key), nonce), secret.key
    salt = os.urandom(SALT_BYTES)
    key = _scrypt(passphrase_forms(secret.passphrase or "")[0], salt)
    return KeyBlock(KIND_PASSPHRASE, key_id(key), nonce, salt, SCRYPT_LOG2_N, SCRYPT_R,
                    SCRYPT_P), key


def _candidate_keys(secret: Secret | None, block: KeyBlock, label: str) -> list[bytes]:
    """Keys ``secret`` may stand for in a file with ``block``, most likely first."""
    wanted = "--passphrase" if block.kind == KIND_PASSPHRASE else "--key KEYFILE"
    if secret is None:
        raise MicrocaeError(f"{label}: the file is encrypted; give {wanted}")
    if secret.kind != block.kind:
        raise MicrocaeError(f"{label}: the file was encrypted with a "
                            f"{'passphrase' if block.kind == KIND_PASSPHRASE else 'key file'}; "
                            f"give {wanted}")
    if secret.key is not None:
        return [secret.key]
    return [_scrypt(form, block.salt) for form in passphrase_forms(secret.passphrase or "")]


def _authentic(key: bytes, nonce: bytes, ciphertext: bytes, header: bytes) -> bool:
    try:
        AESGCM(key).decrypt(nonce, ciphertext, header)
    except InvalidTag:
        return False
    return True


def unlock(secret: Secret | None, block: KeyBlock, label: str, header: bytes,
           ciphertext: bytes) -> bytes:
    """Return the AES key for a file, or explain in one line why ``secret`` cannot open it.

    Parameters
    ----------
    secret
        The key or passphrase given (None: none given).
    block
        The file's key block.
    label
        File name for messages.
    header, ciphertext
        The file's header (the associated data, ending with the key block) and sealed payload:
        used only when the key id does not match, to tell a wrong secret from a damaged key id.

    Raises
    ------
    MicrocaeError
        No or the wrong kind of secret; a wrong key or passphrase; or the right key with a
        damaged key-id field ("corrupt or tampered": the header authenticates once the key id
        is restored).
    """
    keys = _candidate_keys(secret, block, label)
    for key in keys:
        if key_id(key) == block.key_id:
            return key
    restored = dataclasses.replace(block, key_id=key_id(keys[0])).to_bytes()
    if _authentic(keys[0], block.nonce, ciphertext, header[:-KEY_BLOCK_BYTES] + restored):
        raise MicrocaeError(f"{label}: corrupt or tampered header (the key id was changed; "
                            "the key is right)")
    if block.kind == KIND_PASSPHRASE:
        raise MicrocaeError(f"{label}: wrong passphrase (the file was encrypted with another "
                            "one, or its salt is damaged: the two cannot be told apart)")
    raise MicrocaeError(f"{label}: wrong key (the file was encrypted with another one)")


def seal(key: bytes, nonce: bytes, plaintext: bytes, header: bytes) -> bytes:
    """AES-256-GCM encrypt ``plaintext``; returns ciphertext followed by the 16-byte tag."""
    return AESGCM(key).encrypt(nonce, plaintext, header)


def open_sealed(key: bytes, nonce: bytes, ciphertext: bytes, header: bytes, label: str) -> bytes:
    """Decrypt and authenticate :func:`seal` output together with its ``header``."""
    try:
        return AESGCM(key).decrypt(nonce, ciphertext, header)
    except InvalidTag:
        raise MicrocaeError(
            f"{label}: authentication failed: the file was tampered with or is corrupt"
        ) from None
