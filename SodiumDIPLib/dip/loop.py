"""The DIP optimisation loop shared by ``dip`` (plain) and ``dipfusion`` (guided, bias-corrected).

One loop, every term behind its own weight (weight 0 removes the term and its cost):

    L = D(A(b x), y)                                   Gaussian / Rician / noncentral-chi / k-space fidelity
      + (w_dtv * mean dTV_xi(x) + w_gc * GC(x)) / sigma fused directional TV, gradient consistency
      + w_bias * mean_support (log b)^2                 keeps the bias field small where the data allow

x = f_theta(z) (DIP network, optional proton channel in z), b = exp(B c) (``SodiumDIPLib.physics.bias``). The data
term is in noise units (0.5 |r/sigma|^2 for Gaussian) and the priors are divided by sigma, so the weights
mean the same at every noise level (TV denoising's lambda scales with sigma).

The returned image is the bias-corrected EMA output x at the iteration chosen by the stopping rule.
"""

from __future__ import annotations

import math
import time
from contextlib import nullcontext
from dataclasses import replace

import numpy as np
import torch
import torch.nn.functional as F

from SodiumDIPLib.dip import fidelity as fid
from SodiumDIPLib.physics.bias import BiasField
from SodiumDIPLib.errors import Cancelled, InputError
from SodiumDIPLib.dip.networks import DIPNet, NetConfig, make_input
from SodiumDIPLib.params import validate as validate_params
from SodiumDIPLib.problem import MethodResult, Problem, RunContext


CLASSICAL_PILOTS = ("tv", "dtv", "fused-dtv")


class DeviceOutOfMemory(InputError, RuntimeError):
    """The accelerator ran out of memory; the message says what to do (CPU or a smaller preset)."""


def _guidance():
    from SodiumDIPLib.priors import guidance  # written alongside; imported lazily so plain DIP never needs it

    return guidance


def _stopping():
    from SodiumDIPLib.dip import stopping

    return stopping


def _classical_pilot(problem: Problem, ctx: RunContext, pilot: tuple, overrides: dict | None = None):
    """A fast classical pilot ``pilot`` = (name, run, fast parameters), given by the calling method ("tv":
    unguided, nothing of the proton leaks in; "dtv": proton-guided directional TV), run under the parent run's
    progress reporting (events carry ``stage="pilot"``) and cancellation. Returns (image, bias field or None, its
    MethodResult): the variational methods correct the receive bias (N4) and return it, which can seed the joint
    bias field. A cancel during the pilot's weight search raises Cancelled (no image exists yet); later, the
    pilot returns its iterate with stop_rule "cancelled"."""
    name, run_pilot, fast_params = pilot

    def progress(event, image):
        if ctx.on_progress is not None:
            ctx.on_progress(dict(event, stage="pilot", pilot=name), image)

    run_ctx = RunContext(str(ctx.device), ctx.seed, on_progress=progress, should_cancel=ctx.should_cancel)
    res = run_pilot(problem, validate_params(name, dict(fast_params, **(overrides or {}))), run_ctx)
    bias = None if res.bias_field is None else np.asarray(res.bias_field, np.float32)
    return torch.from_numpy(np.asarray(res.image, np.float32)), bias, res


def _decide_bias(bias, problem: Problem, pilot_result, identity: bool):
    """Keep the joint bias field only where the data carry a receive bias (docs/method.md): the classical pilot's
    N4 evidence rule (``physics.bias.receive_bias`` "auto") decides; without such a pilot, the same rule on the image.
    Returns (bias or None, decision text)."""
    if pilot_result is not None:
        diag = getattr(pilot_result, "diagnostics", {}) or {}
        decision = diag.get("bias_decision", "")
        if pilot_result.bias_field is None:
            return None, f"none (pilot: {decision or 'no field'})"
        return bias, f"estimated (pilot: {decision})"
    if not identity:
        return bias, "estimated (k-space data without a classical pilot)"
    from SodiumDIPLib.physics.bias import receive_bias

    field, diag = receive_bias(np.asarray(problem.initial, np.float32), problem.support, problem.spacing, "auto")
    return (bias, f"estimated ({diag['bias_decision']})") if field is not None else (None, diag["bias_decision"])


def _pilot_only(res: MethodResult, params: dict, reason: str) -> MethodResult:
    """The classical pilot's result as DIP-Fusion's output (cancelled during the pilot, or chosen by the
    safeguard before any DIP step)."""
    extras = dict(res.extras or {})
    extras["pilot_image"] = np.asarray(res.image, np.float32)
    if res.bias_field is not None:
        extras["pilot_bias"] = np.asarray(res.bias_field, np.float32)
    # a cancel that arrives between the pilot's runs finds a finished pilot: the run still reads as cancelled
    stop_rule = "cancelled" if reason.startswith("cancelled") else res.stop_rule
    out = MethodResult(image=np.asarray(res.image, np.float32), iterations=0, stop_rule=stop_rule,
                       stop_iteration=0, bias_field=res.bias_field, history=list(res.history or []), extras=extras,
                       params=dict(params))
    out.diagnostics = {"returned_stage": "pilot", "stop_reason": reason}
    return out


def _as_list(value, name):
    if isinstance(value, str):
        value = [v for v in value.replace(",", " ").split() if v]
    try:
        return tuple(int(v) for v in value)
    except (TypeError, ValueError):
        raise InputError(f"parameter {name!r} expects a list of integers, got {value!r}") from None


class HeldOutCheck:
    """The safeguard: voxels left out of the DIP's data term score the DIP iterates against the pilot.

    A seeded fraction of the support's voxels is held out of the fidelity. At iterate t the paired difference
    d_t(v) = (y - m_t)^2 - (y - m_0)^2 over the held-out voxels (m = the model of the measurement, b x; m_0 the
    pilot's) estimates err(m_t) - err(m_0) there: the DIP never fitted those noise samples, and the pilot's own
    fit to them biases m_0's and m_t's terms alike, since x_t = pilot + f_t. The best iterate is returned only
    when its mean difference is below -z standard errors (z = ``margin``); otherwise the pilot itself."""

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


def _same_settings(pilot_result) -> dict:
    """Overrides that make the blind pilot the full pilot's twin: its selected weight (no new SURE search on
    the filled data, which picked a weaker weight and lost 1.25 dB on an atlas brain) and its bias decision."""
    over = {"bias_correction": "auto" if pilot_result.bias_field is not None else "none"}
    lam = next((h["lambda_sigma"] for h in pilot_result.history if "lambda_sigma" in h), None)
    if lam is not None:
        over.update(lambda_select="fixed", lambda_sigma=float(lam))
    return over


def _pilot_method(pilots: dict, name: str, method_name: str) -> tuple:
    """(name, run, fast parameters) of the classical pilot ``name`` among those the calling method offers."""
    if name not in pilots:
        raise InputError(f"{method_name}: pilot {name!r} is not available here; expected one of {sorted(pilots)}")
    return (name,) + tuple(pilots[name])


def _pilot_optimism(problem: Problem, ctx: RunContext, pilot: tuple, pilot_result, held: np.ndarray,
                    sigma: float) -> float:
    """2 sigma^2 h: how much the full-data pilot's residual at the held-out voxels underestimates its error,
    h = mean over them of d p_v / d y_v (its self-influence), by one Monte Carlo perturbation (Rademacher,
    amplitude sigma, held-out voxels only) and a second run of the pilot with the same weight and bias field."""
    rng = np.random.default_rng(int(ctx.seed) + 104729)
    delta = np.where(rng.random(held.shape) < 0.5, -1.0, 1.0).astype(np.float32) * held
    y0 = np.asarray(problem.initial, np.float32)
    moved = y0 + float(sigma) * delta
    twin = replace(problem, measurement=torch.from_numpy(moved), initial=moved)
    _, _, res = _classical_pilot(twin, ctx, pilot, _same_settings(pilot_result))
    model = lambda r: np.asarray(r.image, np.float64) * (1.0 if r.bias_field is None else r.bias_field)  # noqa: E731
    h = float(np.sum(delta * (model(res) - model(pilot_result))) / (float(sigma) * max(held.sum(), 1)))
    return 2.0 * float(sigma) ** 2 * min(max(h, 0.0), 1.0)


def _fill_held_out(image: np.ndarray, held: np.ndarray) -> np.ndarray:
    """``image`` with the held-out voxels replaced by the mean of their kept neighbours (3-voxel box)."""
    from scipy import ndimage as ndi

    keep = (~held).astype(np.float32)
    num = ndi.uniform_filter(image.astype(np.float32) * keep, 3)
    den = ndi.uniform_filter(keep, 3)
    out = image.astype(np.float32).copy()
    out[held] = (num[held] / np.maximum(den[held], 1e-6))
    return out


def _measured_model(bx: torch.Tensor, kind: str, sigma: float, n_ch: int, magnitude: bool) -> torch.Tensor:
    """What the held-out voxels are compared with: b x, or its expected magnitude under a noise-floor model."""
    if magnitude and kind in ("rician", "chi", "corrected_ls"):
        return fid.expected_magnitude(bx, sigma, n_ch)
    return bx


def _guard_diagnostics(guard: "HeldOutCheck") -> dict:
    if guard.best is None:
        return {"heldout_voxels": guard.n}
    mean, se, it, _, _ = guard.best
    return {"heldout_voxels": guard.n, "heldout_best_delta": mean, "heldout_best_se": se,
            "heldout_pilot_optimism": guard.optimism,
            "heldout_best_iteration": int(it), "heldout_margin": guard.margin}


def _psnr(x: np.ndarray, ref: np.ndarray, mask) -> float:
    """PSNR inside ``mask`` with the reference's maximum there as peak (monitoring curves only)."""
    if mask is not None and mask.any():
        x, ref = x[mask], ref[mask]
    mse = float(np.mean((x - ref) ** 2))
    peak = float(np.max(ref))
    return 10 * math.log10(peak * peak / mse) if mse > 0 and peak > 0 else float("inf")


def run_dip(problem: Problem, params: dict, ctx: RunContext, method_name: str,
            pilots: dict | None = None) -> MethodResult:
    """Fit the DIP model described by ``params`` (see dipfusion.PRESETS for every key) to ``problem``."""
    params = validate_params(method_name, params)
    try:
        return _run(problem, params, ctx, method_name, pilots or {})
    except torch.cuda.OutOfMemoryError:
        raise DeviceOutOfMemory(
            f"{method_name}: the GPU ran out of memory for an image of shape {tuple(problem.image_shape)} "
            f"(network channels {params['channels']}); use --device cpu, the 'fast' preset or smaller "
            f"'channels'") from None


def _run(problem: Problem, params: dict, ctx: RunContext, method_name: str, pilots: dict) -> MethodResult:
    device = ctx.device
    shape = tuple(int(n) for n in problem.image_shape)
    dims = len(shape)
    spacing = np.asarray(problem.spacing if problem.spacing else (1.0,) * dims, dtype=float)
    rel_spacing = tuple(float(s) for s in spacing / spacing.min())  # gradients per finest voxel
    y = problem.measurement.to(device)
    op = problem.operator.to(device)
    identity = op.is_identity
    support_np = np.ones(shape, bool) if problem.support is None else np.asarray(problem.support, bool)
    support = torch.from_numpy(support_np).to(device)
    initial = np.abs(np.asarray(problem.initial, dtype=np.complex64 if np.iscomplexobj(problem.initial)
                                else np.float32)).astype(np.float32)
    if initial.shape != shape:
        raise InputError(f"initial image shape {initial.shape} does not match image shape {shape}")

    sigma = problem.noise_sigma
    if sigma is None or not sigma > 0:
        from SodiumDIPLib.data.support import estimate_noise_sigma

        sigma = estimate_noise_sigma(initial) if identity else float(np.std(initial[~support_np])) or 0.05
    sigma = float(sigma)
    if not identity:  # radial data: the density-compensated residual, as in tv/dtv
        from SodiumDIPLib.physics.density import density_weighted

        op, y, sigma, _ = density_weighted(op, y, sigma, shape, device)

    kind = fid.resolve_kind(params["fidelity"], problem.magnitude, identity, problem.n_channels)
    n_ch = int(params.get("n_channels", 0)) or 0
    if n_ch <= 0:
        n_ch = problem.n_channels
        if identity and problem.magnitude and kind in ("chi", "rician", "corrected_ls"):
            n_ch = max(n_ch, fid.estimate_channels(initial, support_np, sigma))
    if kind == "rician" and n_ch > 1:
        kind = "chi"

    # ---- reproducible construction: network init and z from the run's seed, global RNG untouched
    gen = ctx.generator()
    residual = bool(params.get("residual", False))  # x = pilot + f(z): f is signed, so no output non-linearity
    cfg = NetConfig(channels=_as_list(params["channels"], "channels"),
                    skip_channels=_as_list(params["skip_channels"], "skip_channels"),
                    input_channels=int(params["input_channels"]), upsample=params["upsample"],
                    pad=params["pad"], norm=params["norm"], output="none" if residual else params["output"])
    use_proton = problem.proton is not None
    proton_t = None
    if use_proton:
        proton_t = _guidance().normalise_guide(np.asarray(problem.proton, np.float32), 99.9, support_np).to(device)
    extra = 1 if (use_proton and params["proton_input"]) else 0
    extra += 1 if params["pilot_input"] else 0
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(ctx.seed)
        net = DIPNet(dims, cfg, extra_channels=extra)
    if residual:  # f = 0 at the start: the run starts at the pilot exactly, no warm start needed
        net.init_output(0.0, weight_scale=0.0)
    elif params["output_init"]:
        net.init_output(float(np.mean(initial[support_np])) if support_np.any() else float(initial.mean()))
    net = net.to(device)
    z = make_input(shape, cfg.input_channels, gen, scale=params["input_scale"]).to(device)
    if use_proton and params["proton_input"]:
        z = torch.cat([z, proton_t[None, None]], dim=1)

    bias = None
    if params["bias_degree"] > 0:
        bias = BiasField(shape, support_np, int(params["bias_degree"]), tuple(spacing)).to(device)

    # ---- guidance: proton and sodium direction fields, fused
    w_dtv, w_gc, w_bias = float(params["weight_dtv"]), float(params["weight_gc"]), float(params["weight_bias"])
    if not identity:
        # k-space data: the fidelity is a mean over coils x k-space samples, so the prior's weight has its own
        # scale (measured on the 48^3 4-coil phantom at R = 4: docs/nufft.md)
        w_dtv = float(params["kspace_weight_dtv"])
    G = _guidance() if (w_dtv > 0 or w_gc > 0 or params["sodium_guide"] != "none") else None
    pilot = pilot_bias = pilot_image = pilot_bias_raw = pilot_result = None
    guard, y_gc = None, None
    frac = float(params.get("holdout_fraction", 0.0))
    if (frac > 0 and identity and residual and params["pilot"] in CLASSICAL_PILOTS and not torch.is_complex(y)
            and support_np.sum() >= 200):
        guard = HeldOutCheck(support_np, frac, ctx.seed, float(params.get("holdout_margin", 2.0)), device)
    xi_h = xi = None
    guide_na = params["sodium_guide"] if params["w_na"] > 0 else "none"
    if params["pilot"] in CLASSICAL_PILOTS:
        if params["pilot"] in ("dtv", "fused-dtv") and not use_proton:
            raise InputError(f"pilot {params['pilot']!r} needs a proton volume; use pilot 'tv' or 'smooth'")
        pilot, pilot_bias, pilot_result = _classical_pilot(problem, ctx, _pilot_method(pilots, params["pilot"], method_name))
        if pilot_result.stop_rule == "cancelled" or ctx.cancelled():
            return _pilot_only(pilot_result, params, "cancelled by the user during the pilot")
        pilot_image, pilot_bias_raw = pilot.numpy().copy(), pilot_bias
        if guard is not None:
            # the DIP starts from a pilot that never saw the held-out voxels (filled from their neighbours), so
            # neither the network input nor the pilot carries their noise: the held-out comparison stays fair
            filled = _fill_held_out(initial, guard.held.cpu().numpy())
            blind = replace(problem, measurement=torch.from_numpy(filled), initial=filled)
            pilot, blind_bias, blind_result = _classical_pilot(blind, ctx, _pilot_method(pilots, params["pilot"], method_name),
                                                               _same_settings(pilot_result))
            if blind_result.stop_rule == "cancelled" or ctx.cancelled():
                return _pilot_only(pilot_result, params, "cancelled by the user during the pilot")
            pilot_bias = blind_bias if pilot_bias is not None else None
            y_gc = torch.from_numpy(filled).to(device)
            optimism = _pilot_optimism(problem, ctx, _pilot_method(pilots, params["pilot"], method_name), pilot_result, guard.held.cpu().numpy(), sigma)
            if ctx.cancelled():
                return _pilot_only(pilot_result, params, "cancelled by the user during the pilot")
            full_model = pilot_image * (pilot_bias_raw if pilot_bias_raw is not None else 1.0)
            guard.start(y, torch.from_numpy(np.asarray(full_model, np.float32)).to(device), optimism)
        pilot = pilot.to(device)
    elif G is not None or params["pilot_input"] or params["warm_start"] > 0 or residual:
        G = _guidance()
        pilot = G.pilot_estimate(initial, sigma_mm=float(params["pilot_sigma_mm"]), spacing=tuple(spacing),
                                 device=device) if params["pilot_sigma_mm"] > 0 else torch.from_numpy(initial).to(device)
    bias_decision = "estimated (bias_select always)" if bias is not None else "off (bias_degree 0)"
    if bias is not None and params.get("bias_select", "always") == "auto":
        bias, bias_decision = _decide_bias(bias, problem, pilot_result if params["pilot"] in CLASSICAL_PILOTS else None,
                                           identity)
    if bias is not None and params["bias_init"] == "pilot" and pilot_bias is not None:
        # start b at the pilot's own (N4) field, with the smooth basis refining it: b * x is then exactly
        # the pilot's model of the measurement and x its bias-corrected image. (Projecting the N4 field onto
        # the basis instead lost half of the pilot's accuracy on the 7 T pair: docs/method.md.)
        pilot = pilot * bias.set_start(pilot_bias)
    elif bias is not None:
        if params["bias_init"] == "proton" and use_proton:
            # start b at the tissue-class regression on the proton image (the ridge holds b near it); from
            # k-space it regresses the pilot's model of the measurement, the zero-filled image being aliased
            from SodiumDIPLib.physics.bias import proton_regression_init

            if identity or pilot is None:
                source = initial
            else:
                source = pilot.cpu().numpy() * (1.0 if pilot_bias is None else pilot_bias)
            basis = bias.basis.cpu().numpy()
            c0 = proton_regression_init(source, np.asarray(problem.proton, np.float32), support_np, basis,
                                        classes=int(params["bias_classes"]), bins=int(params["bias_bins"]))
            bias.set_start(np.exp(np.tensordot(c0, basis, 1)))
        if pilot_bias is not None:
            # the pilot corrected its own bias (N4); keep its model of the measurement, b * x, under our b
            with torch.no_grad():
                pilot = pilot * torch.from_numpy(pilot_bias).to(device) / bias()
    if w_dtv > 0:
        if use_proton and params["w_h"] > 0:
            xi_h = G.direction_field(proton_t, float(params["eta_h"]), rel_spacing)

    def build_xi(sodium_img):
        xi_na = None
        if guide_na != "none":
            s = G.normalise_guide(sodium_img, 99.9, support_np, device=device)
            xi_na = G.direction_field(s, float(params["eta_na"]), rel_spacing)
        if xi_h is not None and xi_na is not None:
            return G.fuse_direction_fields(xi_h, xi_na, float(params["w_h"]), float(params["w_na"]),
                                           params["fusion"])
        return xi_h if xi_h is not None else xi_na

    if w_dtv > 0:
        xi = build_xi(pilot)

    if params["pilot_input"]:
        # the pilot as an input channel: the skips can pass it, the network learns what the data add to it
        z = torch.cat([z, (pilot / pilot.max().clamp_min(1e-6))[None, None].to(device)], dim=1)

    # gradient consistency target: gradients of the smoothed measurement (image domain)
    gc_sigma = float(params["gc_sigma_vox"])
    if w_gc > 0:
        y_img = (y if y_gc is None else y_gc) if identity else op.adjoint(y)
        y_img = y_img.abs() if torch.is_complex(y_img) else y_img
        gy = G.gradient(G.gaussian_smooth(y_img.float(), gc_sigma), rel_spacing)

    def model_data(img):
        """A(b x) and its magnitude-domain expectation for GC/residuals."""
        return op(img) if identity else op(img.to(torch.complex64))

    # ---- optimiser
    groups = [{"params": list(net.parameters()), "lr": float(params["lr"])}]
    if bias is not None:
        groups.append({"params": bias.parameters(), "lr": float(params["bias_lr"])})
    opt = torch.optim.Adam(groups)
    iterations = int(params["iterations"])
    base_lrs = [g["lr"] for g in opt.param_groups]
    autocast = (torch.autocast(device_type=device.type, dtype=torch.bfloat16)
                if params["precision"] == "bf16" else nullcontext())

    def forward(noise_std):
        inp = z
        if noise_std > 0:
            pert = torch.randn(z.shape, generator=gen).to(device) * noise_std
            if extra:
                pert[:, cfg.input_channels:] = 0  # perturb the code, not the image channels
            inp = z + pert
        with autocast:
            out = net(inp)
        out = out.float()[0, 0]
        return out + pilot if residual else out

    warm_cancelled = False
    # warm start: fit the network to the pilot (cheap, no priors), so the main loop starts from an image
    if params["warm_start"] > 0 and not residual:
        target = (pilot if pilot is not None else torch.from_numpy(initial).to(device)).detach()
        for g in opt.param_groups[:1]:
            g["lr"] = float(params["warm_lr"])
        try:
            for _ in range(int(params["warm_start"])):
                ctx.check()
                opt.zero_grad(set_to_none=True)
                F.mse_loss(forward(float(params["reg_noise_std"])), target).backward()
                opt.step()
        except Cancelled:
            warm_cancelled = True
        for g, lr0 in zip(groups, base_lrs):
            g["lr"] = lr0
        opt = torch.optim.Adam(groups)  # fresh moments for the real objective

    stopping = _stopping()
    rule_name = params["stopping"]
    if rule_name == "fixed":
        rule = stopping.make_rule("fixed", n=iterations)
    elif rule_name == "wmv":
        rule = stopping.make_rule("wmv", window=int(params["stop_window"]), patience=int(params["stop_patience"]),
                                  max_iterations=iterations)
    else:
        rule = stopping.make_rule("discrepancy", noise_variance=sigma * sigma, tau=float(params["stop_tau"]),
                                  min_iterations=int(params["stop_min_iterations"]), max_iterations=iterations)

    ema_decay = float(params["ema"])
    ema = None
    history = []
    ref = None if problem.reference is None else np.asarray(problem.reference, np.float32)
    psnr_mask = support_np if problem.support is not None else None
    best_bias = None
    stop_rule, stop_iteration, it_done = rule.name, 0, 0
    cancelled = warm_cancelled
    t0 = time.perf_counter()
    refresh = int(params["refresh_every"])
    reg_std = float(params["reg_noise_std"])
    n_support = support.sum().clamp_min(1)

    check_every = int(params.get("holdout_every", 10))
    guard_patience, guard_stopped = int(params.get("holdout_patience", 0)), False

    for it in range(0 if warm_cancelled else iterations):
        try:
            ctx.check()
        except Cancelled:
            cancelled = True
            break
        if params["lr_schedule"] == "cosine":
            f = 0.5 * (1 + math.cos(math.pi * it / iterations))
            for g, lr0 in zip(opt.param_groups, base_lrs):
                g["lr"] = lr0 * (float(params["lr_min_factor"]) + (1 - float(params["lr_min_factor"])) * f)
        if w_dtv > 0 and guide_na == "output" and ema is not None and it % refresh == 0:
            xi = build_xi(ema)
        opt.zero_grad(set_to_none=True)
        x = forward(reg_std)
        b = bias() if bias is not None else None
        bx = x * b if b is not None else x
        pred = model_data(bx)
        terms = {}
        data = fid.negative_log_likelihood(pred, y, sigma, kind, n_ch,
                                           weight=None if guard is None else guard.fit_weight)
        terms["fidelity"] = data
        loss = data
        if w_dtv > 0:
            terms["dtv"] = G.dtv(x, xi, float(params["gamma"]), float(params["eps"]), rel_spacing, reduction="mean")
            loss = loss + w_dtv * terms["dtv"] / sigma
        if w_gc > 0:
            img = bx if identity else op.adjoint(pred).abs()
            if identity and problem.magnitude:
                img = fid.expected_magnitude(img, sigma, n_ch)  # compare like with like: y has a noise floor
            gx = G.gradient(G.gaussian_smooth(img, gc_sigma), rel_spacing)
            terms["gc"] = (gx - gy).abs().sum(0).mean()
            loss = loss + w_gc * terms["gc"] / sigma
        if bias is not None and w_bias > 0:
            lb = bias.log_field() - bias.start  # the ridge keeps the refinement of the starting field small
            terms["bias"] = (lb * lb * support).sum() / n_support
            loss = loss + w_bias * terms["bias"]
        loss.backward()
        opt.step()

        with torch.no_grad():
            xd = x.detach()
            ema = xd.clone() if (ema is None or ema_decay == 0) else ema.mul_(ema_decay).add_(xd, alpha=1 - ema_decay)
            if identity:
                model_mag = fid.expected_magnitude(bx.detach(), sigma, n_ch) if problem.magnitude else bx.detach()
                resid = ((y - model_mag) ** 2 * support).sum() / n_support
            else:
                r = pred.detach() - y
                resid = (r.real ** 2 + r.imag ** 2).mean() / (2 if torch.is_complex(r) else 1)
        resid = float(resid)
        entry = {"iteration": it, "loss": float(loss.detach()),
                 "terms": {k: float(v.detach()) for k, v in terms.items()}, "residual_mse": resid,
                 "seconds": time.perf_counter() - t0}
        if ref is not None:
            entry["psnr"] = _psnr(ema.cpu().numpy(), ref, psnr_mask)
        history.append(entry)
        it_done = it + 1
        if guard is not None and ((it + 1) % check_every == 0 or it + 1 == iterations):
            with torch.no_grad():
                bb = b.detach() if b is not None else None
                m = _measured_model(ema * bb if bb is not None else ema, kind, sigma, n_ch, problem.magnitude)
                entry["heldout_delta"] = guard.update(it, y, m, ema, bb)
            if guard_patience and it - guard.best[2] >= guard_patience:
                guard_stopped = True  # the held-out error has not improved for guard_patience steps
                break
        stop = rule.update(it, ema, entry["loss"], residual_mse=resid)
        if bias is not None and rule.best_iteration == it:
            best_bias = b.detach().clone()
        ctx.report(it, loss=entry["loss"], **({"psnr": entry["psnr"]} if "psnr" in entry else {}),
                   image=lambda e=ema: e.detach().cpu().numpy().copy())
        if stop:
            break

    if cancelled or rule.best_output is None:
        image = ema if (rule.best_output is None and ema is not None) else rule.best_output
        stop_rule = "cancelled" if cancelled else rule.name
        stop_iteration = max(rule.best_iteration, 0) if rule.best_output is not None else max(it_done - 1, 0)
        if image is None:  # cancelled during the warm start: the network's current output
            with torch.no_grad():
                image = forward(0.0)
    else:
        image = rule.best_output
        stop_rule = rule.name
        stop_iteration = rule.best_iteration
    if bias is not None and best_bias is None:
        with torch.no_grad():
            best_bias = bias()

    stage = "dip"
    if guard is not None and not cancelled:
        if guard.accepted():
            _, _, stop_iteration, image, chosen_b = guard.best
            stop_rule = "held-out"
            if chosen_b is not None:
                best_bias = chosen_b
        else:
            stage = "pilot"
    out = image.detach().float().clamp_min(0).cpu().numpy().astype(np.float32)
    extras = {}
    if pilot is not None:
        extras["pilot"] = pilot.detach().cpu().numpy().astype(np.float32)
    if pilot_image is not None:  # the classical pilot as it came (bias-corrected image and its own field)
        extras["pilot_image"] = pilot_image.astype(np.float32)
        if pilot_bias_raw is not None:
            extras["pilot_bias"] = np.asarray(pilot_bias_raw, np.float32)
    if xi is not None:
        extras["fused_field_magnitude"] = torch.sqrt((xi * xi).sum(0)).cpu().numpy().astype(np.float32)
    bias_out = None if best_bias is None else best_bias.cpu().numpy().astype(np.float32)
    if stage == "pilot":  # the safeguard found no held-out evidence that the DIP stage improves on its pilot
        out, bias_out = pilot_image.astype(np.float32), pilot_bias_raw
        if bias is not None:
            # the pilot is returned exactly (its image and its N4 field); DIP-Fusion's own starting field (the
            # tissue-class regression) stays available. Splitting the pilot's model by it instead gained 1.27 dB
            # on the 48^3 head but lost 1.18 dB on a 48x48 slice (docs/method.md): not a safe default.
            with torch.no_grad():
                extras["joint_bias_field"] = torch.exp(bias.start).cpu().numpy().astype(np.float32)
        stop_rule, stop_iteration = "held-out: pilot", 0
    result = MethodResult(image=out, iterations=it_done, stop_rule=stop_rule, stop_iteration=int(stop_iteration),
                          bias_field=bias_out, history=history, extras=extras, params=dict(params))
    # What "auto" settings resolved to (kept out of params so a written parameter file reloads cleanly).
    result.diagnostics = {"fidelity": kind, "n_channels": int(n_ch), "noise_sigma": sigma,
                          "stop_reason": ("cancelled by the user" if cancelled else
                                          f"held-out error not improved for {guard_patience} steps" if guard_stopped
                                          else rule.reason),
                          "returned_stage": stage, "bias_decision": bias_decision,
                          **(_guard_diagnostics(guard) if guard is not None else {}),
                          "proton_used": bool(use_proton), "seconds_per_iteration":
                          (time.perf_counter() - t0) / max(it_done, 1)}
    return result
