"""Layer kinds, named once: each torch layer type's twin, footprint rule, kink rule and checks.

Like Zennit's ``types.py``, this is the one place that knows layer types. Every other module asks
the table :data:`LAYERS`:

- :func:`complexify` builds complex twins from each kind's ``twin`` (then applies the fusions of
  :mod:`microcae.saliency.canonizers`);
- :func:`microcae.saliency.footprint.encoder_footprint` composes each kind's ``reach`` (the
  output indices an input index can influence, per spatial axis; ``None``: mixes all positions);
- :func:`microcae.saliency.kinks.kink_pixels` asks each kind's ``kinks`` where its derivative is
  one-sided.

To support a new layer type of microcae, add one :class:`LayerKind` here; a layer type defined
outside microcae (a user's own module) is added with :func:`register_layer_kind`. The codec's
generalised divisive normalisation (:class:`microcae.models.gdn.GDN`, GDN and IGDN) has
:class:`~microcae.saliency.twins.GDNTwin` with :func:`pointwise_reach` and no kinks.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from microcae.models.gdn import GDN
from microcae.saliency.canonizers import canonize
from microcae.saliency.twins import (
    AnalyticTwin,
    BatchNorm2dTwin,
    Conv2dTwin,
    GDNTwin,
    LinearMapTwin,
    LinearTwin,
    MaxPool2dTwin,
    SequentialTwin,
    SlopeTwin,
    Twin,
)
from microcae.util.errors import MicrocaeError

Reach = Callable[[nn.Module, int, int, int], tuple[np.ndarray, np.ndarray]]
"""``reach(layer, axis, n_in, n_out) -> (lo, hi)``: input index i influences ``lo[i]..hi[i]``."""
Kinks = Callable[[nn.Module, torch.Tensor, torch.Tensor, "nn.Module | None"],
                 "tuple[torch.Tensor, bool] | None"]
"""``kinks(layer, value, output, previous_layer) -> (where, on_output)`` or None.

``where`` is bool, (N, h, w) over the positions of the layer's input (``on_output`` False) or
output (True) whose derivative is one-sided, or (N,) for a non-spatial value (then every pixel).
"""
Check = Callable[[nn.Module], "str | None"]
"""``check(layer) -> problem`` (None if the layer's settings are supported).

The problem is appended to "layer 'PATH' (TYPE)", so it starts with " is", " has" or ": ".
"""


@dataclass(frozen=True)
class LayerKind:
    """Everything the saliency engines need to know about one family of torch layers.

    Attributes
    ----------
    types
        The torch layer types of the family (exact type match).
    twin
        Constructor of the complex twin (shares the layer's weights).
    reach
        Spatial footprint rule (see :data:`Reach`); None for layers that mix all positions.
    kinks
        Where the derivative is one-sided (see :data:`Kinks`); None if nowhere.
    check
        Rejects unsupported settings (see :data:`Check`); None if every setting is supported.
    """

    types: tuple[type[nn.Module], ...]
    twin: Callable[[nn.Module], Twin]
    reach: Reach | None
    kinks: Kinks | None = None
    check: Check | None = None


def _pair(value: int | tuple[int, ...], axis: int) -> int:
    return int(value[axis]) if isinstance(value, tuple) else int(value)


def pointwise_reach(layer: nn.Module, axis: int, n_in: int,
                    n_out: int) -> tuple[np.ndarray, np.ndarray]:
    """Each index influences itself only (activations, per-channel scalings)."""
    return np.arange(n_in), np.arange(n_in)


def window_reach(layer: nn.Module, axis: int, n_in: int,
                 n_out: int) -> tuple[np.ndarray, np.ndarray]:
    """Sliding windows (convolutions, pools): kernel, stride, padding and dilation of ``axis``."""
    kernel = _pair(layer.kernel_size, axis)
    stride = _pair(getattr(layer, "stride", None) or layer.kernel_size, axis)
    dilation = _pair(getattr(layer, "dilation", 1), axis)
    padding = layer.padding
    if padding == "valid":
        padding = 0
    elif padding == "same":
        padding = dilation * (kernel - 1) // 2
    padding = _pair(padding, axis)
    i = np.arange(n_in)
    span = dilation * (kernel - 1)
    lo = np.maximum(-((span - i - padding) // stride), 0)  # ceil((i + p - span) / s)
    hi = np.minimum((i + padding) // stride, n_out - 1)
    return lo, hi


def upsample_reach(layer: nn.Module, axis: int, n_in: int,
                   n_out: int) -> tuple[np.ndarray, np.ndarray]:
    """Nearest or bilinear upsampling: a conservative neighbourhood of the scaled index."""
    i = np.arange(n_in)
    scale = n_out / n_in
    lo = np.maximum(np.floor((i - 1) * scale).astype(np.int64) - 1, 0)
    hi = np.minimum(np.ceil((i + 2) * scale).astype(np.int64) + 1, n_out - 1)
    return lo, hi


def zero_input_kinks(layer: nn.Module, value: torch.Tensor, output: torch.Tensor,
                     previous: nn.Module | None) -> tuple[torch.Tensor, bool] | None:
    """ReLU, LeakyReLU, ELU with α ≠ 1: kinked where the input is exactly 0 (any channel)."""
    if isinstance(layer, nn.ELU) and layer.alpha == 1.0:
        return None
    zero = value == 0
    if value.dim() == 4:
        return zero.any(dim=1), False
    return zero.flatten(1).any(dim=1), False


def tied_window_kinks(pool: nn.Module, value: torch.Tensor, best: torch.Tensor,
                      previous: nn.Module | None) -> tuple[torch.Tensor, bool]:
    """MaxPool2d: output positions whose window maximum is attained more than once.

    Windows of zeros right after a ReLU are smooth (each zero comes from a strictly negative
    input, whose derivative is 0 from both sides) and are not counted. Non-overlapping windows
    are counted with pooling ops (channels-last friendly); others through ``unfold``.
    """
    kernel, stride = _pair2(pool.kernel_size), _pair2(pool.stride or pool.kernel_size)
    if stride == kernel and _pair2(pool.padding) == (0, 0) and _pair2(pool.dilation) == (1, 1) \
            and not pool.ceil_mode:
        (n, c, h, w), (ky, kx) = best.shape, kernel
        windows = value[:, :, : h * ky, : w * kx].permute(0, 2, 3, 1).reshape(n, h, ky, w, kx, c)
        hits = windows == best.permute(0, 2, 3, 1).reshape(n, h, 1, w, 1, c)
        tied = (hits.sum(dim=(2, 4)) > 1).permute(0, 3, 1, 2)
    else:
        rows, cols = _pair2(pool.padding)
        padded = nn.functional.pad(value, (cols, cols, rows, rows), value=-torch.inf)
        windows = nn.functional.unfold(padded, kernel, pool.dilation, 0, stride)
        windows = windows.view(value.shape[0], value.shape[1], -1, windows.shape[-1])
        tied = ((windows == windows.max(dim=2, keepdim=True).values).sum(dim=2) > 1
                ).view(best.shape)
    if isinstance(previous, nn.ReLU):
        tied &= best != 0
    return tied.any(dim=1), True


def _pair2(value: int | tuple[int, ...]) -> tuple[int, int]:
    return (int(value), int(value)) if isinstance(value, int) else (int(value[0]), int(value[1]))


def _eval_only(layer: nn.Module) -> str | None:
    if layer.training:
        return " is in training mode; call .eval() on the model first"
    if isinstance(layer, nn.BatchNorm2d) and layer.running_var is None:
        return " has no running statistics"
    return None


def _not_inplace(layer: nn.Module) -> str | None:
    return ": in-place activations are not supported" if layer.inplace else None


def _upsample_modes(layer: nn.Module) -> str | None:
    if layer.mode not in ("nearest", "bilinear"):
        return f": mode {layer.mode!r} is not supported (nearest, bilinear)"
    return None


def _no_indices(layer: nn.Module) -> str | None:
    return ": return_indices=True is not supported" if layer.return_indices else None


LAYERS: tuple[LayerKind, ...] = (
    LayerKind((nn.Conv2d,), Conv2dTwin, window_reach),
    LayerKind((nn.Linear,), LinearTwin, None),
    LayerKind((nn.ReLU, nn.LeakyReLU), SlopeTwin, pointwise_reach, zero_input_kinks,
              _not_inplace),
    LayerKind((nn.ELU,), AnalyticTwin, pointwise_reach, zero_input_kinks, _not_inplace),
    LayerKind((nn.Tanh, nn.Sigmoid), AnalyticTwin, pointwise_reach),
    LayerKind((nn.MaxPool2d,), MaxPool2dTwin, window_reach, tied_window_kinks, _no_indices),
    LayerKind((nn.AvgPool2d,), LinearMapTwin, window_reach),
    LayerKind((nn.AdaptiveAvgPool2d, nn.Flatten), LinearMapTwin, None),
    LayerKind((nn.Upsample,), LinearMapTwin, upsample_reach, None, _upsample_modes),
    LayerKind((nn.Identity,), LinearMapTwin, pointwise_reach),
    LayerKind((nn.Dropout,), LinearMapTwin, pointwise_reach, None, _eval_only),
    LayerKind((nn.BatchNorm2d,), BatchNorm2dTwin, pointwise_reach, None, _eval_only),
    LayerKind((GDN,), GDNTwin, pointwise_reach),
)
"""Every supported layer family. Add an entry to support a new layer type."""

_BY_TYPE = {layer_type: kind for kind in LAYERS for layer_type in kind.types}


def register_layer_kind(kind: LayerKind) -> None:
    """Add a kind for a layer type defined outside microcae (a user's own module).

    The engines, footprints and kink diagnostic then accept encoders that use it, as if it
    were in :data:`LAYERS` (microcae's own layer types belong in that table).

    Parameters
    ----------
    kind
        The kind; its types must not have a kind yet.

    Raises
    ------
    ValueError
        If one of its types already has a kind.
    """
    taken = [t.__name__ for t in kind.types if t in _BY_TYPE]
    if taken:
        raise ValueError(f"layer types {taken} already have a kind")
    _BY_TYPE.update(dict.fromkeys(kind.types, kind))


def layer_kind(layer: nn.Module, path: str = "encoder") -> LayerKind:
    """Return the kind of ``layer`` after checking its settings.

    Raises
    ------
    MicrocaeError
        For a type not in :data:`LAYERS` (naming its path and type) or unsupported settings.
    """
    kind = _BY_TYPE.get(type(layer))
    name = f"layer '{path}' ({type(layer).__name__})"
    if kind is None:
        supported = ", ".join(sorted(t.__name__ for t in _BY_TYPE))
        raise MicrocaeError(f"{name} has no complex twin; supported: {supported}, Sequential")
    problem = kind.check(layer) if kind.check is not None else None
    if problem is not None:
        raise MicrocaeError(f"{name}{problem}")
    return kind


def leaves(module: nn.Module, path: str = "encoder") -> list[tuple[str, nn.Module]]:
    """List the layers of a (nested) ``nn.Sequential`` in order, with their dotted paths."""
    if type(module) is nn.Sequential:
        return [item for name, child in module.named_children()
                for item in leaves(child, f"{path}.{name}")]
    return [(path, module)]


def complexify(module: nn.Module, path: str = "encoder") -> Twin:
    """Build the complex twin of a module; the twin shares (never copies) the module's weights.

    Parameters
    ----------
    module
        A layer of a kind in :data:`LAYERS`, or an ``nn.Sequential`` of such (nested containers
        allowed). Dropout and BatchNorm2d must be in eval mode.
    path
        Name of ``module`` used in error messages; children are named ``path.child``.

    Returns
    -------
    Twin
        ``twin((re, im))`` returns ``(module(re), imaginary part)`` for (N, ...) ``re`` and
        (N·K, ...) ``im``; ``twin.real``, ``twin.tangent`` and ``twin.cotangent`` give the
        linearisation. The twin holds no copy of any parameter and registers no hooks.

    Raises
    ------
    MicrocaeError
        For an unsupported layer (naming its path and type) or a layer in training mode.
    """
    if type(module) is nn.Sequential:
        twins = [complexify(child, f"{path}.{name}") for name, child in module.named_children()]
        return SequentialTwin(module, canonize(twins))
    return layer_kind(module, path).twin(module)
