"""Layers: Linear, Embedding, LayerNorm, RMSNorm, Dropout and activations."""

from __future__ import annotations

import contextlib
import math

import numpy as np

from .. import backend
from .. import functional as F
from .checks import flag, integer, number
from .module import Module, Parameter

_random_init = [True]


@contextlib.contextmanager
def no_init():
    """Build layers without drawing random weights, because loaded ones are about to replace them.

    Inside the block uniform() and normal() return uninitialised arrays: a 135M-parameter
    model is built without drawing 135M random numbers, and the seeded generator is left
    where it was (so a LoRA init after loading stays reproducible).
    """
    previous = _random_init[0]
    _random_init[0] = False
    try:
        yield
    finally:
        _random_init[0] = previous


def uniform(shape, bound: float, dtype=np.float32):
    """U(-bound, bound) from tinylora's seeded host generator (same weights on every backend)."""
    if not _random_init[0]:
        return np.empty(shape, dtype)
    return backend.rng("numpy").uniform(-bound, bound, size=shape).astype(dtype)


def normal(shape, std: float = 1.0, dtype=np.float32):
    """N(0, std^2) from tinylora's seeded host generator (same weights on every backend)."""
    if not _random_init[0]:
        return np.empty(shape, dtype)
    return (backend.rng("numpy").standard_normal(shape) * std).astype(dtype)


class Linear(Module):
    """y = x @ weight.T + bias with weight (out, in); PyTorch's default initialisation."""

    def __init__(self, in_features: int, out_features: int, bias: bool = True, dtype=np.float32):
        super().__init__()
        in_features = integer("Linear", "in_features", in_features)
        out_features = integer("Linear", "out_features", out_features)
        if in_features < 1 or out_features < 1:
            raise ValueError(
                f"Linear: sizes must be positive, got in_features={in_features}, out_features={out_features}"
            )
        bias = flag("Linear", "bias", bias)
        self.in_features, self.out_features = in_features, out_features
        bound = 1.0 / math.sqrt(in_features)  # kaiming_uniform(a=sqrt(5)) reduces to this bound
        self.weight = Parameter(uniform((out_features, in_features), bound, dtype))
        self.bias = Parameter(uniform((out_features,), bound, dtype)) if bias else None

    def forward(self, x):
        return F.linear(x, self.weight, self.bias)  # (..., in) -> (..., out)

    def extra_repr(self) -> str:
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}"
        )


class Embedding(Module):
    """A table of num_embeddings vectors of size embedding_dim, looked up by integer id."""

    def __init__(self, num_embeddings: int, embedding_dim: int, dtype=np.float32):
        super().__init__()
        num_embeddings = integer("Embedding", "num_embeddings", num_embeddings, 1)
        embedding_dim = integer("Embedding", "embedding_dim", embedding_dim, 1)
        self.num_embeddings, self.embedding_dim = num_embeddings, embedding_dim
        self.weight = Parameter(normal((num_embeddings, embedding_dim), 1.0, dtype))

    def forward(self, ids):
        return F.embedding(ids, self.weight)  # (...) -> (..., dim)

    def extra_repr(self) -> str:
        return f"{self.num_embeddings}, {self.embedding_dim}"


class LayerNorm(Module):
    """Normalise the last axis to zero mean and unit variance, then scale and shift."""

    def __init__(self, dim: int, eps: float = 1e-5, bias: bool = True, dtype=np.float32):
        super().__init__()
        self.dim, self.eps = (
            integer("LayerNorm", "dim", dim, 1),
            number("LayerNorm", "eps", eps, 0, above=True),
        )
        self.weight = Parameter(np.ones(dim, dtype))
        self.bias = Parameter(np.zeros(dim, dtype)) if bias else None

    def forward(self, x):
        return F.layer_norm(x, self.weight, self.bias, self.eps)

    def extra_repr(self) -> str:
        return f"{self.dim}, eps={self.eps}"


class RMSNorm(Module):
    """Divide the last axis by its root mean square, then scale (LLaMA's norm)."""

    def __init__(self, dim: int, eps: float = 1e-6, dtype=np.float32):
        super().__init__()
        self.dim, self.eps = integer("RMSNorm", "dim", dim, 1), number("RMSNorm", "eps", eps, 0, above=True)
        self.weight = Parameter(np.ones(dim, dtype))

    def forward(self, x):
        return F.rms_norm(x, self.weight, self.eps)

    def extra_repr(self) -> str:
        return f"{self.dim}, eps={self.eps}"


class Dropout(Module):
    """Zero elements with probability p in training mode; the identity in eval mode."""

    def __init__(self, p: float = 0.5):
        super().__init__()
        self.p = number("Dropout", "p", p, 0.0, 1.0)

    def forward(self, x):
        return F.dropout(x, self.p, self.training)

    def extra_repr(self) -> str:
        return f"p={self.p}"


class GELU(Module):
    """GELU activation ("tanh" form by default, as GPT-2 uses; "none" for the exact erf form)."""

    def __init__(self, approximate: str = "tanh"):
        super().__init__()
        if approximate not in ("tanh", "none"):
            raise ValueError(f"GELU: approximate must be 'tanh' or 'none', got {approximate!r}")
        self.approximate = approximate

    def forward(self, x):
        return F.gelu(x, self.approximate)

    def extra_repr(self) -> str:
        return f"approximate={self.approximate!r}"


class ReLU(Module):
    """max(x, 0)."""

    def forward(self, x):
        return F.relu(x)


class SiLU(Module):
    """x * sigmoid(x)."""

    def forward(self, x):
        return F.silu(x)


class Tanh(Module):
    """tanh(x)."""

    def forward(self, x):
        return F.tanh(x)


class Identity(Module):
    """Returns its input."""

    def forward(self, x):
        return x
