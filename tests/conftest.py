"""Shared fixtures: synthetic micrographs written in the formats users have; golden files."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

SHARED_MICROGRAPHS = Path(__file__).resolve().parents[2] / "shared" / "micrographs"
EXPECTED_DIR = Path(__file__).resolve().parent / "expected"
GENERATE_EXPECTED = os.environ.get("MICROCAE_GENERATE_EXPECTED") == "1"
"""``MICROCAE_GENERATE_EXPECTED=1 pytest ...`` rewrites the golden files the tests compare to
(only after an intended change of format or numbers; review the diff of tests/expected/)."""


@pytest.fixture
def expected() -> Callable[[str, dict], dict]:
    """``expected(name, actual)``: the golden values in ``tests/expected/<name>.json``.

    With ``MICROCAE_GENERATE_EXPECTED=1`` the file is first rewritten from ``actual``; the test
    then compares ``actual`` with what the file holds, with its own tolerances.
    """

    def load(name: str, actual: dict) -> dict:
        path = EXPECTED_DIR / f"{name}.json"
        if GENERATE_EXPECTED:
            path.parent.mkdir(exist_ok=True)
            path.write_text(json.dumps(actual, indent=1, sort_keys=True, ensure_ascii=False)
                            + "\n", encoding="utf-8")
        if not path.is_file():
            pytest.fail(f"{path} is missing; create it with MICROCAE_GENERATE_EXPECTED=1")
        return json.loads(path.read_text(encoding="utf-8"))

    return load


def synthetic_micrograph(height: int, width: int, seed: int = 0) -> np.ndarray:
    """(H, W) uint8 image with bright grains, dark blobs and noise (not constant)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width]
    grains = 150 + 60 * np.sin(xx / 7.0 + seed) * np.cos(yy / 5.0)
    image = grains + rng.normal(0, 12, size=(height, width))
    image[(yy // 23 + xx // 31 + seed) % 5 == 0] *= 0.3
    return np.clip(image, 0, 255).astype(np.uint8)


def image_tensor(height: int, width: int, seed: int = 0) -> torch.Tensor:
    """(1, 1, H, W) float32 tensor in [0, 1] of :func:`synthetic_micrograph`."""
    return torch.from_numpy(synthetic_micrograph(height, width, seed) / 255.0).float()[None, None]


@pytest.fixture(scope="module")
def one_thread():
    """One torch thread for a module (``pytestmark = pytest.mark.usefixtures("one_thread")``)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def write_png(path: Path, array: np.ndarray) -> Path:
    """Write an array with Pillow (mode inferred) and return the path."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)
    return path


@pytest.fixture
def tiny_model():
    """A small random-weight CAE (2 stages: 4 -> 4 channels), seeded."""
    from microcae.models.cae import CAE, CAEConfig

    torch.manual_seed(0)
    return CAE(CAEConfig(channels=(4, 4))).eval()


@pytest.fixture
def tiny_model_file(tmp_path, tiny_model) -> Path:
    """``tiny_model`` saved as a microcae safetensors file."""
    from microcae.models.registry import save_model

    path = tmp_path / "tiny.safetensors"
    save_model(tiny_model, path, {"purpose": "test"})
    return path


def eval_batchnorm(channels: int) -> nn.BatchNorm2d:
    """BatchNorm2d with random running statistics, scale and shift (from torch's current seed)."""
    bn = nn.BatchNorm2d(channels)
    with torch.no_grad():
        bn.running_mean.uniform_(-0.2, 0.2)
        bn.running_var.uniform_(0.5, 2.0)
        bn.weight.uniform_(0.5, 1.5)
        bn.bias.uniform_(-0.1, 0.1)
    return bn


def zoo_encoder() -> nn.Sequential:
    """Every supported layer kind, nested, with overlapping pools and strides."""
    torch.manual_seed(3)
    bn = eval_batchnorm(4)
    return nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1), bn, nn.LeakyReLU(0.1), nn.MaxPool2d(3, 2, padding=1),
        nn.Sequential(nn.Conv2d(4, 4, 3, padding=2, dilation=2), nn.Tanh()),
        nn.AvgPool2d(2), nn.Sequential(nn.Conv2d(4, 3, 1), nn.ELU(0.7)),
        nn.Upsample(scale_factor=2, mode="bilinear"), nn.Conv2d(3, 2, 3, padding=1, stride=2),
        nn.Sigmoid(), nn.Dropout(0.2), nn.Identity(),
    ).double().eval()


def laplace_tables(channels: int, length: int = 9, offset: int = -2):
    """Hand-made integer code tables (no float evaluation): a peaked pmf per channel + escape."""
    from microcae.entropy.code_tables import EntropyTables, quantise_pmf

    rows = []
    for c in range(channels):
        pmf = np.exp(-np.abs(np.arange(length - 1) + offset) / (1.0 + c))
        rows.append(quantise_pmf(np.append(pmf / pmf.sum() * 0.999, 0.001)))
    return EntropyTables(np.full(channels, offset, dtype=np.int32),
                         np.full(channels, length, dtype=np.int32),
                         np.stack(rows).astype(np.int32))


@pytest.fixture(scope="session")
def tiny_rd(tmp_path_factory):
    """A small RD model (2 stages: 4 -> 4 channels) trained for seconds on synthetic tiles.

    Returns ``(model, path of its file, training history)``.
    """
    from microcae.data.dataset import PreparedSet
    from microcae.training.architectures import ARCHITECTURES
    from microcae.training.loop import train

    tiles = np.stack([synthetic_micrograph(64, 64, seed=s) for s in range(10)])
    manifest = {"tiles": [{"index": i, "split": "test" if i >= 8 else "train"}
                          for i in range(10)]}
    data = PreparedSet(Path("synthetic"), (tiles / np.float32(255)).astype(np.float32),
                       manifest, "0" * 64)
    architecture = ARCHITECTURES["rd-study"].with_channels((4, 4))
    settings = architecture.settings(epochs=8, batch_size=4, lr=3e-3)
    path = tmp_path_factory.mktemp("rd") / "tiny_rd.safetensors"
    result = train(data, path, settings, build_model=architecture.build,
                   objective=architecture.objective(0.01), progress=False)
    return result.model, path, result.history
