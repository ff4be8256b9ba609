"""Simulated sodium brains on a real anatomy: the MNI152 template shipped inside nilearn's wheel.

A second anatomy for validation, independent of the built-in geometric head (``SodiumDIPLib.data.phantom``): the
grey / white matter probability maps, the brain mask and the T1 template of MNI152 (2 mm, nilearn's
``datasets.load_mni152_*``, read from the installed package -- nothing is downloaded). Needs the optional
extra ``suite`` (``pip install sodiumdip[suite]``); without nilearn :func:`available` says why.

Sodium truth (mM) from tissue fractions: CSF 140, grey 40, white 30, a 6 mm extra-cerebral shell ("scalp")
25. Proton image: the T1 template (the shell at 0.5 of the brain's 95th percentile). Per seed: a sodium-only
lesion (a ball in brain tissue, radius 5-12 mm, TSC 50-90 mM, proton unchanged) and a proton-only structure
(a ball, radius 5-12 mm, proton 25-50 % darker, sodium unchanged) at random positions. Sodium voxel size
3-6 mm (anti-aliased resampling of the 2 mm maps), proton at half the sodium voxel size, optional smooth
receive bias (log(1/distance) to a coil at a random direction outside the head, span 2 * bias_strength), noise
from ``n_coils`` equal-sensitivity channels: Rician for 1, noncentral chi (2 * n_coils degrees of freedom) above.
Returns a ``phantom.PhantomCase`` (kind "atlas"), so every consumer of the built-in phantom takes it.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np
from scipy import ndimage as ndi

from SodiumDIPLib.errors import InputError
from SodiumDIPLib.data.phantom import PROTON_SNR, PhantomCase
from SodiumDIPLib.data.volume import Volume

TSC = dict(csf=140.0, grey=40.0, white=30.0, shell=25.0)
NATIVE_MM = 2.0
SHELL_MM = 6.0


def available() -> str | None:
    """None when the atlas can be built; otherwise one line saying what is missing."""
    try:
        import nilearn.datasets  # noqa: F401
    except ImportError:
        return "the atlas cases need nilearn (optional extra: pip install 'sodiumdip[suite]')"
    return None


@lru_cache(maxsize=1)
def _maps():
    """(t1, grey, white, brain) on the native 2 mm grid, array axes (k, j, i) = (z, y, x), cropped to the head."""
    reason = available()
    if reason:
        raise InputError(reason)
    from nilearn import datasets

    load = lambda f: np.asarray(f(resolution=2).get_fdata(), np.float32).transpose(2, 1, 0)  # noqa: E731
    t1, grey, white = (load(f) for f in (datasets.load_mni152_template, datasets.load_mni152_gm_template,
                                          datasets.load_mni152_wm_template))
    brain = load(datasets.load_mni152_brain_mask) > 0.5
    margin = int(np.ceil(SHELL_MM / NATIVE_MM)) + 3
    idx = np.nonzero(brain)
    box = tuple(slice(max(int(i.min()) - margin, 0), int(i.max()) + margin + 1) for i in idx)
    pad = [(max(margin - int(i.min()), 0), max(int(i.max()) + margin + 1 - n, 0)) for i, n in zip(idx, brain.shape)]
    crop = lambda a: np.pad(a[box], pad)  # noqa: E731
    return crop(t1), crop(grey), crop(white), crop(brain)


def _resample(a: np.ndarray, out_mm: float, n_out=None) -> np.ndarray:
    """Anti-aliased resampling of a native-grid map onto ``n_out`` voxels of ``out_mm`` starting at its edge."""
    factor = out_mm / NATIVE_MM
    if factor > 1:
        a = ndi.gaussian_filter(a.astype(np.float32), 0.42 * factor)
    n_out = n_out or [max(int(n // factor), 1) for n in a.shape]
    coords = np.meshgrid(*[(np.arange(m) + 0.5) * factor - 0.5 for m in n_out], indexing="ij")
    return ndi.map_coordinates(a.astype(np.float32), coords, order=1, mode="nearest").astype(np.float32)


def _ball_on_native(shape, centre, radius_vox):
    k, j, i = np.ogrid[: shape[0], : shape[1], : shape[2]]
    d = np.sqrt((k - centre[0]) ** 2 + (j - centre[1]) ** 2 + (i - centre[2]) ** 2)
    return np.clip(radius_vox + 0.5 - d, 0.0, 1.0).astype(np.float32)  # partial-volume edge


def _pick_centre(rng, allowed: np.ndarray, radius_vox: float, avoid=None, plane=None):
    inner = ndi.binary_erosion(allowed, iterations=max(int(np.ceil(radius_vox)), 1))
    if avoid is not None:
        inner &= ~ndi.binary_dilation(avoid > 0, iterations=max(int(np.ceil(radius_vox)) + 2, 1))
    if plane is not None:  # keep the centre in one axial plane (k index)
        inner[: plane] = False
        inner[plane + 1:] = False
    cand = np.argwhere(inner)
    if len(cand) == 0:
        cand = np.argwhere(allowed)
    return cand[rng.integers(len(cand))]


def _receive_bias(shape, support, rng, strength):
    """log(1 / distance) to a coil at a random direction 1.2 half-extents from the centre; mean log b = 0."""
    if strength <= 0:
        return np.ones(shape, np.float32)
    direction = rng.standard_normal(3)
    direction /= np.linalg.norm(direction)
    coil = 1.2 * direction
    axes = [((np.arange(n) + 0.5) * 2.0 / n - 1.0) for n in shape]
    grids = np.meshgrid(*axes, indexing="ij")
    g = -0.5 * np.log(sum((x - c) ** 2 for x, c in zip(grids, coil)))
    g = g - g[support].mean()
    g = g * (2.0 * strength / max(np.ptp(g[support]), 1e-9))
    return np.exp(g - g[support].mean()).astype(np.float32)


def noisy_magnitude(signal: np.ndarray, sigma: float, n_coils: int, rng) -> np.ndarray:
    """|coil-combined| magnitude: noncentral chi with 2 * n_coils degrees of freedom (Rician for one coil).

    Equal-sensitivity channels combined by root-sum-of-squares: the signal sits in one real component of the
    combination, sigma is the noise per real component of every channel."""
    if int(n_coils) < 1:
        raise InputError(f"n_coils must be >= 1, got {n_coils}")
    total = (signal + sigma * rng.standard_normal(signal.shape)) ** 2
    for _ in range(2 * int(n_coils) - 1):
        total += (sigma * rng.standard_normal(signal.shape)) ** 2
    return np.sqrt(total).astype(np.float32)


def make_atlas_brain(seed: int = 0, voxel_mm: float = 4.0, snr: float = 8.0, bias_strength: float = 0.0,
                     n_coils: int = 1, slice_only: bool = False) -> PhantomCase:
    """A simulated sodium brain on the MNI152 anatomy (see the module docstring); deterministic from ``seed``.

    voxel_mm:      sodium voxel size, 3..6 mm (proton at half of it).
    snr:           mean truth TSC in the brain / noise sigma per real channel (> 0).
    bias_strength: log receive-bias span / 2 over the object (0 = none), 0..1.
    n_coils:       receive channels combined by root-sum-of-squares (1 = Rician).
    slice_only:    one axial slice through the lesion (2D arrays) instead of the volume.
    """
    if not 3.0 <= float(voxel_mm) <= 6.0:
        raise InputError(f"atlas voxel_mm must be between 3 and 6 mm, got {voxel_mm!r}")
    if not (float(snr) > 0 and np.isfinite(snr)):
        raise InputError(f"atlas snr must be a positive number, got {snr!r}")
    if not 0.0 <= float(bias_strength) <= 1.0:
        raise InputError(f"atlas bias_strength must be between 0 and 1, got {bias_strength!r}")
    rng = np.random.default_rng(int(seed))
    t1, grey, white, brain = _maps()
    shell = ndi.binary_dilation(brain, iterations=int(round(SHELL_MM / NATIVE_MM))) & ~brain
    csf = np.clip(1.0 - grey - white, 0.0, 1.0) * brain

    tissue = brain & ((grey + white) > 0.8)
    les_r = rng.uniform(5.0, 12.0) / NATIVE_MM
    les_c = _pick_centre(rng, tissue, les_r)
    les = _ball_on_native(brain.shape, les_c, les_r)
    po_r = rng.uniform(5.0, 12.0) / NATIVE_MM
    po = _ball_on_native(brain.shape, _pick_centre(rng, tissue, po_r, avoid=les,
                                                   plane=int(les_c[0]) if slice_only else None), po_r)
    les_tsc, po_contrast = rng.uniform(50.0, 90.0), rng.uniform(0.25, 0.5)

    base = TSC["csf"] * csf + TSC["grey"] * grey * brain + TSC["white"] * white * brain + TSC["shell"] * shell
    na_fine = base * (1 - les) + les_tsc * les * brain
    h_ref = float(np.percentile(t1[brain], 95))
    h_fine = np.where(brain, t1 / h_ref, 0.5 * shell) * (1.0 - po_contrast * po)

    v = float(voxel_mm)
    truth = _resample(na_fine, v)
    masks = {name: _resample(m.astype(np.float32), v) >= 0.5
             for name, m in (("brain", brain), ("support", brain | shell), ("lesion", les > 0.5),
                             ("proton_only", po > 0.5))}
    proton_clean = _resample(h_fine, v / 2, [2 * n for n in truth.shape])
    bias = _receive_bias(truth.shape, masks["support"], rng, float(bias_strength))
    sigma = float(truth[masks["brain"]].mean()) / float(snr)
    sodium = noisy_magnitude(truth * bias, sigma, n_coils, rng)
    h_sigma = float(proton_clean[proton_clean > 0.3].mean()) / PROTON_SNR
    proton = noisy_magnitude(proton_clean, h_sigma, 1, rng)

    spacing, origin = (v, v, v), (0.0, 0.0, 0.0)
    h_origin = tuple(-v / 4 for _ in range(3))  # proton voxels tile the sodium voxels exactly
    if slice_only:
        k0 = int(np.argmax(masks["lesion"].sum((1, 2))))
        cut = lambda a: a[k0]  # noqa: E731
        proton = proton[2 * k0: 2 * k0 + 2].mean(0)
        arrays = {k: cut(a) for k, a in (("sodium", sodium), ("truth", truth), ("bias", bias))}
        masks = {k: cut(m) for k, m in masks.items()}
        origin = (0.0, 0.0, k0 * v)
        h_geom = ((v / 2, v / 2, v), (-v / 4, -v / 4, k0 * v), np.eye(3))
    else:
        arrays = dict(sodium=sodium, truth=truth, bias=bias)
        h_geom = ((v / 2,) * 3, h_origin, np.eye(3))
    geom = (spacing, origin, np.eye(3))
    u8 = lambda m: Volume(m.astype(np.uint8), *geom)  # noqa: E731
    params = dict(kind="atlas", seed=int(seed), voxel_mm=v, snr=float(snr), bias_strength=float(bias_strength),
                  n_coils=int(n_coils), slice_only=bool(slice_only), lesion_tsc=float(les_tsc),
                  proton_only_contrast=float(po_contrast))
    return PhantomCase(kind="atlas", seed=int(seed), sodium=Volume(arrays["sodium"], *geom),
                       sodium_truth=Volume(arrays["truth"], *geom), proton=Volume(proton.astype(np.float32), *h_geom),
                       bias_field=Volume(arrays["bias"], *geom), brain=u8(masks["brain"]), lesion=u8(masks["lesion"]),
                       proton_only=u8(masks["proton_only"]), proton_only_contrast=float(po_contrast),
                       noise_sigma=sigma, params=params, support=u8(masks["support"]))
