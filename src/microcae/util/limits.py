"""Resource limits on what an input may make microcae allocate.

A file's header can claim any image size in a few bytes (a tiled TIFF, a PNG header, a latent
file's geometry). Every reader checks the claim against one pixel limit before it allocates
anything for the pixels; the limit is set with the environment variable
``MICROCAE_MAX_PIXELS`` (default :data:`DEFAULT_MAX_PIXELS`).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator

from microcae.util.errors import MicrocaeError

MAX_PIXELS_ENV = "MICROCAE_MAX_PIXELS"
DEFAULT_MAX_PIXELS = 1 << 26
"""67,108,864 pixels (8192 × 8192). Measured peaks: ``encode`` about 35 bytes per pixel,
``decode`` about 45 (so about 3 GiB at the limit); ``microcae batch`` reads TIFFs tile by tile
for larger images."""


def max_image_pixels() -> int:
    """Return the pixel limit in force: ``$MICROCAE_MAX_PIXELS`` or the default.

    Raises
    ------
    MicrocaeError
        If the variable is set to something other than a positive whole number.
    """
    text = os.environ.get(MAX_PIXELS_ENV)
    if text is None or not text.strip():
        return DEFAULT_MAX_PIXELS
    try:
        value = int(text.strip())
    except ValueError:
        value = 0
    if value < 1:
        raise MicrocaeError(f"${MAX_PIXELS_ENV}={text!r}: expected a positive whole number "
                            "of pixels")
    return value


def check_image_size(height: int, width: int, label: str, claim: str = "") -> None:
    """Refuse an image of ``height`` × ``width`` pixels above :func:`max_image_pixels`.

    Parameters
    ----------
    height, width
        Size in pixels, as the file claims it (before anything is allocated).
    label
        File name for the message.
    claim
        Words before the size in the message, e.g. ``"the header claims "``.

    Raises
    ------
    MicrocaeError
        One line naming ``label``, the size, the limit and how to raise it.
    """
    limit = max_image_pixels()
    if height * width > limit:
        raise MicrocaeError(
            f"{label}: {claim}{height}x{width} pixels, more than the limit of {limit} "
            f"(set {MAX_PIXELS_ENV} to allow larger images)"
        )


@contextlib.contextmanager
def memory_guard(label: str) -> Iterator[None]:
    """Turn a ``MemoryError`` inside the block into one line naming ``label`` and the limit."""
    try:
        yield
    except MemoryError:
        raise MicrocaeError(f"{label}: not enough memory for this image (lower "
                            f"{MAX_PIXELS_ENV} to refuse such images before starting)") from None
