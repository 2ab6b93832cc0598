"""Micrograph files to latent files and back: the jobs behind ``microcae encode`` / ``decode``.

Both jobs check every output before any work: an existing file is replaced only with
``force``, an input never (decoding into the folder that holds the original micrographs must
not silently swap them for their lossy decodes).
"""

from __future__ import annotations

from pathlib import Path

from PIL import Image
from tqdm import tqdm

from microcae.codec.container import SUFFIX
from microcae.codec.crypto import Secret
from microcae.codec.latent_files import (
    RateBudget,
    encode_image,
    model_for_file,
    open_latent_file,
    render,
)
from microcae.data.images import find_images, read_micrograph
from microcae.models.base import MicrocaeModel
from microcae.models.refinement import Refinement
from microcae.util.atomic import (
    atomic_path,
    check_output_files,
    output_names,
    write_bytes_atomic,
)
from microcae.util.limits import memory_guard


def encode_targets(inputs: list[str | Path], out_dir: str | Path,
                   force: bool = False) -> tuple[list[Path], list[Path]]:
    """Find the images to encode and check their ``<stem>.mcl`` targets (nothing is read).

    Returns
    -------
    images, targets
        Input files and output files, in the same order.

    Raises
    ------
    MicrocaeError
        For missing inputs, colliding output names, and outputs that exist (without
        ``force``), are inputs or cannot be written.
    """
    images = find_images(list(inputs))
    targets = output_names(images, out_dir, SUFFIX)
    check_output_files(targets, force, protected=images)
    return images, targets


def decode_targets(files: list[str | Path], out_dir: str | Path,
                   force: bool = False) -> tuple[list[Path], list[Path]]:
    """Find the latent files to decode and check their ``<stem>.png`` targets (see above)."""
    paths = find_images(list(files), exclude=(), suffixes=(SUFFIX,), what=f"{SUFFIX} files")
    targets = output_names(paths, out_dir, ".png")
    check_output_files(targets, force, protected=paths)
    return paths, targets


def encode_files(
    model: MicrocaeModel | RateBudget,
    inputs: list[str | Path],
    out_dir: str | Path,
    latent_dtype: str | None = None,
    compress: bool = True,
    secret: Secret | None = None,
    progress: bool = True,
    force: bool = False,
    refine: Refinement | None = None,
) -> list[Path]:
    """Encode images (files or folders) to ``<stem>.mcl`` files in ``out_dir``.

    Every image is encoded in memory first (latent files are small); files are written, each
    atomically, only when all inputs succeeded, so an error leaves nothing behind.
    ``force`` allows replacing existing ``.mcl`` files (never an input). ``model`` a
    :class:`~microcae.codec.latent_files.RateBudget`: each image at the best codec level whose
    file fits the budget (``latent_dtype`` and ``compress`` do not apply). ``refine``:
    optimise each image's latents first (whole-image codecs only,
    :func:`~microcae.codec.latent_files.encode_image`).

    Returns
    -------
    list of Path
        The written files, in input order.

    Raises
    ------
    MicrocaeError
        Before any work, for an output that exists (without ``force``), is an input or cannot
        be written; then for any unreadable image.
    """
    images, targets = encode_targets(inputs, out_dir, force)
    blobs = []
    for path in tqdm(images, desc="encode", unit="image", disable=not progress):
        with memory_guard(str(path)):
            micrograph = read_micrograph(path)
            blobs.append(model.encode(micrograph, secret, refine)
                         if isinstance(model, RateBudget) else
                         encode_image(model, micrograph, latent_dtype, compress, secret,
                                      refine=refine))
    for target, blob in zip(targets, blobs, strict=True):
        write_bytes_atomic(target, blob)
    return targets


def decode_files(
    model: MicrocaeModel | None,
    files: list[str | Path],
    out_dir: str | Path,
    secret: Secret | None = None,
    progress: bool = True,
    force: bool = False,
) -> list[Path]:
    """Decode latent files (or folders of ``.mcl`` files) to ``<stem>.png`` images in ``out_dir``.

    ``model`` None: each file's bundled model is found by its fingerprint
    (:func:`~microcae.codec.latent_files.model_for_file`). All files are read and verified
    (signature, checksum or authentication, key, decoder fingerprint) before any image is
    written, so a bad file leaves nothing behind. An existing
    ``<stem>.png`` (often the original micrograph) is replaced only with ``force``.

    Returns
    -------
    list of Path
        The written PNG files, in input order.

    Raises
    ------
    MicrocaeError
        Before any work, for an output that exists (without ``force``), is an input or cannot
        be written; then for any file that does not verify.
    """
    paths, targets = decode_targets(files, out_dir, force)
    verified = []
    for path in paths:
        data = path.read_bytes()
        decoder = model if model is not None else model_for_file(data, str(path))
        verified.append((decoder, *open_latent_file(decoder, data, str(path), secret)))
    jobs = list(zip(paths, targets, verified, strict=True))
    for path, target, (decoder, header, latents) in tqdm(jobs, desc="decode", unit="file",
                                                         disable=not progress):
        with memory_guard(str(path)), atomic_path(target) as tmp:
            Image.fromarray(render(decoder, header, latents).stored).save(tmp, format="PNG")
    return targets
