"""Multi-coil Cartesian MRI, y = P F S x, with its adjoint, in torch: S the coil sensitivities (image ->
coil images), F the centred orthonormal FFT per coil, P the sampling mask (a Diag).

FFT convention (the one of ../shared/data/README.md and of every k-space array in the engine): k-space
centre at array index N//2 along every axis, orthonormal scaling, i.e.
``K = fftshift(fftn(ifftshift(x), norm="ortho"))`` and ``x = fftshift(ifftn(ifftshift(K), norm="ortho"))``.
With orthonormal scaling the complex noise level in k-space equals the per-coil noise level in the image.
"""

from __future__ import annotations

from typing import Optional

import numpy as np
import torch

from SodiumDIPLib.errors import InputError
from SodiumDIPLib.physics.base import Diag, LinearOperator, Modelled


def _axes(ndim: int) -> tuple:
    return tuple(range(-ndim, 0))


def _centred(x, ndim: int, inverse: bool):
    """Centred orthonormal (inverse) FFT over the last ``ndim`` axes, for a torch tensor or a numpy array."""
    ax = _axes(ndim)
    if isinstance(x, torch.Tensor):
        f = torch.fft.ifftn if inverse else torch.fft.fftn
        return torch.fft.fftshift(f(torch.fft.ifftshift(x, dim=ax), dim=ax, norm="ortho"), dim=ax)
    f = np.fft.ifftn if inverse else np.fft.fftn
    return np.fft.fftshift(f(np.fft.ifftshift(x, axes=ax), axes=ax, norm="ortho"), axes=ax)


def fftc(x: torch.Tensor, ndim: int) -> torch.Tensor:
    """Centred orthonormal FFT over the last ``ndim`` axes (torch)."""
    return _centred(x, ndim, inverse=False)


def ifftc(k: torch.Tensor, ndim: int) -> torch.Tensor:
    """Centred orthonormal inverse FFT over the last ``ndim`` axes (torch)."""
    return _centred(k, ndim, inverse=True)


def fftc_np(x: np.ndarray, ndim: int) -> np.ndarray:
    """Centred orthonormal FFT over the last ``ndim`` axes (numpy)."""
    return _centred(np.asarray(x), ndim, inverse=False)


def ifftc_np(k: np.ndarray, ndim: int) -> np.ndarray:
    """Centred orthonormal inverse FFT over the last ``ndim`` axes (numpy)."""
    return _centred(np.asarray(k), ndim, inverse=True)


def complex_dtype_for(x: torch.Tensor) -> torch.dtype:
    """complex128 for double inputs, complex64 otherwise."""
    return torch.complex128 if x.dtype in (torch.float64, torch.complex128) else torch.complex64


def as_sensitivities(sensitivities, image_shape: Optional[tuple] = None) -> torch.Tensor:
    """Validate coil sensitivities (coils, *image_shape) and return them as a complex64 tensor.

    ``None`` means one coil of uniform sensitivity (requires ``image_shape``).
    """
    if sensitivities is None:
        if image_shape is None:
            raise InputError("either sensitivities or image_shape must be given")
        return torch.ones((1,) + tuple(image_shape), dtype=torch.complex64)
    s = sensitivities if isinstance(sensitivities, torch.Tensor) else torch.as_tensor(np.asarray(sensitivities))
    if s.ndim not in (3, 4):
        raise InputError(f"coil sensitivities must have shape (coils, [z,] y, x); got shape {tuple(s.shape)}")
    if image_shape is not None and tuple(s.shape[1:]) != tuple(image_shape):
        raise InputError(f"coil sensitivities of shape {tuple(s.shape)} do not match the image shape {tuple(image_shape)}; "
                         f"expected (coils, {', '.join(map(str, image_shape))})")
    if not torch.isfinite(torch.view_as_real(s.to(torch.complex64)) if s.is_complex() else s).all():
        raise InputError("coil sensitivities contain NaN or infinite values")
    return s.to(torch.complex64)


class CoilSensitivities(LinearOperator):
    """S: image (*shape) -> coil images (coils, *shape), S x = sens * x; S^H c = sum_c conj(sens_c) c_c.
    A real image is cast to complex (complex128 for double input, complex64 otherwise)."""

    def __init__(self, sens: torch.Tensor):
        self.sens = sens
        self.ishape, self.oshape = tuple(sens.shape[1:]), tuple(sens.shape)
        self._cache = {}

    def _sens_for(self, device, cdtype) -> torch.Tensor:
        key = (str(device), cdtype)
        if key not in self._cache:
            self._cache = {key: self.sens.to(device=device, dtype=cdtype)}
        return self._cache[key]

    def forward(self, x):
        cdt = complex_dtype_for(x)
        return self._sens_for(x.device, cdt) * x.to(cdt)

    def adjoint(self, c):
        cdt = complex_dtype_for(c)
        return (self._sens_for(c.device, cdt).conj() * c.to(cdt)).sum(0)

    def to(self, device):
        self.sens, self._cache = self.sens.to(device), {}
        return self


class CentredFFT(LinearOperator):
    """F: the centred orthonormal FFT over the last ``ndim`` axes of (*batch, *shape); F^H = F^-1."""

    def __init__(self, shape: tuple, ndim: int):
        self.ishape = self.oshape = tuple(shape)
        self.ndim = int(ndim)

    def forward(self, x):
        return fftc(x, self.ndim)

    def adjoint(self, k):
        return ifftc(k, self.ndim)


class MultiCoilCartesian(Modelled):
    """y[c] = mask * FFT(S[c] * x), i.e. y = P F S x: image (``image_shape``) -> k-space (coils, *image_shape),
    zero off the mask.

    sensitivities: (coils, [z,] y, x) complex coil maps, or None for one uniform coil (then ``image_shape`` is
                   taken from ``mask``).
    mask:          boolean / 0-1 sampling pattern of shape image_shape (or None: fully sampled).
    The forward accepts a real or complex image (a real one is cast to complex) on any device, returns complex
    k-space; the adjoint returns a complex image. Both are plain torch ops, so autograd works through them.
    """

    def __init__(self, sensitivities=None, mask=None, image_shape: Optional[tuple] = None):
        if sensitivities is None and image_shape is None:
            if mask is None:
                raise InputError("MultiCoilCartesian needs sensitivities, a mask or an image_shape")
            image_shape = tuple(np.shape(mask))
        sens = as_sensitivities(sensitivities, image_shape)
        image_shape = tuple(sens.shape[1:])
        self.ndim = len(image_shape)
        self.ishape = image_shape
        self.oshape = (sens.shape[0],) + image_shape
        self.S = CoilSensitivities(sens)
        self.F = CentredFFT(self.oshape, self.ndim)
        self.P = Diag(_checked_mask(mask, image_shape), self.oshape)
        self.model = self.P @ self.F @ self.S

    @property
    def sens(self) -> torch.Tensor:
        return self.S.sens

    @property
    def mask(self) -> torch.Tensor:
        return self.P.weights

    @property
    def n_coils(self) -> int:
        return int(self.sens.shape[0])

    def zero_filled(self, y: torch.Tensor) -> torch.Tensor:
        """Zero-filled, sensitivity-weighted coil combination: sum_c conj(S_c) F^H y_c / sum_c |S_c|^2."""
        x = self.adjoint(y)
        norm = (self.sens.abs() ** 2).sum(0).to(x.device)
        return x / norm.clamp_min(1e-6 * float(norm.max()))


def _checked_mask(mask, image_shape: tuple) -> torch.Tensor:
    """The sampling pattern as float32 (ones when None); InputError for a wrong shape, complex, negative,
    non-finite or empty mask."""
    if mask is None:
        return torch.ones(image_shape, dtype=torch.float32)
    m = mask if isinstance(mask, torch.Tensor) else torch.as_tensor(np.asarray(mask))
    if tuple(m.shape) != image_shape:
        raise InputError(f"sampling mask of shape {tuple(m.shape)} does not match the image shape {image_shape}")
    if m.is_complex():
        raise InputError("the sampling mask must be real (0/1 or boolean)")
    mask_t = m.to(torch.float32)
    if not torch.isfinite(mask_t).all() or (mask_t < 0).any():
        raise InputError("the sampling mask must hold finite non-negative values (0/1)")
    if not (mask_t > 0).any():
        raise InputError("the sampling mask selects no k-space sample")
    return mask_t
