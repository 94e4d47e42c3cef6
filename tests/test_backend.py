"""Backend switching: numpy always, cupy where a GPU is present, clear errors otherwise."""

import os
import subprocess
import sys

import numpy as np
import pytest
import standin_backend as S

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
    with tl.use_backend("numpy"):
        a = tl.Tensor(np.ones(2, np.float32), requires_grad=True)
    foreign = tl.Tensor._wrap(Fake())
    for op in (lambda: a + foreign, lambda: a * foreign, lambda: foreign - a, lambda: a @ foreign):
        with pytest.raises(ValueError, match=r"cannot mix backends in one op \(got cupy and numpy arrays\)"):
            op()


# ---- importing changes nothing outside tinylora ---------------------------------------------------

SPY_ON_LIBC = """
import ctypes, os, sys
loaded = []
real = ctypes.CDLL
class Spy(real):
    def __init__(self, name, *a, **k):
        loaded.append(str(name))
        super().__init__(name, *a, **k)
ctypes.CDLL = Spy
import tinylora, tinylora.bench, tinylora.cli, tinylora.train, tinylora.demo
libc = lambda: [n for n in loaded if os.path.basename(n).startswith("libc.so")]
print("after import:", libc())
print("applied:", tinylora.keep_freed_memory())
print("after call:", libc())
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="mallopt is a glibc (Linux) call")
def test_importing_tinylora_does_not_tune_malloc_but_keep_freed_memory_does():
    env = {k: v for k, v in os.environ.items() if k not in ("TINYLORA_KEEP_FREED_MEMORY", "TINYLORA_BACKEND")}
    out = subprocess.run([sys.executable, "-c", SPY_ON_LIBC], env=env, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[0] == "after import: []"  # no libc loaded, so no mallopt: malloc is as Python left it
    assert lines[1] == "applied: True" and "libc" in lines[2]  # the spy does see the explicit call
    env["TINYLORA_KEEP_FREED_MEMORY"] = "0"
    vetoed = subprocess.run([sys.executable, "-c", SPY_ON_LIBC], env=env, capture_output=True, text=True)
    assert vetoed.stdout.splitlines()[1:] == ["applied: False", "after call: []"]


# ---- a stand-in backend plays CuPy on the CPU -----------------------------------------------------


@pytest.fixture
def standin():
    """The stand-in backend registered for one test, NumPy active (whatever the suite runs on)."""
    S.register()
    with tl.use_backend("numpy"):
        yield S.NAME
    B.unregister_backend(S.NAME)


def test_the_stand_in_refuses_numpy_arrays_as_cupy_does(standin):
    with tl.use_backend(standin) as xp:
        a = xp.ones(3, dtype=np.float32)
    assert B.backend_of(a) == standin and B.backend_of(a * 2 + a) == standin
    for mix in (lambda: a + np.ones(3), lambda: np.ones(3) * a, lambda: np.asarray(a)):
        with pytest.raises(TypeError, match="standin"):
            mix()
    np.testing.assert_array_equal(tl.to_numpy(a), [1, 1, 1])
    assert type(tl.to_numpy(a)) is np.ndarray


def test_an_op_given_two_backends_names_both(standin):
    a = tl.Tensor(np.ones((2, 3), np.float32), requires_grad=True)
    with tl.use_backend(standin):
        b = tl.Tensor(np.ones((2, 3), np.float32), requires_grad=True)
        w = tl.Tensor(np.ones((4, 3), np.float32))
    ops = {
        "add": lambda: a + b,
        "mul": lambda: b * a,
        "matmul": lambda: a @ b.T,
        "linear": lambda: F.linear(a, w),
        "lora_linear": lambda: F.lora_linear(a, w, None, w[:2], w[:, :2], 2.0),
        "layer_norm": lambda: F.layer_norm(a, b[0], None),
        "cat": lambda: tl.cat([a, b]),
    }
    for name, op in ops.items():
        with pytest.raises(
            ValueError, match=rf"{name}: cannot mix backends in one op \(got numpy and standin"
        ):
            op()


def test_a_lora_A_on_one_backend_and_its_base_on_another_is_refused(standin):
    with tl.use_backend(standin):
        x = tl.Tensor(np.ones((5, 3), np.float32))
        w = tl.Tensor(np.ones((4, 3), np.float32))
    A, Bm = tl.Tensor(np.ones((2, 3), np.float32)), tl.Tensor(np.zeros((4, 2), np.float32))
    with pytest.raises(
        ValueError, match=r"lora_linear: cannot mix backends in one op \(got numpy and standin"
    ):
        F.lora_linear(x, w, None, A, Bm, 2.0)


def _tiny_gpt():
    from tinylora.models import GPT, GPTConfig

    tl.manual_seed(0)  # the same base weights every time
    return GPT(GPTConfig(vocab_size=11, block_size=8, n_layer=1, n_head=2, n_embd=8))


def test_adapters_follow_their_base_to_another_backend(standin):
    from tinylora import lora

    model = _tiny_gpt()
    lora.apply_lora(model, lora.LoRAConfig(r=2, alpha=4))
    model.to(standin)  # the active backend stays numpy
    for init in ("gaussian", "pissa"):
        lora.add_adapter(model, init, lora.LoRAConfig(r=2, alpha=4, init=init))
    placed = {n: B.backend_of(p.data) for n, p in model.named_parameters()}
    assert set(placed.values()) == {standin}, [n for n, b in placed.items() if b != standin]
    ids = np.random.default_rng(0).integers(0, 11, (2, 8))
    lora.set_adapter(model, "gaussian")
    _, loss = model(ids, ids)
    loss.backward()
    grads = {n: B.backend_of(p.grad) for n, p in model.named_parameters() if p.grad is not None}
    assert grads and set(grads.values()) == {standin}


def test_saving_works_from_either_backend_and_loads_on_the_other(standin, tmp_path):
    from tinylora import lora

    numpy_model = _tiny_gpt()
    lora.apply_lora(numpy_model, lora.LoRAConfig(r=2, alpha=4, init="gaussian"))
    moved = _tiny_gpt().to(standin)
    lora.apply_lora(moved, lora.LoRAConfig(r=2, alpha=4, init="gaussian"))
    for (n, p), (m, q) in zip(moved.named_parameters(), numpy_model.named_parameters()):
        assert n == m
        p.data = B.asarray(B.to_numpy(q.data), backend=standin)  # the same values, on the other backend
    lora.save_adapter(moved, tmp_path / "from_standin")
    lora.save_adapter(numpy_model, tmp_path / "from_numpy")
    for src in ("from_standin", "from_numpy"):
        for target in (_tiny_gpt(), _tiny_gpt().to(standin)):
            lora.load_adapter(target, tmp_path / src)
            mine = {k: B.to_numpy(v) for k, v in target.state_dict().items() if "lora_" in k}
            theirs = {k: B.to_numpy(v) for k, v in numpy_model.state_dict().items() if "lora_" in k}
            assert mine.keys() == theirs.keys()
            for k in mine:
                np.testing.assert_array_equal(mine[k], theirs[k])
