"""Study-like models: the study CAE trained the study's way on steel micrographs only.

The study trained on one kind of steel and split its tiles 80:20 at random.
:func:`train_steel_models` trains, with the same settings, one model per split of a prepared set
of steel micrographs:

``tiles``          the study's split: 20 % of the tiles at random (seed 0), so tiles of one
                   micrograph fall on both sides;
``image-<stem>``   split by source image, micrograph ``<stem>`` held out (one run per micrograph,
                   so that every steel micrograph is the test image of one model).

``index.json`` beside the models names each run's file, split, held-out micrographs (with their
SHA-256) and test tiles, and the SHA-256 of the prepared set's manifest. :func:`load_steel_models`
checks that manifest against the report's own preparation of the same micrographs, so the report
knows that every tile it scores with a model was held out from that model's training.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import platform
import time
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch

from microcae.data.dataset import PreparedSet
from microcae.models.cae import CAE, CAEConfig
from microcae.models.registry import read_model_file
from microcae.training.loop import train
from microcae.training.objectives import evaluate_mse
from microcae.training.settings import TrainSettings
from microcae.util.atomic import write_text_atomic
from microcae.util.errors import MicrocaeError

INDEX = "index.json"
TILE_TEST_FRACTION = 0.2
"""Share of the tiles on the test side of the study's random split."""


def resplit(data: PreparedSet, test: set[int], split_by: str) -> PreparedSet:
    """Return the same tiles with the tile indices ``test`` on the test side (in memory)."""
    manifest = json.loads(json.dumps(data.manifest))
    for record in manifest["tiles"]:
        record["split"] = "test" if record["index"] in test else "train"
    for source in manifest["sources"]:
        source["split"] = "mixed"
    manifest["split_by"] = split_by
    digest = hashlib.sha256(json.dumps(manifest, sort_keys=True).encode()).hexdigest()
    return dataclasses.replace(data, manifest=manifest, manifest_sha256=digest)


def steel_splits(data: PreparedSet) -> list[tuple[str, PreparedSet, list[str]]]:
    """(run name, re-split set, held-out source files) of every run of the module docstring.

    The image runs come in order: first the test image(s) of the set's own split, then the rest.
    """
    count = len(data.manifest["tiles"])
    order = np.random.default_rng(0).permutation(count)
    tile_test = {int(i) for i in order[: round(TILE_TEST_FRACTION * count)]}
    out = [("tiles", resplit(data, tile_test, "tile, at random (seed 0): the study's split"), [])]
    sources = data.manifest["sources"]
    files = ([s["file"] for s in sources if s["split"] == "test"]
             + [s["file"] for s in sources if s["split"] != "test"])
    for file in files:
        test = {t["index"] for t in data.manifest["tiles"] if t["source"] == file}
        out.append((f"image-{Path(file).stem}",
                    resplit(data, test, f"source image: {file} held out"), [file]))
    return out


def train_steel_models(data: PreparedSet, out_dir: str | Path, settings: TrainSettings,
                       only: str | None = None, progress: bool = False,
                       config: CAEConfig | None = None) -> dict[str, Any]:
    """Train every run of :func:`steel_splits` into ``out_dir`` and update ``index.json``.

    Parameters
    ----------
    data
        Prepared set of the steel micrographs (its own split chooses the standard test image).
    out_dir
        Folder of ``cae_steel_<run>.safetensors`` (+ training logs) and ``index.json``.
    settings
        Training settings (the study's: :class:`~microcae.training.settings.TrainSettings()`).
    only
        Train only the run of this name.
    progress
        Show training progress bars.

    Returns
    -------
    dict
        The index written.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    index_path = out_dir / INDEX
    index = json.loads(index_path.read_text()) if index_path.exists() else {"runs": {}}
    sha = {s["file"]: s["sha256"] for s in data.manifest["sources"]}
    index.update(manifest_sha256=data.manifest_sha256, tiles=len(data.manifest["tiles"]),
                 standard_split_test=[s["file"] for s in data.manifest["sources"]
                                      if s["split"] == "test"])
    groups = ", ".join(sorted({s["group"] for s in data.manifest["sources"]}))
    for name, split, held_out in steel_splits(data):
        if only and name != only:
            continue
        started = time.perf_counter()
        note = (f"Steel micrographs only ({groups}); split: {split.manifest['split_by']}; "
                f"{settings.epochs} epochs, batch {settings.batch_size}, Adam {settings.lr:g}, "
                f"seed {settings.seed}; trained by microcae.evaluation.reproduction.steel on "
                f"{platform.machine()}, {torch.get_num_threads()} thread(s)")
        result = train(split, out_dir / f"cae_steel_{name}.safetensors", settings,
                       build_model=partial(CAE, config or CAEConfig()), resume=True,
                       progress=progress, note=note)
        result.files["checkpoint"].unlink(missing_ok=True)
        index["runs"][name] = {
            "file": f"cae_steel_{name}.safetensors",
            "split": "image" if held_out else "tile",
            "held_out_sha256": [sha[f] for f in held_out], "held_out": held_out,
            "test_tiles": [int(i) for i in split.indices("test")],
            "train_tiles": int(len(split.indices("train"))), "epochs": settings.epochs,
            "seconds": round(time.perf_counter() - started, 1),
            "train_mse": evaluate_mse(result.model, split.tiles, split.indices("train")),
            "test_mse": evaluate_mse(result.model, split.tiles, split.indices("test")),
            "machine": f"{platform.node()} ({torch.get_num_threads()} thread(s), torch "
                       f"{torch.__version__})",
        }
        write_text_atomic(index_path, json.dumps(index, indent=1) + "\n")
    return index


@dataclass(frozen=True)
class SteelRun:
    """One trained study-like model and the tiles it never saw.

    Attributes
    ----------
    name
        Run name (``tiles`` or ``image-<stem>``).
    split
        ``"tile"`` (the study's random split) or ``"image"`` (one micrograph held out).
    model
        The trained model.
    held_out
        Source files (relative, as in the manifest) held out; empty for the tile split.
    test_tiles
        Tile indices of the prepared set on the run's test side.
    provenance
        The model file's provenance (data, settings, history, note).
    seconds
        Training wall time.
    """

    name: str
    split: str
    model: CAE
    held_out: tuple[str, ...]
    test_tiles: np.ndarray
    provenance: dict[str, Any]
    seconds: float

    def train_tiles(self, total: int) -> np.ndarray:
        """Tile indices (of ``total`` tiles) the run trained on."""
        return np.setdiff1d(np.arange(total), self.test_tiles)


@dataclass(frozen=True)
class SteelModels:
    """The study-like runs of one prepared set of steel micrographs.

    Attributes
    ----------
    folder
        Where the models and ``index.json`` are.
    runs
        Run name -> run.
    standard_test
        Test image(s) of the prepared set's own split; the run holding out the first is the
        bundled ``cae_steel`` and the decoder attack's owner.
    """

    folder: Path
    runs: dict[str, SteelRun]
    standard_test: tuple[str, ...]

    @property
    def tile_split(self) -> SteelRun:
        """The run on the study's random tile split."""
        return next(r for r in self.runs.values() if r.split == "tile")

    def fold(self, source: str) -> SteelRun:
        """Return the image run that held out ``source``."""
        return next(r for r in self.runs.values() if r.held_out == (source,))

    @property
    def standard(self) -> SteelRun:
        """The image run holding out the (first) test image of the set's own split."""
        return self.fold(self.standard_test[0])

    def owner_set(self, data: PreparedSet) -> PreparedSet:
        """Split ``data`` as :attr:`standard` was trained: the decoder attack's owner and public.

        Test side: the standard run's held-out micrograph (the owner's); train side: the tiles
        it trained on (the public micrographs).
        """
        run = self.standard
        return resplit(data, {int(i) for i in run.test_tiles},
                       f"source image: {run.held_out[0]} held out")


def load_steel_models(folder: str | Path, data: PreparedSet, complete: bool = True
                      ) -> SteelModels:
    """Open the runs of :func:`train_steel_models` and check they belong to ``data``.

    Parameters
    ----------
    folder
        Folder with ``index.json`` and the model files.
    data
        The report's preparation of the steel micrographs; its manifest must be the one the runs
        were trained on.
    complete
        Require the tile-split run and one image run per micrograph (else only the standard
        run, e.g. for the attack while the other runs still train).

    Raises
    ------
    MicrocaeError
        If the index is missing or unreadable, belongs to other data, or lacks a run.
    """
    folder = Path(folder)
    try:
        index = json.loads((folder / INDEX).read_text())
    except (OSError, ValueError) as exc:
        raise MicrocaeError(f"{folder}: no readable {INDEX} of steel models ({exc})") from None
    if index.get("manifest_sha256") != data.manifest_sha256:
        raise MicrocaeError(f"{folder}: the steel models were trained on other tiles than the "
                            "report's study-like micrographs (manifest differs)")
    runs = {}
    for name, entry in index["runs"].items():
        file = read_model_file(folder / entry["file"])
        runs[name] = SteelRun(name, entry["split"], file.model, tuple(entry["held_out"]),
                              np.asarray(entry["test_tiles"], dtype=np.int64), file.provenance,
                              float(entry["seconds"]))
    sources = [s["file"] for s in data.manifest["sources"]]
    held = {r.held_out[0] for r in runs.values() if r.split == "image"}
    if complete and (not any(r.split == "tile" for r in runs.values()) or set(sources) - held):
        raise MicrocaeError(f"{folder}: incomplete steel models (need the tile split and one "
                            f"held-out run per micrograph: {sorted(set(sources) - held)} missing)")
    if not index.get("standard_split_test") or index["standard_split_test"][0] not in held:
        raise MicrocaeError(f"{folder}: no run holds out the steel set's own test image (the "
                            "owner's micrograph of the attack)")
    return SteelModels(folder, runs, tuple(index["standard_split_test"]))
