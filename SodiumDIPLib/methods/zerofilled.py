"""Floor baselines for k-space reconstruction: zero-filled (Cartesian) and gridding (radial).

zero-filled: sum_c conj(S_c) F^H (mask y_c) / sum_c |S_c|^2 (the sensitivity-weighted coil combination of the
zero-filled coil images); gridding: the same with the density-compensated NUFFT adjoint. The magnitude is
returned. For the image-domain identity operator (denoising) both return the input unchanged.
"""

from __future__ import annotations

import numpy as np
import torch

from SodiumDIPLib.methods.base import Method, MethodResult, Problem, RunContext, register


def _run(problem: Problem, params: dict, ctx: RunContext) -> MethodResult:
    op = problem.operator
    y = problem.measurement
    if op.is_identity:
        image = y.detach().cpu().numpy() if isinstance(y, torch.Tensor) else np.asarray(y)
        return MethodResult(image=np.abs(image).astype(np.float32), params=dict(params))
    y = y if isinstance(y, torch.Tensor) else torch.as_tensor(np.asarray(y))
    with torch.no_grad():
        if hasattr(op, "zero_filled"):
            x = op.zero_filled(y)
        else:  # any other operator: the plain adjoint
            x = op.adjoint(y)
    ctx.report(1)
    return MethodResult(image=np.abs(x.detach().cpu().numpy()).astype(np.float32), iterations=1,
                        params=dict(params))


_NO_PARAMS = {"fast": {}, "balanced": {}, "quality": {}}

register(Method(name="zero-filled", description="Zero-filled inverse FFT, sensitivity-weighted coil combination "
                "(floor baseline for Cartesian k-space)", run=_run, presets=dict(_NO_PARAMS), supports_kspace=True))
register(Method(name="gridding", description="Density-compensated NUFFT adjoint (gridding), coil-combined "
                "(floor baseline for radial k-space)", run=_run, presets=dict(_NO_PARAMS), supports_kspace=True))
