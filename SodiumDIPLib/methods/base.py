"""What every reconstruction method receives and returns, and the registry that names them.

A method is a function ``run(problem, params, ctx) -> MethodResult`` registered under a name with its
presets. The pipeline (``SodiumDIPLib.pipeline``) builds the Problem from files or arrays, normalises
intensities (the input's robust maximum becomes 1), calls the method and undoes the scaling, so methods
work on images of order 1 and never see files, geometry or scaling.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional

from SodiumDIPLib.errors import InputError
from SodiumDIPLib.params import describe as describe_params
from SodiumDIPLib.params import spec as declared_param
from SodiumDIPLib.params import validate as validate_params
from SodiumDIPLib.problem import MethodResult, Problem, RunContext  # noqa: F401  (what every method receives)

PRESETS = ("fast", "balanced", "quality")


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

    def check_inputs(self, has_proton: bool, kspace: bool = False) -> None:
        """The one input rule, from the declaration: k-space data only for a method that supports_kspace, and a
        proton volume for a method that needs_proton. InputError naming what is missing otherwise."""
        if kspace and not self.supports_kspace:
            raise InputError(f"method {self.name!r} works on images only; it cannot reconstruct from k-space")
        if self.needs_proton and not has_proton:
            raise InputError(f"method {self.name!r} needs a proton volume (--proton)")

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
    from SodiumDIPLib.methods import _load_all  # noqa: F401  (registers the built-in methods)

    _load_all()
    if name not in _REGISTRY:
        raise InputError(f"unknown method {name!r}; available: {', '.join(sorted(_REGISTRY))}")
    method = _REGISTRY[name]
    reason = method.availability()
    if reason:
        raise InputError(f"method {name!r} is not available: {reason}")
    return method


def list_methods() -> list[Method]:
    from SodiumDIPLib.methods import _load_all

    _load_all()
    return [_REGISTRY[k] for k in sorted(_REGISTRY)]
