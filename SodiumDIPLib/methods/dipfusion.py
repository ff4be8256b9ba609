"""``dipfusion``: DIP + fused proton/sodium directional TV + gradient consistency + joint bias field.

    stage 1 (classical pilot):  x_p = fused dTV of y (``run_fused_dtv``: dTV whose direction field fuses the
                                proton structure with the sodium structure of a first dTV pass)
    stage 2 (DIP):              min_theta,c  D(b x, y) + (w_dtv dTV_xi(x) + w_gc GC(x)) / sigma + w_bias |log b - log b0|^2
                                x = x_p + f_theta(z)  (residual: f = 0 at the start),  b = b0 exp(B c)
    safeguard:                  the DIP iterate is returned only when it beats x_p on held-out voxels; else x_p

The loop is shared with plain DIP (``dip.loop.run_dip``); this module fixes the parameters and offers the
classical pilots. Every parameter is declared (type, range, unit, doc) in ``SodiumDIPLib.params``; the groups:

network     channels, skip_channels, input_channels, input_scale, reg_noise_std, upsample, pad, norm, output,
            output_init, proton_input, pilot_input, precision
optimiser   residual, iterations (maximum), lr, lr_schedule, lr_min_factor, ema
fidelity    fidelity, n_channels
prior       weight_dtv (kspace_weight_dtv for k-space data), gamma, eps, eta_h, eta_na, w_h, w_na, fusion,
            sodium_guide, refresh_every, weight_gc, gc_sigma_vox
pilot       pilot ("smooth", "tv", "dtv", "fused-dtv"), pilot_sigma_mm
bias field  bias_degree, bias_lr, weight_bias, bias_init, bias_classes, bias_bins, bias_select
safeguard   holdout_fraction, holdout_margin, holdout_every, holdout_patience;
            MethodResult.diagnostics["returned_stage"] says "pilot" or "dip"
stopping    stopping ("fixed", "wmv", "discrepancy"), stop_window, stop_patience, stop_tau, stop_min_iterations

Why each preset value is what it is (with the measurements): docs/method.md.
"""

from __future__ import annotations

import numpy as np

from SodiumDIPLib.dip.loop import run_dip
from SodiumDIPLib.methods.base import Method, register

COMMON = dict(
    channels="16,32,64", skip_channels="4,4,4", input_channels=8, input_scale=1.0, output_init=True, reg_noise_std=0.03,
    upsample="linear", pad="reflect", norm="batch", output="softplus", proton_input=True, pilot_input=False, precision="bf16",
    iterations=300, lr=0.01, lr_schedule="cosine", lr_min_factor=0.1, ema=0.95,
    fidelity="auto", n_channels=0,
    weight_dtv=0.3, kspace_weight_dtv=0.02, gamma=0.95, eps=0.01, eta_h=0.05, eta_na=0.1, w_h=1.0, w_na=1.0, fusion="tensor",
    sodium_guide="output", refresh_every=25, pilot="smooth", pilot_sigma_mm=6.0,
    weight_gc=0.1, gc_sigma_vox=1.0,
    bias_degree=3, bias_select="always", bias_lr=0.01, weight_bias=0.0, bias_init="none", bias_classes=4, bias_bins=8,
    residual=False, holdout_fraction=0.0, holdout_margin=2.0, holdout_every=10, holdout_patience=0, stopping="fixed", stop_window=30, stop_patience=60, stop_tau=1.0, stop_min_iterations=50,
)

# The presets: start at the fused dTV pilot exactly (residual), joint bias field only where the pilot's N4
# finds a receive bias, seeded by the tissue-class regression on the proton image and held near it by a ridge;
# no proton input channel (the proton acts through the fused prior only, against proton leakage); Gaussian
# fidelity; the held-out safeguard. Each choice and its numbers: docs/method.md.
FUSION = dict(COMMON, pilot="fused-dtv", holdout_patience=60, residual=True, bias_init="proton", weight_bias=1000.0, pilot_input=True,
              proton_input=False, lr=0.005, fidelity="gaussian", w_h=0.25, gamma=0.9,
              holdout_fraction=0.1, bias_select="auto")

PRESETS = {
    "fast": dict(FUSION, iterations=200),
    "balanced": dict(FUSION, iterations=400),
    "quality": dict(FUSION, channels="32,64,64,128", skip_channels="4,4,4,4", iterations=800,
                    precision="fp32"),
}


# The fused dTV pilot's structure: the proton field at half the weight of the sodium field of a first dTV pass,
# sodium edge threshold 0.1 (measured on the tuning split of the suite: docs/method.md).
FUSED_PILOT = dict(w_h=0.5, w_na=1.0, eta_na=0.1)


def run_fused_dtv(problem, params, ctx):
    """Fused directional TV: dTV whose direction field fuses the proton structure with the sodium structure.

        pass 1: x1 = argmin 0.5 |A x - y|^2 + lam |P_xi_H grad x|          (proton-guided dTV, SURE weight)
        pass 2: x2 = argmin 0.5 |A x - y|^2 + lam |P_xi grad x|,  xi = fuse(xi_H, xi_Na(x1); w_h, w_na)

    xi_Na = grad s / sqrt(|grad s|^2 + eta_na^2), s = x1 normalised to its 99.9th percentile in the support;
    the fusion is the joint structure tensor's leading direction (priors.guidance.fuse_direction_fields), so an
    edge of only one contrast (a sodium-only lesion) keeps its full strength. ``params``: dtv's parameters plus
    w_h, w_na, eta_na. Returns pass 2's MethodResult (pass 1's result if it was cancelled)."""
    from SodiumDIPLib.priors.guidance import direction_field, fuse_direction_fields, normalise_guide

    from .dtv import proton_direction_field
    from SodiumDIPLib.params import validate as validate_params
    from SodiumDIPLib.problem import relative_spacing
    from SodiumDIPLib.solvers.variational import solve_variational

    dtv_params = validate_params("dtv", {k: v for k, v in params.items() if k not in FUSED_PILOT})
    gamma = float(params["gamma"])
    xi_h = proton_direction_field(problem, float(params["eta"]), float(params["guide_smoothing_vox"]), ctx.device)
    first = solve_variational(problem, dtv_params, ctx, xi=xi_h, gamma=gamma, extras={})
    if first.stop_rule == "cancelled" or ctx.cancelled():
        return first
    sodium = normalise_guide(np.asarray(first.image, np.float32), 99.9, problem.support, device=ctx.device)
    xi_na = direction_field(sodium, float(params["eta_na"]), relative_spacing(problem))
    xi = fuse_direction_fields(xi_h, xi_na, float(params["w_h"]), float(params["w_na"]), "tensor")
    # same data, so pass 1's receive-bias decision holds: no second N4 run
    return solve_variational(problem, dtv_params, ctx, xi=xi, gamma=gamma, extras={},
                             receive=(first.bias_field, first.diagnostics))


def classical_pilots() -> dict:
    """The classical pilots a DIP run may start from: name -> (run function, fast-preset parameters). Passed to
    the fit loop directly (no registry look-up); the loop runs them under the parent's progress and cancel."""
    from .dtv import PRESETS as DTV_PRESETS
    from .dtv import run_dtv
    from .tv import PRESETS as TV_PRESETS
    from .tv import run_tv

    return {"tv": (run_tv, TV_PRESETS["fast"]), "dtv": (run_dtv, DTV_PRESETS["fast"]),
            "fused-dtv": (run_fused_dtv, dict(DTV_PRESETS["fast"], **FUSED_PILOT))}


def run(problem, params, ctx):
    return run_dip(problem, params, ctx, "dipfusion", pilots=classical_pilots())


register(Method(
    name="dipfusion",
    description="DIP-Fusion: deep image prior with fused proton+sodium directional TV, gradient consistency, "
                "joint bias-field correction and a noise-floor-aware fidelity",
    run=run, presets=PRESETS, supports_kspace=True, needs_proton=True))
