"""The safeguard of a DIP run started at a classical pilot: held-out voxels decide between the DIP and the pilot.

A seeded fraction of the support's voxels is left out of the DIP's data term. The DIP starts from a *blind*
pilot (the pilot run on the data with the held-out voxels filled from their kept neighbours), so neither its
start nor its network input carries their noise. Its iterates are compared with the FULL-data pilot, whose
residual at the held-out voxels is corrected for its optimism: mean (y - p)^2 underestimates its error by
2 sigma^2 h, h = its mean self-influence d p_v / d y_v there (one Monte Carlo perturbation). Why this design
and the two rejected ones: docs/method.md (issue 16).
"""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np
import torch

from SodiumDIPLib.dip import fidelity as fid
from SodiumDIPLib.problem import Problem


class HeldOutCheck:
    """Held-out voxels score the DIP iterates against the pilot.

    At iterate t the paired difference d_t(v) = (y - m_t)^2 - (y - m_0)^2 over the held-out voxels (m = the model
    of the measurement, b x; m_0 the full pilot's) minus the pilot's optimism estimates err(m_t) - err(m_0) there.
    The best iterate is returned only when its mean difference is below -z standard errors (z = ``margin``);
    otherwise the pilot itself."""

    def __init__(self, support: np.ndarray, fraction: float, seed: int, margin: float, device):
        rng = np.random.default_rng(int(seed) + 7919)
        held = np.asarray(support, bool) & (rng.random(support.shape) < float(fraction))
        self.held = torch.from_numpy(held).to(device)
        self.fit_weight = torch.from_numpy(~held).float().to(device)
        self.n = int(held.sum())
        self.margin = float(margin)
        self.base = None
        self.optimism = 0.0
        self.best = None  # (mean difference, standard error, iteration, x, b)

    def start(self, y: torch.Tensor, m0: torch.Tensor, optimism: float = 0.0) -> None:
        """m0: the full-data pilot's model; optimism: 2 sigma^2 x its mean self-influence on the held-out voxels,
        so that mean (y - m0)^2 + optimism estimates its error as if it had not seen them."""
        self.base = ((y - m0) ** 2)[self.held]
        self.optimism = float(optimism)

    def update(self, it: int, y: torch.Tensor, m: torch.Tensor, x: torch.Tensor, b) -> float:
        d = ((y - m) ** 2)[self.held] - self.base
        mean = float(d.mean()) - self.optimism
        se = float(d.std()) / math.sqrt(max(self.n, 1))
        if self.best is None or mean < self.best[0]:
            self.best = (mean, se, it, x.detach().clone(), None if b is None else b.detach().clone())
        return mean

    def accepted(self) -> bool:
        return self.best is not None and self.n > 0 and self.best[0] < -self.margin * self.best[1]

    def diagnostics(self) -> dict:
        if self.best is None:
            return {"heldout_voxels": self.n}
        mean, se, it, _, _ = self.best
        return {"heldout_voxels": self.n, "heldout_best_delta": mean, "heldout_best_se": se,
                "heldout_pilot_optimism": self.optimism, "heldout_best_iteration": int(it),
                "heldout_margin": self.margin}


def same_settings(pilot_result) -> dict:
    """Overrides that make a re-run of the pilot its twin: its selected weight (no new SURE search on the filled
    data: it picks a weaker weight there, docs/method.md) and its bias decision."""
    over = {"bias_correction": "auto" if pilot_result.bias_field is not None else "none"}
    lam = next((h["lambda_sigma"] for h in pilot_result.history if "lambda_sigma" in h), None)
    if lam is not None:
        over.update(lambda_select="fixed", lambda_sigma=float(lam))
    return over


def pilot_optimism(problem: Problem, run_pilot, pilot_result, held: np.ndarray, sigma: float, seed: int) -> float:
    """2 sigma^2 h: how much the full-data pilot's residual at the held-out voxels underestimates its error,
    h = mean over them of d p_v / d y_v (its self-influence), by one Monte Carlo perturbation (Rademacher,
    amplitude sigma, held-out voxels only) and a second run ``run_pilot(problem, overrides)`` of the pilot with
    the same weight and bias decision."""
    rng = np.random.default_rng(int(seed) + 104729)
    delta = np.where(rng.random(held.shape) < 0.5, -1.0, 1.0).astype(np.float32) * held
    y0 = np.asarray(problem.initial, np.float32)
    moved = y0 + float(sigma) * delta
    twin = replace(problem, measurement=torch.from_numpy(moved), initial=moved)
    res = run_pilot(twin, same_settings(pilot_result))
    model = lambda r: np.asarray(r.image, np.float64) * (1.0 if r.bias_field is None else r.bias_field)  # noqa: E731
    h = float(np.sum(delta * (model(res) - model(pilot_result))) / (float(sigma) * max(held.sum(), 1)))
    return 2.0 * float(sigma) ** 2 * min(max(h, 0.0), 1.0)


def fill_held_out(image: np.ndarray, held: np.ndarray) -> np.ndarray:
    """``image`` with the held-out voxels replaced by the mean of their kept neighbours (3-voxel box)."""
    from scipy import ndimage as ndi

    keep = (~held).astype(np.float32)
    num = ndi.uniform_filter(image.astype(np.float32) * keep, 3)
    den = ndi.uniform_filter(keep, 3)
    out = image.astype(np.float32).copy()
    out[held] = (num[held] / np.maximum(den[held], 1e-6))
    return out


def measured_model(bx: torch.Tensor, kind: str, sigma: float, n_ch: int, magnitude: bool) -> torch.Tensor:
    """What the held-out voxels are compared with: b x, or its expected magnitude under a noise-floor model."""
    if magnitude and kind in ("rician", "chi", "corrected_ls"):
        return fid.expected_magnitude(bx, sigma, n_ch)
    return bx
