"""Measurements: reconstruction quality, rate-distortion, saliency quality."""
