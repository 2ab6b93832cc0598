"""Label masks stored beside micrographs (``<stem>_labels.png``, ``<stem>_mask.png``, ...).

Reading files belongs here, above :mod:`microcae.metrics`, whose functions take the arrays.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import tifffile
from PIL import Image, UnidentifiedImageError

from microcae.metrics.microstructure import IGNORE
from microcae.util.errors import MicrocaeError

LABEL_SUFFIXES = {"_labels.png": "phase", "_mask.png": "phase", "_gb_mask.tif": "boundary"}
"""Label files looked for beside an image ``<stem>.*``, and what their non-zero pixels mark."""


@dataclass(frozen=True)
class LabelMask:
    """A label mask aligned with an image.

    Attributes
    ----------
    labels
        (H, W) int64 labels of the image's shape; 0 matrix, > 0 labelled,
        :data:`microcae.metrics.microstructure.IGNORE` uncovered.
    kind
        ``"phase"``: labels are phases (their boundaries are phase boundaries) or ``"boundary"``:
        non-zero pixels are grain boundaries.
    path
        File the mask was read from.
    """

    labels: np.ndarray
    kind: str
    path: Path


def _read_labels(path: Path) -> np.ndarray:
    """Label values as stored (palette indices stay indices), as an array."""
    try:
        if path.suffix.lower() in (".tif", ".tiff"):
            return np.asarray(tifffile.imread(path))
        with Image.open(path) as image:
            return np.asarray(image)
    except (OSError, ValueError, UnidentifiedImageError) as exc:
        raise MicrocaeError(f"{path}: not a readable label mask ({exc})") from None


def find_label_mask(image: str | Path, shape: tuple[int, int]) -> LabelMask | None:
    """Find and read the label mask stored beside ``image`` (``<stem>_labels.png``, ...).

    Parameters
    ----------
    image
        Path of the micrograph.
    shape
        (H, W) of the micrograph. A mask with fewer rows covers the top rows only (MetalDAM
        leaves the bottom info band unlabelled); the uncovered rows get ``IGNORE``.

    Returns
    -------
    LabelMask or None
        None when no label file exists.

    Raises
    ------
    MicrocaeError
        If the label file is unreadable, not 2-D, or wider or taller than the image.
    """
    image = Path(image)
    for suffix, kind in LABEL_SUFFIXES.items():
        path = image.with_name(image.stem + suffix)
        if not path.is_file():
            continue
        array = _read_labels(path)
        if array.ndim != 2 or array.shape[1] != shape[1] or array.shape[0] > shape[0]:
            raise MicrocaeError(
                f"{path}: label mask of shape {array.shape} does not fit the image {shape}"
            )
        labels = np.full(shape, IGNORE, dtype=np.int64)
        labels[: array.shape[0]] = array
        if kind == "boundary":
            labels[: array.shape[0]] = array != 0
        return LabelMask(labels, kind, path)
    return None
