"""Pixel relevance of an encoder's latent code: complex-step engines, baselines and controls.

``relevance(encoder, x, method=...)`` is the single entry point; ``METHODS`` maps every method
name (also the CLI's ``--method`` choices) to its record (:class:`~microcae.saliency.registry.
Method`: callable, title, role, exactness, locality, preference, conservation check).
"""

from microcae.saliency import (  # noqa: F401  (register their methods)
    baselines,
    controls,
    engines,
    patches,
)
from microcae.saliency.registry import METHODS, Method, relevance

__all__ = ["METHODS", "Method", "relevance"]
