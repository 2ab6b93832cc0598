"""microcae: compact representation and complex-step saliency of micrographs."""

__version__ = "0.1.0"
