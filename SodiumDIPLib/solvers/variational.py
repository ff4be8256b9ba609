"""(Directional) total-variation reconstruction of a Problem, as a composition of named steps.

    min_x  0.5 |W^1/2 (A (b x) - y)|^2 + lam sum_i |P_i grad x_i|,  x >= 0,  lam = lambda_sigma * sigma * |A|

1. ``data_term``      y, A, sigma and |A| on the device; non-Cartesian data are density weighted (W^1/2,
                      physics.density), which also turns sigma into the gridded image's noise level.
2. ``receive_gain``   b, the receive bias (physics.bias.receive_bias: N4 on the initial image, or none).
3. ``TVPrior``        P_i = I - gamma xi_i xi_i^T (xi None: isotropic TV), relative voxel spacing, x >= 0.
4. ``select_weight``  lambda_sigma by SURE (images) or GCV (Cartesian k-space) around the preset's value
                      (solvers.weight_selection), or the value as given.
5. ``bregman_solve``  PDHG (solvers.pdhg) for the chosen weight; on k-space data ``bregman_steps`` Bregman
                      iterations (Osher et al. 2005) at ``bregman_weight_factor`` times it:
                      y_k+1 = y_k + (y - A b x_k), x_k+1 = the solution for y_k+1.
6. ``_result``        the MethodResult: image x (normalised units), b as the bias field, the history.

Units: images in the Problem's normalised intensity; sigma per real channel in the same units; lam in data
units x (relative) voxel size.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np
import torch

from SodiumDIPLib.errors import Cancelled, InputError
from SodiumDIPLib.metrics.quality import psnr
from SodiumDIPLib.physics.base import LinearOperator
from SodiumDIPLib.physics.bias import receive_bias
from SodiumDIPLib.physics.density import density_weighted
from SodiumDIPLib.problem import MethodResult, Problem, RunContext, noise_sigma_of, relative_spacing
from SodiumDIPLib.solvers.pdhg import operator_norm, pdhg_tv
from SodiumDIPLib.solvers.weight_selection import gcv_select, sure_select

#: Iterations of each solve inside the weight search (at most the preset's count).
SEARCH_ITERATIONS = 100


@dataclass
class DataTerm:
    """0.5 |A (g x) - y|^2 on the device: ``y`` already density weighted where ``weighted`` (A then W^1/2 A).

    identity: denoising (A = I, ``op`` unused); sigma: noise level of y per real channel; norm: |A| (1 for
    identity); gain: the receive bias g (None: no bias), real and positive, image-shaped."""

    y: torch.Tensor
    op: LinearOperator
    identity: bool
    sigma: float
    norm: float
    weighted: bool
    image_shape: tuple
    gain: Optional[torch.Tensor] = None

    def predict(self, x: torch.Tensor) -> torch.Tensor:
        """The data model of an image: A (g x)."""
        return self.op.forward(x if self.gain is None else self.gain * x)

    @property
    def real_y(self) -> torch.Tensor:
        return self.y.real if self.y.is_complex() else self.y


@dataclass
class TVPrior:
    """lam sum_i |P_i grad x_i| with P_i = I - gamma xi_i xi_i^T; ``spacing`` relative (h / min h)."""

    xi: Optional[torch.Tensor] = None
    gamma: float = 0.0
    spacing: Optional[tuple] = None
    nonneg: bool = True


def data_term(problem: Problem, device) -> DataTerm:
    """Step 1: y, A, sigma, |A| on ``device``; non-Cartesian data density weighted (W^1/2 y, W^1/2 A)."""
    op = problem.operator
    identity = getattr(op, "is_identity", False)
    y = problem.measurement
    y = y.to(device) if isinstance(y, torch.Tensor) else torch.as_tensor(np.asarray(y)).to(device)
    if not y.is_complex():
        y = y.float()
    sigma = noise_sigma_of(problem)
    weighted = False
    if not identity:
        op, y, sigma, weighted = density_weighted(op.to(device), y, sigma, problem.image_shape, device)
    norm = 1.0 if identity else operator_norm(op, problem.image_shape, device=device)
    return DataTerm(y, op, identity, sigma, norm, weighted, tuple(problem.image_shape))


def receive_gain(problem: Problem, mode: str, device) -> tuple:
    """Step 2: (b as a numpy array or None, the bias decision's diagnostics, b on ``device`` or None).

    b is estimated from the initial image (physics.bias.receive_bias, ``mode`` 'auto' / 'n4' / 'none')."""
    bias, diagnostics = receive_bias(np.asarray(problem.initial, np.float32), problem.support, problem.spacing, mode)
    return bias, diagnostics, None if bias is None else torch.from_numpy(bias).to(device)


def starting_image(problem: Problem, data: DataTerm) -> Optional[torch.Tensor]:
    """The solver's start: y / g for denoising, the Problem's initial image for k-space (None: A^H y)."""
    if data.identity:
        x0 = data.real_y
        return x0 if data.gain is None else x0 / data.gain
    if problem.initial is not None and tuple(np.shape(problem.initial)) == tuple(problem.image_shape):
        return torch.as_tensor(np.asarray(problem.initial, np.float32)).to(data.y.device)
    return None


def solve_tv(data: DataTerm, prior: TVPrior, target: torch.Tensor, lam: float, n_iter: int, tol: float,
             x0: Optional[torch.Tensor], report_every: int, callback=None, check=None):
    """One PDHG solve of min_x 0.5 |A (g x) - target|^2 + lam TV_P(x) (solvers.pdhg.pdhg_tv)."""
    return pdhg_tv(target, lam, op=None if data.identity else data.op, xi=prior.xi, gamma=prior.gamma,
                   spacing=prior.spacing, nonneg=prior.nonneg, n_iter=n_iter, tol=tol, x0=x0,
                   image_shape=data.image_shape, op_norm=None if data.identity else data.norm,
                   report_every=report_every, callback=callback, gain=data.gain, check=check)


def select_weight(data: DataTerm, prior: TVPrior, params: dict, centre: float, x0: Optional[torch.Tensor],
                  mask: Optional[np.ndarray], ctx: RunContext) -> tuple:
    """Step 4: (lambda_sigma, {"rule": "sure" | "gcv", "curve": [(lambda_sigma, score), ...]} or None).

    Searches only when params["lambda_select"] is "sure" and ``centre`` > 0: SURE on images (needs sigma);
    GCV on Cartesian k-space (the k-space periphery's sigma is biased; GCV needs none). Radial (density
    weighted) data keep ``centre``: their 12 NUFFT solves cost far more than the reconstruction."""
    if params.get("lambda_select", "fixed") != "sure" or not centre > 0 or data.weighted:
        return centre, None
    n_iter = min(int(params["iterations"]), SEARCH_ITERATIONS)

    def progress(rule):
        def report(ls, value):
            ctx.report(0, loss=value, lambda_sigma=ls, **{rule: value})
            ctx.check()
        return report

    if data.identity:
        def denoise(ls, v):  # E[v] as the gained image g x(v); a cancel is answered inside each solve
            xv = solve_tv(data, prior, v, ls * data.sigma, n_iter, 0.0, v if data.gain is None else v / data.gain,
                          n_iter, check=ctx.check).x
            return xv if data.gain is None else data.gain * xv

        lam_sigma, curve = sure_select(data.real_y, data.sigma, denoise, mask, ctx.generator(), centre,
                                       progress("sure"))
        return lam_sigma, {"rule": "sure", "curve": curve}

    def predict(ls, v):
        xv = solve_tv(data, prior, v, ls * data.sigma * data.norm, n_iter, 0.0, x0, n_iter, check=ctx.check).x
        return data.predict(xv)

    lam_sigma, curve = gcv_select(data.y, predict, ctx.generator(), centre, 0.01 * data.sigma, progress("gcv"))
    return lam_sigma, {"rule": "gcv", "curve": curve}


def bregman_solve(data: DataTerm, prior: TVPrior, lam: float, steps: int, n_iter: int, tol: float,
                  x0: Optional[torch.Tensor], monitor: "Monitor") -> tuple:
    """Step 5: ``steps`` + 1 solves, each from the last, adding the residual back to the data in between:
    y_k+1 = y_k + (y - A g x_k). Returns (x, total iterations, whether the last solve converged)."""
    target, x_start, offset = data.y, x0, 0
    for step in range(steps + 1):
        monitor.offset = offset
        res = solve_tv(data, prior, target, lam, n_iter, tol, x_start, 10, callback=monitor)
        offset += res.iterations
        if step < steps:
            with torch.no_grad():
                target = target + (data.y - data.predict(res.x))
            x_start = res.x
    return res.x, offset, res.converged


class Monitor:
    """The solver's callback: history entries (iteration, loss, PSNR against a monitoring reference), progress
    events and cancellation; keeps the latest iterate for a cancelled run. Iterations count on across
    Bregman steps (``offset``)."""

    def __init__(self, ctx: RunContext, reference: Optional[np.ndarray], mask: Optional[np.ndarray],
                 x0: Optional[torch.Tensor]):
        self.ctx, self.reference = ctx, reference
        self.mask = mask if mask is not None and mask.any() else None
        self.history, self.x, self.iteration, self.offset = [], x0, 0, 0

    def __call__(self, it: int, x: torch.Tensor, objective: float) -> None:
        it = it + self.offset
        self.x, self.iteration = x, it
        entry = {"iteration": int(it), "loss": float(objective)}
        if self.reference is not None:
            try:
                entry["psnr"] = psnr(x.cpu().numpy(), self.reference, self.mask)
            except InputError:  # a reference without signal: no PSNR
                pass
        self.history.append(entry)
        self.ctx.report(it, loss=entry["loss"], **({"psnr": entry["psnr"]} if "psnr" in entry else {}),
                        image=lambda x=x: x.detach().cpu().numpy().astype(np.float32))
        self.ctx.check()


def solve_variational(problem: Problem, params: dict, ctx: RunContext, xi: Optional[torch.Tensor] = None,
                      gamma: float = 0.0, extras: Optional[dict] = None,
                      receive: Optional[tuple] = None) -> MethodResult:
    """(Directional) TV reconstruction of ``problem`` (the module's steps 1-6) with progress and cancellation.

    params: iterations, tol, lambda_sigma (images) / kspace_lambda_sigma (k-space), lambda_select, nonneg,
    bias_correction, bregman_steps, bregman_weight_factor (SodiumDIPLib.params). xi, gamma: the direction
    field (d, *image_shape) and its strength (dTV); None / 0: isotropic TV. receive: (b or None, its
    diagnostics) already decided on this problem's data by an earlier pass (None: decided here). A cancel returns the latest
    iterate with stop_rule "cancelled" (re-raised when there is none yet)."""
    data = data_term(problem, ctx.device)
    lam_key = "lambda_sigma" if data.identity else "kspace_lambda_sigma"
    lam_sigma = float(params.get(lam_key, params["lambda_sigma"]))
    lam = lam_sigma * data.sigma * data.norm
    if receive is None:
        bias, bias_diag, data.gain = receive_gain(problem, params.get("bias_correction", "none"), ctx.device)
    else:
        bias, bias_diag = receive[0], dict(receive[1])
        data.gain = None if bias is None else torch.from_numpy(np.asarray(bias, np.float32)).to(ctx.device)
    x0 = starting_image(problem, data)
    prior = TVPrior(xi, gamma, relative_spacing(problem), bool(params.get("nonneg", True)))
    reference = None if problem.reference is None else np.asarray(problem.reference, np.float32)
    mask = None if problem.support is None else np.asarray(problem.support, bool)
    monitor = Monitor(ctx, reference, mask, x0)
    steps = 0 if data.identity else int(params.get("bregman_steps", 0))
    selected, lam_solve = None, None
    try:
        lam_sigma, selected = select_weight(data, prior, params, lam_sigma, x0, mask, ctx)
        lam = lam_sigma * data.sigma * data.norm
        lam_solve = lam * float(params.get("bregman_weight_factor", 1.0)) if steps > 0 else lam
        x, iterations, converged = bregman_solve(data, prior, lam_solve, steps, int(params["iterations"]),
                                                 float(params["tol"]), x0, monitor)
        stop_rule = "converged" if converged else "fixed"
    except Cancelled:
        x, iterations, stop_rule = monitor.x, monitor.iteration, "cancelled"
        if x is None:
            raise
    _annotate_history(monitor.history, lam, lam_sigma, lam_solve if steps > 0 else None, selected)
    result = MethodResult(image=x.detach().cpu().numpy().astype(np.float32), iterations=int(iterations),
                          stop_rule=stop_rule, stop_iteration=int(iterations), history=monitor.history,
                          bias_field=bias, extras=extras or {}, params=dict(params))
    result.diagnostics = bias_diag
    return result


def _annotate_history(history: list, lam: float, lam_sigma: float, bregman_lam: Optional[float],
                      selected: Optional[dict]) -> None:
    """Step 6: the weights used go in the history (params stay exactly the method's keys, for re-runs):
    lam and lambda_sigma on every entry, the Bregman solves' weight (None: no Bregman step, or cancelled during
    the weight search), the search rule, and its curve on the first entry."""
    for entry in history:
        entry.setdefault("lam", lam)
        entry.setdefault("lambda_sigma", lam_sigma)
        if bregman_lam is not None:
            entry.setdefault("bregman_lam", bregman_lam)
        if selected is not None:
            entry.setdefault("lambda_select", selected["rule"])
    if selected is not None and history:
        history[0][selected["rule"] + "_curve"] = selected["curve"]
