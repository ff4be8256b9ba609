"""The MRI-driven prior of ``pnp``: a noise-conditional CNN denoiser trained on a PROTON template degraded to
sodium-like resolution, contrast and noise (the MRI2Qmap recipe), its shipped weights, and the command that
reproduces them:

    python -m SodiumDIPLib.learned.prior --out prior_t1.pt [--steps 3000 --seed 0 --template FILE]

Training data: the MNI ICBM152 2009a symmetric T1 template at 1 mm (brain-extracted), the file
``mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz`` that the ``nilearn`` wheel ships in
``nilearn/datasets/data/`` (read with SimpleITK; nilearn itself is not imported, only located). Only the LEFT
hemisphere (RAS x < -2 mm) is used, so the right hemisphere of the template is unseen anatomy.
Degradation of each training volume (a fresh random draw per volume):
- contrast: the T1 intensity t (brain, normalised to its 99th percentile) mapped to a sodium-like image with
  CSF bright: s = 1 - (1 - b) t^g (b in [0.15, 0.35], g in [0.7, 1.5]), or the T1 contrast itself (1 in 4);
- resolution: block averaging to f mm voxels, f in {2, 3, 4} (partial volume; no extra blur: a Gaussian
  pre-blur of FWHM = f made the prior smooth the sharp phantom edges, 32.4 -> 28.5 dB at sigma 0.03);
- receive bias: exp of a random linear + quadratic field spanning up to +-0.3;
- scaling: robust maximum (99.5th percentile in the object) = 1, the engine's normalised units;
- noise: Gaussian, sigma log-uniform in [SIGMA_MIN, SIGMA_MAX], fresh at every step (the network is told sigma).
Loss: |D(y; sigma) - s|^2 / sigma^2 (supervised: the clean degraded image is known here).
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.util
import math
import sys
import time
from pathlib import Path
from typing import Optional

import numpy as np
import torch

from SodiumDIPLib.errors import InputError
from SodiumDIPLib.learned.gdsm import SliceSampler, TrainingVolume
from SodiumDIPLib.learned.network import Denoiser, DenoiserConfig, load_model, parameter_count, save_model

TEMPLATE_NAME = "mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz"
SHIPPED = Path(__file__).with_name("weights") / "prior_t1.pt"
SIGMA_MIN, SIGMA_MAX = 0.01, 0.3
FACTORS = (2, 3, 4)


def template_path(path: Optional[str] = None) -> Path:
    """The T1 template: ``path``, or the copy inside the installed nilearn wheel."""
    if path:
        p = Path(path)
        if not p.is_file():
            raise InputError(f"template {p} not found; expected the MNI152 T1 NIfTI ({TEMPLATE_NAME})")
        return p
    spec = importlib.util.find_spec("nilearn")
    if spec is None or not spec.submodule_search_locations:
        raise InputError("the prior is trained on the MNI152 T1 template shipped by nilearn: pip install nilearn "
                         f"(or give --template PATH to {TEMPLATE_NAME})")
    p = Path(list(spec.submodule_search_locations)[0]) / "datasets" / "data" / TEMPLATE_NAME
    if not p.is_file():
        raise InputError(f"nilearn is installed but {p} is missing; give --template PATH")
    return p


def left_hemisphere(path: Path) -> np.ndarray:
    """The template (z, y, x) as float32 in [0, 1], cut to the left hemisphere (RAS x < -2 mm)."""
    import SimpleITK as sitk

    img = sitk.ReadImage(str(path))
    a = sitk.GetArrayFromImage(img).astype(np.float32)
    if a.ndim != 3:
        raise InputError(f"template {path}: expected a 3D volume, got shape {a.shape}")
    ras_x = np.array([-img.TransformIndexToPhysicalPoint((i, 0, 0))[0] for i in range(a.shape[2])])
    keep = ras_x < -2.0
    if keep.sum() < 24:
        raise InputError(f"template {path}: fewer than 24 columns in the left hemisphere")
    a = a[:, :, keep]
    brain = a[a > 0]
    return np.clip(a / float(np.percentile(brain, 99)), 0, 1.2)


def degraded_volume(t1: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """One sodium-like, low-resolution, bias-modulated, noise-free volume (normalised units)."""
    brain = t1 > 0.02
    if rng.random() < 0.25:
        s = t1.copy()
    else:
        b, g = rng.uniform(0.15, 0.35), rng.uniform(0.7, 1.5)
        s = np.where(brain, 1.0 - (1.0 - b) * np.clip(t1, 0, 1) ** g, 0.0)
    f = int(rng.choice(FACTORS))
    off = rng.integers(0, f, 3)
    s = s[off[0]:, off[1]:, off[2]:]
    n = [d // f for d in s.shape]
    s = s[:n[0] * f, :n[1] * f, :n[2] * f].reshape(n[0], f, n[1], f, n[2], f).mean((1, 3, 5))
    grids = np.meshgrid(*[np.linspace(-1, 1, d) for d in s.shape], indexing="ij")
    coef = rng.uniform(-0.3, 0.3, 6)
    logb = sum(c * g for c, g in zip(coef[:3], grids)) + sum(c * g * g for c, g in zip(coef[3:], grids)) / 2
    s = s * np.exp(logb)
    obj = s > 0.05 * s.max()
    return (s / float(np.percentile(s[obj], 99.5))).astype(np.float32)


def train_prior(steps: int = 3000, seed: int = 0, template: Optional[str] = None, width: int = 16,
                context: int = 3, n_volumes: int = 24, batch: int = 16, patch: int = 24, lr: float = 2e-3,
                log=print) -> tuple:
    """Train the prior from the template; returns (Denoiser, meta dict)."""
    path = template_path(template)
    t1 = left_hemisphere(path)
    rng = np.random.default_rng(seed)
    torch.manual_seed(seed)
    clean = [degraded_volume(t1, rng) for _ in range(n_volumes)]
    sampler = SliceSampler([TrainingVolume(c, 0.0) for c in clean], context, patch, "cpu")
    model = Denoiser(DenoiserConfig(context=context, proton=False, width=width))
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    gen = torch.Generator().manual_seed(seed)
    started, running = time.perf_counter(), None
    for step in range(1, int(steps) + 1):
        for group in opt.param_groups:
            group["lr"] = lr * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * (step - 1) / steps)))
        stack, _, _ = sampler.draw(batch, gen)
        u = torch.rand(batch, generator=gen)
        sigma = SIGMA_MIN * (SIGMA_MAX / SIGMA_MIN) ** u
        noisy = stack + sigma.view(-1, 1, 1, 1) * torch.randn(stack.shape, generator=gen)
        out = model(noisy, sigma, torch.zeros_like(sigma))
        loss = (((out - stack[:, context // 2]) ** 2).mean((-2, -1)) / sigma ** 2).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        running = float(loss.detach()) if running is None else 0.98 * running + 0.02 * float(loss.detach())
        if step % 250 == 0 or step == steps:
            log(f"step {step}/{steps}: loss {running:.4f} ({time.perf_counter() - started:.0f} s)")
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    meta = {"template": TEMPLATE_NAME, "template_sha256": digest, "hemisphere": "left (RAS x < -2 mm)",
            "steps": int(steps), "seed": int(seed), "sigma_min": SIGMA_MIN, "sigma_max": SIGMA_MAX,
            "factors_mm": list(FACTORS), "n_volumes": int(n_volumes), "parameters": parameter_count(model),
            "command": f"python -m SodiumDIPLib.learned.prior --steps {steps} --seed {seed}"}
    return model.eval(), meta


def load_prior(device="cpu", path: Optional[str] = None) -> tuple:
    """The shipped prior (or the file ``path``): (Denoiser, meta)."""
    p = Path(path) if path else SHIPPED
    if not p.is_file():
        raise InputError(f"the MRI-driven prior's weights are missing ({p}); rebuild them with "
                         "python -m SodiumDIPLib.learned.prior --out " + str(SHIPPED))
    return load_model(p, device)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", required=True, help="weights file to write (refuses to overwrite without --force)")
    parser.add_argument("--steps", type=int, default=3000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--template", default=None, help=f"path to {TEMPLATE_NAME} (default: nilearn's copy)")
    parser.add_argument("--force", action="store_true", help="overwrite --out if it exists")


def register_commands(subparsers) -> None:
    """Hook for ``cli.COMMAND_MODULES``: adds the ``train-prior`` subcommand."""
    p = subparsers.add_parser("train-prior", help="train pnp's MRI-driven denoiser prior from the MNI152 T1 "
                                                  "template that nilearn ships (reproduces the shipped weights)")
    add_arguments(p)
    p.set_defaults(func=main)


def main(args) -> int:
    out = Path(args.out)
    if out.exists() and not args.force:
        raise InputError(f"{out} exists; choose another --out or add --force")
    if not out.parent.is_dir():
        raise InputError(f"--out folder {out.parent} does not exist")
    if args.steps < 1:
        raise InputError(f"--steps must be >= 1, got {args.steps}")
    model, meta = train_prior(steps=args.steps, seed=args.seed, template=args.template)
    save_model(model, out, meta)
    print(f"wrote {out} ({out.stat().st_size / 1024:.0f} KB, {meta['parameters']} parameters)")
    return 0


def _cli(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m SodiumDIPLib.learned.prior",
                                     description="train the MRI-driven prior of pnp from the MNI152 T1 template")
    add_arguments(parser)
    args = parser.parse_args(argv)
    try:
        return main(args)
    except InputError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(_cli())
