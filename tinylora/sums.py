"""Sums over an axis written as matrix-vector products, which BLAS runs faster than numpy's sum.

`sum_last(a)` is `a.sum(axis=-1, keepdims=True)` and `sum_leading(a)` is `a.reshape(-1, D).sum(0)`;
on a (4096, 256) float32 array with one BLAS thread, `a @ ones` took 0.32 ms and `a.sum(-1)`
0.90 ms (`OPENBLAS_NUM_THREADS=1 python -m timeit -s "import numpy as np;
a = np.random.rand(4096, 256).astype(np.float32); o = np.ones(256, np.float32)" "a @ o"`).
"""

from __future__ import annotations

from . import backend

_ones_cache: dict = {}


def _ones(n: int, like):
    """A cached vector of n ones in like's dtype and backend."""
    xp = backend.module_of(like)
    key = (n, like.dtype.str, xp.__name__)
    v = _ones_cache.get(key)
    if v is None:
        if len(_ones_cache) > 256:
            _ones_cache.clear()
        v = _ones_cache[key] = xp.ones(n, dtype=like.dtype)
    return v


def sum_last(a):
    """a.sum(axis=-1, keepdims=True) for a float array (..., D), computed as a @ ones."""
    d = a.shape[-1]
    return (a.reshape(-1, d) @ _ones(d, a)).reshape(*a.shape[:-1], 1)


def sum_leading(a):
    """Sum of a float array (..., D) over every axis but the last, as ones @ a -> (D,)."""
    a2 = a.reshape(-1, a.shape[-1])
    return _ones(a2.shape[0], a) @ a2
