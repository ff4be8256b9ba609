"""Every method parameter declared once: type, range, unit, one-line doc.

A method's presets give the VALUES (fast / balanced / quality); this table gives what each name MEANS and
what it may hold. ``Method.parameters`` validates through it before any I/O or computation, so a bad value
is an InputError naming the parameter and what is expected; the CLI, parameter files, the worker's
``--describe`` and the GUIs (Slicer panel, browser app) all read the same declaration through
``describe(method)``.

A name means the same thing in every method that uses it (``iterations`` is the solver's iteration count);
where a method gives a name a narrower meaning it has its own entry in ``_BY_METHOD``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Optional

from SodiumDIPLib.errors import InputError

KINDS = ("float", "int", "bool", "choice", "text", "intlist")
_TRUE = ("1", "true", "yes", "on")
_FALSE = ("0", "false", "no", "off")


@dataclass(frozen=True)
class Param:
    """One parameter: ``kind`` in KINDS; ``low``/``high`` inclusive bounds (``low_open``: strictly above
    ``low``) for numbers; ``choices`` for kind "choice"; ``unit`` as a user reads it ("" = dimensionless)."""

    name: str
    kind: str
    doc: str
    group: str = "general"
    unit: str = ""
    low: Optional[float] = None
    high: Optional[float] = None
    low_open: bool = False
    choices: Optional[tuple] = None
    path: str = ""  # "in" / "out": the value names a file or folder the run reads / writes ("" = none)

    def coerce(self, value: Any) -> Any:
        """``value`` (a preset value, a JSON value or a CLI string) as this parameter's type, range-checked.

        Raises InputError naming the parameter and what it expects."""
        converted = self._convert(value)
        self._check_range(converted)
        return converted

    def expects(self) -> str:
        """What this parameter accepts, in words (for messages and help)."""
        if self.kind == "choice":
            return "one of " + ", ".join(repr(c) for c in self.choices)
        if self.kind == "bool":
            return "true or false"
        if self.kind == "intlist":
            return "comma-separated positive integers"
        if self.kind == "text":
            return "text"
        word = "an integer" if self.kind == "int" else "a finite number"
        bounds = []
        if self.low is not None:
            bounds.append(f"{'>' if self.low_open else '>='} {self.low:g}")
        if self.high is not None:
            bounds.append(f"<= {self.high:g}")
        return word + (" " + " and ".join(bounds) if bounds else "")

    def _fail(self, value) -> InputError:
        shown = "null" if value is None else repr(value)  # None arrives as JSON / YAML null
        if len(shown) > 60:
            shown = shown[:57] + "..."
        return InputError(f"parameter {self.name!r} expects {self.expects()}, got {shown}")

    def _convert(self, value):
        if self.kind == "bool":
            return self._to_bool(value)
        if self.kind == "choice":
            if not isinstance(value, str) or value not in self.choices:
                raise self._fail(value)
            return value
        if self.kind == "text":
            if not isinstance(value, str):
                raise self._fail(value)
            return value
        if self.kind == "intlist":
            return self._to_intlist(value)
        return self._to_number(value)

    def _to_bool(self, value):
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.strip().lower() in _TRUE + _FALSE:
            return value.strip().lower() in _TRUE
        if isinstance(value, int) and value in (0, 1):
            return bool(value)
        raise self._fail(value)

    def _to_intlist(self, value):
        items = value.replace(",", " ").split() if isinstance(value, str) else value
        try:
            numbers = [int(v) if not isinstance(v, bool) and float(v).is_integer() else None for v in items]
        except (TypeError, ValueError, OverflowError):
            raise self._fail(value) from None
        if not numbers or any(n is None or n < 1 for n in numbers):
            raise self._fail(value)
        return ",".join(str(n) for n in numbers)

    def _to_number(self, value):
        if isinstance(value, bool) or value is None:
            raise self._fail(value)
        try:
            number = float(value.strip()) if isinstance(value, str) else float(value)
        except (TypeError, ValueError, OverflowError):
            raise self._fail(value) from None
        if not math.isfinite(number):
            raise self._fail(value)
        if self.kind == "int":
            if not number.is_integer() or abs(number) > 2 ** 31:
                raise self._fail(value)
            return int(number)
        return number

    def _check_range(self, value):
        if self.kind not in ("float", "int"):
            return
        if self.low is not None and (value <= self.low if self.low_open else value < self.low):
            raise self._fail(value)
        if self.high is not None and value > self.high:
            raise self._fail(value)

    def describe(self, default=None) -> dict:
        """JSON-ready description for GUIs: type is one of float/int/bool/choice/text (intlist reads as text)."""
        return {"name": self.name, "type": "text" if self.kind == "intlist" else self.kind,
                "default": default, "min": self.low, "max": self.high, "min_exclusive": self.low_open,
                "choices": list(self.choices) if self.choices else None, "unit": self.unit,
                "doc": self.doc, "group": self.group,
                "format": "comma-separated integers" if self.kind == "intlist" else None,
                "path": self.path or None}


def _p(name, kind, doc, group, unit="", low=None, high=None, low_open=False, choices=None, path="") -> Param:
    return Param(name, kind, doc, group, unit, low, high, low_open, tuple(choices) if choices else None, path)


_COMMON = [
    # variational solvers (tv, dtv) and the DIP loop share these names
    _p("iterations", "int", "maximum number of solver iterations (DIP: optimiser steps)", "optimiser", "", 1, 100000),
    _p("tol", "float", "relative change of the iterate below which the solver stops", "optimiser", "", 0, 1),
    _p("nonneg", "bool", "constrain the image to be non-negative", "prior"),
    _p("lambda_sigma", "float", "regularisation weight for image data, in units of the noise sigma "
       "(centre of the SURE search when lambda_select='sure')", "prior", "sigma", 0, 100),
    _p("kspace_lambda_sigma", "float", "regularisation weight for k-space data, in units of sigma times the "
       "operator norm (centre of the GCV search on Cartesian data)", "prior", "sigma", 0, 100),
    _p("lambda_select", "choice", "how the weight is chosen: 'sure' / GCV search around it, or 'fixed'",
       "prior", choices=("sure", "fixed")),
    _p("bias_correction", "choice", "receive-bias correction of the input: 'auto' (N4 where the data show a "
       "receive bias), 'n4' (always N4, mean log b = 0 on the support) or 'none'", "bias field",
       choices=("auto", "n4", "none")),
    _p("bregman_steps", "int", "Bregman iterations after the weight search (k-space data only; images ignore "
       "it)", "prior", "", 0, 10),
    _p("bregman_weight_factor", "float", "weight of the Bregman solves as a multiple of the selected weight",
       "prior", "", 0, 100, low_open=True),
    _p("gamma", "float", "directional-TV strictness: 0 = isotropic TV, close to 1 = smooth only along the "
       "guide's edges", "prior", "", 0, 0.999),
    _p("eta", "float", "edge threshold of the proton guide (normalised intensity per voxel)", "prior",
       "1/voxel", 0, 10, low_open=True),
    _p("guide_smoothing_vox", "float", "Gaussian smoothing of the proton guide before its gradients",
       "prior", "voxel", 0, 10),
    # bm4d
    _p("profile", "choice", "BM4D profile: 'lc' low complexity, 'np' normal, 'refilter'", "filter",
       choices=("lc", "np", "refilter")),
    _p("stages", "choice", "BM4D stages: 'hard' thresholding only, or 'all' (hard + Wiener)", "filter",
       choices=("hard", "all")),
    _p("sigma_scale", "float", "multiplier of the estimated noise sigma given to BM4D", "filter", "", 0, 10,
       low_open=True),
    # DIP network
    _p("channels", "intlist", "encoder widths, one per scale", "network"),
    _p("skip_channels", "intlist", "skip-connection widths, one per scale", "network"),
    _p("input_channels", "int", "channels of the fixed random network input z", "network", "", 1, 256),
    _p("input_scale", "float", "standard deviation of the random input z", "network", "", 0, 10),
    _p("output_init", "bool", "start the output layer at the data's mean level", "network"),
    _p("reg_noise_std", "float", "standard deviation of the perturbation added to z at every step",
       "network", "", 0, 1),
    _p("upsample", "choice", "decoder upsampling", "network", choices=("linear", "nearest")),
    _p("pad", "choice", "convolution padding", "network", choices=("reflect", "zeros")),
    _p("norm", "choice", "normalisation layers", "network", choices=("batch", "none")),
    _p("output", "choice", "output non-linearity", "network", choices=("softplus", "relu", "none")),
    _p("proton_input", "bool", "the registered proton image as an extra network input channel", "network"),
    _p("pilot_input", "bool", "the pilot image as an extra network input channel", "network"),
    _p("precision", "choice", "arithmetic of the network: 'bf16' autocast or 'fp32'", "network",
       choices=("bf16", "fp32")),
    # DIP optimiser
    _p("lr", "float", "Adam learning rate of the network", "optimiser", "", 0, 1, low_open=True),
    _p("lr_schedule", "choice", "learning-rate schedule", "optimiser", choices=("cosine", "none")),
    _p("lr_min_factor", "float", "final learning rate of the cosine schedule as a fraction of lr", "optimiser",
       "", 0, 1),
    _p("ema", "float", "decay of the output's exponential moving average (0 = off)", "optimiser", "", 0, 0.9999),
    _p("residual", "bool", "x = pilot + f(z): the network learns a correction of the pilot", "optimiser"),
    # DIP data term
    _p("fidelity", "choice", "data term: 'auto' (noncentral chi / Rician for magnitudes, Gaussian for "
       "k-space), 'gaussian', 'rician', 'chi', 'corrected_ls'", "fidelity",
       choices=("auto", "gaussian", "rician", "chi", "corrected_ls")),
    _p("n_channels", "int", "receive channels of a sum-of-squares magnitude (0 = from the background)",
       "fidelity", "", 0, 1024),
    # DIP priors
    _p("weight_dtv", "float", "weight of the fused directional TV on image data (per sigma)", "prior", "", 0, 1000),
    _p("kspace_weight_dtv", "float", "weight of the fused directional TV on k-space data", "prior", "", 0, 1000),
    _p("eps", "float", "smoothing of the TV norm, sqrt(|.|^2 + eps^2)", "prior", "1/voxel", 0, 10),
    _p("eta_h", "float", "edge threshold of the proton guide", "prior", "1/voxel", 0, 10, low_open=True),
    _p("eta_na", "float", "edge threshold of the sodium guide", "prior", "1/voxel", 0, 10, low_open=True),
    _p("w_h", "float", "weight of the proton structure in the fused field", "prior", "", 0, 100),
    _p("w_na", "float", "weight of the sodium structure in the fused field (0 = proton-only dTV)", "prior",
       "", 0, 100),
    _p("fusion", "choice", "how the two direction fields are fused: joint structure tensor or clipped sum",
       "prior", choices=("tensor", "sum")),
    _p("sodium_guide", "choice", "sodium structure from the pilot, the refreshed output, or none", "prior",
       choices=("pilot", "output", "none")),
    _p("refresh_every", "int", "steps between refreshes of the sodium guide", "prior", "", 1, 100000),
    _p("pilot", "choice", "pilot image: 'smooth' (Gaussian-smoothed data), 'tv', 'dtv' or 'fused-dtv' (dTV on the "
       "fused proton + sodium structure; fast presets)", "pilot", choices=("smooth", "tv", "dtv", "fused-dtv")),
    _p("pilot_sigma_mm", "float", "Gaussian width of the 'smooth' pilot", "pilot", "mm", 0, 100),
    _p("weight_gc", "float", "weight of gradient consistency with the measured sodium", "prior", "", 0, 1000),
    _p("gc_sigma_vox", "float", "smoothing before the gradient-consistency gradients", "prior", "voxel", 0, 10),
    # DIP bias field
    _p("bias_degree", "int", "degree of the Legendre basis of log b (0 = no bias field)", "bias field", "", 0, 6),
    _p("bias_lr", "float", "Adam learning rate of the bias coefficients", "bias field", "", 0, 1),
    _p("weight_bias", "float", "ridge weight keeping log b near its starting field", "bias field", "", 0, 1e6),
    _p("bias_init", "choice", "starting field: 'none' (b = 1), 'proton' (tissue-class regression on the "
       "proton image), 'pilot' (the pilot's N4 field)", "bias field", choices=("none", "proton", "pilot")),
    _p("bias_classes", "int", "sodium tissue classes of the 'proton' start", "bias field", "", 1, 8),
    _p("bias_bins", "int", "proton-intensity bins per class of the 'proton' start", "bias field", "", 2, 64),
    _p("bias_select", "choice", "'auto': a joint bias field only where the pilot's N4 finds a receive bias; "
       "'always': estimate it on every input", "bias field", choices=("auto", "always")),
    # DIP safeguard: held-out voxels decide between the DIP stage and its pilot
    _p("holdout_fraction", "float", "share of the object's voxels left out of the DIP's data term to check it "
       "against its pilot (0 = off)", "safeguard", "", 0, 0.5),
    _p("holdout_patience", "int", "stop the DIP stage when the held-out error has not improved for this many "
       "steps (0 = run the full budget)", "safeguard", "steps", 0, 100000),
    _p("holdout_margin", "float", "standard errors by which the DIP must beat the pilot on the held-out voxels",
       "safeguard", "SE", 0, 100),
    _p("holdout_every", "int", "iterations between held-out checks", "safeguard", "steps", 1, 100000),
    # c2s (Corruption2Self) and pnp (plug-and-play)
    _p("train_steps", "int", "training steps of the self-supervised denoiser (0 = apply model_in)", "training",
       "steps", 0, 1000000),
    _p("width", "int", "channels of the denoiser network's first scale", "network", "", 4, 256),
    _p("context", "int", "neighbouring slices the 2.5D denoiser sees (odd)", "network", "slices", 1, 15),
    _p("use_proton", "bool", "the registered proton slice as an extra denoiser input channel", "network"),
    _p("batch", "int", "patches per training step", "training", "", 1, 1024),
    _p("patch", "int", "side of a training patch", "training", "voxel", 8, 512),
    _p("tau_min", "float", "smallest further-corruption level, as a fraction of the noise sigma", "training",
       "sigma", 0, 10, low_open=True),
    _p("tau_max", "float", "largest further-corruption level, as a fraction of the noise sigma", "training",
       "sigma", 0, 10, low_open=True),
    _p("refine_fraction", "float", "share of the training steps in the detail-refinement stage", "training",
       "", 0, 0.99),
    _p("refine_level", "float", "target noise level of the refinement stage, as a fraction of sigma",
       "training", "sigma", 0, 0.99),
    _p("noise_model", "choice", "noise of the input: 'auto' (from the data), 'gaussian' or 'rician'",
       "fidelity", choices=("auto", "gaussian", "rician")),
    _p("noise_estimate", "choice", "noise level of the input: 'auto' (from a noise-only background of a magnitude "
       "image when there is one, else the problem's estimate) or 'problem' (the problem's value as given)",
       "fidelity", choices=("auto", "problem")),
    _p("cohort", "text", "folder of further noisy sodium volumes to train on ('' = this volume only)", "files",
       path="in"),
    _p("model_in", "text", "trained denoiser weights to apply ('' = train on this volume)", "files", path="in"),
    _p("model_out", "text", "file to save the trained denoiser's weights to ('' = not saved)", "files",
       path="out"),
    _p("denoiser", "choice", "denoiser of the plug-and-play prior step: 'auto' (bm4d if installed, else "
       "'prior'), 'prior' (the shipped MRI-driven CNN), 'c2s' (trained on this volume), 'bm4d'", "prior",
       choices=("auto", "prior", "c2s", "bm4d")),
    _p("splitting", "choice", "plug-and-play splitting: ADMM or half-quadratic splitting", "optimiser",
       choices=("admm", "hqs")),
    _p("sigma_start", "float", "denoiser level of the first plug-and-play iteration (normalised intensity)",
       "optimiser", "", 0, 10, low_open=True),
    _p("sigma_end_factor", "float", "denoiser level of the last iteration, as a multiple of the image noise",
       "optimiser", "sigma", 0, 100, low_open=True),
    _p("lambda_dc", "float", "data-consistency weight: rho = lambda sigma^2 / level^2", "optimiser", "", 0, 1e6,
       low_open=True),
    _p("cg_iterations", "int", "conjugate-gradient iterations of each data-consistency solve", "optimiser",
       "", 1, 1000),
    _p("discrepancy_tau", "float", "discrepancy rule: stop when the residual energy reaches tau times the "
       "expected noise energy", "stopping", "", 0, 100, low_open=True),
    _p("c2s_steps", "int", "training steps of the c2s denoiser inside pnp", "training", "steps", 1, 1000000),
    # DIP stopping
    _p("stopping", "choice", "stopping rule: fixed count, running variance (ES-WMV), or discrepancy",
       "stopping", choices=("fixed", "wmv", "discrepancy")),
    _p("stop_window", "int", "window of the running-variance rule", "stopping", "steps", 1, 100000),
    _p("stop_patience", "int", "steps without improvement before the running-variance rule stops",
       "stopping", "steps", 1, 100000),
    _p("stop_tau", "float", "discrepancy rule: stop when the residual reaches tau times the noise", "stopping",
       "", 0, 10, low_open=True),
    _p("stop_min_iterations", "int", "steps before any rule may stop", "stopping", "steps", 0, 100000),
]

PARAMETERS: dict[str, Param] = {p.name: p for p in _COMMON}

# Names whose meaning or range is narrower in one method.
_BY_METHOD: dict[tuple, Param] = {
    ("pnp", "stopping"): _p("stopping", "choice", "stopping rule: a fixed count, or the discrepancy principle",
                            "stopping", choices=("fixed", "discrepancy")),
    ("c2s", "bias_correction"): _p("bias_correction", "choice", "receive-bias correction of the input: 'n4' "
                                   "or 'none'", "bias field", choices=("n4", "none")),
    ("pnp", "bias_correction"): _p("bias_correction", "choice", "receive-bias correction of image inputs: "
                                   "'n4' or 'none'", "bias field", choices=("n4", "none")),
    ("c2s", "lr"): _p("lr", "float", "Adam learning rate of the denoiser's training (cosine decay)", "training",
                      "", 0, 1, low_open=True),
}


def register(param: Param, method: Optional[str] = None) -> Param:
    """Declare a parameter (for all methods, or for one ``method``). A name already declared for the same
    scope is an error: every parameter is declared once."""
    key = (method, param.name) if method else param.name
    table = _BY_METHOD if method else PARAMETERS
    if key in table:
        raise ValueError(f"parameter {param.name!r} is already declared" + (f" for {method!r}" if method else ""))
    table[key] = param
    return param


def spec(method: str, name: str) -> Optional[Param]:
    """The declaration of ``name`` for ``method`` (None: undeclared)."""
    return _BY_METHOD.get((method, name)) or PARAMETERS.get(name)


def validate(method: str, params: dict, keys=None) -> dict:
    """``params`` with every declared value converted and range-checked (``keys``: only these names).

    Undeclared names pass unchanged (a test keeps every preset name declared). Raises InputError."""
    checked = dict(params)
    for key in (params if keys is None else keys):
        declared = spec(method, key)
        if declared is not None:
            checked[key] = declared.coerce(params[key])
    return checked


def file_parameters(method: str, params: dict) -> list:
    """(name, "in" | "out", path) for every non-empty parameter of ``params`` that names a file or folder, so
    that the pre-flight checks them like every other input and output."""
    out = []
    for name, value in params.items():
        declared = spec(method, name)
        if declared is not None and declared.path and isinstance(value, str) and value:
            out.append((name, declared.path, value))
    return out


def describe(method) -> list:
    """The declared parameters of a registered ``method`` (its balanced preset's names), for GUIs and help."""
    defaults = method.presets.get("balanced") or next(iter(method.presets.values()), {})
    out = []
    for name, default in defaults.items():
        declared = spec(method.name, name) or undeclared(name, default)
        out.append(declared.describe(default))
    return out


def undeclared(name: str, default, group: str = "other") -> Param:
    """A stand-in declaration for a parameter nobody declared (a plug-in method's): its kind from its default."""
    return Param(name, _guess_kind(default), "", group)


def _guess_kind(value) -> str:
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, int):
        return "int"
    if isinstance(value, float):
        return "float"
    return "text"
