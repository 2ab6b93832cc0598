"""Read greyscale micrographs (PNG, TIFF, JPEG, BMP; 8/16-bit, grey or RGB) into [0, 1] floats."""

from __future__ import annotations

import fnmatch
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import tifffile
from PIL import Image, UnidentifiedImageError

from microcae.util.errors import MicrocaeError, MicrocaeWarning
from microcae.util.limits import check_image_size

IMAGE_SUFFIXES = (".png", ".tif", ".tiff", ".jpg", ".jpeg", ".bmp")
"""File name endings that :func:`find_images` treats as micrographs (case-insensitive)."""

DEFAULT_EXCLUDE = ("*_mask.*", "*_labels.*", "*_label.*", "*_gb_mask.*")
"""Glob patterns of annotation files that sit beside micrographs and are not images to learn."""

Scaling = Literal["auto", "range", "full"]
TIFF_MAGIC = (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")
"""First four bytes of classic and BigTIFF files, both byte orders."""


@dataclass(frozen=True)
class Micrograph:
    """A greyscale micrograph scaled to [0, 1].

    Attributes
    ----------
    pixels
        (H, W) float32 array with values in [0, 1].
    path
        File it was read from (or a label for arrays given directly).
    source_dtype
        NumPy dtype name of the stored samples, e.g. ``"uint8"`` or ``"uint16"``.
    colour
        ``"grey"``, ``"rgb-grey"`` (RGB with equal channels, converted losslessly) or
        ``"rgb-colour"`` (true colour, converted to luminance with a warning).
    value_range
        ``(low, high)`` in stored units that was mapped to ``(0, 1)``.
    scaling
        How ``value_range`` was chosen: ``"full"`` (the dtype's full range) or ``"range"``
        (the image's own minimum and maximum).
    """

    pixels: np.ndarray
    path: str
    source_dtype: str
    colour: str
    value_range: tuple[float, float]
    scaling: str
    notes: tuple[str, ...] = field(default=())

    @property
    def shape(self) -> tuple[int, int]:
        """Height and width in pixels."""
        return (int(self.pixels.shape[0]), int(self.pixels.shape[1]))

    def as_uint8(self) -> np.ndarray:
        """Return the pixels as (H, W) uint8, rounded from the [0, 1] scale."""
        return to_uint8(self.pixels)


def to_uint8(pixels: np.ndarray) -> np.ndarray:
    """Map an array of [0, 1] floats to uint8 (0..255), clipping values outside the interval."""
    return np.clip(np.rint(np.asarray(pixels, dtype=np.float64) * 255.0), 0, 255).astype(np.uint8)


def round_to_8bit(pixels: np.ndarray) -> np.ndarray:
    """Round [0, 1] floats to the nearest of the 256 grey levels of an 8-bit image (float32)."""
    return (to_uint8(pixels) / np.float32(255)).astype(np.float32)


def uint8_tile(tile: np.ndarray) -> Micrograph:
    """Wrap an (H, W) uint8 tile as an 8-bit grey :class:`Micrograph` scaled by 0..255.

    Unlike :func:`micrograph_from_array` it accepts constant tiles (a uniform background).
    """
    return Micrograph(pixels=(np.asarray(tile) / np.float32(255)).astype(np.float32),
                      path="tile", source_dtype="uint8", colour="grey",
                      value_range=(0.0, 255.0), scaling="full")


def _plane(shape: tuple[int, ...]) -> tuple[int, int]:
    """(H, W) of an image array shape: 2-D, channel-last or channel-first with <= 4 channels."""
    if len(shape) < 2:
        return (1, int(np.prod(shape, dtype=np.int64)))
    if len(shape) == 3 and shape[-1] <= 4:
        return (int(shape[0]), int(shape[1]))
    return (int(shape[-2]), int(shape[-1]))


def _read_tiff(path: Path) -> np.ndarray:
    """Read a TIFF's first series after checking the size its tags claim."""
    with tifffile.TiffFile(path) as tiff:
        shape = tuple(int(n) for n in tiff.series[0].shape)
        height, width = _plane(shape)
        check_image_size(height, width, str(path), "the file claims ")
        samples = int(np.prod(shape, dtype=np.int64))
        if samples > 4 * height * width:
            raise MicrocaeError(f"{path}: expected a 2-D greyscale or RGB image, the file holds "
                                f"an array of shape {shape}")
        return np.asarray(tiff.asarray())


def _read_pillow(path: Path) -> np.ndarray:
    """Read a PNG, JPEG or BMP with Pillow after checking the size its header claims."""
    with warnings.catch_warnings():  # the pixel limit below replaces Pillow's warning
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        image = Image.open(path)
    with image:
        width, height = image.size
        check_image_size(height, width, str(path), "the file claims ")
        image.load()
        if image.mode == "P":
            image = image.convert("RGBA" if "transparency" in image.info else "RGB")
        elif image.mode in ("I;16", "I;16B", "I;16L"):
            return np.asarray(image, dtype=np.uint16)
        return np.asarray(image)


def _load_array(path: Path) -> np.ndarray:
    if not path.exists():
        raise MicrocaeError(f"{path}: no such file")
    if path.is_dir():
        raise MicrocaeError(f"{path}: is a folder, expected an image file")
    try:
        with open(path, "rb") as handle:
            magic = handle.read(4)
        if magic in TIFF_MAGIC:  # decide by content: files named .tiff may hold PNG bytes
            return _read_tiff(path)
        return _read_pillow(path)
    except MicrocaeError:
        raise
    except Image.DecompressionBombError as exc:  # Pillow's own limit: 2 * 89478485 pixels
        raise MicrocaeError(f"{path}: the file claims too many pixels ({exc})") from None
    except MemoryError:
        raise MicrocaeError(f"{path}: not enough memory to read this image") from None
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError, EOFError) as exc:
        reason = str(exc).splitlines()[0] if str(exc) else exc.__class__.__name__
        raise MicrocaeError(f"{path}: not a readable image ({reason})") from None
    except Exception as exc:  # noqa: BLE001 - third-party decoders raise anything on corrupt data
        raise MicrocaeError(f"{path}: not a readable image ({exc.__class__.__name__})") from None


def _to_grey(array: np.ndarray, label: str) -> tuple[np.ndarray, str]:
    """Return (H, W) samples and the colour description for a 2-D or channel-last array."""
    if array.ndim == 3 and array.shape[0] in (3, 4) and array.shape[-1] not in (3, 4):
        array = np.moveaxis(array, 0, -1)
    if array.ndim == 3 and array.shape[-1] in (2, 4):
        array = array[..., :-1]  # drop the alpha channel
    if array.ndim == 3 and array.shape[-1] == 1:
        array = array[..., 0]
    if array.ndim == 2:
        return array, "grey"
    if array.ndim != 3 or array.shape[-1] != 3:
        raise MicrocaeError(
            f"{label}: expected a 2-D greyscale or RGB image, got an array of shape {array.shape}"
        )
    red, green, blue = array[..., 0], array[..., 1], array[..., 2]
    if np.array_equal(red, green) and np.array_equal(red, blue):
        return red, "rgb-grey"
    warnings.warn(
        f"{label}: true-colour image converted to greyscale (ITU-R BT.601 luma)",
        MicrocaeWarning,
        stacklevel=3,
    )
    luma = 0.299 * red.astype(np.float64) + 0.587 * green + 0.114 * blue
    return luma, "rgb-colour"


def micrograph_from_array(
    array: np.ndarray, label: str = "<array>", scaling: Scaling = "auto"
) -> Micrograph:
    """Turn a decoded image array into a :class:`Micrograph`.

    Parameters
    ----------
    array
        (H, W), (H, W, C) or (C, H, W) samples with C in {1, 2, 3, 4}; integer, bool or float.
    label
        Name used in messages and recorded as ``path``.
    scaling
        ``"auto"``: 8-bit and bool by their full range, everything else (16-bit, float, other
        integers) by the image's own minimum and maximum; ``"full"``: integers by their dtype's
        full range, floats as given (must lie in [0, 1]); ``"range"``: always min..max.

    Raises
    ------
    MicrocaeError
        For wrong shapes, NaN or infinite samples and constant images.
    """
    array = np.asarray(array)
    if array.size == 0:
        raise MicrocaeError(f"{label}: the image is empty")
    grey, colour = _to_grey(array, label)
    source_dtype = array.dtype.name
    samples = grey.astype(np.float64)
    if not np.all(np.isfinite(samples)):
        raise MicrocaeError(f"{label}: the image contains NaN or infinite values")
    low, high = float(samples.min()), float(samples.max())
    if low == high:
        raise MicrocaeError(f"{label}: the image is constant (every pixel is {low:g})")
    is_integer = np.issubdtype(array.dtype, np.integer)
    if array.dtype == np.bool_:
        value_range, how = (0.0, 1.0), "full"
    elif scaling == "range" or (scaling == "auto" and array.dtype != np.uint8):
        value_range, how = (low, high), "range"
    elif is_integer:
        info = np.iinfo(array.dtype)
        value_range, how = (float(info.min), float(info.max)), "full"
    else:
        if low < 0.0 or high > 1.0:
            raise MicrocaeError(f"{label}: float samples outside [0, 1] need --scaling range")
        value_range, how = (0.0, 1.0), "full"
    pixels = (samples - value_range[0]) / (value_range[1] - value_range[0])
    return Micrograph(
        pixels=np.clip(pixels, 0.0, 1.0).astype(np.float32),
        path=label,
        source_dtype=source_dtype,
        colour=colour,
        value_range=value_range,
        scaling=how,
    )


def read_micrograph(path: str | Path, scaling: Scaling = "auto") -> Micrograph:
    """Read one micrograph file into a :class:`Micrograph` with pixels in [0, 1].

    Parameters
    ----------
    path
        PNG, TIFF (8/16-bit, 32-bit float), JPEG or BMP file; grey, grey stored as RGB, or colour.
    scaling
        See :func:`micrograph_from_array`. The choice is recorded on the result.

    Raises
    ------
    MicrocaeError
        Missing, unreadable, truncated or non-image files, and the content errors of
        :func:`micrograph_from_array`.
    """
    path = Path(path)
    return micrograph_from_array(_load_array(path), label=str(path), scaling=scaling)


def find_images(
    inputs: list[str | Path] | tuple[str | Path, ...],
    exclude: tuple[str, ...] = DEFAULT_EXCLUDE,
    suffixes: tuple[str, ...] = IMAGE_SUFFIXES,
    what: str = "images",
) -> list[Path]:
    """Expand files and folders (searched recursively) into a sorted list of input files.

    Parameters
    ----------
    inputs
        Files and/or folders. Files are taken as given (even with an unusual suffix);
        folders contribute files whose suffix (case-insensitive) is in ``suffixes``.
    exclude
        Glob patterns on file names to skip inside folders (annotation masks by default).
    suffixes
        File name endings searched for in folders (default: :data:`IMAGE_SUFFIXES`).
    what
        Name of the files in error messages.

    Raises
    ------
    MicrocaeError
        If an input does not exist or a folder holds no matching file.
    """
    found: list[Path] = []
    for item in inputs:
        item = Path(item)
        if item.is_dir():
            in_folder = sorted(
                p
                for p in item.rglob("*")
                if p.is_file()
                and p.suffix.lower() in suffixes
                and not any(fnmatch.fnmatch(p.name, pattern) for pattern in exclude)
            )
            if not in_folder:
                raise MicrocaeError(f"{item}: no {what} found in this folder")
            found.extend(in_folder)
        elif item.exists():
            found.append(item)
        else:
            raise MicrocaeError(f"{item}: no such file or folder")
    if not found:
        raise MicrocaeError(f"no input {what} given")
    return found
