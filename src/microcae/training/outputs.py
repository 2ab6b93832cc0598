"""The files a training run writes beside ``NAME.safetensors``, and the checks before it starts.

``NAME.safetensors`` (the model, written once at the end), ``NAME.checkpoint.safetensors`` (every
epoch), ``NAME.train.csv`` and ``NAME.train.json`` (the per-epoch log). The command line adds
``NAME.loss.png``.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Sequence
from pathlib import Path

from microcae.util.atomic import write_text_atomic
from microcae.util.errors import MicrocaeError
from microcae.util.table_writer import csv_text


def side_file(out: Path, suffix: str) -> Path:
    """Path beside the model file ``NAME.safetensors``: ``NAME`` + ``suffix``."""
    return out.with_name(out.name.removesuffix(".safetensors") + suffix)


def output_files(out: Path) -> dict[str, Path]:
    """Return the run's files by role: ``model``, ``checkpoint``, ``log_csv`` and ``log_json``."""
    return {"model": out, "checkpoint": side_file(out, ".checkpoint.safetensors"),
            "log_csv": side_file(out, ".train.csv"), "log_json": side_file(out, ".train.json")}


def check_output(out: Path, overwrite: bool) -> None:
    """Refuse, before any work, a model file that exists or a place that cannot be written.

    Missing folders are not created here (the first write creates them); the nearest existing
    one must take a new file. (To be replaced by the shared check of :mod:`microcae.util.atomic`.)

    Parameters
    ----------
    out
        The model file to write.
    overwrite
        Allow replacing an existing model file (``--force``).

    Raises
    ------
    MicrocaeError
        If ``out`` is a folder, exists without ``overwrite`` (latent files made with it would no
        longer decode once it is replaced), or its folder cannot take a new file.
    """
    if out.is_dir():
        raise MicrocaeError(f"{out}: is a folder, not a model file")
    if out.exists() and not overwrite:
        raise MicrocaeError(f"{out}: already exists (use --force to replace it)")
    folder = out.absolute().parent
    try:
        while not folder.exists():
            folder = folder.parent
        if not folder.is_dir():
            raise MicrocaeError(f"{out}: cannot be written ({folder} is not a folder)")
        handle, probe = tempfile.mkstemp(prefix=".microcae-probe.", dir=folder)
        os.close(handle)
        os.unlink(probe)
    except OSError as exc:
        raise MicrocaeError(f"{out}: cannot be written ({exc.strerror or exc})") from None


def write_history(history: Sequence[dict[str, float]], csv_path: Path, json_path: Path) -> None:
    """Write the per-epoch log rows as CSV and JSON (atomically); columns: the rows' keys."""
    write_text_atomic(csv_path, csv_text(history))
    write_text_atomic(json_path, json.dumps(list(history), indent=1) + "\n")
