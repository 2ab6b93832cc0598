"""Write a finished batch store out as the per-file formats of the single-image commands.

For each image group of the store (named ``a/b.tif``) one file lands at the same relative path in
the output folder:

* encode: ``a/b.mcl``, a latent file (see docs/FORMAT.md) that ``microcae decode`` reads;
* saliency: ``a/b.relevance.npy``, the raw (H, W) float32 map, copied a band of tile rows at a
  time into a memory-mapped ``.npy`` (memory bounded, any image size);
* reconstruct: ``a/b.reconstruction.png``, 8-bit greyscale (held whole while it is written).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import zarr
from tqdm import tqdm

from microcae.codec.container import ENTROPY, SUFFIX, SourceInfo, write_container
from microcae.models.base import WHOLE_MODEL, MicrocaeModel
from microcae.pipelines.batch.store import DONE
from microcae.pipelines.reconstruct import save_png
from microcae.util.atomic import atomic_path, write_bytes_atomic
from microcae.util.errors import MicrocaeError


def _image_groups(root: zarr.Group) -> dict[str, zarr.Group]:
    return {name: node for name, node in root.members(max_depth=None)
            if isinstance(node, zarr.Group) and DONE in node}


def _latent_file(group: zarr.Group, target: Path, model: MicrocaeModel, tile: int) -> Path:
    record = group.attrs["source"]
    latents = np.asarray(group["latents"][...])
    source = SourceInfo(tuple(record["shape"]), record["dtype"], record["scaling"],
                        tuple(record["value_range"]))
    entropy = model.latent_coding == ENTROPY
    data = write_container(latents.reshape(-1, *latents.shape[2:]), source, tile,
                           model.fingerprint(), model.latent_coding, compress=not entropy,
                           tables=model.tables if entropy else None)
    path = target.with_name(target.name + SUFFIX)
    write_bytes_atomic(path, data)
    return path


def _relevance_file(group: zarr.Group, target: Path, tile: int) -> Path:
    array = group["relevance"]
    path = target.with_name(target.name + ".relevance.npy")
    with atomic_path(path) as tmp:
        out = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.float32, shape=array.shape)
        for top in range(0, array.shape[0], tile):
            out[top : top + tile] = array[top : top + tile]
        out.flush()
        del out
    return path


def _reconstruction_file(group: zarr.Group, target: Path) -> Path:
    return save_png(np.asarray(group["reconstruction"][...]),
                    target.with_name(target.name + ".reconstruction.png"))


def export_store(store: str | Path, model: MicrocaeModel, out_dir: str | Path,
                 progress: bool = True) -> list[Path]:
    """Write one per-file output for every image of a finished batch store.

    Parameters
    ----------
    store
        A store written by :func:`microcae.pipelines.batch.run_batch` with every block done.
    model
        The model of the run (checked against the store's fingerprint; its decoder's
        fingerprint goes into latent files).
    out_dir
        Output folder; images keep their relative paths, without their suffix.

    Returns
    -------
    list[Path]
        The files written, in image order.

    Raises
    ------
    MicrocaeError
        If the store is not a batch store, was made with another model, or is unfinished.
    """
    try:
        root = zarr.open_group(str(store), mode="r")
    except (FileNotFoundError, ValueError, OSError):
        raise MicrocaeError(f"{store}: not a Zarr store") from None
    identity: dict[str, Any] | None = root.attrs.get("microcae")
    if identity is None:
        raise MicrocaeError(f"{store}: not a microcae batch store")
    if identity["model"] != model.fingerprint(WHOLE_MODEL):
        raise MicrocaeError(f"{store}: made with another model than the one given")
    written = []
    for key, group in tqdm(sorted(_image_groups(root).items()), desc="export", unit="image",
                           disable=not progress):
        if not np.asarray(group[DONE][...]).all():
            raise MicrocaeError(f"{store}: {key} is unfinished; run the batch command again")
        target = Path(out_dir) / Path(key).with_suffix("")
        if identity["job"] == "encode":
            written.append(_latent_file(group, target, model, identity["tile"]))
        elif identity["job"] == "saliency":
            written.append(_relevance_file(group, target, identity["tile"]))
        else:
            written.append(_reconstruction_file(group, target))
    return written
