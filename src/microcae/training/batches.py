"""Which tiles a training step sees: seeded epoch order, augmentation and batch tensors.

Epoch ``e`` visits the training tiles in the order of a permutation drawn from a generator
seeded with ``(seed, e)``; each global batch is gathered in index order (sorted, so a memory-mapped
set is read forwards) and optionally flipped and rotated by draws fixed by ``(seed, e, step)``.
Nothing depends on the history of the run, so a resumed run sees exactly the batches an
uninterrupted one would.
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import numpy as np
import torch

from microcae.util.runtime import to_channels_last


def epoch_order(n_tiles: int, seed: int, epoch: int) -> np.ndarray:
    """Permutation of ``range(n_tiles)`` for ``epoch`` (0-based), fixed by ``(seed, epoch)``."""
    return np.random.default_rng([seed, epoch]).permutation(n_tiles)


def augment_batch(batch: np.ndarray, seed: int, epoch: int, step: int) -> np.ndarray:
    """Flip and rotate each (H, W) tile of a (B, H, W) batch by a draw fixed by its position."""
    rng = np.random.default_rng([seed, epoch, step, 1])
    out = np.empty_like(batch)
    for i, tile in enumerate(batch):
        turns, flip = rng.integers(4), rng.integers(2)
        tile = np.rot90(tile, k=int(turns))
        out[i] = tile[:, ::-1] if flip else tile
    return out


def global_batches(tiles: np.ndarray, order: np.ndarray, batch_size: int, seed: int,
                   epoch: int, augment: bool) -> Iterator[np.ndarray]:
    """Yield an epoch's global batches as (B, H, W) float32 arrays.

    Parameters
    ----------
    tiles
        (T, H, W) tiles of the whole set (may be memory-mapped).
    order
        Tile indices in the epoch's visiting order; consecutive runs of ``batch_size`` (the
        last one shorter) form the batches.
    batch_size, seed, epoch, augment
        Batch size, run seed, 0-based epoch and whether to flip/rotate (:func:`augment_batch`).
    """
    for step in range(math.ceil(len(order) / batch_size)):
        chosen = order[step * batch_size : (step + 1) * batch_size]
        batch = np.ascontiguousarray(tiles[np.sort(chosen)], dtype=np.float32)
        yield augment_batch(batch, seed, epoch, step) if augment else batch


def as_batch(tiles: np.ndarray) -> torch.Tensor:
    """(B, H, W) float32 array -> (B, 1, H, W) channels-last tensor (a copy only if needed)."""
    return to_channels_last(torch.from_numpy(np.ascontiguousarray(tiles))[:, None])


def batch_tensor(tiles: np.ndarray, indices: np.ndarray) -> torch.Tensor:
    """Gather tiles ``indices`` of a (T, H, W) array into a (B, 1, H, W) channels-last tensor."""
    return as_batch(np.ascontiguousarray(tiles[np.sort(indices)], dtype=np.float32))
