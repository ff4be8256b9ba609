"""What a method receives and returns, in the engine's normalised units, and the run's services.

Every Problem is built by ``normalised_problem`` with one normalisation rule (``intensity_scale``: the
SCALE_PERCENTILE-th percentile of the input's magnitude inside the object support becomes 1) -- for images
(``pipeline.prepare_denoising``) and for k-space (``physics.kspace.kspace_problem``, where the input is the
zero-filled / gridding image). The caller undoes the scaling, so methods work on images of order 1 and never
see files, geometry or scaling.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable, Optional

import numpy as np
import torch

from SodiumDIPLib.data.noise import background_noise
from SodiumDIPLib.data.support import estimate_noise_sigma
from SodiumDIPLib.errors import Cancelled, InputError
from SodiumDIPLib.physics.base import LinearOperator

#: Percentile of the input inside its support that the normalisation maps to 1.
SCALE_PERCENTILE = 99.5


@dataclass
class Problem:
    """One reconstruction task, on the reconstruction grid, in normalised intensity units.

    measurement: y, the data (an image for denoising, complex k-space when ``operator`` is not identity).
    operator:    A, image -> measurement.
    image_shape: shape of the reconstructed image, (Z, Y, X) or (Y, X) for a single slice.
    spacing:     voxel size in mm in array axis order (same length as image_shape).
    initial:     a starting / pilot image (the input itself when denoising; A^H y or gridding otherwise).
    proton:      the registered proton image resampled onto the grid (None: no guidance available).
    support:     boolean mask of the object (head or breast), used for bias-field scale and noise estimates.
    noise_sigma: standard deviation of the complex Gaussian noise of y per real channel (None: unknown).
    magnitude:   True when y is a magnitude image (Rician / noncentral-chi noise floor).
    n_channels:  channels combined by sum-of-squares into a magnitude y (1 = Rician).
    reference:   optional, for monitoring curves only -- never used to fit.
    """

    measurement: torch.Tensor
    operator: LinearOperator
    image_shape: tuple
    spacing: tuple
    initial: np.ndarray
    proton: Optional[np.ndarray] = None
    support: Optional[np.ndarray] = None
    noise_sigma: Optional[float] = None
    magnitude: bool = True
    n_channels: int = 1
    reference: Optional[np.ndarray] = None

    @property
    def is_2d(self) -> bool:
        return len(self.image_shape) == 2


@dataclass
class MethodResult:
    """What a method returns (normalised units; the pipeline rescales)."""

    image: np.ndarray
    iterations: int = 0
    stop_rule: str = "none"
    stop_iteration: int = 0
    bias_field: Optional[np.ndarray] = None
    history: list = field(default_factory=list)  # one dict per logged iteration: iteration, loss, ...
    extras: dict = field(default_factory=dict)  # named images worth showing (fused field, pilot, ...)
    params: dict = field(default_factory=dict)  # the parameters actually used


class RunContext:
    """Device, seed, progress reporting and cancellation for one run.

    ``report(iteration, loss=..., image=callable)`` is called by iterative methods; the callable returns the
    current estimate as a numpy array (only evaluated when a listener wants a snapshot). ``check()`` raises
    Cancelled when the caller asked to stop; methods catch it and return their best result so far with
    stop_rule "cancelled".
    """

    def __init__(self, device: str = "cpu", seed: int = 0,
                 on_progress: Optional[Callable[[dict, Callable[[], np.ndarray]], None]] = None,
                 should_cancel: Optional[Callable[[], bool]] = None):
        self.device = torch.device(device)
        self.seed = int(seed)
        self.on_progress = on_progress
        self.should_cancel = should_cancel
        self.started = time.perf_counter()

    @property
    def elapsed(self) -> float:
        return time.perf_counter() - self.started

    def report(self, iteration: int, image: Optional[Callable[[], np.ndarray]] = None, **values) -> None:
        if self.on_progress is not None:
            event = {"iteration": int(iteration), "elapsed": self.elapsed}
            event.update({k: (float(v) if isinstance(v, (int, float, np.floating)) else v) for k, v in values.items()})
            self.on_progress(event, image)

    def cancelled(self) -> bool:
        return bool(self.should_cancel and self.should_cancel())

    def check(self) -> None:
        if self.cancelled():
            raise Cancelled()

    def generator(self) -> torch.Generator:
        """A CPU generator seeded from the run's seed (draw on CPU, then move: same numbers on every device)."""
        g = torch.Generator()
        g.manual_seed(self.seed)
        return g


def image_noise_sigma(image: np.ndarray, support: Optional[np.ndarray] = None) -> float:
    """The engine's noise level of a magnitude image (std per real channel, the image's units): from the
    background's chi statistics where the background outside ``support`` is pure noise
    (``data.noise.background_noise``), else the whole-image wavelet estimate (``data.support``), which reads
    24-30 % low on magnitude images because the background's noise-only magnitude spreads less than the
    object's (docs/method.md, session 6)."""
    if support is not None and np.any(support):
        found = background_noise(np.asarray(image, np.float32), np.asarray(support, bool))
        if found is not None:
            return float(found.sigma)
    return float(estimate_noise_sigma(np.asarray(image, dtype=np.float32)))


def noise_sigma_of(problem: Problem) -> float:
    """Problem.noise_sigma, or the engine's estimate from the initial image (``image_noise_sigma`` for image
    data; the wavelet estimate for a zero-filled k-space image, whose background is not pure noise)."""
    if problem.noise_sigma is not None and problem.noise_sigma > 0:
        return float(problem.noise_sigma)
    if getattr(problem.operator, "is_identity", False):
        return image_noise_sigma(np.asarray(problem.initial, np.float32), problem.support)
    return float(estimate_noise_sigma(np.asarray(problem.initial, dtype=np.float32)))


def relative_spacing(problem: Problem) -> Optional[tuple]:
    """The voxel size relative to the finest axis, h / min(h), in array axis order (None: no spacing given).

    Regularisers take this so that a weight keeps its meaning (per finest-voxel step) on anisotropic grids."""
    if not problem.spacing:
        return None
    h = [float(s) for s in problem.spacing]
    return tuple(s / min(h) for s in h)


def intensity_scale(magnitude: np.ndarray, support: Optional[np.ndarray] = None, role: str = "sodium") -> float:
    """The normalisation rule: the value (in the input's units) that becomes 1 -- the SCALE_PERCENTILE-th
    percentile of ``magnitude`` inside ``support``, or its maximum when there is no support (None or empty).
    InputError (naming ``role``) when that is not positive."""
    a = np.asarray(magnitude)
    scale = float(np.percentile(a[support], SCALE_PERCENTILE)) if support is not None and support.any() \
        else float(a.max())
    if not scale > 0:
        raise InputError(f"{role}: no positive signal inside the object; expected a magnitude image")
    return scale


def normalise_proton(proton: Optional[np.ndarray]) -> Optional[np.ndarray]:
    """The guide's rule: the proton image on the reconstruction grid divided by its 99.9th percentile (None
    passes through). InputError when it holds no positive signal."""
    if proton is None:
        return None
    pscale = float(np.percentile(proton, 99.9))
    if pscale <= 0:
        raise InputError("proton: no positive signal on the reconstruction grid; expected a registered proton image")
    return proton / pscale


def normalised_problem(measurement, operator: LinearOperator, magnitude: np.ndarray, spacing: tuple,
                       support: Optional[np.ndarray], noise_sigma: Optional[float] = None,
                       proton: Optional[np.ndarray] = None, reference: Optional[np.ndarray] = None,
                       magnitude_data: bool = True, n_channels: int = 1, role: str = "sodium") -> tuple:
    """The one Problem builder: (Problem in normalised units, scale), every intensity divided by
    scale = intensity_scale(magnitude, support).

    measurement: y in the input's units (numpy or torch; an image for denoising, k-space otherwise).
    magnitude:   the input as a magnitude image on the reconstruction grid (the image itself when denoising,
                 the zero-filled / gridding magnitude for k-space): it sets the scale and is the initial image.
    noise_sigma: noise std of y per real channel in the input's units (None: estimated from ``magnitude``).
    proton:      the registered proton image on the grid, any units (normalised by ``normalise_proton``).
    reference:   monitoring only, in the input's units (scaled like the data).
    """
    initial = np.asarray(magnitude)
    scale = intensity_scale(initial, support, role)
    sigma = noise_sigma if noise_sigma is not None else image_noise_sigma(initial, support)
    if isinstance(measurement, torch.Tensor):
        y = measurement / scale
    else:
        y = torch.from_numpy(np.ascontiguousarray(np.asarray(measurement) / scale))
    problem = Problem(measurement=y, operator=operator, image_shape=tuple(initial.shape), spacing=tuple(spacing),
                      initial=initial / scale, proton=normalise_proton(proton), support=support,
                      noise_sigma=sigma / scale, magnitude=magnitude_data, n_channels=n_channels,
                      reference=None if reference is None else reference / scale)
    return problem, scale
