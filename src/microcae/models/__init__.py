"""Every model kind microcae can load, save, fingerprint and run.

``load_model(name_or_path)`` returns any kind (:data:`~microcae.models.registry.MODEL_KINDS`);
``save_model(model, path)`` writes any kind; every model has ``fingerprint()``.
"""

from microcae.models.base import MicrocaeModel
from microcae.models.registry import (
    BUNDLED,
    MODEL_KINDS,
    ModelFile,
    load_model,
    read_model_file,
    resolve_model,
    save_model,
)

__all__ = [
    "BUNDLED",
    "MODEL_KINDS",
    "MicrocaeModel",
    "ModelFile",
    "load_model",
    "read_model_file",
    "resolve_model",
    "save_model",
]
