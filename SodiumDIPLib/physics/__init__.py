"""Forward operators (image -> measurement) with adjoints, in torch."""

from .base import Identity, LinearOperator
from .cartesian import MultiCoilCartesian
from .radial import RadialNUFFT, radial_trajectory

__all__ = ["LinearOperator", "Identity", "MultiCoilCartesian", "RadialNUFFT", "radial_trajectory"]
