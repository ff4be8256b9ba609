"""The operator interface every method uses: A (forward) and A^H (adjoint), both torch functions."""

from __future__ import annotations

import torch


class LinearOperator:
    """A linear map from images of shape ``ishape`` to measurements of shape ``oshape``.

    Subclasses implement ``forward`` and ``adjoint``; both take and return torch tensors and must be
    differentiable with autograd (methods back-propagate through them).
    """

    ishape: tuple = ()
    oshape: tuple = ()

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # pragma: no cover - interface
        raise NotImplementedError

    def adjoint(self, y: torch.Tensor) -> torch.Tensor:  # pragma: no cover - interface
        raise NotImplementedError

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward(x)

    def normal(self, x: torch.Tensor) -> torch.Tensor:
        """A^H A x."""
        return self.adjoint(self.forward(x))

    @property
    def is_identity(self) -> bool:
        return False

    def to(self, device) -> "LinearOperator":
        """Move any tensors the operator holds to ``device`` (default: nothing to move)."""
        return self


class Identity(LinearOperator):
    """Image-domain identity: denoising of a (coil-combined magnitude) image."""

    def __init__(self, shape: tuple):
        self.ishape = self.oshape = tuple(shape)

    def forward(self, x):
        return x

    def adjoint(self, y):
        return y

    @property
    def is_identity(self) -> bool:
        return True
