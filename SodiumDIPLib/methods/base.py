"""What every reconstruction method receives and returns, and the registry that names them.

A method is a function ``run(problem, params, ctx) -> MethodResult`` registered under a name with its
presets. The pipeline (``SodiumDIPLib.pipeline``) builds the Problem from files or arrays, normalises
intensities (the input's robust maximum becomes 1), calls the method and undoes the scaling, so methods
work on images of order 1 and never see files, geometry or scaling.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable, Optional

import numpy as np
import torch

from ..errors import Cancelled, InputError
from ..params import describe as describe_params
from ..params import spec as declared_param
from ..params import validate as validate_params
from ..physics.base import LinearOperator

PRESETS = ("fast", "balanced", "quality")


@dataclass
class Problem:
    """One reconstruction task, on the reconstruction grid, in normalised intensity units.

    measurement: y, the data (an image for denoising, complex k-space when ``operator`` is not identity).
    operator:    A, image -> measurement.
    image_shape: shape of the reconstructed image, (Z, Y, X) or (Y, X) for a single slice.
    spacing:     voxel size in mm in array axis order (same length as image_shape).
    initial:     a starting / pilot image (the input itself when denoising; A^H y or gridding otherwise).
    proton:      the registered proton image resampled onto the grid (None: no guidance available).
    support:     boolean mask of the object (head or breast), used for bias-field scale and noise estimates.
    noise_sigma: standard deviation of the complex Gaussian noise of y per real channel (None: unknown).
    magnitude:   True when y is a magnitude image (Rician / noncentral-chi noise floor).
    n_channels:  channels combined by sum-of-squares into a magnitude y (1 = Rician).
    reference, lesion, proton_only: optional, for monitoring curves only -- never used to fit.
    """

    measurement: torch.Tensor
    operator: LinearOperator
    image_shape: tuple
    spacing: tuple
    initial: np.ndarray
    proton: Optional[np.ndarray] = None
    support: Optional[np.ndarray] = None
    noise_sigma: Optional[float] = None
    magnitude: bool = True
    n_channels: int = 1
    reference: Optional[np.ndarray] = None
    lesion: Optional[np.ndarray] = None
    proton_only: Optional[np.ndarray] = None

    @property
    def is_2d(self) -> bool:
        return len(self.image_shape) == 2


@dataclass
class MethodResult:
    """What a method returns (normalised units; the pipeline rescales)."""

    image: np.ndarray
    iterations: int = 0
    stop_rule: str = "none"
    stop_iteration: int = 0
    bias_field: Optional[np.ndarray] = None
    history: list = field(default_factory=list)  # one dict per logged iteration: iteration, loss, ...
    extras: dict = field(default_factory=dict)  # named images worth showing (fused field, pilot, ...)
    params: dict = field(default_factory=dict)  # the parameters actually used


class RunContext:
    """Device, seed, progress reporting and cancellation for one run.

    ``report(iteration, loss=..., image=callable)`` is called by iterative methods; the callable returns the
    current estimate as a numpy array (only evaluated when a listener wants a snapshot). ``check()`` raises
    Cancelled when the caller asked to stop; methods catch it and return their best result so far with
    stop_rule "cancelled".
    """

    def __init__(self, device: str = "cpu", seed: int = 0,
                 on_progress: Optional[Callable[[dict, Callable[[], np.ndarray]], None]] = None,
                 should_cancel: Optional[Callable[[], bool]] = None):
        self.device = torch.device(device)
        self.seed = int(seed)
        self.on_progress = on_progress
        self.should_cancel = should_cancel
        self.started = time.perf_counter()

    @property
    def elapsed(self) -> float:
        return time.perf_counter() - self.started

    def report(self, iteration: int, image: Optional[Callable[[], np.ndarray]] = None, **values) -> None:
        if self.on_progress is not None:
            event = {"iteration": int(iteration), "elapsed": self.elapsed}
            event.update({k: (float(v) if isinstance(v, (int, float, np.floating)) else v) for k, v in values.items()})
            self.on_progress(event, image)

    def cancelled(self) -> bool:
        return bool(self.should_cancel and self.should_cancel())

    def check(self) -> None:
        if self.cancelled():
            raise Cancelled()

    def generator(self) -> torch.Generator:
        """A CPU generator seeded from the run's seed (draw on CPU, then move: same numbers on every device)."""
        g = torch.Generator()
        g.manual_seed(self.seed)
        return g


@dataclass
class Method:
    name: str
    description: str
    run: Callable[[Problem, dict, RunContext], MethodResult]
    presets: dict  # preset name -> full parameter dict
    supports_kspace: bool = True
    needs_proton: bool = False
    availability: Callable[[], Optional[str]] = lambda: None  # None when usable, else the reason

    def parameters(self, preset: str = "balanced", overrides: Optional[dict] = None) -> dict:
        """Preset parameters with overrides applied, every value converted and range-checked against its
        declaration (SodiumDIPLib.params); unknown names, bad presets and bad values are InputErrors."""
        if not isinstance(preset, str) or preset not in self.presets:
            raise InputError(f"unknown preset {preset!r} for method {self.name!r}; expected one of {sorted(self.presets)}")
        params = dict(self.presets[preset])
        for key, value in (overrides or {}).items():
            if key not in params:
                raise InputError(f"unknown parameter {key!r} for method {self.name!r}; known: {sorted(params)}")
            params[key] = value if declared_param(self.name, key) else _coerce_like(params[key], value, key)
        return validate_params(self.name, params)

    def describe(self) -> dict:
        """What a GUI needs to build its panel: presets, availability and every parameter's declaration."""
        reason = self.availability()
        return {"name": self.name, "description": self.description, "needs_proton": self.needs_proton,
                "supports_kspace": self.supports_kspace, "available": not reason, "reason": reason or "",
                "presets": self.presets, "parameters": describe_params(self)}


def _coerce_like(default, value, key):
    """Cast an override of an undeclared parameter to the type of the preset's value."""
    if default is None or value is None:
        return value
    try:
        if isinstance(default, bool):
            if isinstance(value, str):
                if value.lower() in ("1", "true", "yes", "on"):
                    return True
                if value.lower() in ("0", "false", "no", "off"):
                    return False
                raise ValueError(value)
            return bool(value)
        if isinstance(default, int):
            return int(value)
        if isinstance(default, float):
            return float(value)
    except (TypeError, ValueError, OverflowError):
        raise InputError(f"parameter {key!r} expects a {type(default).__name__}, got {value!r}") from None
    return value


_REGISTRY: dict[str, Method] = {}


def register(method: Method) -> Method:
    _REGISTRY[method.name] = method
    return method


def get_method(name: str) -> Method:
    from . import _load_all  # noqa: F401  (registers the built-in methods)

    _load_all()
    if name not in _REGISTRY:
        raise InputError(f"unknown method {name!r}; available: {', '.join(sorted(_REGISTRY))}")
    method = _REGISTRY[name]
    reason = method.availability()
    if reason:
        raise InputError(f"method {name!r} is not available: {reason}")
    return method


def list_methods() -> list[Method]:
    from . import _load_all

    _load_all()
    return [_REGISTRY[k] for k in sorted(_REGISTRY)]
