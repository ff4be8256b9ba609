"""A small noise-conditional 2D U-Net denoiser, EDM-preconditioned, and its weights file.

The network sees a stack of ``context`` adjacent slices of the noisy image (2.5D: the centre slice is the one
denoised), optionally the registered proton slice, and two constant maps holding the noise levels it is asked
about: the input's level sigma_in and the target level sigma_out (0 = the clean image; > 0 = the image at that
lower noise level, used by the detail-refinement stage). Intensities are the engine's normalised units (the
input's robust maximum is 1).

Preconditioning (Karras et al. 2022, "EDM"): D(x; s) = c_skip(s) x_c + c_out(s) F(c_in(s) x, log s), with
c_skip = d^2 / (s^2 + d^2), c_out = s d / sqrt(s^2 + d^2), c_in = 1 / sqrt(s^2 + d^2), d = ``signal_std``:
the network's raw output F keeps unit scale for every noise level, which is what keeps training stable across
the corruption levels tau that GDSM samples.

Weights are saved as a plain state dict plus a JSON-able config (``save_model`` / ``load_model``); loading
uses ``torch.load(weights_only=True)``, so a weights file cannot run code.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from SodiumDIPLib.errors import InputError

FORMAT = "sodiumdip-denoiser-1"


@dataclass
class DenoiserConfig:
    """Architecture of the denoiser.

    context:    adjacent noisy slices given as channels (odd, >= 1; the centre one is denoised).
    proton:     True when the registered proton slice is an extra input channel.
    width:      channels at full resolution (doubled at the half-resolution level).
    signal_std: d of the EDM preconditioning, in normalised intensity units.
    """

    context: int = 3
    proton: bool = True
    width: int = 32
    signal_std: float = 0.5

    def validate(self) -> "DenoiserConfig":
        if int(self.context) < 1 or int(self.context) % 2 == 0:
            raise InputError(f"context must be an odd number of slices >= 1, got {self.context}")
        if not 4 <= int(self.width) <= 256:
            raise InputError(f"width must be in 4..256, got {self.width}")
        if not self.signal_std > 0:
            raise InputError(f"signal_std must be > 0, got {self.signal_std}")
        return self

    @property
    def in_channels(self) -> int:
        return int(self.context) + int(bool(self.proton)) + 2


def _double_conv(cin, cout):
    return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1, padding_mode="reflect"), nn.SiLU(),
                         nn.Conv2d(cout, cout, 3, padding=1, padding_mode="reflect"), nn.SiLU())


class DenoiserNet(nn.Module):
    """Two-level U-Net F (raw, unpreconditioned); ``Denoiser`` wraps it with the EDM scalings."""

    def __init__(self, cfg: DenoiserConfig):
        super().__init__()
        w = int(cfg.width)
        self.enc1 = _double_conv(cfg.in_channels, w)
        self.enc2 = _double_conv(w, 2 * w)
        self.mid = _double_conv(2 * w, 2 * w)
        self.dec1 = _double_conv(3 * w, w)
        self.out = nn.Conv2d(w, 1, 1)
        nn.init.zeros_(self.out.weight)  # starts as D = c_skip x: a shrinkage, never noise
        nn.init.zeros_(self.out.bias)

    def forward(self, x):
        e1 = self.enc1(x)
        e2 = self.mid(self.enc2(F.avg_pool2d(e1, 2, ceil_mode=True)))
        up = F.interpolate(e2, size=e1.shape[-2:], mode="bilinear", align_corners=False)
        return self.out(self.dec1(torch.cat([e1, up], 1)))[:, 0]


class Denoiser(nn.Module):
    """D(stack, sigma_in, sigma_out[, proton]) -> the centre slice at noise level sigma_out (batch, H, W).

    stack: (batch, context, H, W) noisy slices; sigma_in, sigma_out: (batch,) noise levels (normalised units,
    sigma_out < sigma_in); proton: (batch, H, W) or None.
    """

    def __init__(self, cfg: DenoiserConfig):
        super().__init__()
        self.cfg = cfg.validate()
        self.net = DenoiserNet(cfg)

    def forward(self, stack, sigma_in, sigma_out, proton=None):
        d = float(self.cfg.signal_std)
        s = sigma_in.view(-1, 1, 1)
        c_in = 1.0 / torch.sqrt(s * s + d * d)
        c_skip = d * d / (s * s + d * d)
        c_out = s * d / torch.sqrt(s * s + d * d)
        shape = stack.shape[-2:]
        maps = [stack * c_in[:, None],
                torch.log(sigma_in.clamp_min(1e-4)).view(-1, 1, 1, 1).expand(-1, 1, *shape) / 4,
                (sigma_out / sigma_in.clamp_min(1e-6)).view(-1, 1, 1, 1).expand(-1, 1, *shape)]
        if self.cfg.proton:
            if proton is None:
                raise InputError("this denoiser was built with a proton input channel; give the proton image")
            maps.append(proton[:, None])
        centre = stack[:, stack.shape[1] // 2]
        return c_skip * centre + c_out * self.net(torch.cat(maps, 1))


def parameter_count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def save_model(model: Denoiser, path, meta: dict | None = None) -> Path:
    """Write the weights (state dict) and config to ``path`` atomically (temp file, then rename)."""
    path = Path(path)
    blob = {"format": FORMAT, "config": json.dumps(asdict(model.cfg)), "meta": json.dumps(meta or {}),
            "state": {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}}
    tmp = path.with_name(path.name + ".tmp")
    torch.save(blob, tmp)
    tmp.replace(path)
    return path


def load_model(path, device="cpu") -> tuple:
    """(Denoiser, meta dict) from a file written by ``save_model``; weights-only load (no code runs)."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"denoiser weights not found: {path}")
    try:
        blob = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any unpickling error is the file's fault
        raise InputError(f"{path} is not a SodiumDIP denoiser weights file ({exc.__class__.__name__})") from None
    if not isinstance(blob, dict) or blob.get("format") != FORMAT:
        raise InputError(f"{path} is not a SodiumDIP denoiser weights file (expected format {FORMAT})")
    cfg = DenoiserConfig(**json.loads(blob["config"]))
    model = Denoiser(cfg)
    model.load_state_dict(blob["state"])
    return model.to(device).eval(), json.loads(blob.get("meta", "{}"))


def noise_floor_free(m: torch.Tensor, sigma: float, n_channels: int = 1) -> torch.Tensor:
    """Signal under a magnitude's noise floor: invert E[y|x] ~ sqrt(x^2 + c sigma^2) (fidelity.expected_magnitude)."""
    from SodiumDIPLib.dip.fidelity import floor_constant

    c = floor_constant(n_channels)
    return torch.sqrt(torch.clamp(m * m - c * sigma * sigma, min=0.0))


__all__ = ["DenoiserConfig", "Denoiser", "save_model", "load_model", "parameter_count", "noise_floor_free"]
