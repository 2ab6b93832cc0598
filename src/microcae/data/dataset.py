"""Prepared tile sets: ``microcae prepare`` writes one, ``microcae train`` reads it.

A prepared set is a folder holding ``tiles.npy`` ((T, tile, tile) float32 in [0, 1]),
``manifest.json`` (sources with SHA-256, tiling settings, split, one record per tile) and
``tiles.csv`` (the per-tile table for spreadsheets). Train and test are split **by source
image**, stratified by the sub-folder the image came from, so no test image contributes a tile
to training. (The study split by tile, which lets neighbouring tiles of one micrograph fall on
both sides.)

``--overwrite`` only ever replaces a folder that holds a prepared set's three files and nothing
else; any other folder or file at the output path is refused before any work starts.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import os
import random
import shutil
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from microcae.data.images import Scaling, find_images, read_micrograph
from microcae.data.tiling import Remainder, TileGrid, extract_tiles
from microcae.util.atomic import (
    TEMP_SUFFIX,
    check_output_folder,
    default_mode,
    make_temp_folder,
    output_error,
    temp_prefix,
)
from microcae.util.errors import MicrocaeError
from microcae.util.safe_json import loads_bounded

DATASET_FORMAT = "microcae.dataset"
DATASET_VERSION = 1
SPLITS = ("train", "test")
DATASET_FILES = frozenset({"tiles.npy", "manifest.json", "tiles.csv"})
"""Everything a prepared set's folder holds."""


def file_sha256(path: str | Path) -> str:
    """SHA-256 (hex) of a file's bytes, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def input_root(inputs: list[str | Path]) -> Path:
    """Return the deepest folder holding every input (source ``file`` names are relative to it)."""
    return Path(os.path.commonpath([Path(p).resolve() if Path(p).is_dir()
                                    else Path(p).resolve().parent for p in inputs]))


def split_sources(
    tile_counts: dict[str, int], groups: dict[str, str], test_fraction: float, seed: int
) -> dict[str, str]:
    """Assign each source image to ``"train"`` or ``"test"``.

    Within each group (sub-folder), images are shuffled with ``seed`` and added to the test side
    while that brings the group's test tile count closer to ``test_fraction`` of its tiles. A
    group with one image goes to training. Deterministic for a given input and seed.

    Parameters
    ----------
    tile_counts
        Source name -> number of tiles it yields.
    groups
        Source name -> group name.
    test_fraction
        Target share of tiles in the test split, in [0, 1).
    seed
        Seed of the shuffle.
    """
    if not 0.0 <= test_fraction < 1.0:
        raise MicrocaeError(f"test fraction must be in [0, 1), got {test_fraction}")
    by_group: dict[str, list[str]] = defaultdict(list)
    for name in sorted(tile_counts):
        by_group[groups[name]].append(name)
    split = {name: "train" for name in tile_counts}
    for group in sorted(by_group):
        names = by_group[group]
        if len(names) < 2:
            continue
        random.Random(f"{seed}/{group}").shuffle(names)
        target = test_fraction * sum(tile_counts[n] for n in names)
        in_test = 0
        for name in names[:-1]:  # keep at least one image of every group in training
            if abs(in_test + tile_counts[name] - target) < abs(in_test - target):
                split[name] = "test"
                in_test += tile_counts[name]
    return split


def split_as_in(manifest: dict[str, Any], sources: list[dict[str, Any]]) -> dict[str, str]:
    """Take each source's split from another prepared set's manifest, matching by SHA-256.

    Lets a set prepared with other tiling settings (a smaller stride, say) keep exactly the
    train/test images of an existing set.

    Raises
    ------
    MicrocaeError
        If a source image is not in ``manifest``.
    """
    known = {s["sha256"]: s["split"] for s in manifest.get("sources", [])}
    missing = [s["file"] for s in sources if s["sha256"] not in known]
    if missing:
        more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
        raise MicrocaeError(f"{missing[0]}{more}: not in the set whose split is to be reused")
    return {s["file"]: known[s["sha256"]] for s in sources}


@dataclass(frozen=True)
class PreparedSet:
    """A prepared tile set opened for reading.

    Attributes
    ----------
    path
        The folder.
    tiles
        (T, tile, tile) float32 array in [0, 1] (memory-mapped).
    manifest
        The parsed ``manifest.json``.
    manifest_sha256
        SHA-256 of ``manifest.json``: identifies the data in model provenance.
    """

    path: Path
    tiles: np.ndarray
    manifest: dict[str, Any]
    manifest_sha256: str

    def indices(self, split: str) -> np.ndarray:
        """Tile indices (int64, ascending) of ``split`` (``"train"`` or ``"test"``)."""
        return np.array(
            [t["index"] for t in self.manifest["tiles"] if t["split"] == split], dtype=np.int64
        )


def prepare_dataset(
    inputs: list[str | Path],
    out: str | Path,
    tile: int = 256,
    stride: int | None = None,
    remainder: Remainder = "drop",
    test_fraction: float = 0.2,
    seed: int = 0,
    scaling: Scaling = "auto",
    overwrite: bool = False,
    progress: bool = True,
    split_like: str | Path | None = None,
) -> PreparedSet:
    """Read micrographs, tile them, split by source image and write a prepared set.

    Parameters
    ----------
    inputs
        Image files and/or folders (searched recursively; annotation masks are skipped).
    out
        Folder to create. Written as a temporary sibling and renamed when complete.
    tile, stride
        Tile side and step in pixels (stride defaults to ``tile``: non-overlapping, as the study).
    remainder
        ``"drop"`` border pixels that do not fill a tile (the study) or ``"pad"`` by reflection.
    test_fraction, seed
        Share of tiles for testing (by source image) and the seed of the split.
    scaling
        How samples map to [0, 1]; see :func:`microcae.data.images.micrograph_from_array`.
    overwrite
        Replace an existing ``out`` folder.
    progress
        Show a progress bar on stderr.
    split_like
        A prepared set whose per-image split to reuse (images matched by SHA-256) instead of
        drawing one; ``test_fraction`` and ``seed`` are then not used.

    Raises
    ------
    MicrocaeError
        Unreadable inputs, no images, no image large enough for one tile, an image missing
        from ``split_like``, and (before any image is read) an output path that exists without
        ``overwrite``, is not a prepared set, holds other files, or cannot be written.
    """
    out = Path(out)
    reference = load_dataset(split_like).manifest if split_like is not None else None
    stride = tile if stride is None else stride
    if tile < 1 or stride < 1:
        raise MicrocaeError(f"tile ({tile}) and stride ({stride}) must be positive")
    _check_replaceable(out, overwrite)
    check_output_folder(out.parent)
    sources, tile_arrays, skipped = _tile_sources(inputs, tile, stride, remainder, scaling,
                                                  progress)
    if not sources:
        raise MicrocaeError(f"no image is at least {tile}x{tile} pixels: nothing to tile")
    names = [s["file"] for s in sources]
    if len(set(names)) != len(names):
        raise MicrocaeError("two inputs have the same relative path; prepare them separately")
    if reference is not None:
        split = split_as_in(reference, sources)
        split_by = f"source image, as in {split_like}"
    else:
        split = split_sources(
            {s["file"]: len(s["positions"]) for s in sources},
            {s["file"]: s["group"] for s in sources},
            test_fraction,
            seed,
        )
        split_by = "source image, stratified by sub-folder"
    records = _tile_records(sources, split)
    manifest = {
        "format": DATASET_FORMAT,
        "version": DATASET_VERSION,
        "tile": tile,
        "stride": stride,
        "remainder": remainder,
        "test_fraction": test_fraction,
        "seed": seed,
        "split_by": split_by,
        "skipped_smaller_than_tile": skipped,
        "sources": sources,
        "tiles": records,
    }
    _write_folder(out, np.concatenate(tile_arrays).astype(np.float32), manifest, overwrite)
    return load_dataset(out)


def _tile_sources(inputs: list[str | Path], tile: int, stride: int, remainder: Remainder,
                  scaling: Scaling, progress: bool
                  ) -> tuple[list[dict[str, Any]], list[np.ndarray], list[str]]:
    """Read and tile every input image.

    Returns
    -------
    sources, tiles, skipped
        One manifest record per tiled image (with its tile ``positions``), its (T_i, tile,
        tile) float32 tiles, and the images too small for one tile.
    """
    base = input_root(inputs)
    sources: list[dict[str, Any]] = []
    tile_arrays: list[np.ndarray] = []
    skipped: list[str] = []
    for path in tqdm(find_images(inputs), desc="prepare", unit="image", disable=not progress):
        micrograph = read_micrograph(path, scaling=scaling)
        grid = TileGrid(micrograph.shape, tile=tile, stride=stride, remainder=remainder)
        if len(grid) == 0:
            skipped.append(str(path))
            continue
        relative = path.resolve().relative_to(base)
        sources.append({
            "file": relative.as_posix(), "sha256": file_sha256(path),
            "group": relative.parent.as_posix(), "shape": list(micrograph.shape),
            "source_dtype": micrograph.source_dtype, "colour": micrograph.colour,
            "value_range": list(micrograph.value_range), "scaling": micrograph.scaling,
            "positions": grid.positions,
        })
        tile_arrays.append(extract_tiles(micrograph.pixels, grid))
    return sources, tile_arrays, skipped


def _tile_records(sources: list[dict[str, Any]], split: dict[str, str]) -> list[dict[str, Any]]:
    """Set each source's ``split`` and return one record per tile (its ``positions`` consumed)."""
    records = []
    for source in sources:
        source["split"] = split[source["file"]]
        for y, x in source.pop("positions"):
            records.append({"index": len(records), "source": source["file"], "y": y, "x": x,
                            "split": source["split"]})
    return records


def _tiles_csv(records: list[dict[str, Any]]) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=["index", "source", "y", "x", "split"])
    writer.writeheader()
    writer.writerows(records)
    return buffer.getvalue()


def _check_replaceable(out: Path, overwrite: bool) -> None:
    """Refuse an output path that a prepared set may not be written to.

    A missing path is fine; an existing one must be a prepared set's folder holding nothing
    but :data:`DATASET_FILES`, and ``overwrite`` must be given.

    Raises
    ------
    MicrocaeError
        One line naming ``out`` and the flag or the reason it is never replaced.
    """
    if not out.exists() and not out.is_symlink():
        return
    never = "it is never replaced; choose another --out"
    if out.is_symlink() or not out.is_dir():
        raise MicrocaeError(f"{out}: exists and is not a prepared set's folder ({never})")
    manifest = out / "manifest.json"
    try:
        is_set = manifest.is_file() and loads_bounded(manifest.read_bytes(), max_bytes=None
                                                      ).get("format") == DATASET_FORMAT
    except (OSError, ValueError, AttributeError):
        is_set = False
    if not is_set:
        raise MicrocaeError(f"{out}: exists and is not a microcae prepared set ({never})")
    others = sorted(p.name for p in out.iterdir() if p.name not in DATASET_FILES)
    if others:
        more = f" and {len(others) - 1} more" if len(others) > 1 else ""
        raise MicrocaeError(f"{out}: holds files microcae did not write ({others[0]}{more}); "
                            f"{never}")
    if not overwrite:
        raise MicrocaeError(f"{out}: already exists (use --overwrite to replace it)")


def _write_folder(out: Path, tiles: np.ndarray, manifest: dict[str, Any], overwrite: bool) -> None:
    """Write the set into a temporary sibling folder and rename it to ``out``.

    An existing set (checked by :func:`_check_replaceable`) is renamed aside first and removed
    after; temporaries carry microcae's pattern, so a killed run's are swept later.
    """
    staging = make_temp_folder(out)
    try:
        np.save(staging / "tiles.npy", tiles)
        (staging / "manifest.json").write_text(json.dumps(manifest, indent=1), encoding="utf-8")
        (staging / "tiles.csv").write_text(_tiles_csv(manifest["tiles"]), encoding="utf-8")
        os.chmod(staging, default_mode(folder=True))
        if out.exists() and overwrite:
            retired = out.with_name(f"{temp_prefix(out.name)}old{TEMP_SUFFIX}")
            out.rename(retired)
            staging.rename(out)
            shutil.rmtree(retired, ignore_errors=True)  # else swept by a later run
        else:
            staging.rename(out)
    except OSError as exc:
        shutil.rmtree(staging, ignore_errors=True)
        raise output_error(out, exc) from None
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def load_dataset(path: str | Path) -> PreparedSet:
    """Open a prepared set written by :func:`prepare_dataset`.

    Raises
    ------
    MicrocaeError
        If the folder is missing, not a prepared set, or its files disagree.
    """
    path = Path(path)
    manifest_path = path / "manifest.json"
    if not manifest_path.is_file():
        raise MicrocaeError(f"{path}: not a prepared data set (no manifest.json)")
    try:
        raw = manifest_path.read_bytes()
        manifest = loads_bounded(raw, max_bytes=None)
        tiles = np.load(path / "tiles.npy", mmap_mode="r", allow_pickle=False)
    except (OSError, ValueError) as exc:
        reason = str(exc).splitlines()[0] if str(exc) else exc.__class__.__name__
        raise MicrocaeError(f"{path}: corrupt prepared data set ({reason})") from None
    if not isinstance(manifest, dict) or manifest.get("format") != DATASET_FORMAT:
        raise MicrocaeError(f"{path}: not a microcae prepared data set")
    records = manifest.get("tiles")
    if not isinstance(records, list) or not all(
        isinstance(r, dict) and isinstance(r.get("index"), int)
        and 0 <= r["index"] < len(records) and r.get("split") in SPLITS for r in records
    ):
        raise MicrocaeError(f"{path}: corrupt prepared data set (bad tile records in "
                            "manifest.json)")
    size = manifest.get("tile")
    if tiles.dtype != np.float32 or tiles.shape != (len(records), size, size):
        raise MicrocaeError(f"{path}: tiles.npy does not match manifest.json")
    return PreparedSet(path, tiles, manifest, hashlib.sha256(raw).hexdigest())
