"""Radial k-space: trajectories (2D, 3D, density-adapted 3D), a multi-coil NUFFT operator, density compensation.

Units and conventions (shared with the Cartesian operator, see physics/cartesian.py):
- a trajectory is an array (..., d) of k-space positions in cycles per pixel, each in [-0.5, 0.5), ordered
  like the image axes ((z, y, x) in 3D, (y, x) in 2D);
- the image centre (phase origin) is index N//2 and the transform is scaled by 1/sqrt(prod(N)), so a
  trajectory on the Cartesian grid gives exactly the centred orthonormal FFT:
  y_j = prod(N)^-1/2 * sum_n x[n] exp(-2 pi i k_j . (n - N//2)).

Backend: finufft (CPU, Flatiron Institute), wrapped in a torch.autograd.Function whose backward is the adjoint
(the gradient of a linear map). torchkbnufft is the alternative backend (pure torch, also on GPU); the
measured comparison that chose finufft as default is in docs/nufft.md.
"""

from __future__ import annotations

import math
from typing import Optional

import numpy as np
import torch

from SodiumDIPLib.errors import InputError
from SodiumDIPLib.physics.base import LinearOperator, Modelled
from SodiumDIPLib.physics.cartesian import CoilSensitivities, as_sensitivities, complex_dtype_for

GOLDEN_MEANS_3D = (0.4656, 0.6823)  # Chan et al. 2009, MRM 61:354 (3D golden-means ordering)
GOLDEN_ANGLE_2D = math.pi * (math.sqrt(5) - 1) / 2  # 111.25 deg, Winkelmann et al. 2007
BACKENDS = ("finufft", "torchkbnufft")


# --------------------------------------------------------------------------------------------- trajectories
def nyquist_spokes(image_shape: tuple, centre_out: Optional[bool] = None) -> int:
    """Spokes for Nyquist sampling at the k-space edge (N = largest matrix size).

    3D centre-out: pi * N^2 (sphere surface 4 pi (N/2)^2 in units of 1/FOV); 2D diametric: pi * N / 2;
    2D centre-out: pi * N.
    """
    n = max(image_shape)
    if len(image_shape) == 3:
        return int(math.ceil(math.pi * n * n))
    return int(math.ceil(math.pi * n / (1 if centre_out else 2)))


def _readout_radii(n_readout: int, density_adapted: bool, k0_fraction: float, kmax: float = 0.5) -> np.ndarray:
    """Radii of the samples of one centre-out spoke, sampled uniformly in time, all < kmax.

    Density-adapted (Nagel et al. 2009, MRM 62:1565): linear up to k0 = k0_fraction * kmax, then the
    gradient decays so that r^2 dr/dt is constant (uniform 3D sampling density beyond k0).
    """
    t = np.arange(n_readout, dtype=np.float64) / n_readout  # in [0, 1): last sample strictly below kmax
    if not density_adapted:
        return t * kmax
    if not 0 < k0_fraction <= 1:
        raise InputError(f"k0_fraction must be in (0, 1], got {k0_fraction}")
    k0 = k0_fraction * kmax
    # linear part: r = v t for t < t0 (v = k0 / t0); then r^3 = k0^3 + 3 k0^2 v (t - t0); r(1) = kmax fixes v
    # with t0 chosen so the gradient is continuous: total time 1 = t0 + (kmax^3 - k0^3) / (3 k0^2 v).
    t0 = 1.0 / (1.0 + (kmax ** 3 - k0 ** 3) / (3 * k0 ** 3))
    v = k0 / t0
    r = np.where(t < t0, v * t, np.cbrt(np.maximum(k0 ** 3 + 3 * k0 ** 2 * v * (t - t0), 0.0)))
    return np.minimum(r, np.nextafter(kmax, 0))


def spoke_directions_3d(n_spokes: int, ordering: str = "golden") -> np.ndarray:
    """Unit directions (n_spokes, 3) in (z, y, x) covering the full sphere.

    ordering: "golden" (3D golden means: any contiguous run of spokes covers the sphere uniformly, the
    property retrospective undersampling uses) or "phyllotaxis" (Fibonacci / spiral phyllotaxis sphere).
    """
    n = np.arange(n_spokes, dtype=np.float64)
    if ordering == "golden":
        z = 2.0 * np.mod(n * GOLDEN_MEANS_3D[0], 1.0) - 1.0
        phi = 2.0 * math.pi * np.mod(n * GOLDEN_MEANS_3D[1], 1.0)
    elif ordering == "phyllotaxis":
        z = 1.0 - (2.0 * n + 1.0) / n_spokes
        phi = n * math.pi * (3.0 - math.sqrt(5.0))
    else:
        raise InputError(f"unknown spoke ordering {ordering!r}; expected 'golden' or 'phyllotaxis'")
    s = np.sqrt(np.clip(1.0 - z * z, 0.0, None))
    return np.stack([z, s * np.sin(phi), s * np.cos(phi)], axis=-1)


def radial_trajectory(image_shape: tuple, n_spokes: Optional[int] = None, n_readout: Optional[int] = None,
                      ordering: str = "golden", density_adapted: bool = True, k0_fraction: float = 0.4,
                      centre_out: Optional[bool] = None, readout_oversampling: float = 2.0) -> np.ndarray:
    """Radial trajectory (n_spokes, n_readout, d) in cycles/pixel, every coordinate in [-0.5, 0.5).

    image_shape:     (z, y, x) for 3D radial, (y, x) for 2D radial.
    n_spokes:        number of spokes (default: Nyquist, see nyquist_spokes); fewer spokes = acceleration.
    n_readout:       samples per spoke (default: radial sample spacing <= 1 / (N * readout_oversampling)
                     everywhere: N for plain centre-out 3D, about 1.2 N for density-adapted with k0_fraction
                     0.4, 2 N for diametric 2D; N = largest matrix size). Readout oversampling 2 (the ADC
                     oversampling scanners use) keeps gridding's DC error ~1 % (4 % with Nyquist-only sampling
                     it is 13 %: the first shell's samples leak into the DC).
    ordering:        3D: "golden" (golden means) or "phyllotaxis"; 2D: "golden" (golden angle) or "uniform".
    density_adapted: 3D only: density-adapted radial readout (what sodium imaging uses), linear up to
                     k0_fraction * kmax, uniform sampling density beyond.
    centre_out:      2D only: centre-out half spokes instead of diametric ones (3D spokes are centre-out).
    """
    shape = tuple(int(s) for s in image_shape)
    if len(shape) not in (2, 3) or min(shape) < 2:
        raise InputError(f"radial_trajectory expects a 2D or 3D image shape, got {image_shape}")
    n = max(shape)
    if len(shape) == 3:
        n_spokes = nyquist_spokes(shape) if n_spokes is None else int(n_spokes)
        if n_readout is None:  # radial spacing <= 1 / (N * oversampling) everywhere along the spoke
            r = _readout_radii(4096, density_adapted, k0_fraction)
            n_readout = int(math.ceil(np.diff(r).max() * 4096 * n * readout_oversampling))
        else:
            n_readout = int(n_readout)
        if n_spokes < 1 or n_readout < 2:
            raise InputError(f"need at least 1 spoke and 2 readout samples, got {n_spokes} and {n_readout}")
        r = _readout_radii(n_readout, density_adapted, k0_fraction)
        d = spoke_directions_3d(n_spokes, ordering)
        traj = d[:, None, :] * r[None, :, None]
    else:
        centre_out = bool(centre_out)
        n_spokes = nyquist_spokes(shape, centre_out) if n_spokes is None else int(n_spokes)
        if n_readout is None:
            n_readout = int(math.ceil((n // 2 if centre_out else n) * readout_oversampling))
        if n_spokes < 1 or n_readout < 2:
            raise InputError(f"need at least 1 spoke and 2 readout samples, got {n_spokes} and {n_readout}")
        i = np.arange(n_spokes, dtype=np.float64)
        if ordering == "golden":
            angle = i * GOLDEN_ANGLE_2D
        elif ordering == "uniform":
            angle = i * (2 * math.pi if centre_out else math.pi) / n_spokes
        else:
            raise InputError(f"unknown 2D spoke ordering {ordering!r}; expected 'golden' or 'uniform'")
        if centre_out:
            r = _readout_radii(n_readout, False, 1.0)
        else:
            r = (np.arange(n_readout) - n_readout // 2) / n_readout  # -0.5 .. < 0.5
        d = np.stack([np.sin(angle), np.cos(angle)], axis=-1)
        traj = d[:, None, :] * r[None, :, None]
    # Rotations can put a coordinate at exactly +0.5 only in the limit; keep the half-open interval exact.
    traj = np.where(traj >= 0.5, np.nextafter(0.5, 0), traj)
    return traj.astype(np.float32)


def validate_trajectory(traj, image_shape: Optional[tuple] = None) -> np.ndarray:
    """Check a trajectory (..., d) in cycles/pixel: finite, d matches the image, all coordinates in [-0.5, 0.5)."""
    t = np.asarray(traj.detach().cpu().numpy() if isinstance(traj, torch.Tensor) else traj)
    if t.ndim < 2 or t.shape[-1] not in (2, 3):
        raise InputError(f"a trajectory must have shape (..., d) with d = 2 or 3; got shape {t.shape}")
    if image_shape is not None and t.shape[-1] != len(image_shape):
        raise InputError(f"a {t.shape[-1]}D trajectory cannot sample a {len(image_shape)}D image of shape {tuple(image_shape)}")
    if not np.isfinite(t).all():
        raise InputError("the trajectory contains NaN or infinite values")
    lo, hi = float(t.min()), float(t.max())
    if lo < -0.5 or hi >= 0.5:
        raise InputError(f"trajectory outside [-0.5, 0.5) cycles/pixel (range {lo:.4g} .. {hi:.4g}); "
                         "expected k-space positions in cycles per pixel")
    return t.astype(np.float64)


# --------------------------------------------------------------------------------------------- backends
class _Finufft:
    """finufft type 2 (image -> samples) and type 1 (samples -> image), orthonormal scaling, batched over coils."""

    def __init__(self, traj_flat: np.ndarray, shape: tuple, eps: float):
        self.shape = tuple(shape)
        self.eps = float(eps)
        self.scale = 1.0 / math.sqrt(float(np.prod(self.shape)))
        self.pts64 = [np.ascontiguousarray(2 * math.pi * traj_flat[:, i]) for i in range(traj_flat.shape[1])]
        self.pts32 = [p.astype(np.float32) for p in self.pts64]
        self.n_points = traj_flat.shape[0]
        self._plans = {}

    def _plan(self, kind: int, n_trans: int, double: bool):
        import finufft

        key = (kind, n_trans, double)
        if key not in self._plans:
            dtype = "complex128" if double else "complex64"
            eps = max(self.eps, 1e-14 if double else 1e-6)
            plan = finufft.Plan(kind, self.shape, n_trans=n_trans, eps=eps, isign=-1 if kind == 2 else 1,
                                dtype=dtype, nthreads=max(1, torch.get_num_threads()))
            plan.setpts(*(self.pts64 if double else self.pts32))
            self._plans[key] = plan
        return self._plans[key]

    def forward(self, x: np.ndarray) -> np.ndarray:  # (C, *shape) -> (C, M)
        double = x.dtype == np.complex128
        plan = self._plan(2, x.shape[0], double)
        return plan.execute(np.ascontiguousarray(x)).reshape(x.shape[0], self.n_points) * self.scale

    def adjoint(self, y: np.ndarray) -> np.ndarray:  # (C, M) -> (C, *shape)
        double = y.dtype == np.complex128
        plan = self._plan(1, y.shape[0], double)
        return plan.execute(np.ascontiguousarray(y)).reshape((y.shape[0],) + self.shape) * self.scale


class _FinufftApply(torch.autograd.Function):
    """finufft through autograd: the backward of a linear map is its adjoint applied to the output gradient."""

    @staticmethod
    def forward(ctx, x, backend, adjoint):
        ctx.backend, ctx.adjoint = backend, adjoint
        arr = x.detach().cpu().numpy()
        out = backend.adjoint(arr) if adjoint else backend.forward(arr)
        return torch.from_numpy(np.ascontiguousarray(out).astype(arr.dtype, copy=False)).to(x.device)

    @staticmethod
    def backward(ctx, grad):
        arr = grad.detach().cpu().numpy()
        out = ctx.backend.forward(arr) if ctx.adjoint else ctx.backend.adjoint(arr)
        return torch.from_numpy(np.ascontiguousarray(out).astype(arr.dtype, copy=False)).to(grad.device), None, None


class _TorchKbNufft:
    """torchkbnufft (pure torch, autograd-native, CPU or GPU), rescaled to the same orthonormal convention."""

    def __init__(self, traj_flat: np.ndarray, shape: tuple):
        import torchkbnufft as tkbn

        self.shape = tuple(shape)
        self.omega = torch.as_tensor(2 * math.pi * traj_flat.T, dtype=torch.float32)
        self.fwd = tkbn.KbNufft(im_size=self.shape)
        self.adj = tkbn.KbNufftAdjoint(im_size=self.shape)
        self.device = torch.device("cpu")
        self.scale = 1.0 / math.sqrt(float(np.prod(self.shape)))  # its norm=None is the plain sum

    def to(self, device):
        self.omega = self.omega.to(device)
        self.fwd = self.fwd.to(device)
        self.adj = self.adj.to(device)
        self.device = torch.device(device)

    def _sync(self, t: torch.Tensor):
        if t.device != self.device:
            self.to(t.device)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (C, *shape) -> (C, M)
        self._sync(x)
        dt = x.dtype
        return (self.fwd(x.to(torch.complex64)[None], self.omega)[0] * self.scale).to(dt)

    def adjoint(self, y: torch.Tensor) -> torch.Tensor:  # (C, M) -> (C, *shape)
        self._sync(y)
        dt = y.dtype
        return (self.adj(y.to(torch.complex64)[None], self.omega)[0] * self.scale).to(dt)


# --------------------------------------------------------------------------------------------- operator
class NonUniformFFT(LinearOperator):
    """N: coil images (coils, *image_shape) -> samples (coils, *sample_shape) on a non-Cartesian trajectory,
    through a finufft (type 2 forward, type 1 adjoint) or torchkbnufft backend."""

    def __init__(self, backend, backend_name: str, n_coils: int, image_shape: tuple, sample_shape: tuple):
        self.backend, self.backend_name = backend, backend_name
        self.ishape = (n_coils,) + tuple(image_shape)
        self.oshape = (n_coils,) + tuple(sample_shape)

    def forward(self, x):
        flat = _FinufftApply.apply(x, self.backend, False) if self.backend_name == "finufft" else self.backend.forward(x)
        return flat.reshape(self.oshape)

    def adjoint(self, y):
        cdt = complex_dtype_for(y)
        y = y.to(cdt).reshape(self.oshape[0], -1)
        return _FinufftApply.apply(y, self.backend, True) if self.backend_name == "finufft" else self.backend.adjoint(y)

    def to(self, device):
        if self.backend_name == "torchkbnufft":
            self.backend.to(device)
        return self


class RadialNUFFT(Modelled):
    """y[c] = NUFFT_traj(S[c] * x), i.e. y = N S x: image (image_shape) -> samples (coils, *traj.shape[:-1]).

    traj:          (..., d) trajectory in cycles/pixel in [-0.5, 0.5) (see radial_trajectory).
    image_shape:   (z, y, x) or (y, x); d must equal its length.
    sensitivities: (coils, *image_shape) complex maps, or None for one uniform coil.
    backend:       "finufft" (default, CPU; tensors on other devices go through the CPU) or "torchkbnufft".
    eps:           finufft relative accuracy (single precision: >= 1e-6).
    dcf:           density compensation weights of shape traj.shape[:-1] for gridding (default, computed on
                   first use: analytic radial weights for (spokes, readout, d) trajectories, else Pipe-Menon).
    The forward accepts a real or complex image (cast to complex), returns complex samples; autograd works.
    """

    def __init__(self, traj, image_shape: tuple, sensitivities=None, backend: str = "finufft", eps: float = 1e-5,
                 dcf=None):
        image_shape = tuple(int(s) for s in image_shape)
        t = validate_trajectory(traj, image_shape)
        self.traj = t.astype(np.float32)
        if backend not in BACKENDS:
            raise InputError(f"unknown NUFFT backend {backend!r}; expected one of {BACKENDS}")
        self.backend_name = backend
        self.sample_shape = t.shape[:-1]
        self.S = CoilSensitivities(as_sensitivities(sensitivities, image_shape))
        self.ishape = image_shape
        self.oshape = (int(self.S.sens.shape[0]),) + tuple(self.sample_shape)
        flat = t.reshape(-1, t.shape[-1])
        backend_impl = _Finufft(flat, image_shape, eps) if backend == "finufft" else _TorchKbNufft(flat, image_shape)
        self.N = NonUniformFFT(backend_impl, backend, self.oshape[0], image_shape, self.sample_shape)
        self.model = self.N @ self.S
        self._dcf = None if dcf is None else self._check_dcf(dcf)

    def _check_dcf(self, dcf) -> torch.Tensor:
        w = torch.as_tensor(np.asarray(dcf), dtype=torch.float32)
        if tuple(w.shape) != tuple(self.sample_shape):
            raise InputError(f"density compensation of shape {tuple(w.shape)} does not match the trajectory's "
                             f"sample shape {tuple(self.sample_shape)}")
        return w

    @property
    def sens(self) -> torch.Tensor:
        return self.S.sens

    @property
    def n_coils(self) -> int:
        return int(self.sens.shape[0])

    @property
    def dcf(self) -> torch.Tensor:
        if self._dcf is None:
            # analytic weights need spokes (spokes, readout, d); other sample layouts use Pipe-Menon
            method = "analytic" if self.traj.ndim == 3 else "pipe"
            self._dcf = torch.as_tensor(density_compensation(self.traj, self.ishape, method=method), dtype=torch.float32)
        return self._dcf

    def coil_images(self, y: torch.Tensor, density_compensated: bool = True) -> torch.Tensor:
        """Per-coil gridding images (coils, *image_shape), ignoring the sensitivities."""
        if tuple(y.shape) != self.oshape:
            raise InputError(f"k-space of shape {tuple(y.shape)} does not match the operator's output shape {self.oshape}")
        w = self.dcf.to(y.device) if density_compensated else 1.0
        return self.N.adjoint(w * y.to(complex_dtype_for(y)))

    def gridding(self, y: torch.Tensor) -> torch.Tensor:
        """Density-compensated adjoint, sensitivity-combined: sum_c conj(S_c) A_c^H (w y_c) / sum_c |S_c|^2."""
        x = self.adjoint(self.dcf.to(y.device) * y)
        norm = (self.sens.abs() ** 2).sum(0).to(x.device)
        return x / norm.clamp_min(1e-6 * float(norm.max()))

    def zero_filled(self, y: torch.Tensor) -> torch.Tensor:
        return self.gridding(y)


def nudft(x: np.ndarray, traj: np.ndarray) -> np.ndarray:
    """Exact (slow) non-uniform DFT with the operator's convention; for tests and accuracy checks only."""
    shape = x.shape
    grids = np.meshgrid(*[np.arange(n) - n // 2 for n in shape], indexing="ij")
    pos = np.stack([g.ravel() for g in grids], axis=-1).astype(np.float64)  # (N, d)
    t = np.asarray(traj, dtype=np.float64).reshape(-1, len(shape))
    out = np.empty(t.shape[0], dtype=np.complex128)
    for s in range(0, t.shape[0], 256):
        out[s:s + 256] = np.exp(-2j * math.pi * t[s:s + 256] @ pos.T) @ x.ravel()
    return (out / math.sqrt(float(np.prod(shape)))).reshape(np.shape(traj)[:-1])


# --------------------------------------------------------------------------------------------- density compensation
def density_compensation(traj, image_shape: tuple, method: str = "analytic", iterations: int = 15) -> np.ndarray:
    """Density compensation weights w (traj.shape[:-1]) so that A^H (w * A x) ~ x for band-limited x.

    method "analytic": radial geometry: each sample gets the k-space volume of its shell (thickness = local
        sample spacing along the spoke) shared by the spokes crossing it, times prod(N) (the orthonormal
        scaling). Requires traj shaped (spokes, readout, d) with straight spokes through the centre.
    method "pipe": Pipe & Menon iteration w <- w / |A A^H w| (any trajectory; ``iterations`` steps).
    """
    t = validate_trajectory(traj, image_shape)
    if method == "pipe":
        return _pipe_menon(t, tuple(image_shape), int(iterations))
    if method != "analytic":
        raise InputError(f"unknown density compensation method {method!r}; expected 'analytic' or 'pipe'")
    if t.ndim != 3:
        raise InputError("analytic density compensation needs a trajectory shaped (spokes, readout, d); use method='pipe'")
    d = t.shape[-1]
    n_spokes = t.shape[0]
    r = np.linalg.norm(t, axis=-1)
    # local sample spacing along the spoke (from the signed positions: |r| has a zero slope at the centre)
    dr = np.linalg.norm(np.gradient(t, axis=1), axis=-1) if t.shape[1] > 1 else np.full_like(r, 0.5)
    # a diametric spoke (through the centre, both signs) crosses each shell twice
    first, last = t[:, 0, :], t[:, -1, :]
    diametric = np.sum(first * last, axis=-1) < 0
    crossings = n_spokes * np.where(diametric, 2.0, 1.0).mean()
    lo = np.clip(r - dr / 2, 0.0, None)
    hi = r + dr / 2
    if d == 3:
        vol = 4.0 / 3.0 * math.pi * (hi ** 3 - lo ** 3)
    else:
        vol = math.pi * (hi ** 2 - lo ** 2)
    # the central sample of a diametric spoke sits on one shell alone (both halves meet there)
    centre = r < 0.5 * dr
    vol = np.where(centre & diametric[:, None], vol * 2.0, vol)
    w = vol / crossings * float(np.prod(image_shape))
    # Samples within ~1/N of the centre all leak into the DC through the Dirichlet kernel, which the shell
    # volumes ignore (DC over-estimated by ~15 % at 2x readout oversampling): one global factor, fitted so the
    # gridding of a smooth object-sized blob has the blob's amplitude, removes that bias.
    return _calibrate_scale(w, t, tuple(image_shape)).astype(np.float32)


def _calibrate_scale(w: np.ndarray, t: np.ndarray, image_shape: tuple) -> np.ndarray:
    grids = np.meshgrid(*[np.arange(n) - n // 2 for n in image_shape], indexing="ij")
    blob = np.exp(-sum(g.astype(np.float64) ** 2 for g in grids) / (2 * (0.15 * min(image_shape)) ** 2))
    op = RadialNUFFT(t, image_shape, dcf=w)
    g = op.gridding(op.forward(torch.as_tensor(blob))).real.numpy()
    return w * float(np.vdot(g, blob) / np.vdot(g, g))


def _pipe_menon(t: np.ndarray, image_shape: tuple, iterations: int) -> np.ndarray:
    """Pipe-Menon weights through torchkbnufft's Kaiser-Bessel gridding kernel (a positive kernel: the iteration
    is stable), rescaled so the gridding of a smooth blob has the blob's amplitude (its scale is arbitrary)."""
    import torchkbnufft as tkbn

    flat = t.reshape(-1, t.shape[-1])
    omega = torch.as_tensor(2 * math.pi * flat.T, dtype=torch.float32)
    w = tkbn.calc_density_compensation_function(omega, im_size=image_shape, num_iterations=iterations)
    w = w.abs().reshape(t.shape[:-1]).numpy().astype(np.float64)
    return _calibrate_scale(w, t, image_shape).astype(np.float32)


def grid_coil_images(kspace, traj, image_shape: tuple, dcf=None, backend: str = "finufft") -> np.ndarray:
    """Per-coil gridding images (coils, *image_shape) from radial k-space (coils, *traj.shape[:-1]) (numpy)."""
    k = np.asarray(kspace)
    op = RadialNUFFT(traj, image_shape, sensitivities=np.ones((k.shape[0],) + tuple(image_shape), np.complex64),
                     backend=backend, dcf=dcf)
    if tuple(k.shape) != op.oshape:
        raise InputError(f"radial k-space of shape {k.shape} does not match the trajectory: expected {op.oshape}")
    return op.coil_images(torch.as_tensor(k.astype(np.complex64))).numpy()
