"""Built-in phantoms: a head (or breast) with sodium truth, a finer proton image, bias, Rician noise and masks.

The anatomy is analytic, defined in coordinates normalised to the field of view (so any grid size shows the
whole object), evaluated on a fine "model" grid and block-averaged onto the sodium grid (partial volume) and
onto the proton grid. The anatomy is the same for every seed; the seed draws the noise only, so runs with
different seeds see the same truth.

Head, sodium (TSC, mM): CSF and eyes 140, grey matter 40, white matter 30, scalp 25, skull 8, and a
sodium-only lesion of 70 mM in white matter that the proton image does not show. Proton (T1-like, arbitrary
units): white matter bright, grey darker, CSF dark, scalp/fat bright, skull dark, and a proton-only structure
(``proton_only_contrast`` = 40 % darker than the white matter around it) with no sodium change.
Breast: fat (low sodium, bright proton), fibroglandular tissue, chest-wall muscle, a 75 mM tumour invisible
in the proton image and a proton-only structure in fat.

Geometry: identity direction (LPS: +i = patient left, +j = posterior, +k = superior), origin chosen so that
the field of view is centred at ``FOV_CENTRE_LPS``; the proton grid covers exactly the same physical extent
with ``proton_factor`` times finer voxels. A 2D ``shape`` gives the central axial slab (one sodium voxel
thick) as arrays ``[j, i]``.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from SodiumDIPLib.errors import InputError
from SodiumDIPLib.data.io import atomic_target
from SodiumDIPLib.data.volume import Volume, to_sitk

# Physical centre (LPS, mm) of every phantom's field of view: deliberately not the origin.
FOV_CENTRE_LPS = (3.0, -12.0, 18.0)
PROTON_SNR = 40.0  # proton mean tissue signal / its own noise sigma

HEAD_TSC = dict(csf=140.0, grey=40.0, white=30.0, scalp=25.0, skull=8.0, eye=140.0, lesion=70.0)
HEAD_PROTON = dict(csf=0.20, grey=0.65, white=1.00, scalp=0.85, skull=0.05, eye=0.15)
BREAST_TSC = dict(fat=12.0, fibro=38.0, tumour=75.0, skin=30.0, muscle=28.0, thorax=6.0)
BREAST_PROTON = dict(fat=1.00, fibro=0.45, skin=0.60, muscle=0.50, thorax=0.05)
PROTON_ONLY_CONTRAST = 0.4

# Receive-coil position (normalised coordinates) that makes the bias field bright on one side.
_COIL = dict(head=(0.55, 1.25, 0.35), breast=(0.95, -0.35, 0.1))


@dataclass
class PhantomCase:
    """A generated phantom case. Masks are uint8 Volumes on the sodium grid; sodium values are in mM."""

    kind: str
    seed: int
    sodium: Volume            # measured: |truth * bias + complex Gaussian noise| (Rician magnitude), mM
    sodium_truth: Volume      # TSC in mM, no bias, no noise (the reference)
    proton: Volume            # proton image on the finer grid, arbitrary units, with its own small noise
    bias_field: Volume        # multiplicative receive bias b on the sodium grid, mean(log b) = 0 over `support`
    brain: Volume             # evaluation mask: intracranial (brain + CSF) for the head, breast tissue for breast
    lesion: Volume            # sodium-only lesion / tumour
    proton_only: Volume       # proton-only structure (no sodium change)
    proton_only_contrast: float  # relative proton contrast c of the proton-only structure (0.4 = 40 % darker)
    noise_sigma: float        # sigma of the complex noise per real channel, mM
    params: dict = field(default_factory=dict)
    support: Volume | None = None  # whole object (head incl. scalp / body); bias scale is pinned here


def make_phantom(kind: str = "head", seed: int = 0, shape=(48, 48, 48), voxel_mm: float = 4.0,
                 proton_factor: int = 2, snr: float = 10.0, bias_strength: float = 0.3,
                 lesion: bool = True) -> PhantomCase:
    """Generate a phantom case (deterministic from ``seed``; about a second for 48^3 on one core).

    kind:          "head" or "breast".
    seed:          integer >= 0; draws the sodium and proton noise (the anatomy does not depend on it).
    shape:         sodium grid, (k, j, i) for a volume or (j, i) for a single central axial slice; sizes >= 8.
    voxel_mm:      isotropic sodium voxel size in mm (> 0).
    proton_factor: integer 1..8; proton voxels are voxel_mm / proton_factor over the same extent.
    snr:           mean truth TSC inside the ``brain`` mask divided by the noise sigma (> 0; inf = no noise).
    bias_strength: the log bias field spans 2 * bias_strength over the object (0 = no bias), mean log b = 0.
    lesion:        include the sodium-only lesion (tumour for "breast"); its mask is empty when False.
    """
    kind, shape, voxel_mm, proton_factor, seed = _validate(kind, seed, shape, voxel_mm, proton_factor, snr,
                                                           bias_strength)
    params = dict(kind=kind, seed=seed, shape=list(shape), voxel_mm=voxel_mm, proton_factor=proton_factor,
                  snr=float(snr), bias_strength=float(bias_strength), lesion=bool(lesion))
    is_2d = len(shape) == 2
    shape3 = (1,) + tuple(shape) if is_2d else tuple(shape)
    q = proton_factor if proton_factor >= 2 else 2  # model grid factor: >= 2 so sodium has partial volume
    X, Y, Z, half = _model_coords(shape3, voxel_mm, q, is_2d)

    build = _head if kind == "head" else _breast
    na_fine, h_fine, masks_fine = build(X, Y, Z, lesion, voxel_norm=2.0 / max(shape))

    # Sodium grid: average the fine model into sodium voxels (partial volume); masks = majority of the voxel.
    coarse = (q, q, q)  # a 2D slab is q model samples thick, so this also holds for a slice
    truth = _block_mean(na_fine, coarse)
    masks = {k: (_block_mean(v.astype(np.float32), coarse) >= 0.5) for k, v in masks_fine.items()}
    # Proton grid: average the model down to the proton voxels (q / proton_factor model voxels each).
    r = q // proton_factor
    proton_clean = _block_mean(h_fine, (q if is_2d else r, r, r))

    # Smooth receive bias: ~ 1 / distance to a coil beside the object, log scaled and zero-mean on the support.
    bias = _bias_field(shape3, half, kind, masks["support"], bias_strength)

    rng = np.random.default_rng(seed)
    brain_mean = float(truth[masks["brain"]].mean())
    sigma = 0.0 if np.isinf(snr) else brain_mean / float(snr)
    noise = rng.standard_normal((2,) + truth.shape, dtype=np.float32)
    sodium = np.abs((truth * bias + sigma * noise[0]) + 1j * (sigma * noise[1])).astype(np.float32)
    # Proton: its own noise, Rician magnitude, sigma = mean tissue proton / PROTON_SNR.
    h_sigma = float(proton_clean[proton_clean > 0.3].mean()) / PROTON_SNR
    hn = rng.standard_normal((2,) + proton_clean.shape, dtype=np.float32)
    proton = np.hypot(proton_clean + h_sigma * hn[0], h_sigma * hn[1]).astype(np.float32)

    squeeze = (lambda a: a[0]) if is_2d else (lambda a: a)
    na_geom = _geometry(shape3, voxel_mm, is_2d)
    h_geom = _geometry(tuple(n * proton_factor if (a > 0 or not is_2d) else n for a, n in enumerate(shape3)),
                       voxel_mm / proton_factor, is_2d, thickness=voxel_mm)
    vol = lambda a, geom: Volume(squeeze(a), *geom)
    u8 = lambda m: vol(m.astype(np.uint8), na_geom)
    return PhantomCase(
        kind=kind, seed=seed,
        sodium=vol(sodium, na_geom), sodium_truth=vol(truth.astype(np.float32), na_geom),
        proton=vol(proton, h_geom), bias_field=vol(bias.astype(np.float32), na_geom),
        brain=u8(masks["brain"]), lesion=u8(masks["lesion"]), proton_only=u8(masks["proton_only"]),
        proton_only_contrast=PROTON_ONLY_CONTRAST, noise_sigma=float(sigma), params=params,
        support=u8(masks["support"]))


# ----------------------------------------------------------------------------------------------- validation
def _validate(kind, seed, shape, voxel_mm, proton_factor, snr, bias_strength):
    if kind not in ("head", "breast"):
        raise InputError(f"phantom kind {kind!r} is unknown; expected 'head' or 'breast'")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise InputError(f"phantom seed must be an integer >= 0, got {seed!r}")
    try:
        shape = tuple(int(s) for s in shape)
    except (TypeError, ValueError):
        raise InputError(f"phantom shape must be 2 or 3 integers, got {shape!r}") from None
    if len(shape) not in (2, 3) or min(shape) < 8 or max(shape) > 512:
        raise InputError(f"phantom shape must be 2 (single slice) or 3 sizes between 8 and 512, got {shape}")
    try:
        voxel_mm, snr, bias_strength = float(voxel_mm), float(snr), float(bias_strength)
    except (TypeError, ValueError):
        raise InputError(f"phantom voxel_mm, snr and bias_strength must be numbers, got "
                         f"{voxel_mm!r}, {snr!r}, {bias_strength!r}") from None
    if not np.isfinite(voxel_mm) or voxel_mm <= 0:
        raise InputError(f"phantom voxel_mm must be a positive number of millimetres, got {voxel_mm!r}")
    if (isinstance(proton_factor, bool) or not isinstance(proton_factor, (int, np.integer, float))
            or int(proton_factor) != proton_factor or not 1 <= proton_factor <= 8):
        raise InputError(f"phantom proton_factor must be an integer from 1 to 8, got {proton_factor!r}")
    if not (snr > 0):
        raise InputError(f"phantom snr must be > 0 (inf for no noise), got {snr!r}")
    if not (np.isfinite(bias_strength) and 0 <= bias_strength <= 2):
        raise InputError(f"phantom bias_strength must be between 0 and 2 (log units), got {bias_strength!r}")
    q = proton_factor if proton_factor >= 2 else 2
    model_voxels = int(np.prod(shape)) * q ** 3
    if model_voxels > 40_000_000:
        raise InputError(f"phantom shape {shape} with proton_factor {proton_factor} needs {model_voxels:.2e} model "
                         "voxels (limit 4e7); use a smaller shape or proton_factor")
    return kind, shape, float(voxel_mm), int(proton_factor), int(seed)


# ----------------------------------------------------------------------------------------------- geometry
def _model_coords(shape3, voxel_mm, q, is_2d):
    """Normalised coordinates (X along i, Y along j, Z along k; broadcastable) of the fine model grid."""
    nk, nj, ni = shape3
    half = np.array([ni, nj, nk], dtype=float) * voxel_mm / 2.0  # FOV half extents (mm) along i, j, k
    if is_2d:
        half[2] = (half[0] + half[1]) / 2.0  # a slab at the centre of an imaginary cubic FOV

    def axis(n, h):
        f = np.arange(n * q, dtype=np.float32)
        return ((f + 0.5) * (voxel_mm / q) - n * voxel_mm / 2.0) / h

    X = axis(ni, half[0])[None, None, :]
    Y = axis(nj, half[1])[None, :, None]
    Z = axis(nk, half[2])[:, None, None]
    return X, Y, Z, half


def _geometry(shape3, voxel_mm, is_2d, thickness=None):
    """(spacing, origin, direction) of a grid of ``shape3`` voxels centred at FOV_CENTRE_LPS."""
    n_ijk = np.array(shape3[::-1], dtype=float)
    spacing = np.array([voxel_mm, voxel_mm, thickness if (is_2d and thickness) else voxel_mm])
    origin = np.asarray(FOV_CENTRE_LPS) - spacing * (n_ijk - 1) / 2.0
    if is_2d:
        origin[2] = FOV_CENTRE_LPS[2]
    return tuple(spacing), tuple(origin), np.eye(3)


def _block_mean(a: np.ndarray, factors) -> np.ndarray:
    fk, fj, fi = factors
    nk, nj, ni = a.shape
    return a.reshape(nk // fk, fk, nj // fj, fj, ni // fi, fi).mean(axis=(1, 3, 5), dtype=np.float32)


def _ellipsoid(X, Y, Z, centre, semi):
    return (((X - centre[0]) / semi[0]) ** 2 + ((Y - centre[1]) / semi[1]) ** 2
            + ((Z - centre[2]) / semi[2]) ** 2)


def _ball(X, Y, Z, centre, radius):
    return _ellipsoid(X, Y, Z, centre, (radius, radius, radius)) <= 1.0


# ----------------------------------------------------------------------------------------------- anatomy
def _head(X, Y, Z, with_lesion, voxel_norm):
    """Sodium (mM) and proton maps on the model grid, plus boolean masks."""
    rho_scalp = _ellipsoid(X, Y, Z, (0, 0, 0), (0.80, 0.92, 0.86))
    rho_skull = _ellipsoid(X, Y, Z, (0, 0, 0), (0.75, 0.87, 0.81))
    ic_semi = (0.70, 0.82, 0.76)
    rho2 = _ellipsoid(X, Y, Z, (0, 0, 0), ic_semi)
    rho = np.sqrt(rho2)
    # Folding: an angular pattern moves the brain surface (sulcal CSF) and the grey/white boundary (gyri).
    az = np.arctan2(Y / ic_semi[1], X / ic_semi[0])
    el = np.arcsin(np.clip((Z / ic_semi[2]) / np.maximum(rho, 1e-6), -1, 1))
    fold = np.sin(7.0 * az + 1.3) * np.cos(6.0 * el + 0.4)
    head = rho_scalp <= 1.0
    skull_in = rho_skull <= 1.0
    intracranial = rho2 <= 1.0
    brain = rho <= 0.965 - 0.025 * (1 + fold)
    white = rho <= 0.79 + 0.05 * fold
    ventricles = ((_ellipsoid(X, Y, Z, (0.10, -0.04, 0.10), (0.055, 0.24, 0.12)) <= 1.0)
                  | (_ellipsoid(X, Y, Z, (-0.10, -0.04, 0.10), (0.055, 0.24, 0.12)) <= 1.0))
    deep_grey = ((_ellipsoid(X, Y, Z, (0.17, 0.12, -0.08), (0.08, 0.11, 0.09)) <= 1.0)
                 | (_ellipsoid(X, Y, Z, (-0.17, 0.12, -0.08), (0.08, 0.11, 0.09)) <= 1.0))
    eyes = _ball(X, Y, Z, (0.27, -0.74, -0.30), 0.10) | _ball(X, Y, Z, (-0.27, -0.74, -0.30), 0.10)

    # Lesion and proton-only structure sit in white matter; a white-matter neighbourhood is enforced around
    # each so that contrasts against their surroundings are well defined (CRC ring, leakage).
    r_struct = 0.12
    margin = r_struct + 3.5 * voxel_norm
    les_c, po_c = (0.28, 0.22, 0.02), (-0.28, 0.22, 0.02)
    lesion_ball = _ball(X, Y, Z, les_c, r_struct)
    po_ball = _ball(X, Y, Z, po_c, r_struct)
    keep_white = _ball(X, Y, Z, les_c, margin) | _ball(X, Y, Z, po_c, margin)
    white = (white | keep_white) & ~(ventricles & ~keep_white) & ~(deep_grey & ~keep_white)
    csf_in = intracranial & ~brain
    grey = brain & ~white

    na = np.zeros(np.broadcast_shapes(X.shape, Y.shape, Z.shape), dtype=np.float32)
    h = np.zeros_like(na)
    # Painted outside in; later regions overwrite earlier ones.
    for region, name in ((head, "scalp"), (skull_in & ~intracranial, "skull"), (eyes & head & ~skull_in, "eye"),
                         (csf_in, "csf"), (grey, "grey"), (white, "white"),
                         (ventricles & brain & ~keep_white, "csf")):
        na[region] = HEAD_TSC[name]
        h[region] = HEAD_PROTON[name]
    lesion = lesion_ball & with_lesion
    if with_lesion:
        na[lesion] = HEAD_TSC["lesion"]  # proton unchanged: invisible there
    h[po_ball] *= 1.0 - PROTON_ONLY_CONTRAST  # sodium unchanged: invisible there
    masks = dict(support=head, brain=intracranial, lesion=lesion, proton_only=po_ball)
    return na, h, masks


def _breast(X, Y, Z, with_lesion, voxel_norm):
    """Prone breast in front (anterior, -j) of the chest wall."""
    wall_y = 0.45
    body = (_ellipsoid(X, Y, Z, (0, 1.05, 0), (0.95, 0.62, 0.92)) <= 1.0)
    breast_e = _ellipsoid(X, Y, Z, (0, wall_y, 0), (0.70, 0.95, 0.72))
    breast = (breast_e <= 1.0) & (Y <= wall_y)
    obj = body | breast
    inner_breast = (_ellipsoid(X, Y, Z, (0, wall_y, 0), (0.67, 0.92, 0.69)) <= 1.0) & (Y <= wall_y)
    inner_body = (_ellipsoid(X, Y, Z, (0, 1.05, 0), (0.92, 0.59, 0.89)) <= 1.0)
    skin = obj & ~(inner_breast | inner_body)
    muscle = inner_body & (Y <= wall_y + 0.16)
    thorax = inner_body & ~muscle

    # Fibroglandular tissue: a smooth deterministic random-phase field, thresholded inside a cone-like core.
    rng = np.random.default_rng(20240611)  # fixed: anatomy must not depend on the noise seed
    field_ = np.zeros(np.broadcast_shapes(X.shape, Y.shape, Z.shape), dtype=np.float32)
    for _ in range(10):
        k = rng.normal(size=3)
        k = k / np.linalg.norm(k) * rng.uniform(4.0, 9.0)
        field_ += np.cos(k[0] * X + k[1] * Y + k[2] * Z + rng.uniform(0, 2 * np.pi))
    core = _ellipsoid(X, Y, Z, (0, wall_y - 0.05, 0), (0.48, 0.75, 0.52)) <= 1.0
    fibro = inner_breast & core & (field_ > 0.4)

    r_struct = 0.12
    margin = r_struct + 2.5 * voxel_norm  # the two neighbourhoods must not overlap down to 32^3 grids
    tum_c, po_c = (0.25, 0.05, 0.08), (-0.30, 0.15, -0.08)
    tumour = _ball(X, Y, Z, tum_c, r_struct) & with_lesion
    po_ball = _ball(X, Y, Z, po_c, r_struct)
    fibro = (fibro | _ball(X, Y, Z, tum_c, margin)) & ~_ball(X, Y, Z, po_c, margin) & inner_breast

    na = np.zeros(field_.shape, dtype=np.float32)
    h = np.zeros_like(na)
    for region, name in ((inner_breast, "fat"), (fibro, "fibro"), (skin, "skin"), (muscle, "muscle"),
                         (thorax, "thorax")):
        na[region] = BREAST_TSC[name]
        h[region] = BREAST_PROTON[name]
    if with_lesion:
        na[tumour] = BREAST_TSC["tumour"]
    h[po_ball] *= 1.0 - PROTON_ONLY_CONTRAST
    masks = dict(support=obj, brain=breast, lesion=tumour, proton_only=po_ball)
    return na, h, masks


def _bias_field(shape3, half, kind, support, strength):
    """Smooth multiplicative receive bias on the sodium grid; log b zero-mean, span 2*strength on support."""
    nk, nj, ni = shape3
    axes = [((np.arange(n) + 0.5) * 2.0 / n - 1.0) for n in (ni, nj, nk)]
    if nk == 1:
        axes[2] = np.zeros(1)
    X, Y, Z = axes[0][None, None, :], axes[1][None, :, None], axes[2][:, None, None]
    cx, cy, cz = _COIL[kind]
    g = -0.5 * np.log((X - cx) ** 2 + (Y - cy) ** 2 + (Z - cz) ** 2)  # log(1 / distance): receive profile
    g = np.broadcast_to(g, shape3).astype(np.float64)
    g = g - g[support].mean()
    span = np.ptp(g[support])
    g = g * (2.0 * strength / span) if span > 0 and strength > 0 else np.zeros_like(g)
    return np.exp(g - g[support].mean())


# ----------------------------------------------------------------------------------------------- writing
FILE_NAMES = dict(sodium="sodium", proton="proton", reference="reference", bias_field="bias_field",
                  brain="brain_mask", lesion="lesion_mask", proton_only="proton_only_mask",
                  support="support_mask")


def write_case(case: PhantomCase, folder, fmt: str = "nrrd") -> dict:
    """Write a case to ``folder`` (created if needed) as ``fmt`` ("nrrd" or "nii.gz") plus ``case.json``.

    Returns name -> path for: sodium, proton, reference (the TSC truth), bias_field, brain, lesion,
    proton_only, support and case (the JSON of parameters, noise sigma, contrast and tissue values).
    Every file is written to a temporary name in the same folder and renamed into place.
    """
    import SimpleITK as sitk

    if fmt not in ("nrrd", "nii.gz"):
        raise InputError(f"phantom format {fmt!r} is not supported; expected 'nrrd' or 'nii.gz'")
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise InputError(f"cannot create the phantom output folder {folder}: {exc.strerror or exc}") from None
    if not os.access(folder, os.W_OK):
        raise InputError(f"the phantom output folder {folder} is not writable")
    volumes = dict(sodium=case.sodium, proton=case.proton, reference=case.sodium_truth,
                   bias_field=case.bias_field, brain=case.brain, lesion=case.lesion,
                   proton_only=case.proton_only, support=case.support)
    paths = {}
    for name, vol in volumes.items():
        if vol is None:
            continue
        path = folder / f"{FILE_NAMES[name]}.{fmt}"
        _atomic(path, lambda tmp, v=vol: sitk.WriteImage(to_sitk(v), tmp, True))
        paths[name] = path
    info = dict(kind=case.kind, seed=case.seed, params=case.params, noise_sigma=case.noise_sigma,
                noise_model="complex Gaussian before magnitude (Rician); sigma per real channel, mM",
                proton_only_contrast=case.proton_only_contrast, units="sodium and reference in mM (TSC)",
                tsc_mM=HEAD_TSC if case.kind == "head" else BREAST_TSC,
                files={k: p.name for k, p in paths.items()},
                written=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))
    case_path = folder / "case.json"
    text = json.dumps(info, indent=2)
    _atomic(case_path, lambda tmp: Path(tmp).write_text(text))
    paths["case"] = case_path
    return paths


def _atomic(path: Path, write) -> None:
    with atomic_target(path, "".join(path.suffixes) or ".tmp") as tmp:
        write(tmp)
