"""Quality against acceleration: every method reconstructs the phantom's multi-coil k-space at R = 2..8.

The phantom's noise-free sodium truth times its receive bias is what a noise-free, fully sampled coil
array would image; each reconstruction is compared with it inside the brain mask (for methods that
estimate a bias field, the product b * x, so every method is scored on the same image). The floor of the
table is the fully sampled, noisy zero-filled (or gridding) image: the scan at full length.
"""

from __future__ import annotations

import time
from typing import Callable, Optional

import numpy as np

from SodiumDIPLib.errors import InputError

DEFAULT_FACTORS = (2, 3, 4, 6, 8)


def _score(image: np.ndarray, truth: np.ndarray, brain: np.ndarray) -> dict:
    from SodiumDIPLib.metrics.quality import nrmse, psnr, ssim

    return {"psnr_mask": psnr(image, truth, mask=brain), "ssim_mask": ssim(image, truth, mask=brain),
            "nrmse_mask": nrmse(image, truth, mask=brain)}


def run_acceleration_benchmark(methods=("zero-filled", "tv", "dtv", "dip", "dipfusion", "pnp"), factors=DEFAULT_FACTORS,
                               shape=(32, 32, 32), n_coils: int = 4, kind: str = "cartesian", preset: str = "fast",
                               seed: int = 0, device: str = "auto", snr: float = 10.0,
                               on_row: Optional[Callable[[dict], None]] = None, params: Optional[dict] = None) -> dict:
    """Reconstruct the built-in head phantom's simulated k-space at each factor R with each method.

    kind: "cartesian" (variable-density phase-encode masks) or "radial" (spoke subsets; the floor method is
    then "gridding"). Returns {"rows": [...], "full": {...}, "setup": {...}}; each row holds R (requested
    and achieved), method, PSNR/SSIM/NRMSE in the brain mask, seconds, iterations and stopping rule.
    params: {method: parameter overrides} on top of the preset.
    """
    from SodiumDIPLib.physics.kspace import kspace_problem, undersample_case
    from SodiumDIPLib.methods import get_method
    from SodiumDIPLib.data.phantom import make_phantom
    from SodiumDIPLib.physics.simulate import phantom_kspace
    from SodiumDIPLib.pipeline import run_method
    from SodiumDIPLib.data.resample import resample_to_grid

    if kind not in ("cartesian", "radial"):
        raise InputError(f"unknown acquisition kind {kind!r}; expected cartesian or radial")
    floor = "zero-filled" if kind == "cartesian" else "gridding"
    methods = [floor if m in ("zero-filled", "gridding") else m for m in methods]
    specs = [get_method(m) for m in methods]
    for spec in specs:
        if not spec.supports_kspace:
            raise InputError(f"method {spec.name!r} cannot reconstruct from k-space")
    factors = [float(r) for r in factors]
    if any(r < 1 for r in factors):
        raise InputError(f"acceleration factors must be >= 1, got {factors}")

    case = make_phantom(kind="head", seed=seed, shape=tuple(shape), snr=snr)
    sim = phantom_kspace(case, n_coils=n_coils, kind=kind, seed=seed)
    truth = (case.sodium_truth.array * case.bias_field.array).astype(np.float32)
    brain = case.brain.array > 0
    proton = resample_to_grid(case.proton, case.sodium).array
    image_shape = truth.shape
    spacing = tuple(reversed(case.sodium.spacing))[-len(image_shape):]

    def problem_for(kspace, mask=None, trajectory=None):
        return kspace_problem(kspace, mask=mask, trajectory=trajectory, image_shape=image_shape, proton=proton,
                              spacing=spacing, support=case.brain.array > 0)

    full_kp = problem_for(sim.kspace, trajectory=sim.trajectory)
    full_res, _ = run_method(full_kp.problem, floor, preset, None, seed, device)
    full = dict(_score(np.abs(full_res.image) / full_kp.scale, truth, brain), method=floor, R=1.0)
    rows = []
    for r in factors:
        uc = undersample_case(sim.kspace, r, seed=seed, trajectory=sim.trajectory, image_shape=image_shape)
        kp = problem_for(uc.kspace, mask=uc.mask, trajectory=uc.trajectory)
        for spec in specs:
            started = time.perf_counter()
            result, info = run_method(kp.problem, spec.name, preset, (params or {}).get(spec.name), seed, device)
            image = np.abs(np.asarray(result.image)) / kp.scale
            if result.bias_field is not None:  # score b * x: the same image every method is asked for
                image = image * np.asarray(result.bias_field)
            row = dict(_score(image, truth, brain), R=r, achieved_R=round(float(uc.acceleration), 3),
                       method=spec.name, seconds=round(time.perf_counter() - started, 2),
                       iterations=result.iterations, stop_rule=result.stop_rule,
                       peak_memory_mb=round(info["peak_memory_mb"], 1))
            rows.append(row)
            if on_row is not None:
                on_row(row)
    setup = {"shape": list(image_shape), "coils": n_coils, "kind": kind, "preset": preset, "seed": seed,
             "snr": snr, "sensitivities": full_kp.combination, "reference": "sodium truth x receive bias"}
    return {"rows": rows, "full": full, "setup": setup}


def format_acceleration_table(result: dict, key: str = "psnr_mask") -> str:
    """R down, methods across; the fully sampled floor in the header."""
    rows = result["rows"]
    methods = list(dict.fromkeys(r["method"] for r in rows))
    factors = list(dict.fromkeys(r["R"] for r in rows))
    full = result["full"]
    lines = [f"{key} against the noise-free image, brain mask; fully sampled {full['method']}: {full[key]:.2f}",
             "R     " + "".join(f"{m:>13s}" for m in methods)]
    for r in factors:
        cells = {x["method"]: x[key] for x in rows if x["R"] == r}
        lines.append(f"{r:<5g} " + "".join(f"{cells.get(m, float('nan')):13.2f}" for m in methods))
    return "\n".join(lines)
