"""Tensor and reverse-mode autograd: every op's forward and its backward side by side.

Each op computes its output from `.data` arrays and, when some input needs a gradient,
records its inputs and a `backward(g)` closure that maps the output's gradient `g` to one
gradient per input (None where that input needs none). `Tensor.backward` walks the graph
in reverse topological order; `_unbroadcast` is the single place where a gradient is summed
back to the shape of an input that broadcasting stretched.
"""

from __future__ import annotations

import contextlib
import functools
import math

import numpy as np

from . import backend

_state = {"grad": True}


class no_grad(contextlib.ContextDecorator):
    """Context manager (or decorator) in which ops build no graph."""

    def _recreate_cm(self):  # a fresh instance per decorated call: safe under recursion
        return type(self)()

    def __enter__(self):
        self.previous = _state["grad"]
        _state["grad"] = False

    def __exit__(self, *exc):
        _state["grad"] = self.previous
        return False


class enable_grad(no_grad):
    """Context manager (or decorator) that turns graph building back on."""

    def __enter__(self):
        self.previous = _state["grad"]
        _state["grad"] = True


def is_grad_enabled() -> bool:
    """True when ops record a graph for backward."""
    return _state["grad"]


def _is_float(dtype) -> bool:
    return dtype.kind == "f"


def _as_array(data, dtype=None):
    """Backend array for `data`: floats keep their dtype, python numbers/lists -> float32."""
    if isinstance(data, Tensor):
        data = data.data
    if hasattr(data, "shape") and hasattr(data, "dtype"):  # ndarray, numpy scalar, cupy array
        arr = backend.asarray(data)
        return arr if dtype is None else arr.astype(dtype, copy=False)
    if dtype is None:
        arr = np.asarray(data)
        if arr.dtype.kind not in "fc":  # python ints, bools, floats, lists of them
            dtype = np.float32
        elif arr.dtype == np.float64:
            dtype = np.float32
    return backend.asarray(data, dtype=dtype)


def _numeric(data, dtype=None):
    """`data` unchanged if it holds numbers (or bools); a TypeError naming any other dtype."""
    kinds = [np.dtype(dtype)] if dtype is not None else []
    if not isinstance(data, Tensor):
        kinds.append(data.dtype if hasattr(data, "dtype") else np.asarray(data).dtype)
    for dt in kinds:
        if dt.kind not in "biufc":
            raise TypeError(f"Tensor: expected numbers (float, int or bool data), got dtype {dt}")
    return data


class Tensor:
    """An array plus what autograd needs: requires_grad, .grad, and the op that made it."""

    __slots__ = ("data", "grad", "requires_grad", "_prev", "_backward", "_op", "_retain", "name")
    __array_ufunc__ = None  # numpy_array * tensor defers to Tensor.__rmul__

    def __init__(self, data, requires_grad: bool = False, dtype=None):
        self.data = _as_array(_numeric(data, dtype), dtype)
        self.grad = None
        self.requires_grad = False
        self._prev = ()
        self._backward = None
        self._op = ""
        self._retain = False
        self.name = None
        if requires_grad:
            self.requires_grad_(True)

    # ---- construction helpers -------------------------------------------------------------

    @staticmethod
    def _wrap(data) -> Tensor:
        """A leaf Tensor around an existing array, without checks or copies (internal)."""
        t = Tensor.__new__(Tensor)
        t.data, t.grad, t.requires_grad = data, None, False
        t._prev, t._backward, t._op, t._retain, t.name = (), None, "", False, None
        return t

    @staticmethod
    def _node(data, op: str, parents: tuple, backward) -> Tensor:
        """The output of an op; it joins the graph when grad is on and an input needs grad."""
        if isinstance(data, np.generic):  # numpy turns 0-d results into scalars; keep arrays
            data = np.asarray(data)
        out = Tensor._wrap(data)
        if _state["grad"]:
            for p in parents:
                if p.requires_grad:
                    out.requires_grad, out._prev, out._backward, out._op = True, parents, backward, op
                    break
        return out

    def _lift(self, other, op: str) -> Tensor:
        """`other` as a Tensor for a binary op; python numbers stay weakly typed scalars."""
        if isinstance(other, Tensor):
            if type(other.data) is not type(self.data):
                backend.check_same_backend(op, self.data, other.data)
            return other
        if isinstance(other, (int, float)) and not isinstance(other, bool):
            return Tensor._wrap(other)  # numpy/cupy keep float32 * 2.0 in float32
        if hasattr(other, "shape"):
            backend.check_same_backend(op, self.data, other)
            return Tensor._wrap(other)
        return Tensor._wrap(backend.asarray(other, dtype=self.data.dtype))

    # ---- properties -----------------------------------------------------------------------

    shape = property(lambda self: tuple(self.data.shape), doc="Shape of the data.")
    dtype = property(lambda self: self.data.dtype, doc="dtype of the data.")
    ndim = property(lambda self: self.data.ndim, doc="Number of dimensions.")
    size = property(lambda self: int(self.data.size), doc="Number of elements.")
    is_leaf = property(lambda self: self._backward is None, doc="True unless an op made it.")
    backend = property(lambda self: backend.backend_of(self.data), doc='"numpy" or "cupy".')

    def __len__(self) -> int:
        return len(self.data)

    def __repr__(self) -> str:
        body = repr(backend.to_numpy(self.data)).replace("array(", "").rstrip(")")
        extra = ", requires_grad=True" if self.requires_grad else ""
        if self.backend != "numpy":
            extra += f", backend={self.backend!r}"
        return f"Tensor({body}{extra})"

    __hash__ = object.__hash__  # comparisons return arrays, identity stays the hash

    # ---- conversion -----------------------------------------------------------------------

    def numpy(self) -> np.ndarray:
        """The data as a NumPy array (a host copy on CuPy; the array itself on NumPy)."""
        return backend.to_numpy(self.data)

    def item(self) -> float:
        """The value of a one-element tensor as a python number."""
        if self.data.size != 1:
            raise ValueError(f"item: only one-element tensors convert to a number; shape is {self.shape}")
        return self.data.reshape(()).item()

    def tolist(self):
        """The data as nested python lists."""
        return self.numpy().tolist()

    def __float__(self) -> float:
        return float(self.item())

    def __int__(self) -> int:
        return int(self.item())

    def __bool__(self) -> bool:
        return bool(self.item())

    def detach(self) -> Tensor:
        """A new leaf sharing this data, outside the graph."""
        return Tensor._wrap(self.data)

    def to(self, name: str) -> Tensor:
        """A leaf copy on another backend ("numpy" or "cupy"), keeping requires_grad."""
        out = Tensor._wrap(backend.asarray(self.data, backend=name))
        out.requires_grad = self.requires_grad
        return out

    def requires_grad_(self, flag: bool = True) -> Tensor:
        """Set requires_grad in place (only float tensors can require grad)."""
        if flag and not _is_float(self.data.dtype):
            raise TypeError(
                f"requires_grad: only float tensors can require grad; this one is {self.data.dtype}"
            )
        self.requires_grad = bool(flag)
        return self

    def retain_grad(self) -> Tensor:
        """Keep .grad on this non-leaf tensor after backward (leaves always keep it)."""
        self._retain = True
        return self

    def zero_grad(self) -> None:
        """Forget the accumulated gradient."""
        self.grad = None

    # ---- autograd engine -----------------------------------------------------------------

    def backward(self, grad=None) -> None:
        """Accumulate d(self)/d(leaf) * grad into .grad of every leaf that requires grad."""
        if not self.requires_grad:
            raise RuntimeError(
                "backward: this tensor does not require grad: nothing in its graph has "
                "requires_grad=True (or it was computed under no_grad)"
            )
        if grad is None:
            if self.data.size != 1:
                raise RuntimeError(
                    f"backward: grad can be omitted only for a one-element tensor, but this one "
                    f"has shape {self.shape}; pass grad= an array of that shape"
                )
            g = backend.module_of(self.data).ones_like(self.data)
        else:
            g = _as_array(grad, dtype=self.data.dtype)
            if tuple(g.shape) != self.shape:
                raise ValueError(f"backward: grad has shape {tuple(g.shape)} but the tensor has {self.shape}")
            g = g.copy()  # the caller keeps their array
        grads = {id(self): g}
        owned: set = set()  # arrays this pass handed to a leaf's .grad (never hand one out twice)
        for node in _topological_order(self):
            g = grads.pop(id(node), None)
            if g is None:
                continue
            if node._backward is None:  # a leaf: all its contributions are summed by now
                _accumulate(node, g, owned)
                continue
            if node._retain:
                _accumulate(node, g.copy(), owned)
            for p, pg in zip(node._prev, node._backward(g)):
                if pg is None or not p.requires_grad:
                    continue
                if isinstance(pg, np.generic):
                    pg = np.asarray(pg)
                if pg.shape != p.data.shape:
                    pg = _unbroadcast(pg, p.data.shape)
                if pg.dtype != p.data.dtype:
                    pg = pg.astype(p.data.dtype)
                key = id(p)
                grads[key] = grads[key] + pg if key in grads else pg  # never in place: pg may be shared

    # ---- elementwise arithmetic (broadcasting; _unbroadcast sums grads back) -----------

    def __add__(self, other):
        a, b = self, self._lift(other, "add")
        return Tensor._node(a.data + b.data, "add", (a, b), lambda g: (g, g))

    def __radd__(self, other):
        return self._lift(other, "add").__add__(self)

    def __sub__(self, other):
        a, b = self, self._lift(other, "sub")
        return Tensor._node(a.data - b.data, "sub", (a, b), lambda g: (g, -g if b.requires_grad else None))

    def __rsub__(self, other):
        return self._lift(other, "sub").__sub__(self)

    def __mul__(self, other):
        a, b = self, self._lift(other, "mul")

        def backward(g):
            return (g * b.data if a.requires_grad else None, g * a.data if b.requires_grad else None)

        return Tensor._node(a.data * b.data, "mul", (a, b), backward)

    def __rmul__(self, other):
        return self._lift(other, "mul").__mul__(self)

    def __truediv__(self, other):
        a, b = self, self._lift(other, "div")
        out = a.data / b.data

        def backward(g):  # d(a/b)/da = 1/b ; d(a/b)/db = -a/b^2 = -out/b
            ga = g / b.data if a.requires_grad else None
            gb = -g * out / b.data if b.requires_grad else None
            return ga, gb

        return Tensor._node(out, "div", (a, b), backward)

    def __rtruediv__(self, other):
        return self._lift(other, "div").__truediv__(self)

    def __neg__(self):
        return Tensor._node(-self.data, "neg", (self,), lambda g: (-g,))

    def __pos__(self):
        return self

    def __pow__(self, exponent):
        a = self
        if isinstance(exponent, Tensor):  # a ** b with b a tensor: d/db = out * log(a)
            b = self._lift(exponent, "pow")
            out = a.data**b.data

            def backward_t(g):
                ga = g * b.data * a.data ** (b.data - 1) if a.requires_grad else None
                gb = g * out * backend.module_of(out).log(a.data) if b.requires_grad else None
                return ga, gb

            return Tensor._node(out, "pow", (a, b), backward_t)
        if not isinstance(exponent, (int, float)) or isinstance(exponent, bool):
            raise TypeError(f"pow: exponent must be a python number or Tensor, got {type(exponent).__name__}")
        p = exponent

        def backward(g):  # d(a^p)/da = p * a^(p-1)
            return (g * (p * _power(a.data, p - 1)),)

        return Tensor._node(_power(a.data, p), "pow", (a,), backward)

    def __rpow__(self, base):  # base ** self, base a number: d/dx = out * log(base)
        if not isinstance(base, (int, float)):
            return self._lift(base, "pow").__pow__(self)
        out = base**self.data
        return Tensor._node(out, "rpow", (self,), lambda g: (g * out * math.log(base),))

    # ---- comparisons return plain arrays (no gradient flows through them) ---------------

    def _raw(self, other):
        return other.data if isinstance(other, Tensor) else other

    def __lt__(self, other):
        return self.data < self._raw(other)

    def __le__(self, other):
        return self.data <= self._raw(other)

    def __gt__(self, other):
        return self.data > self._raw(other)

    def __ge__(self, other):
        return self.data >= self._raw(other)

    def __eq__(self, other):
        return self.data == self._raw(other)

    def __ne__(self, other):
        return self.data != self._raw(other)

    # ---- matrix product -----------------------------------------------------------------

    def __matmul__(self, other):
        a, b = self, self._lift(other, "matmul")
        _check_matmul(a.shape, b.shape)
        out = a.data @ b.data  # (..., n, k) @ (..., k, m) -> (..., n, m); 1-D operands promoted

        def backward(g):
            a2 = a.data[None, :] if a.ndim == 1 else a.data  # (..., n, k)
            b2 = b.data[:, None] if b.ndim == 1 else b.data  # (..., k, m)
            batch = g.shape[: g.ndim - (a.ndim > 1) - (b.ndim > 1)]
            g2 = g.reshape(batch + (a2.shape[-2], b2.shape[-1]))  # (..., n, m)
            ga = gb = None
            if a.requires_grad:
                ga = _reshaped(_unbroadcast(g2 @ b2.swapaxes(-1, -2), a2.shape), a.data.shape)
            if b.requires_grad:
                if b2.ndim == 2 and a2.ndim > 2:  # fold the batch into rows: one big GEMM
                    k, m = b2.shape
                    gb = a2.reshape(-1, k).T @ g2.reshape(-1, m)
                else:
                    gb = _unbroadcast(a2.swapaxes(-1, -2) @ g2, b2.shape)
                gb = _reshaped(gb, b.data.shape)
            return ga, gb

        return Tensor._node(out, "matmul", (a, b), backward)

    def __rmatmul__(self, other):
        return self._lift(other, "matmul").__matmul__(self)

    # ---- reductions ------------------------------------------------------------------------

    def sum(self, axis=None, keepdims: bool = False) -> Tensor:
        """Sum over `axis` (int, tuple or None for all)."""
        a = self
        axis = _norm_axis(axis, a.ndim, "sum")
        out = backend.module_of(a.data).asarray(a.data.sum(axis=axis, keepdims=keepdims))

        def backward(g):  # every summed element gets the same gradient
            gk = g if keepdims else _expand_reduced(g, a.ndim, axis)
            return (backend.module_of(g).broadcast_to(gk, a.data.shape),)

        return Tensor._node(out, "sum", (a,), backward)

    def mean(self, axis=None, keepdims: bool = False) -> Tensor:
        """Mean over `axis` (int, tuple or None for all)."""
        axis = _norm_axis(axis, self.ndim, "mean")
        n = self.data.size if axis is None else math.prod(self.data.shape[i] for i in axis)
        return self.sum(axis, keepdims) * (1.0 / max(n, 1))

    def max(self, axis=None, keepdims: bool = False) -> Tensor:
        """Maximum over `axis`; ties share the gradient equally."""
        return self._extreme(axis, keepdims, "max")

    def min(self, axis=None, keepdims: bool = False) -> Tensor:
        """Minimum over `axis`; ties share the gradient equally."""
        return self._extreme(axis, keepdims, "min")

    def _extreme(self, axis, keepdims, op):
        a = self
        axis = _norm_axis(axis, a.ndim, op)
        if a.data.size == 0:
            raise ValueError(f"{op}: cannot reduce an empty tensor of shape {a.shape}")
        kept = getattr(a.data, op)(axis=axis, keepdims=True)
        out = kept if keepdims else kept.reshape(_reduced_shape(a.shape, axis))

        def backward(g):
            hit = a.data == kept  # (shape of a) True where the extreme sits
            gk = g if keepdims else _expand_reduced(g, a.ndim, axis)
            return (hit * (gk / hit.sum(axis=axis, keepdims=True)),)

        return Tensor._node(out, op, (a,), backward)

    # ---- elementwise functions ---------------------------------------------------------

    def exp(self) -> Tensor:
        """e ** x."""
        out = backend.module_of(self.data).exp(self.data)
        return Tensor._node(out, "exp", (self,), lambda g: (g * out,))

    def log(self) -> Tensor:
        """Natural logarithm."""
        a = self
        return Tensor._node(backend.module_of(a.data).log(a.data), "log", (a,), lambda g: (g / a.data,))

    def sqrt(self) -> Tensor:
        """Square root."""
        out = backend.module_of(self.data).sqrt(self.data)
        return Tensor._node(out, "sqrt", (self,), lambda g: (g * 0.5 / out,))

    def tanh(self) -> Tensor:
        """Hyperbolic tangent."""
        out = backend.module_of(self.data).tanh(self.data)
        return Tensor._node(out, "tanh", (self,), lambda g: (g * (1 - out * out),))

    def erf(self) -> Tensor:
        """The error function (exact GELU needs it); d/dx erf(x) = 2/sqrt(pi) e^(-x^2)."""
        a = self
        xp = backend.module_of(a.data)
        out = backend.erf(a.data)
        return Tensor._node(
            out, "erf", (a,), lambda g: (g * ((2 / math.sqrt(math.pi)) * xp.exp(-a.data * a.data)),)
        )

    def sigmoid(self) -> Tensor:
        """1 / (1 + e^-x), computed as (1 + tanh(x/2)) / 2 so it never overflows."""
        out = backend.module_of(self.data).tanh(self.data * 0.5)
        out += 1
        out *= 0.5
        return Tensor._node(out, "sigmoid", (self,), lambda g: (g * out * (1 - out),))

    def relu(self) -> Tensor:
        """max(x, 0)."""
        a = self
        out = backend.module_of(a.data).maximum(a.data, 0)
        return Tensor._node(out, "relu", (a,), lambda g: (g * (a.data > 0),))

    def abs(self) -> Tensor:
        """|x| (gradient sign(x), 0 at 0)."""
        a = self
        xp = backend.module_of(a.data)
        return Tensor._node(xp.abs(a.data), "abs", (a,), lambda g: (g * xp.sign(a.data),))

    def astype(self, dtype) -> Tensor:
        """A cast copy; gradients are cast back to this tensor's dtype."""
        out = self.data.astype(dtype)
        if not _is_float(out.dtype):
            return Tensor._wrap(out)
        return Tensor._node(out, "astype", (self,), lambda g: (g,))

    # ---- shape ----------------------------------------------------------------------------

    def reshape(self, *shape) -> Tensor:
        """Same data, new shape (one entry may be -1)."""
        a = self
        shape = tuple(shape[0]) if len(shape) == 1 and isinstance(shape[0], (tuple, list)) else shape
        try:
            out = a.data.reshape(shape)
        except ValueError:
            raise ValueError(f"reshape: cannot reshape {a.shape} ({a.size} elements) into {shape}") from None
        return Tensor._node(out, "reshape", (a,), lambda g: (g.reshape(a.data.shape),))

    def transpose(self, *axes) -> Tensor:
        """Permute axes (reverse them when none are given)."""
        a = self
        axes = tuple(axes[0]) if len(axes) == 1 and isinstance(axes[0], (tuple, list)) else axes
        if not axes:
            axes = tuple(reversed(range(a.ndim)))
        if sorted(ax % max(a.ndim, 1) for ax in axes) != list(range(a.ndim)) or len(axes) != a.ndim:
            raise ValueError(
                f"transpose: axes {axes} are not a permutation of the {a.ndim} axes of {a.shape}"
            )
        inverse = tuple(np.argsort([ax % a.ndim for ax in axes]))
        return Tensor._node(a.data.transpose(axes), "transpose", (a,), lambda g: (g.transpose(inverse),))

    @property
    def T(self) -> Tensor:
        """All axes reversed (the usual transpose for a matrix)."""
        return self.transpose()

    def swapaxes(self, axis1: int, axis2: int) -> Tensor:
        """Exchange two axes."""
        axes = list(range(self.ndim))
        axes[axis1], axes[axis2] = axes[axis2], axes[axis1]
        return self.transpose(axes)

    def __getitem__(self, index) -> Tensor:
        a = self
        index, advanced = _norm_index(index, a.backend)
        try:
            out = a.data[index]
        except IndexError as e:
            raise IndexError(f"index: {e} (tensor shape {a.shape})") from None

        def backward(g):  # scatter the gradient back; repeated integer indices add up
            ga = backend.module_of(g).zeros_like(a.data)
            if advanced:
                backend.scatter_add(ga, index, g)
            else:
                ga[index] = g
            return (ga,)

        return Tensor._node(out, "getitem", (a,), backward)


# ---- engine helpers -------------------------------------------------------------------------


def _topological_order(root: Tensor) -> list:
    """Nodes that need a gradient, each after every node that consumes it (output first)."""
    order, visited, stack = [], set(), [(root, False)]
    while stack:
        node, expanded = stack.pop()
        if expanded:
            order.append(node)
            continue
        if id(node) in visited:
            continue
        visited.add(id(node))
        stack.append((node, True))
        for p in node._prev:
            if p.requires_grad and id(p) not in visited:
                stack.append((p, False))
    order.reverse()
    return order


def _accumulate(t: Tensor, g, owned: set) -> None:
    """Add g into t.grad; take g itself (no copy) if it is a whole array no other leaf holds.

    Backward functions only read their incoming gradient, and pending gradients are summed
    out of place, so the one thing to avoid is two .grad attributes sharing memory (they are
    later updated in place). Views and arrays already handed out this pass are copied.
    """
    if t.grad is None:
        if g.base is not None or id(g) in owned:
            g = g.copy()
        owned.add(id(g))
        t.grad = g
    else:
        t.grad += g


def _power(a, p):
    """a ** p for a python number p, with the common exponents computed without pow (much faster)."""
    if p == 1:
        return a.copy()
    if p == 2:
        return a * a
    if p == 3:
        return a * a * a
    if p == 0.5:
        return backend.module_of(a).sqrt(a)
    if p == -1:
        return 1 / a
    return a**p


def _reshaped(g, shape):
    """g in `shape`, without making a view when it already has it."""
    return g if g.shape == shape else g.reshape(shape)


def _unbroadcast(g, shape: tuple):
    """Sum g over the axes broadcasting added or stretched, so it has `shape` (the one rule)."""
    shape = tuple(shape)
    if tuple(g.shape) == shape:
        return g
    lead = g.ndim - len(shape)
    axes = tuple(range(lead)) + tuple(
        lead + i for i, n in enumerate(shape) if n == 1 and g.shape[lead + i] != 1
    )
    if axes:
        g = g.sum(axis=axes, keepdims=True)
    return g.reshape(shape)


def _norm_axis(axis, ndim: int, op: str):
    """axis as None or a sorted tuple of non-negative ints, with a clear error when out of range."""
    if axis is None:
        return None
    axes = (axis,) if isinstance(axis, (int, np.integer)) else tuple(axis)
    out = []
    for ax in axes:
        if not -max(ndim, 1) <= ax < max(ndim, 1):
            raise ValueError(f"{op}: axis {ax} is out of range for a tensor with {ndim} dimensions")
        out.append(int(ax) % max(ndim, 1))
    return tuple(sorted(set(out)))


def _reduced_shape(shape: tuple, axis) -> tuple:
    if axis is None:
        return ()
    return tuple(n for i, n in enumerate(shape) if i not in axis)


def _expand_reduced(g, ndim: int, axis):
    """Put back the reduced axes (as size 1) so g broadcasts against the input."""
    if axis is None:
        return g.reshape((1,) * ndim)
    shape = list(g.shape)
    for ax in axis:
        shape.insert(ax, 1)
    return g.reshape(shape)


def _check_matmul(sa: tuple, sb: tuple) -> None:
    """Raise ValueError naming both shapes before NumPy's own message would appear."""
    if not sa or not sb:
        raise ValueError(f"matmul: {sa} @ {sb}: both operands need at least 1 dimension (use * for scalars)")
    ka = sa[-1]
    kb = sb[0] if len(sb) == 1 else sb[-2]
    if ka != kb:
        raise ValueError(f"matmul: {sa} @ {sb}: inner dimensions {ka} and {kb} differ")
    ba, bb = sa[:-2], sb[:-2]
    for x, y in zip(reversed(ba), reversed(bb)):
        if x != y and x != 1 and y != 1:
            raise ValueError(f"matmul: {sa} @ {sb}: batch dimensions {ba} and {bb} do not broadcast")


def _norm_index(index, on: str = "numpy"):
    """Unwrap Tensor/list indices into arrays on backend `on`; report whether advanced indexing is used."""
    parts = index if isinstance(index, tuple) else (index,)
    out, advanced = [], False
    for part in parts:
        if isinstance(part, Tensor):
            part = part.data
        if isinstance(part, list):
            part = np.asarray(part)
        if hasattr(part, "shape") and hasattr(part, "dtype"):
            if part.dtype.kind not in "iub":
                raise IndexError(f"index: index arrays must be integer or boolean, got {part.dtype}")
            advanced = advanced or part.ndim > 0 or part.dtype.kind == "b"
            if advanced and backend.backend_of(part) != on:  # index arrays live where the data does
                part = backend.asarray(part, backend=on)
        out.append(part)
    return (tuple(out) if isinstance(index, tuple) else out[0]), advanced


# ---- functions that make or combine tensors ----------------------------------------------------


def to_numpy(x) -> np.ndarray:
    """A NumPy array from a Tensor or a NumPy/CuPy array."""
    return backend.to_numpy(x.data if isinstance(x, Tensor) else x)


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
