"""Reconstruction quality: MSE, PSNR and SSIM of images on the [0, 1] intensity scale."""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
from skimage.metrics import peak_signal_noise_ratio, structural_similarity


@dataclass(frozen=True)
class ReconstructionScores:
    """Quality of one reconstruction.

    Attributes
    ----------
    mse
        Mean squared error on the [0, 1] scale (lower is better; the study's loss).
    psnr_db
        Peak signal-to-noise ratio in dB for a peak of 1 (higher is better).
    ssim
        Structural similarity, Wang et al. (2004), IEEE TIP 13(4) (higher is better, max 1).
    """

    mse: float
    psnr_db: float
    ssim: float

    def as_dict(self) -> dict[str, float]:
        """Return the scores as a plain dictionary."""
        return asdict(self)


def reconstruction_scores(original: np.ndarray, reconstruction: np.ndarray) -> ReconstructionScores:
    """Compare two (H, W) images on the [0, 1] scale (the reconstruction is clipped to [0, 1]).

    PSNR and SSIM come from scikit-image with ``data_range=1``; SSIM uses its default 7×7
    uniform window. Images smaller than 7 pixels on a side get SSIM = NaN.
    """
    original = np.asarray(original, dtype=np.float64)
    reconstruction = np.clip(np.asarray(reconstruction, dtype=np.float64), 0.0, 1.0)
    if original.shape != reconstruction.shape or original.ndim != 2:
        raise ValueError(f"shapes differ or are not 2-D: {original.shape}, {reconstruction.shape}")
    mse = float(np.mean((original - reconstruction) ** 2))
    psnr = float("inf") if mse == 0 else float(
        peak_signal_noise_ratio(original, reconstruction, data_range=1.0)
    )
    ssim = (
        float(structural_similarity(original, reconstruction, data_range=1.0))
        if min(original.shape) >= 7
        else float("nan")
    )
    return ReconstructionScores(mse=mse, psnr_db=psnr, ssim=ssim)
