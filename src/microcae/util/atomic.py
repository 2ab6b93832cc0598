"""Safe file output: check targets before the work, write to a temporary file, then rename.

Temporary files and folders are named ``.NAME.~PID-HOST-XXXXXXXX.microcae-tmp`` (``HOST``:
8 hex digits of a hash of the host name). A process killed with ``kill -9`` cannot remove its
own; the next write into the same folder removes those of this host whose process is no longer
running (:func:`remove_stale_temporaries`). Nothing else is ever removed.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import shutil
import socket
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path

from microcae.util.errors import MicrocaeError

TEMP_SUFFIX = ".microcae-tmp"
_HOST = hashlib.sha256(socket.gethostname().encode("utf-8", "replace")).hexdigest()[:8]
_TEMP_NAME = re.compile(r"^\..*\.~(?P<pid>\d+)-(?P<host>[0-9a-f]{8})-[A-Za-z0-9_]+"
                        + re.escape(TEMP_SUFFIX) + "$")
_swept: set[str] = set()


def _current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def default_mode(folder: bool = False) -> int:
    """Permission bits a new file (0666) or folder (0777) gets under the current umask."""
    return (0o777 if folder else 0o666) & ~_current_umask()


def temp_prefix(name: str) -> str:
    """Prefix of this process's temporary files for a target called ``name``."""
    return f".{name}.~{os.getpid()}-{_HOST}-"


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError, OSError):
        return True  # another user's process (or an unusable number): keep its files
    return True


def remove_stale_temporaries(folder: str | os.PathLike[str]) -> list[Path]:
    """Remove microcae temporaries in ``folder`` left by dead processes of this host.

    Only names of microcae's pattern (see the module docstring) whose host hash is this
    host's and whose process id is no longer running are removed; files of live processes,
    of other hosts (a shared network folder) and every other file are left alone. Each folder
    is swept once per process. Errors are ignored (the sweep is housekeeping).

    Returns
    -------
    list of Path
        What was removed.
    """
    folder = Path(folder)
    key = os.path.abspath(folder)
    if key in _swept:
        return []
    _swept.add(key)
    removed = []
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return []
    for entry in entries:
        match = _TEMP_NAME.match(entry.name)
        if not match or match["host"] != _HOST or _process_alive(int(match["pid"])):
            continue
        with contextlib.suppress(OSError):
            if entry.is_dir(follow_symlinks=False):
                shutil.rmtree(entry.path)
            else:
                os.unlink(entry.path)
            removed.append(Path(entry.path))
    return removed


def _reason(exc: OSError) -> str:
    if exc.errno is None:  # e.g. NumPy's short write "N requested and M written"
        return f"{str(exc) or exc.__class__.__name__}; is the disk full?"
    return exc.strerror or str(exc)


def output_error(path: str | os.PathLike[str], exc: OSError) -> MicrocaeError:
    """Make the one-line error for an output that cannot be written (path and reason)."""
    return MicrocaeError(f"{path}: cannot write ({_reason(exc)})")


def check_output_folder(folder: str | os.PathLike[str]) -> Path:
    """Check, without creating anything that stays, that files can be written in ``folder``.

    If ``folder`` does not exist, its nearest existing ancestor must be a writable folder
    (``folder`` is created later, when the first file is written). The check creates and
    removes one empty temporary file, so read-only file systems, permissions and ACLs are all
    tested as the real write will meet them. (A full disk is found only when writing; the
    writers then report it in one line too.)

    Raises
    ------
    MicrocaeError
        One line naming ``folder`` and the reason.
    """
    folder = Path(folder)
    existing = folder
    while not existing.exists() and existing.parent != existing:
        if existing.is_symlink():
            raise MicrocaeError(f"{folder}: cannot write ({existing} is a broken link)")
        existing = existing.parent
    if not existing.is_dir():
        where = "is a file, not a folder" if existing == folder else f"{existing} is a file"
        raise MicrocaeError(f"{folder}: cannot write ({where})")
    try:
        fd, probe = tempfile.mkstemp(prefix=temp_prefix("probe"), suffix=TEMP_SUFFIX,
                                     dir=existing)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise output_error(folder, exc) from None
    return folder


def _same_file(path: Path, others: list[os.stat_result]) -> bool:
    try:
        stat = path.stat()
    except OSError:
        return False
    return any(stat.st_dev == o.st_dev and stat.st_ino == o.st_ino for o in others)


def check_output_files(
    targets: Iterable[str | os.PathLike[str]],
    force: bool = False,
    protected: Iterable[str | os.PathLike[str]] = (),
    flag: str = "--force",
) -> list[Path]:
    """Check every output file of a job before the job starts.

    Parameters
    ----------
    targets
        Files the job will write.
    force
        Allow replacing existing files (the user gave ``flag``).
    protected
        The job's input files: never replaced, not even with ``force``.
    flag
        The option that allows replacing, named in the message.

    Returns
    -------
    list of Path
        ``targets`` as paths.

    Raises
    ------
    MicrocaeError
        One line naming the first target that is a folder, is one of the inputs, exists
        (without ``force``), or lies in a folder that cannot be written.
    """
    paths = [Path(t) for t in targets]
    inputs = []
    for item in protected:
        with contextlib.suppress(OSError):
            inputs.append(Path(item).stat())
    for folder in dict.fromkeys(p.parent for p in paths):
        check_output_folder(folder)
    for path in paths:
        if path.is_dir():
            raise MicrocaeError(f"{path}: is a folder; it cannot be replaced by a file")
        if _same_file(path, inputs):
            raise MicrocaeError(f"{path}: is one of the inputs; it is never replaced "
                                "(choose another --out)")
        if path.exists() and not force:
            raise MicrocaeError(f"{path}: already exists (use {flag} to replace it)")
    return paths


def output_names(inputs: Iterable[str | os.PathLike[str]], out_dir: str | os.PathLike[str],
                 suffix: str) -> list[Path]:
    """``out_dir / (stem + suffix)`` for each input, refusing two inputs with one output name.

    Raises
    ------
    MicrocaeError
        Naming both inputs when their outputs would collide (e.g. ``a/x.png`` and ``b/x.png``).
    """
    seen: dict[Path, Path] = {}
    targets = []
    for source in map(Path, inputs):
        target = Path(out_dir) / f"{source.stem}{suffix}"
        if target in seen:
            raise MicrocaeError(f"{source}: same output name {target.name} as {seen[target]}")
        seen[target] = source
        targets.append(target)
    return targets


def make_temp_folder(target: str | os.PathLike[str]) -> Path:
    """Create a private (0700) temporary folder beside ``target`` with microcae's pattern.

    The caller fills it, sets its mode (:func:`default_mode`) and renames it into place; a
    folder left by a killed process is removed by a later :func:`remove_stale_temporaries`.
    """
    target = Path(target)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        remove_stale_temporaries(target.parent)
        return Path(tempfile.mkdtemp(prefix=temp_prefix(target.name), suffix=TEMP_SUFFIX,
                                     dir=target.parent))
    except OSError as exc:
        raise output_error(target, exc) from None


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

    Raises
    ------
    MicrocaeError
        If the folder or file cannot be written (permissions, read-only file system, full
        disk): one line naming ``target``. Other exceptions of the block pass through.
    """
    target = Path(target)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        remove_stale_temporaries(target.parent)
        fd, tmp_name = tempfile.mkstemp(prefix=temp_prefix(target.name), suffix=TEMP_SUFFIX,
                                        dir=target.parent)
        os.close(fd)
    except OSError as exc:
        raise output_error(target, exc) from None
    tmp = Path(tmp_name)
    try:
        yield tmp
        os.chmod(tmp, default_mode() if mode is None else mode)
        os.replace(tmp, target)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise output_error(target, exc) from None
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
