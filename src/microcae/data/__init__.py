"""Reading micrographs, cutting them into tiles and preparing train/test sets."""

from microcae.data.images import IMAGE_SUFFIXES, Micrograph, find_images, read_micrograph
from microcae.data.tiling import TileGrid, extract_tiles, stitch_tiles

__all__ = [
    "IMAGE_SUFFIXES",
    "Micrograph",
    "TileGrid",
    "extract_tiles",
    "find_images",
    "read_micrograph",
    "stitch_tiles",
]
