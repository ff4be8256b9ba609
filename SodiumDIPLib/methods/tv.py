"""`tv`: isotropic total-variation reconstruction by PDHG (solvers.variational, the steps there).

    min_x 0.5 |W^1/2 (A (b x) - y)|^2 + lam TV(x),  x >= 0,  lam = lambda_sigma * sigma * |A|

sigma = Problem.noise_sigma (estimated from the data when unknown), |A| = 1 for denoising; W: density
compensation weights of non-Cartesian (radial) data, W = I otherwise; TV on the relative spacing h / min(h).
``lambda_select="sure"`` (default) chooses lambda_sigma per image around the preset's value: Monte-Carlo SURE
on images, Monte-Carlo GCV on Cartesian k-space (``kspace_lambda_sigma``); radial data use the value as given;
``"fixed"`` uses it as given everywhere. On k-space data ``bregman_steps`` Bregman iterations at
``bregman_weight_factor`` times the chosen weight follow (y_k+1 = y_k + (y - A b x_k)); images ignore them.

Receive bias b: ``bias_correction="auto"`` (default) runs N4 and keeps its field only where the data carry one
(physics.bias.receive_bias; the decision in MethodResult.diagnostics["bias_decision"]); "n4" always estimates b
(mean log b = 0 over the support) from the initial image and fits y = A(b x) + noise, so x is bias-corrected
and b is MethodResult.bias_field (the contract DIP-Fusion keeps); "none": b = 1, no bias field.
Rician bias of magnitude images (E|y| > |x| at low SNR) is not corrected. How the presets' weights were
chosen, with the measurements: docs/variational.md.
"""

from __future__ import annotations

from SodiumDIPLib.params import validate as validate_params
from SodiumDIPLib.solvers.variational import solve_variational
from SodiumDIPLib.methods.base import Method, MethodResult, Problem, RunContext, register

DESCRIPTION = "Isotropic total variation (PDHG), regularisation weight from the noise level"

# lambda_sigma / kspace_lambda_sigma: centres of the SURE / GCV searches (or the fixed weights); how they were
# tuned: docs/variational.md
_COMMON = dict(lambda_sigma=0.4, kspace_lambda_sigma=0.15, lambda_select="sure", nonneg=True, bias_correction="auto",
               bregman_steps=1, bregman_weight_factor=3.0)
PRESETS = {
    "fast": dict(_COMMON, iterations=60, tol=1e-3),
    "balanced": dict(_COMMON, iterations=200, tol=3e-4),
    "quality": dict(_COMMON, iterations=800, tol=1e-5),
}


def run_tv(problem: Problem, params: dict, ctx: RunContext) -> MethodResult:
    return solve_variational(problem, validate_params("tv", params), ctx)


register(Method(name="tv", description=DESCRIPTION, run=run_tv, presets=PRESETS, supports_kspace=True,
                needs_proton=False))
