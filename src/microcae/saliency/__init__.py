"""Pixel relevance of an encoder's latent code: complex-step engines and baseline methods.

``relevance(encoder, x, method=...)`` is the single entry point; ``METHODS`` maps every method
name (also the CLI's ``--method`` choices) to its implementation.
"""

from microcae.saliency import baselines, engines  # noqa: F401  (register their methods)
from microcae.saliency.registry import METHODS, relevance

__all__ = ["METHODS", "relevance"]
