"""Atomic file output: write to a temporary file beside the target, then rename."""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path


def _current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_path(target: str | os.PathLike[str], mode: int | None = None) -> Iterator[Path]:
    """Yield a temporary path that replaces ``target`` only if the block succeeds.

    Parameters
    ----------
    target
        Final file path. Its folder is created if missing.
    mode
        Permission bits of the final file; default: 0666 less the umask, as ``open`` would.
        The temporary file is 0600 from creation, so a private ``mode`` (e.g. 0600 for keys)
        is never wider at any moment.

    Yields
    ------
    Path
        A fresh path in the same folder (same file system, so the rename is atomic). The block
        writes the complete file there; on any exception the temporary file is removed and
        ``target`` is left as it was.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        os.chmod(tmp, (0o666 & ~_current_umask()) if mode is None else mode)
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_bytes_atomic(target: str | os.PathLike[str], data: bytes) -> None:
    """Write ``data`` to ``target`` atomically (see :func:`atomic_path`)."""
    with atomic_path(target) as tmp:
        tmp.write_bytes(data)


def write_text_atomic(target: str | os.PathLike[str], text: str) -> None:
    """Write UTF-8 ``text`` to ``target`` atomically (see :func:`atomic_path`)."""
    write_bytes_atomic(target, text.encode("utf-8"))
