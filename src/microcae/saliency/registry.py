"""The registry of relevance methods: one record per method, and the ``relevance()`` entry point.

Every property of a method that other packages ask about is on its :class:`Method` record (as
Captum puts ``has_convergence_delta()`` on the method object): whether it computes the study's
complex-step relevance exactly, whether r_ij is local (so whole images can be mapped in strips),
its figure title, its conservation check, its role and its place in default orders. Other code
queries the registry (:func:`names`, :func:`fastest_exact`, :func:`title`) instead of keeping
its own lists of method names.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import nn

from microcae.util.errors import MicrocaeError
from microcae.util.runtime import configure_allocator

RelevanceMethod = Callable[..., torch.Tensor]
"""``method(encoder, x, **options) -> (N, H, W)`` relevance for a batch ``x`` of (N, 1, H, W)."""
CostEstimate = Callable[[nn.Module, torch.Tensor], "float | None"]
"""``cost(encoder, x) -> multiply-adds`` for one image shaped like ``x`` (None: the engine does
not apply to the encoder)."""
ConservationCheck = Callable[[nn.Module, torch.Tensor, torch.Tensor], torch.Tensor]
"""``check(encoder, x, maps) -> (N,)``: share of a conserved quantity that reached the input."""
Role = Literal["study", "engine", "baseline", "control"]
"""``study``: the study's method (the fastest exact engine); ``engine``: one exact way to compute
it; ``baseline``: another attribution method; ``control``: a model-free map measured alongside."""

STUDY_METHOD = "complex-step"
"""The study's relevance, r_ij = ||∂f/∂x_ij||_F; computed by the fastest exact engine."""


@dataclass(frozen=True)
class Method:
    """One relevance method and everything other code needs to know about it.

    Attributes
    ----------
    name
        Registry key and ``--method`` choice.
    function
        ``function(encoder, x, **options) -> (N, H, W)`` for ``x`` of shape (N, 1, H, W).
    title
        Panel and legend title in figures.
    role
        See :data:`Role`.
    exact
        Gives the study's complex-step relevance to floating-point precision (accepts
        ``precision``).
    local
        r_ij involves only the latent units pixel (i, j) feeds, so a whole image can be mapped
        in strips with halos and give the same numbers.
    preference
        Place in default orders: among exact engines, 0 is the fastest on the study's encoder;
        among baselines, the order of comparison tables.
    study
        Shown in the study's Fig. 11 (the method and the baselines it compared).
    conservation
        Check of a quantity the method conserves (LRP: the latent sum), or None.
    by_units
        ``by_units(encoder, x, latent_rows, latent_cols, **options) -> (N, H, W)``: the part of
        r² that the latent units of that block contribute, or None. The parts of a partition of
        the latent grid add up to r², so whole images can be mapped window by window, each unit
        once.
    cost
        Estimated multiply-adds on a given encoder (see :data:`CostEstimate`), or None; the
        study's method runs the exact engine with the smallest estimate
        (:func:`fastest_exact`).
    layers
        The layer types the method is defined for (LRP's rules and guided backpropagation
        assume ReLU networks of convolutions and pools), or None: any layer (the exact engines
        check their own layer table, :data:`microcae.saliency.layers.LAYERS`).
    """

    name: str
    function: RelevanceMethod
    title: str
    role: Role
    exact: bool = False
    local: bool = False
    preference: int = 0
    study: bool = False
    conservation: ConservationCheck | None = None
    by_units: RelevanceMethod | None = None
    cost: CostEstimate | None = None
    layers: tuple[type[nn.Module], ...] | None = None


METHODS: dict[str, Method] = {}
"""Method name -> record (the CLI's ``--method`` choices are its keys)."""


def register(name: str, title: str, role: Role, **properties: Any
             ) -> Callable[[RelevanceMethod], RelevanceMethod]:
    """Return a decorator that records a function in :data:`METHODS` (see :class:`Method`)."""

    def add(function: RelevanceMethod) -> RelevanceMethod:
        if name in METHODS:
            raise ValueError(f"relevance method {name!r} registered twice")
        METHODS[name] = Method(name, function, title, role, **properties)
        return function

    return add


def names(role: Role | None = None, *, exact: bool | None = None, local: bool | None = None,
          study: bool | None = None) -> tuple[str, ...]:
    """Names of the registered methods with the given properties, by preference, then name."""
    chosen = [m for m in METHODS.values()
              if (role is None or m.role == role) and (exact is None or m.exact == exact)
              and (local is None or m.local == local) and (study is None or m.study == study)]
    return tuple(m.name for m in sorted(chosen, key=lambda m: (m.preference, m.name)))


def lookup(name: str) -> Method:
    """Return the record of ``name``; unknown names raise a one-line :class:`MicrocaeError`."""
    if name not in METHODS:
        raise MicrocaeError(f"unknown relevance method {name!r}; choose from {sorted(METHODS)}")
    return METHODS[name]


def _unsupported_layer(name: str, encoder: nn.Module) -> tuple[str, nn.Module] | None:
    """Return the first leaf layer (path, layer) of ``encoder`` that ``name`` is not defined for."""
    record = lookup(name)
    if record.layers is None:
        return None
    for path, layer in encoder.named_modules(prefix="encoder"):
        if next(layer.children(), None) is None and type(layer) not in record.layers:
            return path, layer
    return None


def applies(name: str, encoder: nn.Module) -> bool:
    """Whether method ``name`` is defined for every layer of ``encoder`` (:func:`check_encoder`)."""
    return _unsupported_layer(name, encoder) is None


def check_encoder(name: str, encoder: nn.Module) -> None:
    """Refuse an encoder with a layer the method is not defined for (see :attr:`Method.layers`).

    Raises
    ------
    MicrocaeError
        One line naming the method, the layer's path and type, and the supported types.
    """
    unsupported = _unsupported_layer(name, encoder)
    if unsupported is not None:
        path, layer = unsupported
        supported = ", ".join(sorted(t.__name__ for t in lookup(name).layers))
        raise MicrocaeError(
            f"method {name!r} is defined for encoders of {supported} layers, not for layer "
            f"'{path}' ({type(layer).__name__}); use {STUDY_METHOD!r} or 'gradient'")


def title(name: str) -> str:
    """Figure title of a method (the name itself for names not registered)."""
    return METHODS[name].title if name in METHODS else name


def fastest_exact(encoder: nn.Module | None = None, x: torch.Tensor | None = None) -> str:
    """Name of the fastest exact engine (the one :data:`STUDY_METHOD` dispatches to).

    Parameters
    ----------
    encoder, x
        Without them: the engine of preference 0 (``vjp``, the fastest on the study's
        encoder). With them: the engine whose cost estimate (:attr:`Method.cost`) is smallest
        for this encoder and input shape (e.g. ``patches`` on the codec's analysis transform,
        ``vjp`` on the study's encoder, where ``patches`` does not apply).
    """
    engines = names("engine", exact=True)
    if not engines:
        raise MicrocaeError("no exact relevance engine is registered")
    if encoder is None or x is None:
        return engines[0]
    # the estimates depend on the architecture and the input shape only, not on the weights
    key = (repr(encoder), tuple((n, tuple(p.shape)) for n, p in encoder.named_parameters()),
           tuple(x.shape[1:]), engines)
    if key not in _CHOICES:
        costs = {name: METHODS[name].cost(encoder, x) for name in engines
                 if METHODS[name].cost is not None}
        known = {name: cost for name, cost in costs.items() if cost is not None}
        if len(_CHOICES) >= 256:
            _CHOICES.clear()
        _CHOICES[key] = min(known, key=known.__getitem__) if known else engines[0]
    return _CHOICES[key]


_CHOICES: dict[tuple, str] = {}
"""Cache of :func:`fastest_exact` by architecture and input shape (cleared when full)."""


def relevance(encoder: nn.Module, x: torch.Tensor, method: str = STUDY_METHOD,
              **options: Any) -> torch.Tensor:
    """Relevance of every input pixel to the encoder's output.

    Sets up the allocator as the command line does (:func:`microcae.util.runtime.
    configure_allocator`: large buffers stay in the heap), then runs the method. The caller's
    encoder is never modified.

    Parameters
    ----------
    encoder
        A torch module mapping (N, 1, H, W) to a latent tensor (e.g. ``CAE().encoder``).
    x
        (N, 1, H, W) float tensor, pixel values in [0, 1], on the encoder's device.
    method
        A key of :data:`METHODS`: ``"complex-step"`` (the study's relevance, by the fastest
        exact engine for this encoder, :func:`fastest_exact`: ``"vjp"`` on the study's
        encoder, ``"patches"`` on the codec's analysis transform, about 9× faster there than
        ``"vjp"``; the default), the engines ``"vjp"``, ``"patches"``, ``"jvp"``,
        ``"complex-step-coloured"`` and ``"complex-step-naive"`` (the study's literal one pass
        per pixel), the baselines ``"gbp"``, ``"lrp-w2"``, ``"lrp-zbeta"`` (ReLU networks of
        convolutions and pools only), ``"gradient"``, ``"integrated-gradients"`` and the
        controls ``"sobel-edges"`` and ``"random"``.
    **options
        Passed to the method (e.g. ``precision``, ``chunk``, ``progress``).

    Returns
    -------
    torch.Tensor
        (N, H, W) raw, unsmoothed relevance. For the exact methods
        r_ij = ||∂f(x)/∂x_ij||_F over all latent values (units: latent units per unit intensity).

    Raises
    ------
    MicrocaeError
        One line, for an unknown method, an input of the wrong shape, a layer without a
        complex twin (exact methods) or a layer the method is not defined for (GBP, LRP).
    """
    record = lookup(method)
    check_encoder(method, encoder)
    if x.dim() != 4 or x.shape[1] != 1:
        raise MicrocaeError(f"expected input of shape (N, 1, H, W), got {tuple(x.shape)}")
    configure_allocator()
    return record.function(encoder, x, **options)
