"""Micrograph files to latent files and back: the jobs behind ``microcae encode`` / ``decode``."""

from __future__ import annotations

from pathlib import Path

from PIL import Image
from tqdm import tqdm

from microcae.codec.container import SUFFIX
from microcae.codec.crypto import Secret
from microcae.codec.latent_files import encode_image, open_latent_file, render
from microcae.data.images import find_images, read_micrograph
from microcae.models.base import MicrocaeModel
from microcae.util.atomic import atomic_path, write_bytes_atomic
from microcae.util.errors import MicrocaeError


def _unique_outputs(inputs: list[Path], out_dir: Path, suffix: str) -> list[Path]:
    targets = [out_dir / f"{path.stem}{suffix}" for path in inputs]
    seen: dict[Path, Path] = {}
    for source, target in zip(inputs, targets, strict=True):
        if target in seen:
            raise MicrocaeError(f"{source}: same output name {target.name} as {seen[target]}")
        seen[target] = source
    return targets


def encode_files(
    model: MicrocaeModel,
    inputs: list[str | Path],
    out_dir: str | Path,
    latent_dtype: str | None = None,
    compress: bool = True,
    secret: Secret | None = None,
    progress: bool = True,
) -> list[Path]:
    """Encode images (files or folders) to ``<stem>.mcl`` files in ``out_dir``.

    Every image is encoded in memory first (latent files are small); files are written, each
    atomically, only when all inputs succeeded, so an error leaves nothing behind.

    Returns
    -------
    list of Path
        The written files, in input order.
    """
    images = find_images(list(inputs))
    targets = _unique_outputs(images, Path(out_dir), SUFFIX)
    blobs = [
        encode_image(model, read_micrograph(path), latent_dtype, compress, secret)
        for path in tqdm(images, desc="encode", unit="image", disable=not progress)
    ]
    for target, blob in zip(targets, blobs, strict=True):
        write_bytes_atomic(target, blob)
    return targets


def decode_files(
    model: MicrocaeModel,
    files: list[str | Path],
    out_dir: str | Path,
    secret: Secret | None = None,
    progress: bool = True,
) -> list[Path]:
    """Decode latent files (or folders of ``.mcl`` files) to ``<stem>.png`` images in ``out_dir``.

    All files are read and verified (signature, checksum or authentication, key, decoder
    fingerprint) before any image is written, so a bad file leaves nothing behind.

    Returns
    -------
    list of Path
        The written PNG files, in input order.
    """
    paths = find_images(list(files), exclude=(), suffixes=(SUFFIX,), what=f"{SUFFIX} files")
    targets = _unique_outputs(paths, Path(out_dir), ".png")
    verified = [open_latent_file(model, path.read_bytes(), str(path), secret) for path in paths]
    for target, (header, latents) in tqdm(list(zip(targets, verified, strict=True)),
                                          desc="decode", unit="file", disable=not progress):
        with atomic_path(target) as tmp:
            Image.fromarray(render(model, header, latents).stored).save(tmp, format="PNG")
    return targets
