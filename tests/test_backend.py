"""Backend switching: numpy always, cupy where a GPU is present, clear errors otherwise."""

import os
import subprocess
import sys

import numpy as np
import pytest

import tinylora as tl
import tinylora.backend as B
import tinylora.functional as F

HAS_CUPY = "cupy" in tl.available_backends()


def test_default_backend_is_numpy_and_xp_matches():
    assert tl.get_backend() in ("numpy", "cupy")
    with tl.use_backend("numpy"):
        assert tl.get_backend() == "numpy" and tl.xp() is np


def test_unknown_backend_is_refused_with_the_valid_names():
    before = tl.get_backend()
    with pytest.raises(ValueError, match="unknown backend 'jax': expected one of numpy, cupy"):
        tl.set_backend("jax")
    assert tl.get_backend() == before


@pytest.mark.skipif(HAS_CUPY, reason="CuPy and a GPU are present here")
def test_cupy_without_cupy_raises_clearly_and_changes_nothing():
    before = tl.get_backend()
    with pytest.raises(B.BackendUnavailableError, match=r'pip install "tinylora\[gpu\]"|no CUDA device'):
        tl.set_backend("cupy")
    assert tl.get_backend() == before
    with pytest.raises(B.BackendUnavailableError):
        with tl.use_backend("cupy"):
            pass
    assert tl.get_backend() == before


def test_use_backend_restores_after_an_exception():
    before = tl.get_backend()
    with pytest.raises(KeyError):
        with tl.use_backend("numpy"):
            raise KeyError("boom")
    assert tl.get_backend() == before


def test_env_var_picks_the_start_up_backend():
    code = "import tinylora as tl; print(tl.get_backend())"
    env = dict(os.environ, TINYLORA_BACKEND="numpy")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "numpy"
    env["TINYLORA_BACKEND"] = "tpu"
    bad = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert bad.returncode != 0 and "TINYLORA_BACKEND='tpu'" in bad.stderr and "numpy, cupy" in bad.stderr


def test_to_numpy_accepts_tensors_arrays_and_lists(backend):
    t = tl.Tensor([1.0, 2.0])
    assert isinstance(tl.to_numpy(t), np.ndarray)
    assert isinstance(tl.to_numpy(t.data), np.ndarray)
    np.testing.assert_array_equal(tl.to_numpy([1, 2]), [1, 2])


def test_tensors_live_on_the_active_backend(backend):
    t = tl.Tensor(np.ones(3, np.float32))
    assert t.backend == backend
    assert B.backend_of((t * 2).data) == backend


def test_training_step_runs_on_each_backend(backend):
    r = np.random.default_rng(0)
    w = tl.Tensor(r.standard_normal((3, 4)).astype(np.float32), requires_grad=True)
    x = tl.Tensor(r.standard_normal((5, 4)).astype(np.float32))
    loss = F.cross_entropy(F.linear(x, w), np.array([0, 1, 2, 0, 1]))
    loss.backward()
    assert B.backend_of(w.grad) == backend and w.grad.shape == (3, 4)


@pytest.mark.skipif(not HAS_CUPY, reason="needs CuPy and a CUDA device")
def test_mixing_backends_in_one_op_raises_clearly():
    a = tl.Tensor(np.ones(2), requires_grad=True)
    with tl.use_backend("cupy"):
        b = tl.Tensor(np.ones(2))
    with pytest.raises(ValueError, match="cannot mix backends"):
        a + b
    with pytest.raises(ValueError, match="cannot mix backends"):
        F.linear(a.reshape(1, 2), b.reshape(1, 2))
    np.testing.assert_array_equal(b.to("numpy").numpy(), [1, 1])


def test_mixing_backends_is_caught_before_the_array_library_sees_it():
    # without a GPU, stand in for a CuPy array with a class from a module named "cupy"
    Fake = type("ndarray", (), {"__module__": "cupy._core.core", "shape": (2,), "dtype": np.dtype("f4")})
    a = tl.Tensor(np.ones(2, np.float32), requires_grad=True)
    foreign = tl.Tensor._wrap(Fake())
    for op in (lambda: a + foreign, lambda: a * foreign, lambda: foreign - a, lambda: a @ foreign):
        with pytest.raises(ValueError, match=r"cannot mix backends in one op \(got cupy and numpy arrays\)"):
            op()
