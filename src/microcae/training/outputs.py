"""The files a training run writes beside ``NAME.safetensors``, and the checks before it starts.

``NAME.safetensors`` (the model, written once at the end), ``NAME.checkpoint.safetensors`` (every
epoch), ``NAME.train.csv`` and ``NAME.train.json`` (the per-epoch log). The command line adds
``NAME.loss.png``.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

from microcae.util.atomic import check_output_files, write_text_atomic
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

    :func:`microcae.util.atomic.check_output_files` on the model file: replacing a model with
    ``overwrite`` (``--force``) only, since latent files made with it would no longer decode.

    Raises
    ------
    MicrocaeError
        If ``out`` is a folder, exists without ``overwrite``, or its folder cannot take a file.
    """
    check_output_files([out], force=overwrite)


def write_history(history: Sequence[dict[str, float]], csv_path: Path, json_path: Path) -> None:
    """Write the per-epoch log rows as CSV and JSON (atomically); columns: the rows' keys."""
    write_text_atomic(csv_path, csv_text(history))
    write_text_atomic(json_path, json.dumps(list(history), indent=1) + "\n")
