"""LPIPS (Zhang et al. 2018, "The unreasonable effectiveness of deep features"), AlexNet variant, plain torch.

No torchvision and no ``lpips`` package: the AlexNet feature layers are built here with torchvision's layer
names, so standard weights load as they are. Nothing is ever downloaded: weights come from local files given
by argument or by the ``SODIUMDIP_LPIPS_WEIGHTS`` environment variable; without usable weights the metric is
"unavailable" with the reason.

Accepted weights (``torch.load(..., weights_only=True)``):
- ONE .pth file holding a dict with the backbone and the linear layers, e.g. what ``save_weights`` writes:
  ``features.{0,3,6,8,10}.{weight,bias}`` (torchvision AlexNet names; ``net.features.*`` and the lpips
  package's ``net.slice{1..5}.{i}.*`` are accepted too, ``classifier.*`` is ignored) and
  ``lin{0..4}.model.1.weight`` of shapes (1, C, 1, 1), C = 64, 192, 384, 256, 256 (the lpips package's
  v0.1 ``alex.pth`` names; ``lin{k}.weight`` accepted). A top-level ``state_dict`` entry, a ``module.``
  prefix, or ``{"backbone": {...}, "lin": {...}}`` sub-dicts are unwrapped.
- or TWO files (a list/tuple, or two paths joined by ``os.pathsep`` in the environment variable): the
  torchvision ``alexnet`` state dict and the lpips v0.1 ``alex.pth`` linear layers, merged.

Computation (as the lpips package with ``net="alex"``, version 0.1): inputs in [-1, 1] (0..data_range ->
-1..1, data_range = reference maximum), grey replicated to 3 channels, the package's scaling layer, features
at relu1..relu5, unit-normalised along channels, squared difference, learned 1x1 weights, spatial mean,
sum over layers. Volumes are evaluated slice by slice along the first array axis (k: axial for
scanner-ordered data) and the mean over slices is returned; slices constant in both images are skipped.
Slices smaller than ``min_size`` (64) pixels are upsampled bilinearly by an integer factor first, because
AlexNet's stride-4 first layer and pooling leave almost no spatial support on sodium-sized slices.
"""

from __future__ import annotations

import math
import os
import re
from pathlib import Path

import numpy as np
import torch
from torch import nn

from SodiumDIPLib.errors import InputError

ENV_VAR = "SODIUMDIP_LPIPS_WEIGHTS"
CHANNELS = (64, 192, 384, 256, 256)
CONV_INDICES = (0, 3, 6, 8, 10)  # torchvision alexnet.features indices of the five convolutions
CONV_SHAPES = {0: (64, 3, 11, 11), 3: (192, 64, 5, 5), 6: (384, 192, 3, 3), 8: (256, 384, 3, 3),
               10: (256, 256, 3, 3)}
# lpips package ScalingLayer constants (ImageNet statistics expressed for inputs in [-1, 1]).
_SHIFT = (-0.030, -0.088, -0.188)
_SCALE = (0.458, 0.448, 0.450)


class LPIPSUnavailable(RuntimeError):
    """LPIPS cannot be computed (no weights, unreadable or wrong file); ``str(exc)`` is the reason."""


class AlexNetFeatures(nn.Module):
    """torchvision's ``alexnet().features`` (same layer indices and names); returns relu1..relu5 maps."""

    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 64, 11, stride=4, padding=2), nn.ReLU(), nn.MaxPool2d(3, 2),
            nn.Conv2d(64, 192, 5, padding=2), nn.ReLU(), nn.MaxPool2d(3, 2),
            nn.Conv2d(192, 384, 3, padding=1), nn.ReLU(),
            nn.Conv2d(384, 256, 3, padding=1), nn.ReLU(),
            nn.Conv2d(256, 256, 3, padding=1), nn.ReLU(), nn.MaxPool2d(3, 2))

    def forward(self, x):
        taps = []
        for i, layer in enumerate(self.features):
            x = layer(x)
            if i in (1, 4, 7, 9, 11):
                taps.append(x)
                if i == 11:
                    break
        return taps


class _Lin(nn.Module):
    """The lpips package's NetLinLayer: dropout (inactive in eval) + 1x1 conv to one channel, no bias."""

    def __init__(self, channels):
        super().__init__()
        self.model = nn.Sequential(nn.Dropout(), nn.Conv2d(channels, 1, 1, bias=False))

    def forward(self, x):
        return self.model(x)


class LPIPS(nn.Module):
    """LPIPS distance between image batches (N, 3, H, W) in [-1, 1]; returns (N,) distances."""

    def __init__(self):
        super().__init__()
        self.net = AlexNetFeatures()
        for k, c in enumerate(CHANNELS):
            setattr(self, f"lin{k}", _Lin(c))
        self.register_buffer("shift", torch.tensor(_SHIFT).view(1, 3, 1, 1))
        self.register_buffer("scale", torch.tensor(_SCALE).view(1, 3, 1, 1))
        self.eval()

    def forward(self, x0, x1):
        f0 = self.net((x0 - self.shift) / self.scale)
        f1 = self.net((x1 - self.shift) / self.scale)
        total = 0.0
        for k, (a, b) in enumerate(zip(f0, f1)):
            a = a / (torch.sqrt(torch.sum(a ** 2, dim=1, keepdim=True)) + 1e-10)
            b = b / (torch.sqrt(torch.sum(b ** 2, dim=1, keepdim=True)) + 1e-10)
            total = total + getattr(self, f"lin{k}")((a - b) ** 2).mean(dim=(2, 3))
        return total.view(-1)


# ----------------------------------------------------------------------------------------------- loading
def _weight_paths(weights) -> list[Path]:
    if weights is None:
        env = os.environ.get(ENV_VAR, "").strip()
        if not env:
            raise LPIPSUnavailable(f"no LPIPS weights file given (pass one, or set {ENV_VAR} to a local .pth "
                                   "holding AlexNet features + lin0..lin4)")
        weights = [p for p in env.split(os.pathsep) if p.strip()]
    if isinstance(weights, (str, os.PathLike)):
        weights = [weights]
    paths = [Path(p).expanduser() for p in weights]
    if not 1 <= len(paths) <= 2:
        raise LPIPSUnavailable(f"expected one LPIPS weights file (or backbone + lin files), got {len(paths)}")
    return paths


def _flatten(obj, path: Path) -> dict:
    """Unwrap common containers into one flat name -> tensor dict."""
    if not isinstance(obj, dict):
        raise LPIPSUnavailable(f"{path} does not hold a state dict (got {type(obj).__name__})")
    if isinstance(obj.get("state_dict"), dict):
        obj = obj["state_dict"]
    flat = {}
    for key, value in obj.items():
        if isinstance(value, dict) and key in ("backbone", "features_state", "lin", "lins", "net"):
            flat.update(_flatten(value, path))
        elif torch.is_tensor(value):
            flat[key[7:] if key.startswith("module.") else key] = value
    return flat


def _canonical(flat: dict) -> dict:
    """Map accepted key spellings to ``features.{i}.{weight,bias}`` and ``lin{k}.weight``."""
    out = {}
    for key, value in flat.items():
        m = re.fullmatch(r"(?:net\.)?features\.(\d+)\.(weight|bias)", key)
        if m is None:
            m = re.fullmatch(r"net\.slice\d\.(\d+)\.(weight|bias)", key)
        if m is not None:
            out[f"features.{int(m.group(1))}.{m.group(2)}"] = value
            continue
        m = re.fullmatch(r"lins?\.?(\d)\.(?:model\.1\.)?weight", key)
        if m is not None:
            out[f"lin{int(m.group(1))}.weight"] = value
    return out


def _state_dict_from(paths: list[Path]) -> dict:
    merged = {}
    for path in paths:
        if not path.is_file():
            raise LPIPSUnavailable(f"LPIPS weights file not found: {path}")
        try:
            obj = torch.load(str(path), map_location="cpu", weights_only=True)
        except Exception as exc:  # pickle, zip, torch errors: all mean "not a usable weights file"
            raise LPIPSUnavailable(f"cannot read LPIPS weights {path}: not a torch state-dict file loadable with "
                                   f"weights_only=True ({type(exc).__name__})") from None
        merged.update(_canonical(_flatten(obj, path)))
    missing, wrong = [], []
    for i, shape in CONV_SHAPES.items():
        for suffix, shp in (("weight", shape), ("bias", shape[:1])):
            key = f"features.{i}.{suffix}"
            if key not in merged:
                missing.append(key)
            elif tuple(merged[key].shape) != shp:
                wrong.append(f"{key} {tuple(merged[key].shape)} != {shp}")
    for k, c in enumerate(CHANNELS):
        key = f"lin{k}.weight"
        if key not in merged:
            missing.append(f"lin{k}.model.1.weight")
        elif tuple(merged[key].shape) != (1, c, 1, 1):
            wrong.append(f"{key} {tuple(merged[key].shape)} != {(1, c, 1, 1)}")
    names = ", ".join(str(p) for p in paths)
    if missing:
        raise LPIPSUnavailable(f"LPIPS weights {names} lack {len(missing)} tensors (e.g. {', '.join(missing[:3])}); "
                               "expected AlexNet features.{0,3,6,8,10}.* and lin0..lin4.model.1.weight")
    if wrong:
        raise LPIPSUnavailable(f"LPIPS weights {names} have wrong shapes: {'; '.join(wrong[:3])}")
    return merged


_CACHE: dict = {}


def load_lpips(weights=None) -> LPIPS:
    """LPIPS model from local weights (path, [backbone, lin] paths, or None = ``$SODIUMDIP_LPIPS_WEIGHTS``).

    Raises LPIPSUnavailable with the reason when the weights are absent, unreadable or incomplete.
    Loaded models are cached per (path, modification time).
    """
    paths = _weight_paths(weights)
    key = tuple((str(p.resolve()), p.stat().st_mtime_ns if p.is_file() else None) for p in paths)
    if key in _CACHE:
        return _CACHE[key]
    sd = _state_dict_from(paths)
    model = LPIPS()
    with torch.no_grad():
        for i in CONV_INDICES:
            model.net.features[i].weight.copy_(sd[f"features.{i}.weight"].float())
            model.net.features[i].bias.copy_(sd[f"features.{i}.bias"].float())
        for k in range(len(CHANNELS)):
            getattr(model, f"lin{k}").model[1].weight.copy_(sd[f"lin{k}.weight"].float())
    model.eval()
    _CACHE.clear()  # keep one model in memory
    _CACHE[key] = model
    return model


def save_weights(model: LPIPS, path) -> Path:
    """Write ``model``'s weights as ONE file in the layout ``load_lpips`` expects (torchvision/lpips names)."""
    sd = {f"features.{i}.{s}": getattr(model.net.features[i], s).detach().clone()
          for i in CONV_INDICES for s in ("weight", "bias")}
    sd.update({f"lin{k}.model.1.weight": getattr(model, f"lin{k}").model[1].weight.detach().clone()
               for k in range(len(CHANNELS))})
    torch.save(sd, str(path))
    return Path(path)


# ----------------------------------------------------------------------------------------------- metric
def lpips_distance(x, reference, weights=None, data_range: float | None = None, min_size: int = 64,
                   batch: int = 16, threads: int | None = 1) -> float:
    """LPIPS between two 2D or 3D arrays (0 = identical; larger = more different). See the module docstring.

    ``threads``: torch intra-op threads while evaluating (restored afterwards). The work is tiny for sodium
    images, and one thread avoids thread-pool overhead that dominates on a busy machine
    (docs/measurements.md); None keeps torch's setting.
    Raises LPIPSUnavailable when there are no usable weights, InputError for bad arrays.
    """
    x = np.asarray(x, dtype=np.float32)
    ref = np.asarray(reference, dtype=np.float32)
    if x.shape != ref.shape:
        raise InputError(f"image shape {x.shape} does not match reference shape {ref.shape}")
    if x.ndim not in (2, 3):
        raise InputError(f"LPIPS expects 2D or 3D arrays, got shape {x.shape}")
    if not (np.all(np.isfinite(x)) and np.all(np.isfinite(ref))):
        raise InputError("LPIPS: the arrays contain NaN or infinite values")
    r = float(ref.max()) if data_range is None else float(data_range)
    if not r > 0:
        raise InputError("LPIPS needs a positive data range (reference maximum > 0)")
    model = load_lpips(weights)
    if x.ndim == 2:
        x, ref = x[None], ref[None]
    keep = (np.ptp(x.reshape(len(x), -1), axis=1) > 0) | (np.ptp(ref.reshape(len(ref), -1), axis=1) > 0)
    if not keep.any():
        return 0.0
    xs = torch.from_numpy(np.ascontiguousarray(x[keep])) * (2.0 / r) - 1.0
    rs = torch.from_numpy(np.ascontiguousarray(ref[keep])) * (2.0 / r) - 1.0
    h, w = xs.shape[-2:]
    factor = max(1, math.ceil(min_size / min(h, w)))
    previous = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(int(threads))
    try:
        with torch.no_grad():
            dists = _evaluate(model, xs, rs, factor, batch)
    finally:
        torch.set_num_threads(previous)
    return float(torch.cat(dists).mean())


def _evaluate(model, xs, rs, factor, batch):
    """Distances of slice batches (N, H, W); grey replicated to 3 channels, upsampled by ``factor``."""
    dists = []
    for start in range(0, len(xs), batch):
        a = xs[start:start + batch, None]
        b = rs[start:start + batch, None]
        if factor > 1:
            a = nn.functional.interpolate(a, scale_factor=factor, mode="bilinear", align_corners=False)
            b = nn.functional.interpolate(b, scale_factor=factor, mode="bilinear", align_corners=False)
        dists.append(model(a.expand(-1, 3, -1, -1), b.expand(-1, 3, -1, -1)))
    return dists


def lpips_or_reason(x, reference, weights=None, **kw):
    """``lpips_distance`` as a float, or the string ``"unavailable: <reason>"`` when it cannot be computed."""
    try:
        return lpips_distance(x, reference, weights=weights, **kw)
    except LPIPSUnavailable as exc:
        return f"unavailable: {exc}"
