"""Strategies and checks shared by the gradient property tests."""

import numpy as np
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import tinylora as tl

small = st.floats(-3.0, 3.0, allow_nan=False, allow_infinity=False, width=64)
# values kept at least 0.01 from 0 (the kink of relu and abs)
nonzero = small.map(lambda v: v if abs(v) > 0.01 else v + 0.05)
# a grid with step 0.01: with unique=True there are no (near-)ties for max/min
grid = st.integers(-300, 300).map(lambda i: i / 100)


def arrays(shape, elements=small, **kw):
    """float64 arrays of `shape` (a shape or a strategy for one)."""
    return hnp.arrays(np.float64, shape, elements=elements, **kw)


def leaf(a, requires_grad=True):
    return tl.Tensor(np.asarray(a, dtype=np.float64), requires_grad=requires_grad)


def check_grad(fn, *inputs, seed=0, full_jacobian=False):
    """gradcheck fn against central differences, with a random (not all-ones) upstream gradient."""
    if full_jacobian:
        return tl.gradcheck(fn, list(inputs))
    out = fn(*inputs)
    u = np.random.default_rng(seed).uniform(0.5, 1.5, size=out.shape) * np.random.default_rng(
        seed + 1
    ).choice([-1.0, 1.0], size=out.shape)
    upstream = tl.Tensor(u.astype(np.float64))
    return tl.gradcheck(lambda *xs: (fn(*xs) * upstream).sum(), list(inputs))
