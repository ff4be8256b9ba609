"""`bm4d`: BM4D collaborative filtering (Maggioni et al. 2013) via the optional ``bm4d`` package.

Image denoising only (no k-space operator), no anatomical guidance. sigma = Problem.noise_sigma (estimated
from the data when unknown) times ``sigma_scale`` (default 1, the noise level itself; how other values fare:
docs/measurements.md). Presets: fast = the low-complexity profile ("lc") with hard thresholding only,
balanced = "lc" with both stages, quality = the normal profile ("np"), both stages.
The ``bm4d`` package has a non-commercial licence: it is an optional extra and never required.
Receive bias: ``bias_correction="auto"`` (default) is "n4" where N4 finds a receive bias in the data and "none"
where it does not (``physics.bias.receive_bias``). ``bias_correction="n4"`` divides the image by an N4 bias estimate
(mean log b = 0 on the support) before filtering and returns b as the bias field, as ``tv`` does. Rician bias: not corrected.
"""

from __future__ import annotations

import importlib.util

import numpy as np

from SodiumDIPLib.errors import Cancelled, InputError
from SodiumDIPLib.methods.base import Method, MethodResult, Problem, RunContext, register
from SodiumDIPLib.physics.bias import receive_bias
from SodiumDIPLib.problem import noise_sigma_of

DESCRIPTION = "BM4D collaborative filtering (optional 'bm4d' package; images only, no guidance)"

PRESETS = {
    "fast": dict(profile="lc", stages="hard", sigma_scale=1.0, bias_correction="auto"),
    "balanced": dict(profile="lc", stages="all", sigma_scale=1.0, bias_correction="auto"),
    "quality": dict(profile="np", stages="all", sigma_scale=1.0, bias_correction="auto"),
}


def _availability():
    if importlib.util.find_spec("bm4d") is None:
        return "the optional package 'bm4d' is not installed (pip install bm4d; non-commercial licence)"
    return None


def run_bm4d(problem: Problem, params: dict, ctx: RunContext) -> MethodResult:
    import bm4d

    if not getattr(problem.operator, "is_identity", False):
        raise InputError("bm4d works on images only; it cannot reconstruct from k-space")
    if params["profile"] not in ("lc", "np", "refilter"):
        raise InputError(f"bm4d profile must be 'lc', 'np' or 'refilter', got {params['profile']!r}")
    if params["stages"] not in ("hard", "all"):
        raise InputError(f"bm4d stages must be 'hard' or 'all', got {params['stages']!r}")
    if not (params["sigma_scale"] > 0):
        raise InputError(f"sigma_scale must be > 0, got {params['sigma_scale']}")
    y = problem.measurement
    y = y.detach().cpu().numpy() if hasattr(y, "detach") else np.asarray(y)
    y = np.asarray(np.abs(y) if np.iscomplexobj(y) else y, dtype=np.float32)
    sigma = noise_sigma_of(problem) * float(params["sigma_scale"])
    bias, bias_diag = receive_bias(y, problem.support, problem.spacing, params.get("bias_correction", "none"))
    if bias is not None:
        y = y / bias  # noise becomes sigma / b: mildly non-uniform (b within ~[0.7, 1.4])
    try:
        ctx.check()
    except Cancelled:
        return MethodResult(image=y.copy(), iterations=0, stop_rule="cancelled", params=dict(params))
    ctx.report(0)
    stage = bm4d.BM4DStages.HARD_THRESHOLDING if params["stages"] == "hard" else bm4d.BM4DStages.ALL_STAGES
    # a 2D slice goes in as (Y, X, 1): bm4d then uses its 2D (BM3D-like, 8x8x1 block) profile
    z = y[:, :, None] if y.ndim == 2 else y
    profile = params["profile"]
    if profile == "lc":
        from bm4d.profiles import BM4DProfile2D, BM4DProfileLC

        profile = BM4DProfile2D() if y.ndim == 2 else BM4DProfileLC()
    out = np.asarray(bm4d.bm4d(z, sigma, profile=profile, stage_arg=stage), dtype=np.float32)
    out = out.reshape(z.shape)
    out = out[:, :, 0] if y.ndim == 2 else out
    ctx.report(1, loss=float(0.5 * np.sum((out - y) ** 2)), image=lambda: out)
    result = MethodResult(image=out, iterations=1, stop_rule="single pass", stop_iteration=1, bias_field=bias,
                          params=dict(params))
    result.diagnostics = bias_diag
    return result


register(Method(name="bm4d", description=DESCRIPTION, run=run_bm4d, presets=PRESETS, supports_kspace=False,
                needs_proton=False, availability=_availability))
