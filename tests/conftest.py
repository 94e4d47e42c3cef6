"""Shared pytest set-up: hypothesis profiles and the backends to run on."""

import os

import numpy as np
import pytest
from hypothesis import HealthCheck, settings

import tinylora as tl

# fast by default; HYPOTHESIS_PROFILE=thorough for a long local run
settings.register_profile(
    "fast", max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
settings.register_profile(
    "thorough", max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "fast"))

# One BLAS thread for the tests: on a shared 2-core machine OpenBLAS's spinning threads can make
# small matmuls 10-100x slower when other processes compete for the cores. Speed is measured in
# benchmarks/, never here.
try:
    from threadpoolctl import threadpool_limits

    threadpool_limits(1)
except ImportError:
    pass

BACKENDS = ["numpy", "cupy"]


@pytest.fixture(params=BACKENDS)
def backend(request):
    """Run a test once per backend; CuPy skips cleanly where CuPy or a GPU is missing."""
    name = request.param
    if name not in tl.available_backends():
        pytest.skip(f"backend {name!r} is not available here (needs CuPy and a CUDA device)")
    with tl.use_backend(name):
        yield name


@pytest.fixture(autouse=True)
def _seeded():
    """Every test starts from the same random state."""
    tl.manual_seed(0)
    yield


def rng(seed=0):
    return np.random.default_rng(seed)
