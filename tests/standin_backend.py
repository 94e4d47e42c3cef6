"""A stand-in for CuPy on a machine without a GPU: NumPy computes, but its arrays are a type of
their own that, like CuPy's, refuse to mix with NumPy arrays and to convert to them implicitly.

Registered as backend "standin", it runs tinylora's CuPy code path on the CPU: an op that mixes
backends, a NumPy array made where a backend array was needed, or a result that silently comes
back as NumPy shows up here as it would on a GPU. It checks placement, not CuPy's arithmetic.
"""

from __future__ import annotations

import contextlib
import types

import numpy as np
from numpy.lib.mixins import NDArrayOperatorsMixin

import tinylora.backend as backend

NAME = "standin"
CONVERTERS = {"asarray", "array", "asanyarray", "ascontiguousarray"}  # CuPy takes NumPy arrays here


def _unwrap(x):
    if isinstance(x, StandInArray):
        return x._a
    if isinstance(x, (list, tuple)):
        return type(x)(_unwrap(v) for v in x)
    if isinstance(x, dict):
        return {k: _unwrap(v) for k, v in x.items()}
    return x


def _wrap(x):
    if isinstance(x, np.ndarray):
        return StandInArray(x)
    if isinstance(x, np.generic):  # CuPy returns 0-d arrays where NumPy returns scalars
        return StandInArray(np.asarray(x))
    if isinstance(x, (list, tuple)):
        return type(x)(_wrap(v) for v in x) if type(x) in (list, tuple) else tuple(_wrap(v) for v in x)
    if isinstance(x, np.random.Generator):
        return Namespace(x, "Generator")
    return x


def _refuse_numpy(args, where: str) -> None:
    for a in args:
        items = a if isinstance(a, (list, tuple)) else (a,)
        for x in items:
            if isinstance(x, np.ndarray):
                raise TypeError(
                    f"standin: {where} was given a NumPy array beside stand-in arrays "
                    "(CuPy refuses this too: move it with tinylora.backend.asarray first)"
                )


class StandInArray(NDArrayOperatorsMixin):
    """An array of the stand-in backend: a NumPy array inside, CuPy's manners outside."""

    __slots__ = ("_a",)
    __hash__ = None

    def __init__(self, a: np.ndarray):
        self._a = a

    def __array_ufunc__(self, ufunc, method, *inputs, **kwargs):
        _refuse_numpy(inputs, f"{ufunc.__name__}.{method}")
        out = kwargs.get("out")
        if out is not None:
            _refuse_numpy(out, f"{ufunc.__name__}(out=)")
            kwargs["out"] = tuple(_unwrap(o) for o in out)
        result = getattr(ufunc, method)(*_unwrap(inputs), **kwargs)
        if method == "at":
            return None
        if out is not None:
            return out[0] if len(out) == 1 else out
        return _wrap(result)

    def __array_function__(self, func, types_, args, kwargs):
        _refuse_numpy(args, func.__name__)
        return _wrap(func(*_unwrap(args), **_unwrap(kwargs)))

    def __array__(self, dtype=None, copy=None):
        raise TypeError(
            "standin: implicit conversion to a NumPy array is not allowed (as on CuPy); "
            "use tinylora.to_numpy or .get()"
        )

    def get(self) -> np.ndarray:
        """A NumPy copy (CuPy's device-to-host copy)."""
        return self._a.copy()

    def __getattr__(self, name):
        if name.startswith("__"):  # no __array_interface__ & co: NumPy must not see inside
            raise AttributeError(name)
        value = getattr(self._a, name)
        if callable(value):
            return lambda *a, **k: _wrap(value(*_unwrap(a), **_unwrap(k)))
        return _wrap(value)

    def __getitem__(self, index):
        return _wrap(self._a[_unwrap(index)])

    def __setitem__(self, index, value):
        self._a[_unwrap(index)] = _unwrap(value)

    def __len__(self):
        return len(self._a)

    def __iter__(self):
        return (_wrap(row) for row in self._a)

    def __bool__(self):
        return bool(self._a)

    def __float__(self):
        return float(self._a)

    def __int__(self):
        return int(self._a)

    def __index__(self):
        return self._a.__index__()

    def __repr__(self):
        return f"standin.{self._a!r}"


class Namespace:
    """NumPy's functions (or a Generator's methods) returning stand-in arrays."""

    def __init__(self, inner, name: str):
        self._inner, self.__name__ = inner, name

    def __getattr__(self, name):
        if name.startswith("__"):
            raise AttributeError(name)
        value = getattr(self._inner, name)
        if isinstance(value, (np.ufunc, type)):  # ufuncs dispatch through __array_ufunc__
            return value
        if isinstance(value, types.ModuleType):
            return Namespace(value, f"{self.__name__}.{name}")
        if callable(value):

            def call(*a, **k):
                if name not in CONVERTERS:
                    _refuse_numpy(a, f"{self.__name__}.{name}")
                return _wrap(value(*_unwrap(a), **_unwrap(k)))

            return call
        return value


class StandInModule(Namespace):
    """The stand-in's array module: numpy's namespace plus CuPy's asnumpy."""

    def __init__(self):
        super().__init__(np, NAME)

    @staticmethod
    def asnumpy(a) -> np.ndarray:
        return a.get() if isinstance(a, StandInArray) else np.asarray(a)


MODULE = StandInModule()


def register() -> None:
    """Make "standin" a backend (idempotent)."""
    backend.register_backend(NAME, MODULE, StandInArray)


@contextlib.contextmanager
def standin():
    """Run a block on the stand-in backend."""
    register()
    with backend.use_backend(NAME) as xp:
        yield xp
