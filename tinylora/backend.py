"""The one module that knows NumPy from CuPy: pick a backend, get its array module."""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import importlib
import os
import sys

import numpy

BACKENDS = ("numpy", "cupy")
INSTALL_HINT = 'pip install "tinylora[gpu]" (CUDA 12) or "tinylora[gpu-cuda13]" (CUDA 13)'

_active = {"name": "numpy", "xp": numpy}
_rngs: dict = {}
_seed = [None]
_standins: dict = {}  # name -> (array module, array type): stand-in backends, see register_backend


class BackendUnavailableError(RuntimeError):
    """The requested backend cannot run on this machine."""


def _load_cupy():
    """Import CuPy and check for a CUDA device, or raise a clear error."""
    try:
        cupy = importlib.import_module("cupy")
    except Exception as e:  # ImportError, or a broken CUDA install raising at import
        raise BackendUnavailableError(
            f"backend 'cupy' needs CuPy, which could not be imported ({type(e).__name__}: {e}). "
            f"Install it with: {INSTALL_HINT}"
        ) from None
    try:
        n = cupy.cuda.runtime.getDeviceCount()
    except Exception as e:  # CUDARuntimeError when no driver is present
        raise BackendUnavailableError(
            f"backend 'cupy': CuPy is installed but no CUDA device is usable "
            f"({type(e).__name__}: {e}). Use set_backend('numpy') on this machine."
        ) from None
    if n < 1:
        raise BackendUnavailableError(
            "backend 'cupy': CuPy is installed but found no CUDA device. "
            "Use set_backend('numpy') on this machine."
        )
    return cupy


def _module(name: str):
    if isinstance(name, str) and name in _standins:
        return _standins[name][0]
    if not isinstance(name, str) or name.lower() not in BACKENDS:
        raise ValueError(
            f"unknown backend {name!r}: expected one of {', '.join(BACKENDS + tuple(_standins))}"
        )
    return numpy if name.lower() == "numpy" else _load_cupy()


def register_backend(name: str, module, array_type) -> None:
    """Make a stand-in array library usable as backend `name` (tests play CuPy with one on a CPU).

    `module` is its array module (numpy's functions plus `asnumpy`, as CuPy has); `array_type`
    is the class of its arrays.
    """
    if name in BACKENDS:
        raise ValueError(f"register_backend: {name!r} is a built-in backend; pick another name")
    _standins[name] = (module, array_type)
    _rngs.pop(name, None)


def unregister_backend(name: str) -> None:
    """Forget a stand-in backend (the active backend falls back to numpy if it was the one)."""
    _standins.pop(name, None)
    _rngs.pop(name, None)
    if _active["name"] == name:
        _active["name"], _active["xp"] = "numpy", numpy


def set_backend(name: str) -> None:
    """Make `name` ("numpy" or "cupy") the backend for new arrays; unchanged if it fails."""
    xp_module = _module(name)  # raises before anything changes
    _active["name"], _active["xp"] = name.lower(), xp_module


def get_backend() -> str:
    """Name of the active backend: "numpy" or "cupy"."""
    return _active["name"]


def xp():
    """The active array module (numpy or cupy)."""
    return _active["xp"]


def available_backends() -> list[str]:
    """Backends that can run here (numpy always; cupy when CuPy and a CUDA device are present)."""
    names = ["numpy"]
    try:
        _load_cupy()
        names.append("cupy")
    except BackendUnavailableError:
        pass
    return names + list(_standins)


@contextlib.contextmanager
def use_backend(name: str):
    """Run a block with another backend, then restore the previous one."""
    previous = get_backend()
    set_backend(name)
    try:
        yield xp()
    finally:
        set_backend(previous)


def backend_of(array) -> str:
    """Which backend an array belongs to ("numpy" or "cupy", or a registered stand-in's name)."""
    if isinstance(array, (numpy.ndarray, numpy.generic)):
        return "numpy"
    for name, (_, array_type) in _standins.items():
        if isinstance(array, array_type):
            return name
    root = type(array).__module__.split(".")[0]
    return "cupy" if root == "cupy" else "numpy"


def module_of(array):
    """The array module (numpy or cupy) that owns `array`."""
    if isinstance(array, (numpy.ndarray, numpy.generic)):
        return numpy
    name = backend_of(array)
    if name in _standins:
        return _standins[name][0]
    return importlib.import_module("cupy") if name == "cupy" else numpy


def check_same_backend(op: str, *arrays) -> None:
    """Raise a clear error if the arrays of one op live on different backends."""
    names = {backend_of(a) for a in arrays if hasattr(a, "shape")}
    if len(names) > 1:
        raise ValueError(
            f"{op}: cannot mix backends in one op (got {' and '.join(sorted(names))} arrays); "
            "move tensors with .to('numpy') or .to('cupy') first"
        )


def to_numpy(array) -> numpy.ndarray:
    """A NumPy copy of a CuPy array; NumPy arrays, scalars and lists come back as ndarrays."""
    if isinstance(array, numpy.ndarray):
        return array
    name = backend_of(array)
    if name == "cupy":
        return array.get()
    if name in _standins:
        return _standins[name][0].asnumpy(array)
    return numpy.asarray(array)


def asarray(data, dtype=None, backend: str | None = None):
    """`data` as an array of `backend` (default: the active one), converting across backends."""
    target = module_of_name(backend or get_backend())
    if hasattr(data, "shape") and backend_of(data) != (backend or get_backend()):
        data = to_numpy(data)
    return target.asarray(data, dtype=dtype)


def module_of_name(name: str):
    """The array module for a backend name."""
    return _active["xp"] if name == _active["name"] else _module(name)


def scatter_add(target, indices, values) -> None:
    """target[indices] += values, adding repeated indices up (np.add.at / cupyx.scatter_add)."""
    if not isinstance(target, numpy.ndarray):  # CuPy: add.at where it exists (CuPy 13+), else cupyx
        add_at = getattr(module_of(target).add, "at", None)
        if add_at is not None:
            add_at(target, indices, values)
        else:
            importlib.import_module("cupyx").scatter_add(target, indices, values)
    elif getattr(indices, "ndim", 0) == 1 and indices.dtype.kind in "iu" and values.ndim == target.ndim:
        # whole rows: sort the ids, sum each run of equal ids, add once per row (np.add.at is ~8x slower)
        if indices.size == 0:
            return
        indices = numpy.where(indices < 0, indices + target.shape[0], indices)  # -1 and n-1: one row
        order = numpy.argsort(indices, kind="stable")
        ids = indices[order]
        starts = numpy.flatnonzero(numpy.concatenate(([True], ids[1:] != ids[:-1])))
        target[ids[starts]] += numpy.add.reduceat(values[order], starts, axis=0)
    else:
        numpy.add.at(target, indices, values)


def erf(x):
    """The error function, elementwise, to float64 accuracy, on either backend."""
    if backend_of(x) in _standins:  # a stand-in: compute on the host, hand back its own array
        return module_of(x).asarray(erf(to_numpy(x)))
    if isinstance(x, numpy.ndarray):
        try:
            from scipy.special import erf as scipy_erf  # optional: lazy, only exact GELU needs it
        except ImportError:
            import math

            return numpy.vectorize(math.erf, otypes=[x.dtype])(x)
        return scipy_erf(x)
    return importlib.import_module("cupyx.scipy.special").erf(x)


def manual_seed(seed: int) -> None:
    """Seed tinylora's random generators (initialisation, dropout, sampling) on every backend."""
    _seed[0] = int(seed)
    _rngs.clear()


def rng(name: str | None = None):
    """The random Generator of a backend (default: the active one), seeded by manual_seed."""
    name = name or get_backend()
    if name not in _rngs:
        _rngs[name] = module_of_name(name).random.default_rng(_seed[0])
    return _rngs[name]


def synchronize() -> None:
    """Wait for queued GPU work to finish (a no-op on NumPy); needed for honest timings."""
    if get_backend() == "cupy":
        xp().cuda.get_current_stream().synchronize()


def device_name() -> str:
    """A short description of the device the active backend computes on."""
    if get_backend() == "cupy":
        cupy = xp()
        props = cupy.cuda.runtime.getDeviceProperties(cupy.cuda.Device().id)
        name = props["name"]
        return name.decode() if isinstance(name, bytes) else str(name)
    if get_backend() in _standins:
        return f"CPU (stand-in backend {get_backend()!r})"
    return "CPU"


def versions() -> dict:
    """Versions of numpy and (when importable) cupy."""
    out = {"numpy": numpy.__version__, "cupy": None}
    try:
        out["cupy"] = importlib.import_module("cupy").__version__
    except Exception:  # not installed, or broken: report as absent
        pass
    return out


def blas_info() -> dict:
    """NumPy's BLAS library and thread count, when threadpoolctl or env vars can tell."""
    try:
        from threadpoolctl import threadpool_info

        for pool in threadpool_info():
            if pool.get("user_api") == "blas":
                return {"library": pool.get("internal_api"), "threads": pool.get("num_threads")}
    except ImportError:
        pass
    for var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        if os.environ.get(var):
            return {"library": "unknown", "threads": int(os.environ[var])}
    return {"library": "unknown", "threads": os.cpu_count()}


def keep_freed_memory(enable: bool = True) -> bool:
    """Ask glibc to keep freed blocks for reuse instead of returning them to the OS (Linux only).

    Importing tinylora never calls this; `tinylora demo` and `tinylora bench` do, and a
    training script may. TINYLORA_KEEP_FREED_MEMORY=0 vetoes it. Returns True if applied.
    """
    if not enable or os.environ.get("TINYLORA_KEEP_FREED_MEMORY", "1") == "0":
        return False
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        m_trim_threshold, m_mmap_threshold = -1, -3  # from <malloc.h>
        ok = libc.mallopt(m_trim_threshold, 1 << 30)  # keep up to 1 GiB of free heap
        ok &= libc.mallopt(m_mmap_threshold, 1 << 25)  # blocks under 32 MiB come from the heap
        return bool(ok)
    except (OSError, AttributeError):  # not glibc (e.g. musl): nothing to tune
        return False


def _init_from_env() -> None:
    name = os.environ.get("TINYLORA_BACKEND", "").strip()
    if not name:
        return
    try:
        set_backend(name)
    except (ValueError, BackendUnavailableError) as e:
        raise type(e)(f"TINYLORA_BACKEND={name!r}: {e}") from None


_init_from_env()
