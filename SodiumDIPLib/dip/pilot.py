"""The classical stage of a DIP run: the pilot it starts from, the safeguard's blind twin, the bias start.

A DIP-Fusion run starts at a classical pilot (tv, dtv or fused dTV; offered by the calling method, never looked
up in the registry) run under the parent run's progress (events carry ``stage="pilot"``) and cancel. The pilot
decides whether the data carry a receive bias (its N4 evidence rule) and seeds the joint bias field.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Callable, Optional

import numpy as np
import torch

from SodiumDIPLib.dip.safeguard import HeldOutCheck, fill_held_out, pilot_optimism, same_settings
from SodiumDIPLib.errors import InputError
from SodiumDIPLib.params import validate as validate_params
from SodiumDIPLib.problem import MethodResult, Problem, RunContext

CLASSICAL_PILOTS = ("tv", "dtv", "fused-dtv")
PROTON_PILOTS = ("dtv", "fused-dtv")


@dataclass
class PilotStage:
    """What the classical stage hands the DIP stage.

    start: the image the DIP starts from (the blind pilot when guarded), on the device; start_bias: its field
    (None = no receive bias found); full_image / full_bias: the full-data pilot as it came (returned when the
    safeguard keeps it); result: its MethodResult; guard: the held-out check or None; y_gc: the data the
    gradient-consistency target is built from (the filled data when guarded, else None = the measurement)."""

    start: Optional[torch.Tensor] = None
    start_bias: Optional[np.ndarray] = None
    full_image: Optional[np.ndarray] = None
    full_bias: Optional[np.ndarray] = None
    result: Optional[MethodResult] = None
    guard: Optional[HeldOutCheck] = None
    y_gc: Optional[torch.Tensor] = None


def pilot_runner(ctx: RunContext, pilots: dict, name: str, method_name: str) -> Callable:
    """run(problem, overrides) -> MethodResult of the classical pilot ``name`` among those the calling method
    offers (name -> (run function, fast-preset parameters)), under the parent's progress and cancel. The
    variational methods correct the receive bias (N4) and return it; a cancel during the weight search raises
    Cancelled (no image exists yet), a later one returns the iterate with stop_rule "cancelled"."""
    if name not in pilots:
        raise InputError(f"{method_name}: pilot {name!r} is not available here; expected one of {sorted(pilots)}")
    run_pilot, fast_params = pilots[name]

    def progress(event, image):
        if ctx.on_progress is not None:
            ctx.on_progress(dict(event, stage="pilot", pilot=name), image)

    def run(problem: Problem, overrides: Optional[dict] = None) -> MethodResult:
        run_ctx = RunContext(str(ctx.device), ctx.seed, on_progress=progress, should_cancel=ctx.should_cancel)
        return run_pilot(problem, validate_params(name, dict(fast_params, **(overrides or {}))), run_ctx)

    return run


def _image_and_bias(res: MethodResult):
    bias = None if res.bias_field is None else np.asarray(res.bias_field, np.float32)
    return torch.from_numpy(np.asarray(res.image, np.float32)), bias


def run_pilot_stage(problem: Problem, params: dict, ctx: RunContext, pilots: dict, method_name: str,
                    initial: np.ndarray, support: np.ndarray, sigma: float, guarded: bool):
    """Run the classical pilot (and, when ``guarded``, its blind twin and optimism estimate). Returns a
    PilotStage, or a MethodResult (the pilot's, marked cancelled) when the user cancelled during this stage."""
    name = params["pilot"]
    if name in PROTON_PILOTS and problem.proton is None:
        raise InputError(f"pilot {name!r} needs a proton volume; use pilot 'tv' or 'smooth'")
    run = pilot_runner(ctx, pilots, name, method_name)
    result = run(problem)
    if result.stop_rule == "cancelled" or ctx.cancelled():
        return pilot_only(result, params, "cancelled by the user during the pilot")
    start, bias = _image_and_bias(result)
    stage = PilotStage(start=start, start_bias=bias, full_image=start.numpy().copy(), full_bias=bias, result=result)
    if guarded:
        stage.guard = HeldOutCheck(support, float(params["holdout_fraction"]), ctx.seed,
                                   float(params["holdout_margin"]), ctx.device)
        held = stage.guard.held.cpu().numpy()
        # the DIP starts from a pilot that never saw the held-out voxels (filled from their neighbours), so
        # neither the network input nor the pilot carries their noise: the held-out comparison stays fair
        filled = fill_held_out(initial, held)
        blind = run(replace(problem, measurement=torch.from_numpy(filled), initial=filled), same_settings(result))
        if blind.stop_rule == "cancelled" or ctx.cancelled():
            return pilot_only(result, params, "cancelled by the user during the pilot")
        stage.start, blind_bias = _image_and_bias(blind)
        stage.start_bias = blind_bias if bias is not None else None
        stage.y_gc = torch.from_numpy(filled).to(ctx.device)
        optimism = pilot_optimism(problem, run, result, held, sigma, ctx.seed)
        if ctx.cancelled():
            return pilot_only(result, params, "cancelled by the user during the pilot")
        full_model = stage.full_image * (bias if bias is not None else 1.0)
        y = problem.measurement.to(ctx.device)
        stage.guard.start(y, torch.from_numpy(np.asarray(full_model, np.float32)).to(ctx.device), optimism)
    stage.start = stage.start.to(ctx.device)
    return stage


def pilot_only(res: MethodResult, params: dict, reason: str) -> MethodResult:
    """The classical pilot's result as the DIP run's output (cancelled during the pilot stage)."""
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


def decide_bias(bias, problem: Problem, pilot_result, identity: bool):
    """Keep the joint bias field only where the data carry a receive bias (docs/method.md): the classical pilot's
    N4 evidence rule (``physics.bias.receive_bias`` "auto") decides; without such a pilot, the same rule on the
    image. Returns (bias or None, decision text)."""
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


def start_bias(bias, start: Optional[torch.Tensor], start_pilot_bias, params: dict, problem: Problem,
               initial: np.ndarray, support: np.ndarray, identity: bool, device):
    """Set the joint bias field's start and express the DIP's starting image under it. Returns the start image.

    bias_init "pilot": b starts at the pilot's own (N4) field, so b x is exactly the pilot's model of the
    measurement. "proton": b starts at the tissue-class regression on the proton image (from k-space on the
    pilot's model b x, the zero-filled image being aliased); the pilot's model b0 x0 is kept: x = b0 x0 / b."""
    if params["bias_init"] == "pilot" and start_pilot_bias is not None:
        return start * bias.set_start(start_pilot_bias)
    if params["bias_init"] == "proton" and problem.proton is not None:
        from SodiumDIPLib.physics.bias import proton_regression_init

        if identity or start is None:
            source = initial
        else:
            source = start.cpu().numpy() * (1.0 if start_pilot_bias is None else start_pilot_bias)
        basis = bias.basis.cpu().numpy()
        c0 = proton_regression_init(source, np.asarray(problem.proton, np.float32), support, basis,
                                    classes=int(params["bias_classes"]), bins=int(params["bias_bins"]))
        bias.set_start(np.exp(np.tensordot(c0, basis, 1)))
    if start_pilot_bias is not None:
        with torch.no_grad():
            start = start * torch.from_numpy(start_pilot_bias).to(device) / bias()
    return start
