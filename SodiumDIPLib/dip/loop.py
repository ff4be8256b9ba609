"""The DIP fit loop shared by ``dip`` (plain) and ``dipfusion`` (guided, bias-corrected).

One objective, every term behind its own weight (weight 0 removes the term and its cost):

    L = D(A(b x), y)                                   Gaussian / Rician / noncentral-chi / k-space fidelity
      + (w_dtv * mean dTV_xi(x) + w_gc * GC(x)) / sigma fused directional TV, gradient consistency
      + w_bias * mean_support (log b - log b0)^2        keeps the bias field near its start

x = f_theta(z) or, with ``residual``, x = pilot + f_theta(z) (f = 0 at the start); b = exp(B c)
(``physics.bias.BiasField``). The data term is in noise units (0.5 |r/sigma|^2 for Gaussian) and the priors are
divided by sigma, so the weights mean the same at every noise level. A run composes named steps:
``prepare_data`` -> ``build_network`` -> the classical pilot stage (``dip.pilot``) -> ``Guides`` -> ``Objective``
-> ``fit`` (Adam, cosine schedule, EMA, stopping rule, held-out safeguard) -> ``assemble_result``.
The returned image is the bias-corrected EMA output at the iteration the stopping rule chose, or the pilot
itself when the safeguard (``dip.safeguard``) finds no held-out evidence that the DIP improves on it.
"""

from __future__ import annotations

import math
import time
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Optional

import numpy as np
import torch

from SodiumDIPLib.dip import fidelity as fid
from SodiumDIPLib.dip import stopping
from SodiumDIPLib.dip.networks import DIPNet, NetConfig, make_input
from SodiumDIPLib.dip.pilot import (CLASSICAL_PILOTS, PilotStage, decide_bias, run_pilot_stage, start_bias)
from SodiumDIPLib.dip.safeguard import measured_model
from SodiumDIPLib.errors import Cancelled, InputError
from SodiumDIPLib.metrics.quality import psnr
from SodiumDIPLib.params import validate as validate_params
from SodiumDIPLib.physics.bias import BiasField
from SodiumDIPLib.problem import MethodResult, Problem, RunContext, noise_sigma_of


class DeviceOutOfMemory(InputError, RuntimeError):
    """The accelerator ran out of memory; the message says what to do (CPU or a smaller preset)."""


def _guidance():
    from SodiumDIPLib.priors import guidance  # imported lazily so plain DIP never needs it

    return guidance


def run_dip(problem: Problem, params: dict, ctx: RunContext, method_name: str,
            pilots: dict | None = None) -> MethodResult:
    """Fit the DIP model described by ``params`` (see dipfusion.PRESETS for every key) to ``problem``.
    ``pilots``: the classical pilots the calling method offers, name -> (run function, fast parameters)."""
    params = validate_params(method_name, params)
    try:
        return _run(problem, params, ctx, method_name, pilots or {})
    except torch.cuda.OutOfMemoryError:
        raise DeviceOutOfMemory(
            f"{method_name}: the GPU ran out of memory for an image of shape {tuple(problem.image_shape)} "
            f"(network channels {params['channels']}); use --device cpu, the 'fast' preset or smaller "
            f"'channels'") from None


def _run(problem: Problem, params: dict, ctx: RunContext, method_name: str, pilots: dict) -> MethodResult:
    data = prepare_data(problem, params, ctx.device)
    gen = ctx.generator()  # network code and perturbations from the run's seed, global RNG untouched
    net, z, n_code = build_network(data, params, ctx.seed, gen)
    bias = BiasField(data.shape, data.support_np, int(params["bias_degree"]), tuple(data.spacing)).to(ctx.device) \
        if params["bias_degree"] > 0 else None

    stage = PilotStage()
    if params["pilot"] in CLASSICAL_PILOTS:
        guarded = (float(params["holdout_fraction"]) > 0 and data.identity and params["residual"]
                   and not torch.is_complex(data.y) and data.support_np.sum() >= 200)
        stage = run_pilot_stage(problem, params, ctx, pilots, method_name, data.initial, data.support_np,
                                data.sigma, guarded)
        if isinstance(stage, MethodResult):  # cancelled during the pilot
            return stage
    elif _needs_guides(params, data.identity) or params["pilot_input"] or params["residual"]:
        stage.start = _smooth_pilot(data, params, ctx.device)

    decision = "estimated (bias_select always)" if bias is not None else "off (bias_degree 0)"
    if bias is not None and params["bias_select"] == "auto":
        bias, decision = decide_bias(bias, problem, stage.result, data.identity)
    if bias is not None:
        stage.start = start_bias(bias, stage.start, stage.start_bias, params, problem, data.initial,
                                 data.support_np, data.identity, ctx.device)

    guides = Guides(data, params, stage.start) if _needs_guides(params, data.identity) else None
    if params["pilot_input"]:
        # the pilot as an input channel: the skips can pass it, the network learns what the data add to it
        start = stage.start
        z = torch.cat([z, (start / start.max().clamp_min(1e-6))[None, None].to(ctx.device)], dim=1)
    objective = Objective(data, params, bias, guides, stage)
    state = fit(data, params, ctx, net, z, n_code, gen, bias, stage, objective)
    return assemble_result(data, params, state, stage, bias, guides, decision)


# ---------------------------------------------------------------------------------------------- the data
@dataclass
class LoopData:
    """The problem as the loop sees it, on the device. sigma: the noise level of the fitted residual (the
    density-weighted one for radial data); kind / n_ch: the resolved fidelity and receive-channel count."""

    problem: Problem
    shape: tuple
    spacing: np.ndarray
    rel_spacing: tuple
    y: torch.Tensor
    op: object
    identity: bool
    support_np: np.ndarray
    support: torch.Tensor
    initial: np.ndarray
    sigma: float
    kind: str
    n_ch: int
    proton: Optional[torch.Tensor]


def prepare_data(problem: Problem, params: dict, device) -> LoopData:
    shape = tuple(int(n) for n in problem.image_shape)
    spacing = np.asarray(problem.spacing if problem.spacing else (1.0,) * len(shape), dtype=float)
    rel_spacing = tuple(float(s) for s in spacing / spacing.min())  # gradients per finest voxel
    y, op = problem.measurement.to(device), problem.operator.to(device)
    identity = op.is_identity
    support_np = np.ones(shape, bool) if problem.support is None else np.asarray(problem.support, bool)
    initial = np.abs(np.asarray(problem.initial, dtype=np.complex64 if np.iscomplexobj(problem.initial)
                                else np.float32)).astype(np.float32)
    if initial.shape != shape:
        raise InputError(f"initial image shape {initial.shape} does not match image shape {shape}")
    if identity or (problem.noise_sigma is not None and problem.noise_sigma > 0):
        sigma = noise_sigma_of(problem)
    else:  # k-space without a given level: the zero-filled image's background
        sigma = float(np.std(initial[~support_np])) or 0.05
    if not identity:  # radial data: the density-compensated residual, as in tv/dtv
        from SodiumDIPLib.physics.density import density_weighted

        op, y, sigma, _ = density_weighted(op, y, sigma, shape, device)
    kind, n_ch = _fidelity(params, problem, identity, initial, support_np, sigma)
    proton = None
    if problem.proton is not None:
        proton = _guidance().normalise_guide(np.asarray(problem.proton, np.float32), 99.9, support_np).to(device)
    return LoopData(problem, shape, spacing, rel_spacing, y, op, identity, support_np,
                    torch.from_numpy(support_np).to(device), initial, float(sigma), kind, n_ch, proton)


def _fidelity(params, problem, identity, initial, support_np, sigma):
    """The data term's kind and receive-channel count ("auto" and 0 resolved from the data)."""
    kind = fid.resolve_kind(params["fidelity"], problem.magnitude, identity, problem.n_channels)
    n_ch = int(params["n_channels"]) or 0
    if n_ch <= 0:
        n_ch = problem.n_channels
        if identity and problem.magnitude and kind in ("chi", "rician", "corrected_ls"):
            n_ch = max(n_ch, fid.estimate_channels(initial, support_np, sigma))
    if kind == "rician" and n_ch > 1:
        kind = "chi"
    return kind, int(n_ch)


def _smooth_pilot(data: LoopData, params: dict, device) -> torch.Tensor:
    sigma_mm = float(params["pilot_sigma_mm"])
    if sigma_mm <= 0:
        return torch.from_numpy(data.initial).to(device)
    return _guidance().pilot_estimate(data.initial, sigma_mm=sigma_mm, spacing=tuple(data.spacing), device=device)


# ---------------------------------------------------------------------------------------------- the network
def build_network(data: LoopData, params: dict, seed: int, gen: torch.Generator):
    """(network, input z, number of code channels): weights from ``seed``, the code drawn from ``gen``. With
    ``residual`` the last layer starts at zero (x = pilot exactly); otherwise, with ``output_init``, at the
    data's mean inside the support."""
    residual = bool(params["residual"])  # f is signed, so no output non-linearity
    cfg = NetConfig(channels=_as_list(params["channels"], "channels"),
                    skip_channels=_as_list(params["skip_channels"], "skip_channels"),
                    input_channels=int(params["input_channels"]), upsample=params["upsample"],
                    pad=params["pad"], norm=params["norm"], output="none" if residual else params["output"])
    proton_channel = data.proton is not None and params["proton_input"]
    extra = int(proton_channel) + int(bool(params["pilot_input"]))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        net = DIPNet(len(data.shape), cfg, extra_channels=extra)
    if residual:
        net.init_output(0.0, weight_scale=0.0)
    elif params["output_init"]:
        inside = data.initial[data.support_np]
        net.init_output(float(inside.mean()) if inside.size else float(data.initial.mean()))
    device = data.y.device
    z = make_input(data.shape, cfg.input_channels, gen, scale=params["input_scale"]).to(device)
    if proton_channel:
        z = torch.cat([z, data.proton[None, None]], dim=1)
    return net.to(device), z, cfg.input_channels


def _as_list(value, name):
    if isinstance(value, str):
        value = [v for v in value.replace(",", " ").split() if v]
    try:
        return tuple(int(v) for v in value)
    except (TypeError, ValueError):
        raise InputError(f"parameter {name!r} expects a list of integers, got {value!r}") from None


# ---------------------------------------------------------------------------------------------- the priors
def _weights(params: dict, identity: bool) -> tuple:
    """(w_dtv, w_gc, w_bias). k-space data: the fidelity is a mean over coils x samples, so the dTV weight has
    its own scale (docs/nufft.md)."""
    w_dtv = float(params["weight_dtv"] if identity else params["kspace_weight_dtv"])
    return w_dtv, float(params["weight_gc"]), float(params["weight_bias"])


def _needs_guides(params: dict, identity: bool) -> bool:
    w_dtv, w_gc, _ = _weights(params, identity)
    return w_dtv > 0 or w_gc > 0 or params["sodium_guide"] != "none"


class Guides:
    """The fused direction field xi of the dTV prior and the gradient-consistency target.

    xi fuses the proton field (eta_h, weight w_h) with the sodium field of the current sodium estimate (eta_na,
    w_na; ``sodium_guide`` "output" rebuilds it from the EMA output every ``refresh_every`` steps, "pilot" keeps
    the start's, "none" = proton-only). GC target: gradients of the smoothed measurement (of the filled data
    when the safeguard holds voxels out; of |A^H y| for k-space)."""

    def __init__(self, data: LoopData, params: dict, start: Optional[torch.Tensor]):
        self.G, self.data, self.params = _guidance(), data, params
        self.w_dtv, self.w_gc, _ = _weights(params, data.identity)
        self.sodium_guide = params["sodium_guide"] if params["w_na"] > 0 else "none"
        self.xi_h = self.xi = None
        if self.w_dtv > 0:
            if data.proton is not None and params["w_h"] > 0:
                self.xi_h = self.G.direction_field(data.proton, float(params["eta_h"]), data.rel_spacing)
            self.xi = self.fused_field(start)

    def fused_field(self, sodium_img):
        G, p, d = self.G, self.params, self.data
        xi_na = None
        if self.sodium_guide != "none":
            s = G.normalise_guide(sodium_img, 99.9, d.support_np, device=d.y.device)
            xi_na = G.direction_field(s, float(p["eta_na"]), d.rel_spacing)
        if self.xi_h is not None and xi_na is not None:
            return G.fuse_direction_fields(self.xi_h, xi_na, float(p["w_h"]), float(p["w_na"]), p["fusion"])
        return self.xi_h if self.xi_h is not None else xi_na

    def refresh(self, it: int, ema) -> None:
        if (self.w_dtv > 0 and self.sodium_guide == "output" and ema is not None
                and it % int(self.params["refresh_every"]) == 0):
            self.xi = self.fused_field(ema)

    def gc_target(self, y_gc: Optional[torch.Tensor]) -> torch.Tensor:
        d = self.data
        y_img = (d.y if y_gc is None else y_gc) if d.identity else d.op.adjoint(d.y)
        y_img = y_img.abs() if torch.is_complex(y_img) else y_img
        return self.G.gradient(self.G.gaussian_smooth(y_img.float(), float(self.params["gc_sigma_vox"])),
                               d.rel_spacing)


class Objective:
    """L(x, b) = fidelity + (w_dtv dTV + w_gc GC) / sigma + w_bias ridge; ``terms`` holds each term's value."""

    def __init__(self, data: LoopData, params: dict, bias, guides: Optional[Guides], stage: PilotStage):
        self.data, self.params, self.bias, self.guides = data, params, bias, guides
        self.w_dtv, self.w_gc, self.w_bias = _weights(params, data.identity)
        self.fit_weight = None if stage.guard is None else stage.guard.fit_weight
        self.gy = guides.gc_target(stage.y_gc) if (guides is not None and self.w_gc > 0) else None
        self.n_support = data.support.sum().clamp_min(1)

    def predict(self, bx: torch.Tensor) -> torch.Tensor:
        """A(b x)."""
        d = self.data
        return d.op(bx) if d.identity else d.op(bx.to(torch.complex64))

    def __call__(self, x: torch.Tensor, b, bx: torch.Tensor, pred: torch.Tensor):
        d, p = self.data, self.params
        G = None if self.guides is None else self.guides.G
        terms = {"fidelity": fid.negative_log_likelihood(pred, d.y, d.sigma, d.kind, d.n_ch, weight=self.fit_weight)}
        loss = terms["fidelity"]
        if self.w_dtv > 0:
            terms["dtv"] = G.dtv(x, self.guides.xi, float(p["gamma"]), float(p["eps"]), d.rel_spacing,
                                 reduction="mean")
            loss = loss + self.w_dtv * terms["dtv"] / d.sigma
        if self.w_gc > 0:
            img = bx if d.identity else d.op.adjoint(pred).abs()
            if d.identity and d.problem.magnitude:
                img = fid.expected_magnitude(img, d.sigma, d.n_ch)  # compare like with like: y has a noise floor
            gx = G.gradient(G.gaussian_smooth(img, float(p["gc_sigma_vox"])), d.rel_spacing)
            terms["gc"] = (gx - self.gy).abs().sum(0).mean()
            loss = loss + self.w_gc * terms["gc"] / d.sigma
        if self.bias is not None and self.w_bias > 0:
            lb = self.bias.log_field() - self.bias.start  # the ridge keeps the refinement of the start small
            terms["bias"] = (lb * lb * d.support).sum() / self.n_support
            loss = loss + self.w_bias * terms["bias"]
        return loss, terms

    def residual_mse(self, bx: torch.Tensor, pred: torch.Tensor) -> float:
        """Mean squared residual of the model of the measurement (support; all samples for k-space)."""
        d = self.data
        with torch.no_grad():
            if d.identity:
                model = fid.expected_magnitude(bx, d.sigma, d.n_ch) if d.problem.magnitude else bx
                return float(((d.y - model) ** 2 * d.support).sum() / self.n_support)
            r = pred - d.y
            return float((r.real ** 2 + r.imag ** 2).mean() / (2 if torch.is_complex(r) else 1))


# ---------------------------------------------------------------------------------------------- the fit
def make_rule(params: dict, sigma: float):
    """The stopping rule: a fixed count, windowed moving variance, or the discrepancy principle."""
    iterations = int(params["iterations"])
    if params["stopping"] == "fixed":
        return stopping.make_rule("fixed", n=iterations)
    if params["stopping"] == "wmv":
        return stopping.make_rule("wmv", window=int(params["stop_window"]), patience=int(params["stop_patience"]),
                                  max_iterations=iterations)
    return stopping.make_rule("discrepancy", noise_variance=sigma * sigma, tau=float(params["stop_tau"]),
                              min_iterations=int(params["stop_min_iterations"]), max_iterations=iterations)


@dataclass
class FitState:
    rule: object
    history: list
    ema: Optional[torch.Tensor] = None
    best_bias: Optional[torch.Tensor] = None
    it_done: int = 0
    cancelled: bool = False
    guard_stopped: bool = False
    seconds: float = 0.0
    last_output: Optional[torch.Tensor] = None


def fit(data: LoopData, params: dict, ctx: RunContext, net, z, n_code: int, gen, bias, stage: PilotStage,
        objective: Objective) -> FitState:
    """Adam on the network (and the bias coefficients) for at most ``iterations`` steps: cosine learning-rate
    schedule, input-code perturbation, EMA of the output, the stopping rule on the EMA, the held-out safeguard
    every ``holdout_every`` steps (stopping after ``holdout_patience`` steps without improvement)."""
    device = data.y.device
    groups = [{"params": list(net.parameters()), "lr": float(params["lr"])}]
    if bias is not None:
        groups.append({"params": bias.parameters(), "lr": float(params["bias_lr"])})
    opt = torch.optim.Adam(groups)
    base_lrs = [g["lr"] for g in opt.param_groups]
    iterations = int(params["iterations"])
    autocast = (torch.autocast(device_type=device.type, dtype=torch.bfloat16)
                if params["precision"] == "bf16" else nullcontext())
    start = stage.start if params["residual"] else None
    guard, check_every, patience = stage.guard, int(params["holdout_every"]), int(params["holdout_patience"])
    ema_decay, reg_std = float(params["ema"]), float(params["reg_noise_std"])
    ref = None if data.problem.reference is None else np.asarray(data.problem.reference, np.float32)
    psnr_mask = data.support_np if data.problem.support is not None else None
    state = FitState(rule=make_rule(params, data.sigma), history=[])
    t0 = time.perf_counter()

    def forward(noise_std):
        inp = z
        if noise_std > 0:
            pert = torch.randn(z.shape, generator=gen).to(device) * noise_std
            pert[:, n_code:] = 0  # perturb the code, not the image channels
            inp = z + pert
        with autocast:
            out = net(inp).float()[0, 0]
        return out + start if start is not None else out

    for it in range(iterations):
        try:
            ctx.check()
        except Cancelled:
            state.cancelled = True
            break
        if params["lr_schedule"] == "cosine":
            f = 0.5 * (1 + math.cos(math.pi * it / iterations))
            low = float(params["lr_min_factor"])
            for g, lr0 in zip(opt.param_groups, base_lrs):
                g["lr"] = lr0 * (low + (1 - low) * f)
        if objective.guides is not None:
            objective.guides.refresh(it, state.ema)
        opt.zero_grad(set_to_none=True)
        x = forward(reg_std)
        b = bias() if bias is not None else None
        bx = x * b if b is not None else x
        pred = objective.predict(bx)
        loss, terms = objective(x, b, bx, pred)
        loss.backward()
        opt.step()
        with torch.no_grad():
            xd = x.detach()
            ema = state.ema
            state.ema = xd.clone() if (ema is None or ema_decay == 0) else ema.mul_(ema_decay).add_(xd, alpha=1 - ema_decay)
        resid = objective.residual_mse(bx.detach(), pred.detach())
        entry = {"iteration": it, "loss": float(loss.detach()),
                 "terms": {k: float(v.detach()) for k, v in terms.items()}, "residual_mse": resid,
                 "seconds": time.perf_counter() - t0}
        if ref is not None:
            entry["psnr"] = _monitor_psnr(state.ema, ref, psnr_mask)
        state.history.append(entry)
        state.it_done = it + 1
        if guard is not None and ((it + 1) % check_every == 0 or it + 1 == iterations):
            with torch.no_grad():
                bb = b.detach() if b is not None else None
                m = measured_model(state.ema * bb if bb is not None else state.ema, data.kind, data.sigma,
                                   data.n_ch, data.problem.magnitude)
                entry["heldout_delta"] = guard.update(it, data.y, m, state.ema, bb)
            if patience and it - guard.best[2] >= patience:
                state.guard_stopped = True  # the held-out error has not improved for `patience` steps
                break
        stop = state.rule.update(it, state.ema, entry["loss"], residual_mse=resid)
        if bias is not None and state.rule.best_iteration == it:
            state.best_bias = b.detach().clone()
        ctx.report(it, loss=entry["loss"], **({"psnr": entry["psnr"]} if "psnr" in entry else {}),
                   image=lambda e=state.ema: e.detach().cpu().numpy().copy())
        if stop:
            break
    state.seconds = time.perf_counter() - t0
    if state.ema is None:  # cancelled before the first step: the network's current output
        with torch.no_grad():
            state.last_output = forward(0.0)
    return state


def _monitor_psnr(ema: torch.Tensor, ref: np.ndarray, mask) -> float:
    """PSNR of the EMA output against a known reference (monitoring curves only; nan where undefined)."""
    try:
        return psnr(ema.cpu().numpy(), ref, mask)
    except InputError:
        return float("nan")


# ---------------------------------------------------------------------------------------------- the result
def assemble_result(data: LoopData, params: dict, state: FitState, stage: PilotStage, bias, guides,
                    decision: str) -> MethodResult:
    """The chosen iterate (stopping rule, or the safeguard's best held-out iterate), or the pilot itself when
    the safeguard finds no held-out evidence that the DIP stage improves on it; diagnostics say which."""
    rule, guard = state.rule, stage.guard
    if state.cancelled or rule.best_output is None:
        image = state.ema if rule.best_output is None else rule.best_output
        image = state.last_output if image is None else image
        stop_rule = "cancelled" if state.cancelled else rule.name
        stop_iteration = max(rule.best_iteration, 0) if rule.best_output is not None else max(state.it_done - 1, 0)
    else:
        image, stop_rule, stop_iteration = rule.best_output, rule.name, rule.best_iteration
    best_bias = state.best_bias
    if bias is not None and best_bias is None:
        with torch.no_grad():
            best_bias = bias()
    returned = "dip"
    if guard is not None and not state.cancelled:
        if guard.accepted():
            _, _, stop_iteration, image, chosen_b = guard.best
            stop_rule = "held-out"
            best_bias = chosen_b if chosen_b is not None else best_bias
        else:
            returned = "pilot"
    out = image.detach().float().clamp_min(0).cpu().numpy().astype(np.float32)
    bias_out = None if best_bias is None else best_bias.cpu().numpy().astype(np.float32)
    extras = _extras(stage, guides)
    if returned == "pilot":  # the pilot is returned exactly (its image and its own field)
        out, bias_out = stage.full_image.astype(np.float32), stage.full_bias
        if bias is not None:  # DIP-Fusion's own starting field stays available (docs/method.md)
            with torch.no_grad():
                extras["joint_bias_field"] = torch.exp(bias.start).cpu().numpy().astype(np.float32)
        stop_rule, stop_iteration = "held-out: pilot", 0
    result = MethodResult(image=out, iterations=state.it_done, stop_rule=stop_rule,
                          stop_iteration=int(stop_iteration), bias_field=bias_out, history=state.history,
                          extras=extras, params=dict(params))
    # what "auto" settings resolved to (kept out of params so a written parameter file reloads cleanly)
    result.diagnostics = {"fidelity": data.kind, "n_channels": int(data.n_ch), "noise_sigma": data.sigma,
                          "stop_reason": _stop_reason(state, params), "returned_stage": returned,
                          "bias_decision": decision, **(guard.diagnostics() if guard is not None else {}),
                          "proton_used": data.proton is not None,
                          "seconds_per_iteration": state.seconds / max(state.it_done, 1)}
    return result


def _stop_reason(state: FitState, params: dict) -> str:
    if state.cancelled:
        return "cancelled by the user"
    if state.guard_stopped:
        return f"held-out error not improved for {int(params['holdout_patience'])} steps"
    return state.rule.reason


def _extras(stage: PilotStage, guides: Optional[Guides]) -> dict:
    extras = {}
    if stage.start is not None:
        extras["pilot"] = stage.start.detach().cpu().numpy().astype(np.float32)
    if stage.full_image is not None:  # the classical pilot as it came (bias-corrected image and its own field)
        extras["pilot_image"] = stage.full_image.astype(np.float32)
        if stage.full_bias is not None:
            extras["pilot_bias"] = np.asarray(stage.full_bias, np.float32)
    if guides is not None and guides.xi is not None:
        extras["fused_field_magnitude"] = torch.sqrt((guides.xi * guides.xi).sum(0)).cpu().numpy().astype(np.float32)
    return extras
