"""Forward operators (image -> measurement) with adjoints, in torch."""

from .base import Identity, LinearOperator

__all__ = ["LinearOperator", "Identity"]
