"""Deep-Image-Prior encoder-decoder networks (2D and 3D) with skip connections.

The architecture follows Ulyanov et al.'s "skip" network (downsampling by strided convolution, skip branches
of a few channels, upsampling by (bi/tri)linear interpolation, LeakyReLU, batch norm), with the widths and
depth as parameters so that small, fast networks (e.g. 16-32-64) and the paper's defaults (128 channels,
5 scales) are the same code. The convolution dimension (2D or 3D) follows the image shape.

Output non-negativity: ``output="softplus"`` (default; smooth, never exactly 0, keeps gradients alive in the
background where the sodium signal is small) or ``"relu"`` or ``"none"``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from SodiumDIPLib.errors import InputError


@dataclass
class NetConfig:
    """Architecture of a DIP skip network.

    channels:       encoder/decoder widths per scale (len = depth; each scale halves the grid once).
    skip_channels:  width of the skip branch per scale (0 = no skip at that scale).
    input_channels: channels of the random input code z (proton/extra channels are added on top).
    upsample:       "linear" (bilinear/trilinear) or "nearest".
    pad:            "reflect" or "zeros" padding inside the convolutions.
    norm:           "batch" (Ulyanov) or "none".
    output:         "softplus", "relu" or "none" (output >= 0 for the first two).
    """

    channels: tuple = (16, 32, 64)
    skip_channels: tuple = (4, 4, 4)
    input_channels: int = 8
    upsample: str = "linear"
    pad: str = "reflect"
    norm: str = "batch"
    output: str = "softplus"
    kernel: int = 3

    def validate(self):
        if len(self.channels) < 1 or any(int(c) < 1 for c in self.channels):
            raise InputError(f"network channels must be a non-empty list of positive integers, got {self.channels}")
        if len(self.skip_channels) != len(self.channels) or any(int(c) < 0 for c in self.skip_channels):
            raise InputError(f"skip_channels must have one non-negative entry per scale ({len(self.channels)}), "
                             f"got {self.skip_channels}")
        for name, value, allowed in (("upsample", self.upsample, ("linear", "nearest")),
                                     ("pad", self.pad, ("reflect", "zeros")),
                                     ("norm", self.norm, ("batch", "none")),
                                     ("output", self.output, ("softplus", "relu", "none"))):
            if value not in allowed:
                raise InputError(f"network {name} must be one of {allowed}, got {value!r}")
        if int(self.input_channels) < 0:
            raise InputError(f"input_channels must be >= 0, got {self.input_channels}")
        return self


def original_dip_config() -> NetConfig:
    """The DIP paper's default skip network (Ulyanov et al. 2018, denoising): 5 scales of 128 channels,
    skip branches of 4 channels, 32 input noise channels, bilinear upsampling, reflection padding.
    (The paper's sigmoid output is replaced by softplus: sodium images are not bounded by 1.)"""
    return NetConfig(channels=(128,) * 5, skip_channels=(4,) * 5, input_channels=32, upsample="linear",
                     pad="reflect", norm="batch", output="softplus")


def _conv(dims, cin, cout, k, stride, pad):
    Conv = nn.Conv3d if dims == 3 else nn.Conv2d
    mode = "reflect" if pad == "reflect" else "zeros"
    return Conv(cin, cout, k, stride=stride, padding=k // 2, padding_mode=mode, bias=True)


def _block(dims, cin, cout, k, stride, cfg):
    layers = [_conv(dims, cin, cout, k, stride, cfg.pad)]
    if cfg.norm == "batch":
        layers.append((nn.BatchNorm3d if dims == 3 else nn.BatchNorm2d)(cout))
    layers.append(nn.LeakyReLU(0.2, inplace=True))
    return nn.Sequential(*layers)


class _Level(nn.Module):
    """One scale: skip branch + (down -> deeper -> up) branch, concatenated and mixed."""

    def __init__(self, dims, cin, cfg: NetConfig, level: int):
        super().__init__()
        c = int(cfg.channels[level])
        s = int(cfg.skip_channels[level])
        k = cfg.kernel
        self.dims, self.cfg = dims, cfg
        self.skip = _block(dims, cin, s, 1, 1, cfg) if s > 0 else None
        self.down = nn.Sequential(_block(dims, cin, c, k, 2, cfg), _block(dims, c, c, k, 1, cfg))
        self.deeper = _Level(dims, c, cfg, level + 1) if level + 1 < len(cfg.channels) else None
        deep_out = int(cfg.channels[level + 1]) if self.deeper is not None else c
        self.up = nn.Sequential(_block(dims, s + deep_out, c, k, 1, cfg), _block(dims, c, c, 1, 1, cfg))
        self.out_channels = c

    def forward(self, x):
        d = self.down(x)
        if self.deeper is not None:
            d = self.deeper(d)
        mode = ("trilinear" if self.dims == 3 else "bilinear") if self.cfg.upsample == "linear" else "nearest"
        kwargs = {"align_corners": False} if mode != "nearest" else {}
        d = F.interpolate(d, size=x.shape[2:], mode=mode, **kwargs)
        if self.skip is not None:
            d = torch.cat([self.skip(x), d], dim=1)
        return self.up(d)


class DIPNet(nn.Module):
    """Encoder-decoder with skips for images of shape (Y, X) or (Z, Y, X).

    ``forward(inp)`` takes a (1, C, *shape) tensor (C = config.input_channels + extra_channels) and returns
    (1, out_channels, *shape). Sizes that are not a multiple of 2**depth (e.g. 38^3) are reflection-padded
    up to the next multiple (at least 2 * 2**depth) and the output is cropped back, so any size works.
    """

    def __init__(self, dims: int, config: NetConfig | None = None, extra_channels: int = 0, out_channels: int = 1):
        super().__init__()
        if dims not in (2, 3):
            raise InputError(f"DIPNet supports 2D and 3D images, got dims={dims}")
        cfg = (config or NetConfig()).validate()
        self.dims, self.config = dims, cfg
        self.in_channels = int(cfg.input_channels) + int(extra_channels)
        if self.in_channels < 1:
            raise InputError("DIPNet needs at least one input channel (noise code or extra image channel)")
        self.body = _Level(dims, self.in_channels, cfg, 0)
        self.head = _conv(dims, self.body.out_channels, out_channels, 1, 1, cfg.pad)
        self.depth = len(cfg.channels)

    @torch.no_grad()
    def init_output(self, level: float, weight_scale: float = 0.1) -> None:
        """Start near a flat image of value ``level`` (e.g. the data's mean): shrink the last convolution and
        set its bias so that the output non-linearity gives ``level`` (why: docs/method.md, change 1)."""
        self.head.weight.mul_(weight_scale)
        if self.config.output == "softplus":
            level = max(float(level), 1e-3)
            self.head.bias.fill_(level + torch.log(-torch.expm1(torch.tensor(-level))).item())  # softplus^-1
        else:
            self.head.bias.fill_(level)

    def forward(self, inp: torch.Tensor) -> torch.Tensor:
        shape = tuple(inp.shape[2:])
        m = 2 ** self.depth
        # Next multiple of 2**depth, and at least 2 voxels at the coarsest scale (batch norm, reflection).
        target = [max(-(-n // m) * m, 2 * m) for n in shape]
        before = [(t - n) // 2 for n, t in zip(shape, target)]
        after = [t - n - b for n, t, b in zip(shape, target, before)]
        if any(before) or any(after):
            flat = [v for b, a in zip(reversed(before), reversed(after)) for v in (b, a)]  # last axis first
            mode = "reflect" if all(max(b, a) < n for b, a, n in zip(before, after, shape)) else "replicate"
            inp = F.pad(inp, flat, mode=mode)
        out = self.head(self.body(inp))
        out = out[(slice(None), slice(None)) + tuple(slice(b, b + n) for b, n in zip(before, shape))]
        if self.config.output == "softplus":
            return F.softplus(out)
        if self.config.output == "relu":
            return F.relu(out)
        return out


def make_input(shape: tuple, channels: int, generator: torch.Generator, scale: float = 0.1) -> torch.Tensor:
    """The fixed random code z of DIP, (1, channels, *shape), uniform on [0, scale) (Ulyanov's default scale
    0.1), drawn on the CPU from ``generator``. Image channels (proton, pilot) are appended by the caller."""
    return torch.rand((1, int(channels)) + tuple(shape), generator=generator) * float(scale)


def count_parameters(net: nn.Module) -> int:
    return sum(p.numel() for p in net.parameters())
