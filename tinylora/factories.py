"""Functions that make tensors (tensor, zeros, ones, randn, rand) or join them (cat, stack, where)."""

from __future__ import annotations

import functools

import numpy as np

from . import backend
from .tensor import Tensor


def tensor(data, requires_grad: bool = False, dtype=None) -> Tensor:
    """Same as Tensor(data, requires_grad, dtype)."""
    return Tensor(data, requires_grad=requires_grad, dtype=dtype)


def _factory(fill):
    @functools.wraps(fill)
    def make(*shape, dtype=np.float32, requires_grad: bool = False) -> Tensor:
        shape = tuple(shape[0]) if len(shape) == 1 and isinstance(shape[0], (tuple, list)) else shape
        return Tensor(fill(shape, dtype), requires_grad=requires_grad)

    return make


zeros = _factory(lambda shape, dtype: backend.xp().zeros(shape, dtype=dtype))
zeros.__doc__ = "A tensor of zeros (float32 unless dtype says otherwise)."
ones = _factory(lambda shape, dtype: backend.xp().ones(shape, dtype=dtype))
ones.__doc__ = "A tensor of ones (float32 unless dtype says otherwise)."
randn = _factory(lambda shape, dtype: backend.rng().standard_normal(shape, dtype=np.float64).astype(dtype))
randn.__doc__ = "Standard normal samples from tinylora's seeded generator (see manual_seed)."
rand = _factory(lambda shape, dtype: backend.rng().random(shape, dtype=np.float64).astype(dtype))
rand.__doc__ = "Uniform [0, 1) samples from tinylora's seeded generator (see manual_seed)."


def _tensors(items, op: str) -> list:
    items = [x if isinstance(x, Tensor) else Tensor(x) for x in items]
    if not items:
        raise ValueError(f"{op}: needs at least one tensor")
    backend.check_same_backend(op, *[x.data for x in items])
    return items


def cat(tensors, axis: int = 0) -> Tensor:
    """Join tensors along an existing axis."""
    ts = _tensors(tensors, "cat")
    xp = backend.module_of(ts[0].data)
    try:
        out = xp.concatenate([t.data for t in ts], axis=axis)
    except ValueError:
        raise ValueError(
            f"cat: shapes {[t.shape for t in ts]} do not match except along axis {axis}"
        ) from None
    ends = [int(e) for e in np.cumsum([t.shape[axis] for t in ts])[:-1]]
    return Tensor._node(out, "cat", tuple(ts), lambda g: tuple(xp.split(g, ends, axis=axis)))


def stack(tensors, axis: int = 0) -> Tensor:
    """Join same-shaped tensors along a new axis."""
    ts = _tensors(tensors, "stack")
    shapes = {t.shape for t in ts}
    if len(shapes) > 1:
        raise ValueError(f"stack: all tensors need the same shape, got {[t.shape for t in ts]}")
    ax = axis % (ts[0].ndim + 1)
    return cat([t.reshape(t.shape[:ax] + (1,) + t.shape[ax:]) for t in ts], axis=ax)


def where(condition, a, b) -> Tensor:
    """Elementwise choice: a where condition is true, else b (broadcasting)."""
    cond = condition.data if isinstance(condition, Tensor) else condition
    a = a if isinstance(a, Tensor) else Tensor._wrap(a)
    b = a._lift(b, "where")
    xp = backend.module_of(a.data) if hasattr(a.data, "shape") else backend.module_of(b.data)
    out = xp.where(cond, a.data, b.data)

    def backward(g):
        zero = xp.zeros((), dtype=g.dtype)
        return (
            xp.where(cond, g, zero) if a.requires_grad else None,
            xp.where(cond, zero, g) if b.requires_grad else None,
        )

    return Tensor._node(out, "where", (a, b), backward)


def manual_seed(seed: int) -> None:
    """Seed tinylora's random generators (initialisation, dropout, sampling)."""
    backend.manual_seed(seed)
