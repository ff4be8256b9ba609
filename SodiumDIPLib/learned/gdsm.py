"""Corruption2Self training: generalized denoising score matching (GDSM) on noisy volumes only, and inference.

Data model: y = x + sigma n (Gaussian, per voxel; normalised units). GDSM (Tu et al., ICLR 2025) corrupts y
further, x_t = y + tau n' (level sigma_t = sqrt(sigma^2 + tau^2)), and trains h(x_t) to be E[x_s | x_t], the
image at a LOWER level sigma_s < sigma (s = 0: the clean image), through what h implies for the data level:

    y_hat = x_t + kappa (h - x_t),   kappa = tau^2 / (sigma_t^2 - sigma_s^2),    loss = |y_hat - y|^2 / kappa

(Tweedie: E[x_a | x_t] = x_t + (sigma_t^2 - sigma_a^2) grad log p_t(x_t) for every a < t, so E[y | x_t] and
E[x_s | x_t] are the same score at two step lengths). The minimiser over all functions is exactly
h = E[x_s | x_t]: the target is unbiased although no clean image is ever seen (Testing/test_c2s.py checks it on
Gaussian data where E[x | x_t] is known in closed form). The division by kappa keeps the gradient of every tau
on one scale. Stage 1 trains s = 0; the detail-refinement stage (last ``refine_fraction`` of the steps)
trains a small non-zero target s = ``refine_level`` x sigma, which the network is also told (an input map), and
inference asks for that level: the output keeps a trace of the finest detail instead of over-smoothing it.

Samples: 2.5D stacks of ``context`` adjacent slices in all three orientations of every training volume, random
crops of ``patch`` voxels, random flips; the proton slice is an extra channel when the network takes one.
Model selection: the GDSM loss on a fixed validation batch (fixed crops, noise and tau), evaluated every
``eval_every`` steps; the best weights are kept and returned -- also when the run is cancelled.
"""

from __future__ import annotations

import copy
import math
import time
from dataclasses import dataclass, field
from typing import Callable, Optional

import numpy as np
import torch

from SodiumDIPLib.errors import Cancelled, InputError
from SodiumDIPLib.learned.network import Denoiser, DenoiserConfig


@dataclass
class TrainingVolume:
    """One noisy volume in normalised units, its noise level sigma (same units) and optional proton (same grid)."""

    noisy: np.ndarray
    sigma: float
    proton: Optional[np.ndarray] = None


@dataclass
class TrainSettings:
    steps: int = 600
    batch: int = 16
    patch: int = 32
    lr: float = 2e-3
    tau_min: float = 0.1   # tau / sigma range sampled uniformly
    tau_max: float = 2.0
    refine_fraction: float = 0.2
    refine_level: float = 0.1  # target level of the refinement stage, x sigma
    eval_every: int = 50
    validation_size: int = 32
    ema: float = 0.0  # decay of a running average of the weights (0: off; 0.99 cost 0.7 dB at 300 steps, 48^3 phantom)

    def validate(self) -> "TrainSettings":
        if int(self.steps) < 0:
            raise InputError(f"train_steps must be >= 0, got {self.steps}")
        if int(self.batch) < 1 or int(self.patch) < 8:
            raise InputError(f"batch must be >= 1 and patch >= 8, got {self.batch}, {self.patch}")
        if not (self.lr > 0):
            raise InputError(f"lr must be > 0, got {self.lr}")
        if not (0 < self.tau_min < self.tau_max):
            raise InputError(f"need 0 < tau_min < tau_max, got {self.tau_min}, {self.tau_max}")
        if not (0 <= self.refine_fraction < 1):
            raise InputError(f"refine_fraction must be in [0, 1), got {self.refine_fraction}")
        if not (0 <= self.refine_level < 1):
            raise InputError(f"refine_level must be in [0, 1) (a fraction of sigma), got {self.refine_level}")
        if not (0 <= self.ema < 1):
            raise InputError(f"ema must be in [0, 1), got {self.ema}")
        if int(self.eval_every) < 1:
            raise InputError(f"eval_every must be >= 1, got {self.eval_every}")
        return self


@dataclass
class TrainResult:
    model: Denoiser
    best_loss: float
    best_step: int
    steps_done: int
    cancelled: bool
    seconds: float
    output_level: float  # sigma_s / sigma the model was last trained for (what inference asks for)
    history: list = field(default_factory=list)


def _oriented(volume: np.ndarray, device) -> list:
    """The volume as (N, H, W) tensors for the three orientations (one for a 2D image)."""
    t = torch.as_tensor(np.ascontiguousarray(volume, dtype=np.float32), device=device)
    if t.ndim == 2:
        return [t[None]]
    return [t, t.permute(1, 0, 2).contiguous(), t.permute(2, 0, 1).contiguous()]


class SliceSampler:
    """Random 2.5D stacks (batch, context, P, P) with matching proton slices and per-sample sigma."""

    def __init__(self, volumes: list, context: int, patch: int, device):
        self.context, self.device = int(context), device
        self.items = []  # (noisy (N,H,W), proton (N,H,W) or None, sigma)
        for v in volumes:
            protons = _oriented(v.proton, device) if v.proton is not None else [None] * (3 if v.noisy.ndim == 3 else 1)
            for noisy, proton in zip(_oriented(v.noisy, device), protons):
                self.items.append((noisy, proton, float(v.sigma)))
        self.patch = min([int(patch)] + [min(n.shape[1:]) for n, _, _ in self.items])

    def draw(self, batch: int, gen: torch.Generator):
        k, p = self.context // 2, self.patch
        stacks, protons, sigmas = [], [], []
        for _ in range(batch):
            noisy, proton, sigma = self.items[int(torch.randint(len(self.items), (1,), generator=gen))]
            n, h, w = noisy.shape
            i = int(torch.randint(n, (1,), generator=gen))
            rows = torch.tensor([_reflect(i + d, n) for d in range(-k, k + 1)], device=noisy.device)
            r0 = int(torch.randint(h - p + 1, (1,), generator=gen))
            c0 = int(torch.randint(w - p + 1, (1,), generator=gen))
            flips = [d for d, f in zip((-2, -1), torch.rand(2, generator=gen) < 0.5) if f]
            s = noisy.index_select(0, rows)[:, r0:r0 + p, c0:c0 + p]
            stacks.append(s.flip(flips) if flips else s)
            if proton is not None:
                q = proton[i, r0:r0 + p, c0:c0 + p]
                protons.append(q.flip(flips) if flips else q)
            sigmas.append(sigma)
        prot = torch.stack(protons) if len(protons) == batch else None
        return torch.stack(stacks), prot, torch.tensor(sigmas, dtype=torch.float32, device=self.device)


def _reflect(i: int, n: int) -> int:
    if n == 1:
        return 0
    i = abs(i)
    return 2 * (n - 1) - i if i >= n else i


def gdsm_loss(model: Denoiser, stack, proton, sigma, tau, noise, target_level) -> torch.Tensor:
    """GDSM loss of a batch: stack = y (batch, C, H, W), sigma / tau / target_level (batch,) in intensity units."""
    x_t = stack + tau.view(-1, 1, 1, 1) * noise
    sigma_t = torch.sqrt(sigma * sigma + tau * tau)
    h = model(x_t, sigma_t, target_level, proton)
    c = stack.shape[1] // 2
    kappa = (tau * tau / (sigma_t * sigma_t - target_level * target_level)).view(-1, 1, 1)
    y_hat = x_t[:, c] + kappa * (h - x_t[:, c])
    per = ((y_hat - stack[:, c]) ** 2).mean((-2, -1)) / kappa.view(-1)
    return (per / (sigma * sigma)).mean()


def _draw_tau(sigma, gen, settings: TrainSettings):
    u = settings.tau_min + (settings.tau_max - settings.tau_min) * torch.rand(sigma.shape, generator=gen)
    return sigma * u.to(sigma.device)


def train_gdsm(volumes: list, cfg: DenoiserConfig, settings: TrainSettings, seed: int = 0, device="cpu",
               model: Optional[Denoiser] = None, check: Optional[Callable[[], None]] = None,
               report: Optional[Callable[[int, dict], None]] = None) -> TrainResult:
    """Train (or fine-tune ``model``) with GDSM on ``volumes``; returns the best model on the validation batch.

    check(): raises Cancelled to stop (the best model so far is returned, ``cancelled`` True).
    report(step, values): called at every evaluation.
    """
    settings.validate()
    if not volumes:
        raise InputError("c2s: no training volume")
    if cfg.proton and any(v.proton is None for v in volumes):
        raise InputError("c2s: the proton input channel needs a proton image for every training volume "
                         "(set use_proton=false to train without it)")
    torch.manual_seed(seed)
    model = (model if model is not None else Denoiser(cfg)).to(device)
    ema = copy.deepcopy(model)  # Polyak average of the weights: what is evaluated, kept and returned
    gen = torch.Generator().manual_seed(seed)
    sampler = SliceSampler(volumes, cfg.context, settings.patch, device)
    val = _validation_batch(sampler, settings, torch.Generator().manual_seed(seed + 1))
    opt = torch.optim.Adam(model.parameters(), lr=settings.lr)
    steps = int(settings.steps)
    refine_from = steps - int(round(settings.refine_fraction * steps)) if settings.refine_level > 0 else steps
    level = 0.0
    best = (_evaluate(ema, val, level), copy.deepcopy(ema.state_dict()), 0)
    history, started, done, cancelled = [], time.perf_counter(), 0, False
    try:
        for step in range(1, steps + 1):
            if step - 1 == refine_from:  # the refinement stage: a new target, so a new best-so-far
                level = float(settings.refine_level)
                best = (_evaluate(ema, val, level), copy.deepcopy(ema.state_dict()), step - 1)
            for group in opt.param_groups:  # cosine decay to 5 % of lr
                group["lr"] = settings.lr * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * (step - 1) / max(steps, 1))))
            stack, proton, sigma = sampler.draw(int(settings.batch), gen)
            tau = _draw_tau(sigma, gen, settings)
            noise = torch.randn(stack.shape, generator=gen).to(device)
            loss = gdsm_loss(model.train(), stack, proton, sigma, tau, noise, sigma * level)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            _update_ema(ema, model, min(settings.ema, 1.0 - 1.0 / step))
            done = step
            if step % int(settings.eval_every) == 0 or step == steps:
                v = _evaluate(ema, val, level)
                if v < best[0]:
                    best = (v, copy.deepcopy(ema.state_dict()), step)
                entry = {"iteration": step, "loss": float(loss.detach()), "val_loss": v, "target_level": level,
                         "seconds": time.perf_counter() - started}
                history.append(entry)
                if report is not None:
                    report(step, entry)
            if check is not None:
                check()
    except Cancelled:
        cancelled = True
    model.load_state_dict(best[1])
    model.eval()
    return TrainResult(model, float(best[0]), int(best[2]), done, cancelled, time.perf_counter() - started,
                       level, history)


@torch.no_grad()
def _update_ema(ema: Denoiser, model: Denoiser, decay: float) -> None:
    for e, p in zip(ema.parameters(), model.parameters()):
        e.mul_(decay).add_(p.detach(), alpha=1.0 - decay)


def _validation_batch(sampler: SliceSampler, settings: TrainSettings, gen: torch.Generator):
    stack, proton, sigma = sampler.draw(int(settings.validation_size), gen)
    tau = _draw_tau(sigma, gen, settings)
    noise = torch.randn(stack.shape, generator=gen).to(stack.device)
    return stack, proton, sigma, tau, noise


@torch.no_grad()
def _evaluate(model: Denoiser, val, level: float) -> float:
    stack, proton, sigma, tau, noise = val
    return float(gdsm_loss(model.eval(), stack, proton, sigma, tau, noise, sigma * level))


# in-plane transforms of test-time augmentation: (flip rows, flip columns, transpose); each is its own inverse
# when undone in reverse order
_TRANSFORMS = [(False, False, False), (False, True, False), (True, False, False), (True, True, False),
               (False, False, True), (False, True, True), (True, False, True), (True, True, True)]
AUGMENTS = (1, 2, 4, 8)


def _forward(t, flip_rows, flip_cols, transpose):
    if flip_rows:
        t = t.flip(-2)
    if flip_cols:
        t = t.flip(-1)
    return t.transpose(-2, -1) if transpose else t


def _inverse(t, flip_rows, flip_cols, transpose):
    if transpose:
        t = t.transpose(-2, -1)
    if flip_cols:
        t = t.flip(-1)
    return t.flip(-2) if flip_rows else t


@torch.no_grad()
def apply_denoiser(model: Denoiser, noisy: np.ndarray, sigma: float, proton: Optional[np.ndarray] = None,
                   output_level: float = 0.0, device="cpu", chunk: int = 32,
                   check: Optional[Callable[[], None]] = None, augment: int = 2) -> np.ndarray:
    """Denoise a 2D/3D image slice by slice in every orientation and average (normalised units in and out).

    sigma: the image's noise level; output_level: target level as a fraction of sigma (0 = clean);
    augment: in-plane transforms averaged per slice (test-time augmentation; time grows with it): 1 none,
    2 the mirror image, 4 the mirrors of both axes, 8 those and their transposes.
    """
    if augment not in AUGMENTS:
        raise InputError(f"augment must be one of {AUGMENTS}, got {augment!r}")
    model = model.to(device).eval()
    if model.cfg.proton and proton is None:
        raise InputError("this c2s model takes the proton image as an input channel; give a proton volume")
    k = model.cfg.context // 2
    outs = []
    protons = _oriented(proton, device) if (model.cfg.proton and proton is not None) else None
    for o, vol in enumerate(_oriented(noisy, device)):
        n = vol.shape[0]
        res = torch.empty_like(vol)
        for start in range(0, n, chunk):
            idx = list(range(start, min(n, start + chunk)))
            rows = torch.tensor([[_reflect(i + d, n) for d in range(-k, k + 1)] for i in idx], device=vol.device)
            stack = vol[rows]
            s_in = torch.full((len(idx),), float(sigma), device=vol.device)
            prot = protons[o][idx] if protons is not None else None
            s_out = s_in * float(output_level)
            total = torch.zeros((len(idx),) + tuple(vol.shape[1:]), device=vol.device)
            for tr in _TRANSFORMS[:augment]:
                p = None if prot is None else _forward(prot, *tr)
                total += _inverse(model(_forward(stack, *tr), s_in, s_out, p), *tr)
            res[idx] = total / augment
            if check is not None:
                check()
        outs.append(res)
    if noisy.ndim == 2:
        return outs[0][0].cpu().numpy()
    a, b, c = outs
    mean = (a + b.permute(1, 0, 2) + c.permute(1, 2, 0)) / 3
    return mean.cpu().numpy().astype(np.float32)

