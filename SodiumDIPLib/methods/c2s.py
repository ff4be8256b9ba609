"""`c2s`: Corruption2Self -- a denoiser trained on the noisy data only, by generalized denoising score matching.

Tu et al., "Score-based self-supervised MRI denoising" (Corruption2Self, ICLR 2025). The volume (and, with
``cohort``, every noisy volume of a folder) is corrupted further at levels tau on top of its own noise sigma,
and a small noise-conditional 2.5D U-Net (SodiumDIPLib.learned) learns the expectation of the less corrupted
image (SodiumDIPLib.learned.gdsm has the loss and why it is unbiased). The registered proton slice can be an
extra input channel (``use_proton``, off by default: the network copies proton-only edges). Inference: every
slice in the three orientations and its mirror image, averaged.

Noise level (``noise_estimate``): "auto" takes sigma and the channel count from a magnitude image's noise-only
background when it has one (SodiumDIPLib.data.noise), else the problem's estimate; "problem" keeps it.

Noise model (``noise_model``): the training noise is Gaussian; on complex-derived images that is the data's own
model. On magnitude images ("rician", the default for magnitudes via "auto") the network learns the
expectation of the magnitude, which carries the noise floor (sqrt(pi/2) sigma where the signal is 0 for one
channel, ~sqrt(2L) sigma for L channels); the floor is then removed by inverting E[y|x] ~ sqrt(x^2 + c sigma^2)
(SodiumDIPLib.dip.fidelity), and MethodResult.diagnostics says so, so that comparisons against a repeat scan
re-apply it. Inside the object at SNR >= 3 the Gaussian model of the added noise is accurate (the Rician
distribution is then close to Gaussian with the same sigma).

Receive bias: ``bias_correction="n4"`` (default) estimates N4 on the noisy input (as tv / bm4d do), divides the
denoised image by it and returns b as the bias field. Models: ``model_out`` saves the trained weights (weights only), ``model_in`` starts from saved weights
(``train_steps=0``: apply them as they are, e.g. a cohort model on a new volume).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from SodiumDIPLib.errors import InputError
from SodiumDIPLib.methods.base import Method, MethodResult, Problem, RunContext, register
from SodiumDIPLib.physics.bias import n4_bias_field
from SodiumDIPLib.problem import noise_sigma_of

DESCRIPTION = ("Corruption2Self: self-supervised denoiser trained on the noisy data only (GDSM), proton as an "
               "input channel; images only")

_COMMON = dict(width=24, context=3, use_proton=False, batch=6, patch=32, lr=2e-3, tau_min=0.1, tau_max=1.0,
               refine_fraction=0.2, refine_level=0.1, noise_model="auto", noise_estimate="auto", bias_correction="n4",
               cohort="", model_in="", model_out="")
PRESETS = {
    "fast": dict(_COMMON, train_steps=600),
    "balanced": dict(_COMMON, train_steps=1500),
    "quality": dict(_COMMON, width=32, batch=8, train_steps=4000),
}
NOISE_MODELS = ("auto", "gaussian", "rician")
NOISE_ESTIMATES = ("auto", "problem")
VOLUME_SUFFIXES = (".nii", ".nii.gz", ".nrrd", ".nhdr", ".mha", ".mhd")


def check_c2s_params(params: dict) -> None:
    if params["noise_model"] not in NOISE_MODELS:
        raise InputError(f"noise_model must be one of {NOISE_MODELS}, got {params['noise_model']!r}")
    if params["noise_estimate"] not in NOISE_ESTIMATES:
        raise InputError(f"noise_estimate must be one of {NOISE_ESTIMATES}, got {params['noise_estimate']!r}")
    if params["bias_correction"] not in ("none", "n4"):
        raise InputError(f"bias_correction must be 'none' or 'n4', got {params['bias_correction']!r}")
    if int(params["train_steps"]) == 0 and not params["model_in"]:
        raise InputError("c2s: train_steps=0 needs a trained model (model_in=PATH)")
    for key in ("model_in", "cohort"):
        if params[key] and not Path(params[key]).exists():
            raise InputError(f"c2s: {key} {params[key]!r} does not exist")
    if params["model_out"]:
        out = Path(params["model_out"])
        if not out.parent.is_dir():
            raise InputError(f"c2s: model_out folder {str(out.parent)!r} does not exist")
        if params["model_in"] and out.resolve() == Path(params["model_in"]).resolve():
            raise InputError("c2s: model_out must not overwrite model_in")


def settings_from(params: dict):
    from SodiumDIPLib.learned.gdsm import TrainSettings

    return TrainSettings(steps=int(params["train_steps"]), batch=int(params["batch"]), patch=int(params["patch"]),
                         lr=float(params["lr"]), tau_min=float(params["tau_min"]), tau_max=float(params["tau_max"]),
                         refine_fraction=float(params["refine_fraction"]),
                         refine_level=float(params["refine_level"])).validate()


def noise_model_of(problem: Problem, params: dict) -> str:
    if params["noise_model"] != "auto":
        return params["noise_model"]
    return "rician" if problem.magnitude else "gaussian"


def noise_of(problem: Problem, params: dict, y: np.ndarray) -> tuple:
    """(sigma, n_channels) of the input in normalised units.

    noise_estimate="auto" on a magnitude image: from the background's chi statistics when the background is
    pure noise (SodiumDIPLib.data.noise; the whole-image wavelet estimate reads 24-30 % low on simulated
    magnitudes, and GDSM's target scales with sigma); otherwise, and with "problem", Problem.noise_sigma (or
    the engine's estimate) and Problem.n_channels."""
    from SodiumDIPLib.data.noise import background_noise

    sigma, channels = noise_sigma_of(problem), int(problem.n_channels)
    if params["noise_estimate"] == "auto" and problem.magnitude and problem.support is not None:
        found = background_noise(y, np.asarray(problem.support, bool))
        if found is not None:
            sigma = found.sigma
            channels = channels if channels > 1 else found.n_channels
    return float(sigma), channels


def cohort_volumes(folder) -> list:
    """Every noisy volume in ``folder`` as a TrainingVolume (own robust-max scaling and noise estimate)."""
    from SodiumDIPLib.data.io import read_volume
    from SodiumDIPLib.learned.gdsm import TrainingVolume
    from SodiumDIPLib.problem import SCALE_PERCENTILE
    from SodiumDIPLib.data.support import estimate_noise_sigma, head_mask

    files = sorted(p for p in Path(folder).iterdir() if p.name.lower().endswith(VOLUME_SUFFIXES))
    if not files:
        raise InputError(f"c2s: cohort folder {folder} holds no volume ({', '.join(VOLUME_SUFFIXES)})")
    out = []
    for path in files:
        a = np.squeeze(read_volume(path, role="cohort volume").array.astype(np.float32))
        if a.ndim not in (2, 3) or min(a.shape) < 8:
            raise InputError(f"c2s: cohort volume {path} has shape {a.shape}; expected 2D/3D with >= 8 voxels per axis")
        scale = float(np.percentile(a[head_mask(a)], SCALE_PERCENTILE))
        if not scale > 0:
            raise InputError(f"c2s: cohort volume {path} has no positive signal")
        out.append(TrainingVolume(a / scale, estimate_noise_sigma(a) / scale))
    return out


def train_for(problem: Problem, params: dict, ctx: RunContext, y: np.ndarray, sigma: float, history: list):
    """Train (or load) the c2s model for this problem; returns (model, TrainResult or None)."""
    from SodiumDIPLib.learned.gdsm import TrainingVolume, train_gdsm
    from SodiumDIPLib.learned.network import DenoiserConfig, load_model

    use_proton = bool(params["use_proton"]) and problem.proton is not None
    model = None
    if params["model_in"]:
        model, meta = load_model(params["model_in"], ctx.device)
        model.meta = meta
        if model.cfg.proton and problem.proton is None:
            raise InputError("c2s: the model in model_in takes a proton channel; give a proton volume")
        cfg = model.cfg
    else:
        cfg = DenoiserConfig(context=int(params["context"]), proton=use_proton, width=int(params["width"]))
    if int(params["train_steps"]) == 0:
        return model, None
    proton = np.asarray(problem.proton, np.float32) if cfg.proton else None
    volumes = [TrainingVolume(y, sigma, proton)]
    if params["cohort"]:
        if cfg.proton:
            raise InputError("c2s: cohort training uses sodium volumes only; set use_proton=false")
        volumes += cohort_volumes(params["cohort"])

    def report(step, entry):
        history.append(dict(entry))
        ctx.report(step, loss=entry["val_loss"], train_loss=entry["loss"])

    result = train_gdsm(volumes, cfg, settings_from(params), seed=ctx.seed, device=ctx.device, model=model,
                        check=ctx.check, report=report)
    return result.model, result


def run_c2s(problem: Problem, params: dict, ctx: RunContext) -> MethodResult:
    from SodiumDIPLib.learned.gdsm import apply_denoiser
    from SodiumDIPLib.learned.network import noise_floor_free, save_model

    if not getattr(problem.operator, "is_identity", False):
        raise InputError("c2s denoises images; for k-space data use pnp with denoiser=c2s")
    check_c2s_params(params)
    y = problem.measurement
    y = y.detach().cpu().numpy() if hasattr(y, "detach") else np.asarray(y)
    y = np.asarray(np.abs(y) if np.iscomplexobj(y) else y, dtype=np.float32)
    sigma, channels = noise_of(problem, params, y)
    history: list = []
    model, trained = train_for(problem, params, ctx, y, sigma, history)
    # the level the model was last trained for (a loaded model records it in its meta data)
    level = trained.output_level if trained is not None else float(getattr(model, "meta", {}).get("output_level", 0.0))
    proton = np.asarray(problem.proton, np.float32) if model.cfg.proton else None
    out = apply_denoiser(model, y, sigma, proton, level, ctx.device)
    kind = noise_model_of(problem, params)
    if kind == "rician":
        out = noise_floor_free(torch.from_numpy(out), sigma, channels).numpy()
    bias = None
    if params["bias_correction"] == "n4":
        # N4 on the noisy input, as tv / bm4d do (measured on the 48^3 phantom: 1.2 dB better than N4 on the
        # denoised image, whose smoother histogram N4's sharpening fits less well)
        bias = n4_bias_field(np.asarray(problem.initial, np.float32), problem.support, spacing=problem.spacing)
        out = out / bias
    if params["model_out"]:
        save_model(model, params["model_out"], meta={"trained_steps": 0 if trained is None else trained.steps_done,
                                                       "output_level": level, "sigma": sigma})
    cancelled = trained is not None and trained.cancelled
    steps = 0 if trained is None else trained.steps_done
    result = MethodResult(image=out.astype(np.float32), iterations=steps,
                          stop_rule="cancelled" if cancelled else ("best validation" if trained else "pretrained"),
                          stop_iteration=0 if trained is None else trained.best_step, bias_field=bias,
                          history=history, params=dict(params))
    if kind == "rician":
        result.diagnostics = {"fidelity": "rician", "noise_sigma": sigma, "n_channels": channels}
    ctx.report(steps, image=lambda: result.image)
    return result


register(Method(name="c2s", description=DESCRIPTION, run=run_c2s, presets=PRESETS, supports_kspace=False,
                needs_proton=False))
