"""`dtv`: proton-guided directional total variation (Ehrhardt & Betcke 2016), the classical anatomical prior.

    min_x 0.5 |A x - y|^2 + lam sum_i |P_i grad x_i|,  P_i = I - gamma xi_i xi_i^T,  x >= 0,

xi from the proton image only: xi = grad p / sqrt(|grad p|^2 + eta^2), p = proton normalised to its
99.9th percentile inside the support (optionally smoothed by ``guide_smoothing_vox`` first, against proton
noise). Solved by PDHG (SodiumDIPLib.solvers.pdhg). lam = lambda_sigma * sigma * |A|, chosen by SURE by default,
as in ``tv`` (on Cartesian k-space: GCV, then one Bregman step at 3x the weight; see ``tv``).
Edges shared with the proton image are kept; sodium-only edges (lesions) are smoothed like TV -- the
weakness DIP-Fusion's sodium branch addresses. Receive bias (N4, default) and Rician bias: see ``tv``.
"""

from __future__ import annotations

import numpy as np
import torch

from SodiumDIPLib.errors import InputError
from SodiumDIPLib.priors.guidance import direction_field, gaussian_smooth, normalise_guide
from SodiumDIPLib.params import validate as validate_params
from SodiumDIPLib.methods.base import Method, MethodResult, Problem, RunContext, register
from SodiumDIPLib.problem import relative_spacing
from SodiumDIPLib.solvers.variational import solve_variational

DESCRIPTION = "Proton-guided directional total variation (PDHG), the classical anatomically guided baseline"

# gamma, eta: tuned on the head phantom; lambda_sigma: the SURE search centre (docs/variational.md)
_COMMON = dict(lambda_sigma=0.6, kspace_lambda_sigma=0.15, lambda_select="sure", gamma=0.98, eta=0.08, guide_smoothing_vox=0.0, nonneg=True,
               bias_correction="auto", bregman_steps=1, bregman_weight_factor=3.0)
PRESETS = {
    "fast": dict(_COMMON, iterations=60, tol=1e-3),
    "balanced": dict(_COMMON, iterations=200, tol=3e-4),
    "quality": dict(_COMMON, iterations=800, tol=1e-5),
}


def proton_direction_field(problem: Problem, eta: float, smoothing_vox: float = 0.0, device="cpu") -> torch.Tensor:
    """The proton direction field (d, *shape) on the problem's grid, eta in normalised intensity per voxel."""
    if problem.proton is None:
        raise InputError("dtv needs a proton volume (--proton) registered to the sodium grid")
    p = np.asarray(problem.proton, np.float32)
    if tuple(p.shape) != tuple(problem.image_shape):
        raise InputError(f"proton shape {p.shape} does not match the sodium grid {tuple(problem.image_shape)}")
    guide = normalise_guide(p, mask=problem.support, device=device)
    if smoothing_vox > 0:
        guide = gaussian_smooth(guide, smoothing_vox)
    return direction_field(guide, eta, spacing=relative_spacing(problem))


def run_dtv(problem: Problem, params: dict, ctx: RunContext) -> MethodResult:
    params = validate_params("dtv", params)
    xi = proton_direction_field(problem, float(params["eta"]), float(params["guide_smoothing_vox"]), ctx.device)
    extras = {"direction_field_magnitude": torch.sqrt((xi * xi).sum(0)).cpu().numpy().astype(np.float32)}
    return solve_variational(problem, params, ctx, xi=xi, gamma=float(params["gamma"]), extras=extras)


register(Method(name="dtv", description=DESCRIPTION, run=run_dtv, presets=PRESETS, supports_kspace=True,
                needs_proton=True))
