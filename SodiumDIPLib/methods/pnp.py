"""`pnp`: plug-and-play reconstruction -- a data-consistency solve alternated with a denoiser (MRI2Qmap's structure).

Half-quadratic splitting (Zhang et al., DPIR, TPAMI 2021) or ADMM (Venkatakrishnan, Bouman & Wohlberg 2013;
Chan, Wang & Elgendy 2017) with a continuation of the penalty:

    x_k = argmin_x |A x - y|^2 + rho_k |x - v_k|^2         (conjugate gradients on the normal equations,
                                                            (Re A^H A + rho_k I) x = Re A^H y + rho_k v_k)
    z_k = D(x_k [+ u_k], s_k)                               (denoiser at level s_k)
    HQS: v_{k+1} = z_k;   ADMM: u_k+1 = u_k + x_k - z_k, v_{k+1} = z_k - u_k+1

s_k falls geometrically from ``sigma_start`` (normalised units) to ``sigma_end_factor`` x sigma (sigma: the
image-domain noise level of the data) and rho_k = ``lambda_dc`` sigma^2 / s_k^2 grows with it (the penalty
continuation). Images are real (kspace_problem moves the object's phase into the coil maps); on radial data the
density-weighted data term of ``tv`` is used. Stopping: ``iterations`` steps, or with ``stopping="discrepancy"``
the first step whose denoised image z_k reaches |A z_k - y|^2 <= ``discrepancy_tau`` x the expected noise
energy (Morozov's discrepancy principle); the output is that z_k.

Denoisers (``denoiser``; ``auto`` = bm4d when the optional package is installed, else the prior):
- ``prior``: the MRI-driven prior shipped in the package (SodiumDIPLib/learned/weights/prior_t1.pt): a small
  noise-conditional CNN trained on the MNI152 T1 template (shipped inside the nilearn wheel) degraded to sodium
  resolution, contrast and noise, reproducible with ``python -m SodiumDIPLib.learned.prior`` (docs/c2s_pnp.md);
- ``c2s``: the Corruption2Self network trained (GDSM) on the data at hand (on k-space: on a CG-SENSE image),
  with the proton image as an input channel when ``use_proton``;
- ``bm4d``: BM4D at level s_k (optional package).
"""

from __future__ import annotations

import importlib.util
import math
from typing import Callable, Optional

import numpy as np
import torch

from SodiumDIPLib.errors import Cancelled, InputError
from SodiumDIPLib.methods.base import Method, MethodResult, Problem, RunContext, register
from SodiumDIPLib.physics.bias import n4_bias_field
from SodiumDIPLib.physics.density import density_weighted
from SodiumDIPLib.problem import noise_sigma_of

DESCRIPTION = ("Plug-and-play (HQS / ADMM, CG data consistency, penalty continuation) with a learned MRI prior, "
               "the c2s network or BM4D as the denoiser")

DENOISERS = ("auto", "prior", "c2s", "bm4d")
# splitting / lambda_dc: 32^3 head phantom, 4-coil Cartesian R = 4, bm4d denoiser, 12 steps: HQS lambda_dc 1 / 0.3 /
# 0.1: 25.27 / 28.13 / 28.34 dB; ADMM lambda_dc 0.3: 29.08 (docs/c2s_pnp.md)
_COMMON = dict(denoiser="auto", splitting="admm", sigma_start=0.1, sigma_end_factor=1.0, lambda_dc=1.0,
               cg_iterations=10, stopping="fixed", discrepancy_tau=1.0, use_proton=False, c2s_steps=600,
               noise_model="auto", noise_estimate="auto", bias_correction="n4")
PRESETS = {
    "fast": dict(_COMMON, iterations=12),
    "balanced": dict(_COMMON, iterations=16, c2s_steps=1500),
    "quality": dict(_COMMON, iterations=24, cg_iterations=20, c2s_steps=4000),
}
MAX_INTENSITY = 4.0  # denoised images are clipped to [0, 4] x the starting image's robust maximum (a guard)


def check_pnp_params(params: dict) -> None:
    if params["denoiser"] not in DENOISERS:
        raise InputError(f"denoiser must be one of {DENOISERS}, got {params['denoiser']!r}")
    if params["splitting"] not in ("hqs", "admm"):
        raise InputError(f"splitting must be 'hqs' or 'admm', got {params['splitting']!r}")
    if params["stopping"] not in ("fixed", "discrepancy"):
        raise InputError(f"stopping must be 'fixed' or 'discrepancy', got {params['stopping']!r}")
    for key in ("sigma_start", "sigma_end_factor", "lambda_dc", "discrepancy_tau"):
        if not (isinstance(params[key], (int, float)) and params[key] > 0 and math.isfinite(params[key])):
            raise InputError(f"{key} must be a finite number > 0, got {params[key]!r}")
    for key in ("iterations", "cg_iterations"):
        if int(params[key]) < 1:
            raise InputError(f"{key} must be >= 1, got {params[key]}")
    if params["bias_correction"] not in ("none", "n4"):
        raise InputError(f"bias_correction must be 'none' or 'n4', got {params['bias_correction']!r}")
    if params["noise_estimate"] not in ("auto", "problem"):
        raise InputError(f"noise_estimate must be 'auto' or 'problem', got {params['noise_estimate']!r}")
    if params["noise_model"] not in ("auto", "gaussian", "rician"):
        raise InputError(f"noise_model must be 'auto', 'gaussian' or 'rician', got {params['noise_model']!r}")
    if int(params["c2s_steps"]) < 1:
        raise InputError(f"c2s_steps must be >= 1, got {params['c2s_steps']}")
    if params["denoiser"] == "auto":
        params["denoiser"] = "bm4d" if importlib.util.find_spec("bm4d") is not None else "prior"
    if params["denoiser"] == "bm4d" and importlib.util.find_spec("bm4d") is None:
        raise InputError("denoiser 'bm4d' needs the optional package 'bm4d' (pip install bm4d; non-commercial licence)")


# ------------------------------------------------------------------------------------------------ data step
def cg_solve(normal: Callable[[torch.Tensor], torch.Tensor], rhs: torch.Tensor, x0: torch.Tensor,
             iterations: int, tol: float = 1e-6) -> torch.Tensor:
    """Conjugate gradients for normal(x) = rhs, normal symmetric positive definite on real tensors."""
    x = x0.clone()
    r = rhs - normal(x)
    p = r.clone()
    rs = float((r * r).sum())
    stop = tol * tol * float((rhs * rhs).sum())
    for _ in range(int(iterations)):
        if rs <= stop:
            break
        ap = normal(p)
        alpha = rs / float((p * ap).sum())
        x = x + alpha * p
        r = r - alpha * ap
        rs_new = float((r * r).sum())
        p = r + (rs_new / rs) * p
        rs = rs_new
    return x


class DataStep:
    """x = argmin |A x - y|^2 + rho |x - v|^2 over real images: (Re A^H A + rho I) x = Re A^H y + rho v."""

    def __init__(self, op, y: torch.Tensor, identity: bool, cg_iterations: int):
        self.op, self.y, self.identity, self.cg_iterations = op, y, identity, int(cg_iterations)
        self.aty = y.real.float() if identity else op.adjoint(y).real.float()

    def gram(self, x: torch.Tensor) -> torch.Tensor:
        return x if self.identity else self.op.adjoint(self.op.forward(x)).real.float()

    def normal(self, rho: float) -> Callable[[torch.Tensor], torch.Tensor]:
        return lambda x: self.gram(x) + rho * x

    def solve(self, v: torch.Tensor, rho: float, x0: torch.Tensor) -> torch.Tensor:
        rhs = self.aty + rho * v
        if self.identity:
            return rhs / (1.0 + rho)
        return cg_solve(self.normal(rho), rhs, x0, self.cg_iterations)

    def residual_energy(self, x: torch.Tensor) -> float:
        pred = x if self.identity else self.op.forward(x)
        d = pred - self.y
        return float((d.abs() ** 2).sum()) if d.is_complex() else float((d * d).sum())


def expected_noise_energy(problem: Problem, y: torch.Tensor, sigma: float, identity: bool) -> float:
    """E|noise|^2 of the (weighted) data: n sigma^2 for a real image, 2 sigma^2 per acquired complex sample."""
    if identity:
        return float(np.prod(problem.image_shape)) * sigma * sigma
    return 2.0 * sigma * sigma * float((y.abs() > 0).sum())


# ------------------------------------------------------------------------------------------------ denoisers
def make_denoiser(name: str, problem: Problem, params: dict, ctx: RunContext, start: np.ndarray, sigma: float,
                  history: list) -> tuple:
    """(denoise(image, level) -> image, (lowest, highest) level it is meant for, info dict)."""
    proton = np.asarray(problem.proton, np.float32) if (params["use_proton"] and problem.proton is not None) else None
    if name == "bm4d":
        import bm4d
        from bm4d.profiles import BM4DProfile2D, BM4DProfileLC

        def run_bm4d(v, level):
            z = v[:, :, None] if v.ndim == 2 else v
            prof = BM4DProfile2D() if v.ndim == 2 else BM4DProfileLC()
            out = np.asarray(bm4d.bm4d(z, level, profile=prof, stage_arg=bm4d.BM4DStages.HARD_THRESHOLDING))
            return out.reshape(z.shape)[:, :, 0] if v.ndim == 2 else out.reshape(v.shape)

        return run_bm4d, (0.0, math.inf), {}
    from SodiumDIPLib.learned.gdsm import apply_denoiser

    if name == "prior":
        from SodiumDIPLib.learned.prior import load_prior

        model, meta = load_prior(ctx.device)
        lo, hi = float(meta["sigma_min"]), float(meta["sigma_max"])
        prot = proton if model.cfg.proton else None
        return (lambda v, level: apply_denoiser(model, v, level, prot, 0.0, ctx.device)), (lo, hi), {"prior": meta}
    # c2s: GDSM on the starting image at its own noise level
    from SodiumDIPLib.learned.gdsm import TrainingVolume, train_gdsm
    from SodiumDIPLib.learned.network import DenoiserConfig
    from SodiumDIPLib.methods.c2s import PRESETS as C2S_PRESETS
    from SodiumDIPLib.methods.c2s import settings_from

    c2s_params = dict(C2S_PRESETS["fast"], train_steps=int(params["c2s_steps"]))
    cfg = DenoiserConfig(context=int(c2s_params["context"]), proton=proton is not None, width=int(c2s_params["width"]))

    def report(step, entry):
        history.append(dict(entry, stage="c2s training"))
        ctx.report(step, loss=entry["val_loss"], stage="c2s training")

    trained = train_gdsm([TrainingVolume(start, sigma, proton)], cfg, settings_from(c2s_params), seed=ctx.seed,
                         device=ctx.device, check=ctx.check, report=report)
    s = settings_from(c2s_params)
    levels = (sigma * math.sqrt(1 + s.tau_min ** 2), sigma * math.sqrt(1 + s.tau_max ** 2))
    return ((lambda v, level: apply_denoiser(trained.model, v, level, proton, 0.0, ctx.device)), levels,
            {"c2s_steps": trained.steps_done, "c2s_sigma": sigma})


def _start_image(problem: Problem, data: DataStep, identity: bool) -> torch.Tensor:
    """Real starting image: the data (denoising) or a few CG steps of least squares (k-space)."""
    if identity:
        return data.aty.clone()
    x0 = torch.zeros_like(data.aty)
    return cg_solve(data.normal(1e-3), data.aty, x0, 8)


# ------------------------------------------------------------------------------------------------ the method
def run_pnp(problem: Problem, params: dict, ctx: RunContext) -> MethodResult:
    check_pnp_params(params)
    dev = ctx.device
    op = problem.operator
    identity = bool(getattr(op, "is_identity", False))
    y = problem.measurement
    y = y.to(dev) if isinstance(y, torch.Tensor) else torch.as_tensor(np.asarray(y)).to(dev)
    sigma, channels = noise_sigma_of(problem), int(problem.n_channels)
    if identity:  # a magnitude image's noise from its noise-only background when it has one (as c2s)
        from SodiumDIPLib.methods.c2s import noise_of

        sigma, channels = noise_of(problem, params, np.abs(np.asarray(problem.initial, np.float32)))
    if not identity:
        op = op.to(dev)
        op, y, sigma, _ = density_weighted(op, y, sigma, problem.image_shape, dev)
    elif y.is_complex():
        y = y.abs()
    y = y if y.is_complex() else y.float()
    x = _start_image(problem, DataStep(op, y, identity, params["cg_iterations"]), identity)
    # units: the starting image's robust maximum becomes 1 (the learned denoisers' training units; a k-space
    # problem is normalised on its zero-filled image, whose maximum undersampling lowers)
    unit = _robust_max(x, problem.support)
    y, x, sigma = y / unit, x / unit, sigma / unit
    data = DataStep(op, y, identity, params["cg_iterations"])
    history: list = []
    start_np = x.clamp_min(0).cpu().numpy().astype(np.float32)
    # the c2s network learns the starting image's own noise level (on k-space data a CG image's, estimated)
    sigma_start_image = sigma if identity else _image_noise(start_np, sigma)
    denoise, (lo, hi), info = make_denoiser(params["denoiser"], problem, params, ctx, start_np, sigma_start_image,
                                            history)
    n = int(params["iterations"])
    # where the continuation ends: the image-domain noise of the data, sigma sqrt(R) on Cartesian data (sigma per
    # sample, orthonormal FFT, unit root-sum-of-squares maps, a fraction 1/R of the samples kept); the
    # gridded image's level on radial data (density_weighted already counts the samples)
    s_end = float(params["sigma_end_factor"]) * sigma * math.sqrt(_acceleration(y, problem, identity))
    s_start = max(float(params["sigma_start"]), s_end)
    levels = [s_start * (s_end / s_start) ** (k / max(n - 1, 1)) for k in range(n)]
    budget = float(params["discrepancy_tau"]) * expected_noise_energy(problem, y, sigma, identity)
    z, u = x.clone(), torch.zeros_like(x)
    stop_rule, stop_at, done = "fixed", n, 0
    try:
        for k, level in enumerate(levels, start=1):
            rho = float(params["lambda_dc"]) * sigma * sigma / (level * level)
            v = z - u if params["splitting"] == "admm" else z
            x = data.solve(v, rho, x)
            ctx.check()
            d_level = min(max(level, lo), hi)
            arg = (x + u) if params["splitting"] == "admm" else x
            z = torch.from_numpy(np.asarray(denoise(arg.cpu().numpy().astype(np.float32), d_level),
                                            np.float32)).to(dev).clamp(0, MAX_INTENSITY)
            if params["splitting"] == "admm":
                u = u + x - z
            done = k
            resid = data.residual_energy(z)
            entry = {"iteration": k, "loss": resid / max(budget, 1e-30), "level": level * unit,
                     "denoiser_level": d_level * unit, "rho": rho}
            if problem.reference is not None:
                entry["psnr"] = _psnr(z.cpu().numpy() * unit, problem.reference, problem.support)
            history.append(entry)
            ctx.report(k, loss=entry["loss"], image=lambda z=z: (z.cpu().numpy() * unit).astype(np.float32),
                       **({"psnr": entry["psnr"]} if "psnr" in entry else {}))
            if params["stopping"] == "discrepancy" and resid <= budget:
                stop_rule, stop_at = "discrepancy", k
                break
            ctx.check()
    except Cancelled:
        stop_rule, stop_at = "cancelled", done
    out = z.cpu().numpy().astype(np.float32) * unit
    sigma = sigma * unit
    out, bias, diagnostics = _finish(problem, params, out, sigma, identity, channels)
    result = MethodResult(image=out, iterations=done, stop_rule=stop_rule, stop_iteration=stop_at, bias_field=bias,
                          history=history, params=dict(params))
    if diagnostics:
        result.diagnostics = diagnostics
    return result


def _acceleration(y: torch.Tensor, problem: Problem, identity: bool) -> float:
    """Image voxels per acquired sample and coil (1 for images and density-weighted radial data)."""
    if identity or getattr(problem.operator, "dcf", None) is not None:
        return 1.0
    acquired = float((y.abs() > 0).sum())
    return max(1.0, float(np.prod(problem.image_shape)) * y.shape[0] / max(acquired, 1.0))


def _robust_max(x: torch.Tensor, support) -> float:
    a = x.detach().abs().cpu().numpy()
    if support is not None and np.shape(support) == a.shape and np.any(support):
        a = a[np.asarray(support, bool)]
    m = float(np.percentile(a, 99.5))
    return m if m > 0 else 1.0


def _image_noise(image: np.ndarray, fallback: float) -> float:
    from SodiumDIPLib.data.support import estimate_noise_sigma

    try:
        return float(estimate_noise_sigma(image))
    except InputError:
        return fallback


def _finish(problem: Problem, params: dict, out: np.ndarray, sigma: float, identity: bool, channels: int):
    """Noise-floor removal (magnitude images, rician model) and N4 bias correction for images."""
    from SodiumDIPLib.learned.network import noise_floor_free

    diagnostics = {}
    model = params["noise_model"] if params["noise_model"] != "auto" else ("rician" if (identity and problem.magnitude)
                                                                           else "gaussian")
    if model == "rician" and identity:
        out = noise_floor_free(torch.from_numpy(out), sigma, channels).numpy()
        diagnostics = {"fidelity": "rician", "noise_sigma": sigma, "n_channels": channels}
    bias = None
    if identity and params["bias_correction"] == "n4":  # k-space: the image keeps b (scored as b x there)
        bias = n4_bias_field(np.asarray(problem.initial, np.float32), problem.support, spacing=problem.spacing)
        out = out / bias
    return out.astype(np.float32), bias, diagnostics


def _psnr(x: np.ndarray, ref: np.ndarray, mask: Optional[np.ndarray]) -> float:
    """Monitoring PSNR against a known reference (metrics.quality.psnr; nan where undefined)."""
    from SodiumDIPLib.metrics.quality import psnr

    try:
        return psnr(x, ref, mask)
    except InputError:
        return float("nan")


register(Method(name="pnp", description=DESCRIPTION, run=run_pnp, presets=PRESETS, supports_kspace=True,
                needs_proton=False))
