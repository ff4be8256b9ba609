"""Simulated multi-coil acquisitions: smooth coil sensitivities and noisy k-space (Cartesian or radial).

Used to make phantoms emit raw data: simulate_kspace(image) with image e.g. sodium truth * receive bias.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

import numpy as np
import torch

from SodiumDIPLib.errors import InputError
from SodiumDIPLib.physics.cartesian import fftc_np
from SodiumDIPLib.physics.radial import RadialNUFFT, radial_trajectory


def coil_sensitivities(image_shape: tuple, n_coils: int = 8, radius: float = 1.2, rings: Optional[int] = None,
                       normalize: bool = True) -> np.ndarray:
    """Smooth loop-coil-like sensitivities (n_coils, *image_shape), complex64.

    Coils sit on a cylinder of ``radius`` (in units of the half field of view) around the z axis (in 3D in
    ``rings`` rings along z, default 2 when n_coils >= 8 else 1). Each map falls off as 1/distance to its
    coil and carries a phase that turns with the azimuth around the coil (like a loop's B1-), so the maps
    overlap and differ in phase. normalize=True scales the maps to unit root-sum-of-squares at every voxel:
    then the image x that the operator sees is the coil-combined image (the phantom's receive bias stays in x).
    """
    shape = tuple(int(s) for s in image_shape)
    if len(shape) not in (2, 3):
        raise InputError(f"coil_sensitivities expects a 2D or 3D image shape, got {image_shape}")
    if n_coils < 1:
        raise InputError(f"need at least one coil, got {n_coils}")
    grids = np.meshgrid(*[(np.arange(n) - n // 2) / (n / 2) for n in shape], indexing="ij")
    y, x = grids[-2], grids[-1]
    z = grids[0] if len(shape) == 3 else np.zeros_like(x)
    if rings is None:
        rings = 2 if (len(shape) == 3 and n_coils >= 8) else 1
    per_ring = int(math.ceil(n_coils / rings))
    maps = []
    for c in range(n_coils):
        ring, k = divmod(c, per_ring)
        theta = 2 * math.pi * k / per_ring + ring * math.pi / per_ring
        cz = 0.0 if rings == 1 else -0.5 + ring / (rings - 1)
        cy, cx = radius * math.sin(theta), radius * math.cos(theta)
        dist = np.sqrt((x - cx) ** 2 + (y - cy) ** 2 + (z - cz) ** 2 + 0.05)
        phase = np.arctan2(y - cy, x - cx) + theta
        maps.append(np.exp(1j * phase) / dist)
    s = np.stack(maps).astype(np.complex64)
    if normalize:
        s /= np.sqrt((np.abs(s) ** 2).sum(0, keepdims=True))
    return s


@dataclass
class SimulatedKspace:
    """Multi-coil k-space from a known image.

    kspace:        (coils, *image_shape) Cartesian (fully sampled) or (coils, spokes, readout) radial, complex64.
    sensitivities: (coils, *image_shape) the maps used.
    noise_sigma:   std of the complex Gaussian noise per real channel (k-space units).
    trajectory:    (spokes, readout, d) in cycles/pixel for radial, None for Cartesian.
    clean:         the noise-free k-space.
    """

    kspace: np.ndarray
    sensitivities: np.ndarray
    noise_sigma: float
    trajectory: Optional[np.ndarray]
    clean: np.ndarray
    image: np.ndarray

    @property
    def kind(self) -> str:
        return "cartesian" if self.trajectory is None else "radial"


def simulate_kspace(image, n_coils: int = 8, kind: str = "cartesian", noise_sigma: float = 0.0,
                    relative_noise: Optional[float] = None, seed: int = 0, trajectory=None,
                    n_spokes: Optional[int] = None, sensitivities=None) -> SimulatedKspace:
    """Multi-coil k-space of ``image`` (2D/3D, real or complex) with complex Gaussian noise.

    kind:           "cartesian" (centred orthonormal FFT, fully sampled; undersample with sampling.cartesian_mask)
                    or "radial" (NUFFT on ``trajectory``, default radial_trajectory(image.shape, n_spokes)).
    noise_sigma:    std per real channel of the k-space noise (for Cartesian, equal to the per-coil image noise).
    relative_noise: alternatively, noise_sigma = relative_noise * max|image| (overrides noise_sigma).
    seed:           noise seed.
    sensitivities:  given maps (coils, *image.shape) instead of coil_sensitivities(image.shape, n_coils).
    """
    x = np.asarray(image)
    if x.ndim not in (2, 3):
        raise InputError(f"simulate_kspace expects a 2D or 3D image, got shape {x.shape}")
    if not np.isfinite(x).all():
        raise InputError("the image to simulate contains NaN or infinite values")
    if sensitivities is None:
        sens = coil_sensitivities(x.shape, n_coils)
    else:
        sens = np.asarray(sensitivities, dtype=np.complex64)
        if sens.shape[1:] != x.shape:
            raise InputError(f"sensitivities of shape {sens.shape} do not match the image shape {x.shape}")
    if relative_noise is not None:
        noise_sigma = float(relative_noise) * float(np.abs(x).max())
    if noise_sigma < 0:
        raise InputError(f"noise_sigma must be >= 0, got {noise_sigma}")
    coil_images = sens * x.astype(np.complex64)
    traj = None
    if kind == "cartesian":
        clean = fftc_np(coil_images, x.ndim).astype(np.complex64)
    elif kind == "radial":
        traj = radial_trajectory(x.shape, n_spokes=n_spokes) if trajectory is None else np.asarray(trajectory, np.float32)
        op = RadialNUFFT(traj, x.shape, sensitivities=sens)
        clean = op.forward(torch.as_tensor(x.astype(np.complex64))).numpy()
    else:
        raise InputError(f"unknown acquisition kind {kind!r}; expected 'cartesian' or 'radial'")
    rng = np.random.default_rng(int(seed))
    noise = rng.standard_normal(clean.shape + (2,), dtype=np.float32) * np.float32(noise_sigma)
    kspace = (clean + noise[..., 0] + 1j * noise[..., 1]).astype(np.complex64)
    return SimulatedKspace(kspace, sens, float(noise_sigma), traj, clean, x)


def phantom_kspace(case, n_coils: int = 8, kind: str = "cartesian", seed: int = 0,
                   noise_sigma: Optional[float] = None, n_spokes: Optional[int] = None,
                   with_bias: bool = True) -> SimulatedKspace:
    """Multi-coil k-space of a built-in phantom case (SodiumDIPLib.data.phantom.PhantomCase).

    The image is the sodium truth times the receive bias (``with_bias``); noise_sigma defaults to the case's
    (``case.noise_sigma``): with unit root-sum-of-squares maps and orthonormal transforms a fully sampled
    Cartesian acquisition then has the noise level of the phantom's magnitude image. ``seed`` draws the noise.
    Array axes follow the case's volumes ((k, j, i) = (z, y, x)); a single-slice case gives 2D k-space.
    """
    truth = np.asarray(case.sodium_truth.array, np.float32)
    image = truth * np.asarray(case.bias_field.array, np.float32) if with_bias else truth
    if image.ndim == 3 and image.shape[0] == 1:
        image = image[0]
    sigma = float(case.noise_sigma) if noise_sigma is None else float(noise_sigma)
    return simulate_kspace(image, n_coils=n_coils, kind=kind, noise_sigma=sigma, seed=seed, n_spokes=n_spokes)
