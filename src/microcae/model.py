"""The documented model API, kept stable: ``CAE()`` and ``load_model(path=None)``.

The implementation lives in :mod:`microcae.models`; this module only re-exports it.
"""

from microcae.models.cae import CAE, CAEConfig
from microcae.models.registry import load_model, save_model

__all__ = ["CAE", "CAEConfig", "load_model", "save_model"]
