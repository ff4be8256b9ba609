"""The operator interface every method uses: A (forward) and A^H (adjoint), both torch functions, with the
algebra that lets a forward model read as its equation: ``A.H`` (adjoint), ``A @ B`` (composition),
``A @ x`` (application), ``Diag(w)`` (pointwise weights) and ``A.norm()`` (largest singular value).

Convention: images are real or complex tensors of shape ``ishape``; adjointness holds for the real inner
product Re<A x, y> = Re<x, A^H y>, the one gradient methods use.
"""

from __future__ import annotations

import math

import torch

from SodiumDIPLib.errors import InputError


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

    @property
    def H(self) -> "LinearOperator":
        """The adjoint operator A^H (``A.H.H`` is ``A``)."""
        return Adjoint(self)

    def __matmul__(self, other):
        """``A @ B``: the composition (B first); ``A @ x``: A applied to the tensor x."""
        if isinstance(other, LinearOperator):
            return Compose(self, other)
        return self.forward(other)

    def norm(self, n_iter: int = 30, seed: int = 0, device=None, dtype=torch.float32, shape=None) -> float:
        """Largest singular value |A| on real images (of ``shape``, default ``ishape``), by power iteration on
        Re(A^H A), times 1.01 (power iteration approaches from below; step sizes need an upper bound). Raises
        ValueError for A = 0."""
        if self.is_identity:
            return 1.0
        g = torch.Generator().manual_seed(seed)
        x = torch.randn(tuple(self.ishape if shape is None else shape), generator=g, dtype=dtype).to(device)
        x = x / torch.linalg.vector_norm(x)
        s = 0.0
        with torch.no_grad():
            for _ in range(n_iter):
                z = self.normal(x)
                z = (z.real if z.is_complex() else z).to(dtype)
                s = float(torch.linalg.vector_norm(z))
                if s == 0:
                    raise ValueError("the operator maps every image to zero")
                x = z / s
        return 1.01 * math.sqrt(s)


class Adjoint(LinearOperator):
    """A^H as an operator of its own (forward = A's adjoint)."""

    def __init__(self, op: LinearOperator):
        self.op = op
        self.ishape, self.oshape = op.oshape, op.ishape

    def forward(self, y):
        return self.op.adjoint(y)

    def adjoint(self, x):
        return self.op.forward(x)

    @property
    def H(self) -> LinearOperator:
        return self.op

    @property
    def is_identity(self) -> bool:
        return self.op.is_identity

    def to(self, device):
        self.op = self.op.to(device)
        return self


class Compose(LinearOperator):
    """A_1 A_2 ... A_n: applies A_n first. ``Compose(P, F, S)`` is the model y = P F S x."""

    def __init__(self, *ops: LinearOperator):
        flat = []
        for op in ops:
            flat.extend(op.ops if isinstance(op, Compose) else [op])
        self.ops = tuple(flat)
        self.ishape, self.oshape = self.ops[-1].ishape, self.ops[0].oshape

    def forward(self, x):
        for op in reversed(self.ops):
            x = op.forward(x)
        return x

    def adjoint(self, y):
        for op in self.ops:
            y = op.adjoint(y)
        return y

    @property
    def is_identity(self) -> bool:
        return all(op.is_identity for op in self.ops)

    def to(self, device):
        self.ops = tuple(op.to(device) for op in self.ops)
        return self


class Modelled(LinearOperator):
    """A named forward model (``self.model``, usually a Compose such as P @ F @ S) that refuses inputs of the
    wrong shape with an InputError naming both shapes."""

    model: LinearOperator

    def to(self, device):
        self.model = self.model.to(device)
        return self

    def forward(self, x):
        if tuple(x.shape) != self.ishape:
            raise InputError(f"image of shape {tuple(x.shape)} does not match the operator's image shape "
                             f"{self.ishape}")
        return self.model.forward(x)

    def adjoint(self, y):
        if tuple(y.shape) != self.oshape:
            raise InputError(f"k-space of shape {tuple(y.shape)} does not match the operator's output shape "
                             f"{self.oshape}")
        return self.model.adjoint(y)


class Diag(LinearOperator):
    """Pointwise multiplication by ``weights`` (broadcast against the input; adjoint: by conj(weights)).

    Receive bias (b x), sampling masks (P) and density weighting (W^1/2) are Diag operators. ``shape``: the
    input shape (default: the weights' shape). The weights are cast to the input's precision on use."""

    def __init__(self, weights: torch.Tensor, shape=None):
        self.weights = weights if isinstance(weights, torch.Tensor) else torch.as_tensor(weights)
        self.ishape = self.oshape = tuple(self.weights.shape if shape is None else shape)

    def _weights_for(self, x: torch.Tensor) -> torch.Tensor:
        w = self.weights
        if w.device != x.device:
            w = w.to(x.device)
        if w.is_complex():
            return w.to(x.dtype if x.is_complex() else torch.complex128 if x.dtype == torch.float64 else torch.complex64)
        real_dtype = x.real.dtype if x.is_complex() else x.dtype
        return w.to(real_dtype) if w.dtype != real_dtype else w

    def forward(self, x):
        return self._weights_for(x) * x

    def adjoint(self, y):
        w = self._weights_for(y)
        return (w.conj() if w.is_complex() else w) * y

    def to(self, device):
        self.weights = self.weights.to(device)
        return self


class RealImages(LinearOperator):
    """The embedding of real images in complex ones, x -> x + 0i; its adjoint (real inner product) is Re.

    ``A @ Diag(g) @ RealImages(shape)`` is A diag(g) on real images whose adjoint returns real images, as PDHG
    needs (x = the bias-free image under a receive bias g)."""

    def __init__(self, shape: tuple):
        self.ishape = self.oshape = tuple(shape)

    def forward(self, x):
        return x

    def adjoint(self, y):
        return y.real.contiguous() if y.is_complex() else y


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
