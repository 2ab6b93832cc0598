"""Shared fixtures: synthetic micrographs written in the formats users have."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

SHARED_MICROGRAPHS = Path(__file__).resolve().parents[2] / "shared" / "micrographs"


def synthetic_micrograph(height: int, width: int, seed: int = 0) -> np.ndarray:
    """(H, W) uint8 image with bright grains, dark blobs and noise (not constant)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width]
    grains = 150 + 60 * np.sin(xx / 7.0 + seed) * np.cos(yy / 5.0)
    image = grains + rng.normal(0, 12, size=(height, width))
    image[(yy // 23 + xx // 31 + seed) % 5 == 0] *= 0.3
    return np.clip(image, 0, 255).astype(np.uint8)


def write_png(path: Path, array: np.ndarray) -> Path:
    """Write an array with Pillow (mode inferred) and return the path."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)
    return path


@pytest.fixture
def tiny_model():
    """A small random-weight CAE (2 stages: 4 -> 4 channels), seeded."""
    from microcae.model import CAE, CAEConfig

    torch.manual_seed(0)
    return CAE(CAEConfig(channels=(4, 4))).eval()


@pytest.fixture
def tiny_model_file(tmp_path, tiny_model) -> Path:
    """``tiny_model`` saved as a microcae safetensors file."""
    from microcae.model import save_model

    path = tmp_path / "tiny.safetensors"
    save_model(tiny_model, path, {"purpose": "test"})
    return path
