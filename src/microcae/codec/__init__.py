"""Latent container files: quantisation or entropy coding, tiling, zstd, encryption.

The public entry points are :func:`encode_image` / :func:`decode_bytes` for one image in memory;
the file jobs behind the command line are in :mod:`microcae.pipelines.latent_files`. The byte
layout
is specified in ``docs/FORMAT.md``.
"""

from microcae.codec.container import (
    ENTROPY,
    STREAM,
    SUFFIX,
    LatentHeader,
    SourceInfo,
    parse_header,
)
from microcae.codec.crypto import Secret, generate_key, read_key_file, write_key_file
from microcae.codec.latent_files import (
    DecodedImage,
    RateBudget,
    check_refinable,
    decode_bytes,
    default_dtype,
    encode_image,
    open_latent_file,
)
from microcae.codec.quantise import LATENT_DTYPES

__all__ = [
    "ENTROPY",
    "LATENT_DTYPES",
    "STREAM",
    "SUFFIX",
    "DecodedImage",
    "LatentHeader",
    "RateBudget",
    "Secret",
    "SourceInfo",
    "check_refinable",
    "decode_bytes",
    "default_dtype",
    "encode_image",
    "generate_key",
    "open_latent_file",
    "parse_header",
    "read_key_file",
    "write_key_file",
]
