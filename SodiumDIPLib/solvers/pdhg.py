"""Variational solvers: (directional) TV-regularised least squares by primal-dual hybrid gradient (PDHG).

    min_x  0.5 ||A x - y||^2 + lam * sum_i |P_i grad x_i|  (+ indicator of x >= 0)

with P_i = I - gamma xi_i xi_i^T (xi = None: isotropic TV), for any LinearOperator A mapping a real image to
real or complex data (complex data are treated as real vectors of twice the length: real inner products,
so the adjoint used is Re(A^H r)).

- A = identity (denoising): accelerated PDHG (Chambolle & Pock 2011, Alg. 2) with the data term in the primal
  prox (strongly convex, modulus 1), K = P grad. O(1/k^2).
- general A: PDHG with K = [A / |A| ; P grad / |P grad|] (both blocks normalised by their norms, so one step
  size pair fits both), data term and TV both dualised; no inversion of A^H A needed.
Operator norms: |grad|^2 <= 4 sum_k 1/h_k^2 (analytic bound; |P| <= 1), |A| by power iteration on Re(A^H A).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable, Optional, Sequence

import torch

from SodiumDIPLib.errors import InputError
from SodiumDIPLib.priors.guidance import apply_projection, divergence, gradient
from SodiumDIPLib.physics.base import Diag, LinearOperator, RealImages

__all__ = ["operator_norm", "gradient_norm_bound", "tv_objective", "pdhg_tv", "SolverResult"]


def _real(x: torch.Tensor) -> torch.Tensor:
    return x.real if x.is_complex() else x


def _sqnorm(r: torch.Tensor) -> torch.Tensor:
    return (r.abs() ** 2).sum() if r.is_complex() else (r * r).sum()


def operator_norm(op: LinearOperator, shape: Sequence[int], n_iter: int = 30, device=None,
                  dtype=torch.float32, seed: int = 0) -> float:
    """``op.norm()`` on real images of ``shape`` (an upper estimate of |A|); InputError when A maps everything
    to zero."""
    try:
        return op.norm(n_iter=n_iter, seed=seed, device=device, dtype=dtype, shape=shape)
    except ValueError:
        raise InputError("the forward operator maps every image to zero") from None


def gradient_norm_bound(ndim: int, spacing: Optional[Sequence[float]] = None) -> float:
    """Upper bound of |grad| (forward differences): sqrt(4 sum_k 1/h_k^2)."""
    h = [1.0] * ndim if spacing is None else [float(s) for s in spacing]
    return math.sqrt(4.0 * sum(1.0 / (s * s) for s in h))


def tv_objective(x: torch.Tensor, y: torch.Tensor, op: Optional[LinearOperator], lam: float,
                 xi: Optional[torch.Tensor] = None, gamma: float = 0.0,
                 spacing: Optional[Sequence[float]] = None, tv_of: Optional[torch.Tensor] = None) -> float:
    """0.5 |A x - y|^2 + lam * sum |P grad x| (the exact, non-smoothed objective); ``tv_of`` replaces x in
    the TV term when given (used when x is a gained image)."""
    with torch.no_grad():
        r = (x if op is None or op.is_identity else op.forward(x)) - y
        g = gradient(x if tv_of is None else tv_of, spacing)
        if xi is not None and gamma > 0:
            g = apply_projection(g, xi, gamma)
        return float(0.5 * _sqnorm(r) + lam * torch.sqrt((g * g).sum(0)).sum())


@dataclass
class SolverResult:
    x: torch.Tensor
    iterations: int
    converged: bool
    objective: list = field(default_factory=list)  # (iteration, objective) at every report


def pdhg_tv(y: torch.Tensor, lam: float, op: Optional[LinearOperator] = None, xi: Optional[torch.Tensor] = None,
            gamma: float = 0.95, spacing: Optional[Sequence[float]] = None, nonneg: bool = True,
            n_iter: int = 300, tol: float = 1e-4, x0: Optional[torch.Tensor] = None,
            image_shape: Optional[Sequence[int]] = None, op_norm: Optional[float] = None,
            report_every: int = 10, callback: Optional[Callable[[int, torch.Tensor, float], None]] = None,
            check: Optional[Callable[[], None]] = None, gain: Optional[torch.Tensor] = None) -> SolverResult:
    """Solve min_x 0.5|A (g x) - y|^2 + lam |P grad x|_{2,1} (+ x >= 0) by PDHG.

    gain: optional positive per-voxel multiplicative field g (e.g. a receive bias), so that x is the
    bias-free image (default: none).
    y: data (image for identity A, else A's output, real or complex). lam >= 0: regularisation weight (data
    units x voxel size when ``spacing`` is given). op: LinearOperator (None or identity: denoising).
    xi, gamma: direction field (d, *shape) and strength for directional TV (xi None or gamma 0: isotropic TV).
    spacing: voxel size per array axis (pass relative spacing, e.g. h / min(h), to keep lam's meaning).
    nonneg: constrain x >= 0 (sodium concentrations are non-negative). n_iter: max iterations; tol: stop when
    the relative change of x over ``report_every`` iterations falls below tol. x0: start (default A^H y or y).
    callback(iteration, x, objective) every ``report_every`` iterations; check() (every iteration) may raise Cancelled -- it is
    NOT caught here (the caller keeps ``x`` via the callback or catches and uses its own estimate).
    Returns SolverResult(x, iterations, converged, objective history).
    """
    if lam < 0:
        raise InputError(f"lam must be >= 0, got {lam}")
    identity = op is None or getattr(op, "is_identity", False)
    if identity:
        shape = tuple(y.shape)
        y = _real(y)
    else:
        shape = tuple(image_shape if image_shape is not None else op.ishape)
    d = len(shape)
    if d not in (2, 3):
        raise InputError(f"pdhg_tv needs a 2D or 3D image, got shape {shape}")
    if xi is not None and tuple(xi.shape) != (d,) + shape:
        raise InputError(f"direction field shape {tuple(xi.shape)} does not match image shape {shape}")
    rdtype = y.real.dtype if y.is_complex() else y.dtype
    device = y.device
    if xi is not None:
        xi = xi.to(device=device, dtype=rdtype)
        if gamma == 0:
            xi = None

    def K_grad(x):
        g = gradient(x, spacing)
        return apply_projection(g, xi, gamma) if xi is not None else g

    def K_grad_T(p):
        return -divergence(apply_projection(p, xi, gamma) if xi is not None else p, spacing)

    def project_dual(p, radius):  # onto {|p_i| <= radius}
        n = torch.sqrt((p * p).sum(0, keepdim=True))
        return p / torch.clamp(n / max(radius, 1e-30), min=1.0)

    def clamp(x):
        return torch.clamp(x, min=0.0) if nonneg else x

    if gain is not None:
        gain = gain.to(device=device, dtype=rdtype)
        if tuple(gain.shape) != shape or not bool((gain > 0).all()):
            raise InputError(f"gain must be a positive field of shape {shape}")
    Ld = gradient_norm_bound(d, spacing)
    history = []
    with torch.no_grad():
        if x0 is not None:
            x = x0.detach().to(device=device, dtype=rdtype).clone()
        else:
            x = y.clone() if identity else _real(op.adjoint(y)).to(rdtype)
        x = clamp(x)
        x_bar = x.clone()
        p = torch.zeros((d,) + shape, dtype=rdtype, device=device)
        converged = False
        it = 0
        last = {"x": x.clone()}

        def checkpoint(it, x, objective) -> bool:
            """Every ``report_every`` iterations: objective, callback; True once converged."""
            change = float(torch.linalg.vector_norm(x - last["x"]) / (torch.linalg.vector_norm(x) + 1e-12))
            last["x"] = x.clone()
            obj = objective()
            history.append((it, obj))
            if callback is not None:
                callback(it, x, obj)
            return change < tol

        if identity:
            tau = 1.0 / Ld
            sigma = 1.0 / Ld  # tau sigma L^2 = 1
            g2 = 1.0 if gain is None else gain * gain
            gy = y if gain is None else gain * y
            mu = 1.0 if gain is None else float(g2.min())  # strong convexity of 0.5|g x - y|^2
            for it in range(1, n_iter + 1):
                if check is not None:  # every iteration: a cancel is answered within one iteration
                    check()
                p = project_dual(p + sigma * K_grad(x_bar), lam)
                x_old = x
                x = clamp((x - tau * K_grad_T(p) + tau * gy) / (1.0 + tau * g2))
                theta = 1.0 / math.sqrt(1.0 + 2.0 * mu * tau)
                tau, sigma = theta * tau, sigma / theta
                x_bar = x + theta * (x - x_old)
                if (it % report_every == 0 or it == n_iter) and checkpoint(
                        it, x, lambda: tv_objective(x if gain is None else gain * x, y, None, lam, xi, gamma, spacing,
                                                    tv_of=x)):
                    converged = True
                    break
        else:
            if gain is not None:
                op = op @ Diag(gain) @ RealImages(shape)  # A diag(g) on real images: x is bias-free
                op_norm = None
            La = op_norm if op_norm is not None else operator_norm(op, shape, device=device, dtype=rdtype)
            # K = [A/La ; Kg/Ld], |K| <= sqrt(2); F1(z) = 0.5|La z - y|^2, F2(w) = lam Ld |w|_{2,1}
            tau = sigma = 0.99 / math.sqrt(2.0)
            q = torch.zeros_like(y)
            for it in range(1, n_iter + 1):
                if check is not None:
                    check()
                Ax = op.forward(x_bar)
                q = (q + sigma * Ax / La - sigma * y / La) / (1.0 + sigma / (La * La))
                p = project_dual(p + sigma * K_grad(x_bar) / Ld, lam * Ld)
                x_old = x
                x = clamp(x - tau * (_real(op.adjoint(q)).to(rdtype) / La + K_grad_T(p) / Ld))
                x_bar = 2.0 * x - x_old
                if (it % report_every == 0 or it == n_iter) and checkpoint(
                        it, x, lambda: tv_objective(x, y, op, lam, xi, gamma, spacing)):
                    converged = True
                    break
    return SolverResult(x=x, iterations=it, converged=converged, objective=history)
