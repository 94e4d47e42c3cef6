"""Differentiable functions on Tensors, each with a hand-written (fused) backward pass.

`tinylora.reference` holds the textbook version of each fused op (same names, the engine's
backward); tests/test_reference.py checks that both agree. Attention lives in `attention`.
"""

from __future__ import annotations

import math

import numpy as np

from . import backend
from .attention import scaled_dot_product_attention
from .sums import sum_last, sum_leading
from .tensor import Tensor, as_tensor, is_grad_enabled

__all__ = [
    "linear",
    "lora_delta",
    "lora_linear",
    "relu",
    "gelu",
    "silu",
    "sigmoid",
    "tanh",
    "softmax",
    "log_softmax",
    "cross_entropy",
    "layer_norm",
    "rms_norm",
    "embedding",
    "dropout",
    "scaled_dot_product_attention",
]

_SQRT_2_OVER_PI = math.sqrt(2.0 / math.pi)
_GELU_C = 0.044715


def _xp(t: Tensor):
    return backend.module_of(t.data)


def _same_backend(op: str, *ts) -> None:
    kinds = {type(t.data) for t in ts if t is not None}
    if len(kinds) > 1:
        backend.check_same_backend(op, *[t.data for t in ts if t is not None])


# ---- linear -------------------------------------------------------------------------------------


def _check_linear(op: str, x, weight, bias) -> tuple:
    """Tensors for x, weight (out, in), bias (out,) or None, with errors in the reader's terms."""
    x, weight = as_tensor(x), as_tensor(weight)
    bias = None if bias is None else as_tensor(bias)
    _same_backend(op, x, weight, bias)
    if weight.ndim != 2:
        raise ValueError(f"{op}: weight must be 2-D (out, in), got shape {weight.shape}")
    n_out, n_in = weight.shape
    if x.ndim == 0 or x.shape[-1] != n_in:
        got = x.shape[-1] if x.ndim else "no"
        raise ValueError(
            f"{op}: x has {got} features but weight expects {n_in} (weight shape {weight.shape})"
        )
    if bias is not None and bias.shape != (n_out,):
        raise ValueError(f"{op}: bias has shape {bias.shape} but weight has {n_out} outputs, so ({n_out},)")
    return x, weight, bias


def linear(x, weight, bias=None) -> Tensor:
    """y = x @ weight.T + bias, with weight (out, in) and bias (out,)."""
    x, weight, bias = _check_linear("linear", x, weight, bias)
    n_out, n_in = weight.shape
    w = weight.data
    x2 = x.data.reshape(-1, n_in)  # (N, in)
    y = x2 @ w.T  # (N, out)
    if bias is not None:
        y += bias.data
    out = y.reshape(*x.shape[:-1], n_out)  # (..., out)

    def backward(g):  # g (..., out)
        g2 = g.reshape(-1, n_out)  # (N, out)
        gx = (g2 @ w).reshape(x.data.shape) if x.requires_grad else None  # (..., in)
        gw = g2.T @ x2 if weight.requires_grad else None  # (out, in); frozen -> never computed
        if bias is None:
            return gx, gw
        return gx, gw, (sum_leading(g2) if bias.requires_grad else None)  # (out,)

    parents = (x, weight) if bias is None else (x, weight, bias)
    return Tensor._node(out, "linear", parents, backward)


def lora_delta(lora_A, lora_B, scaling: float):
    """s B A (out, in) from arrays A (r, in), B (out, r): the one sum lora_linear folds and merges store."""
    return lora_B @ (lora_A * scaling)


def lora_linear(x, weight, bias, lora_A, lora_B, scaling: float, x_adapter=None) -> Tensor:
    """LoRA in one op: y = x @ W.T + b + (x_adapter @ A.T @ B.T) * scaling.

    W (out, in) and b are the frozen base; A (r, in), B (out, r). x_adapter is the adapter's
    input (dropout(x) in training), x itself by default. Written as one op so the backward
    can be read in one place, and so a frozen W costs only its forward and input-gradient
    matmuls: its weight gradient is never formed.
    """
    x, weight, bias = _check_linear("lora_linear", x, weight, bias)
    A, B = as_tensor(lora_A), as_tensor(lora_B)
    _same_backend("lora_linear", weight, A, B, None if x_adapter is None else as_tensor(x_adapter))
    n_out, n_in = weight.shape
    r = A.shape[0]
    if A.shape != (r, n_in) or B.shape != (n_out, r):
        raise ValueError(
            f"lora_linear: A {A.shape} and B {B.shape} do not fit weight {weight.shape} "
            f"(need A (r, {n_in}) and B ({n_out}, r))"
        )
    xa = x if x_adapter is None else as_tensor(x_adapter)
    x2 = x.data.reshape(-1, n_in)  # (N, in)
    xa2 = x2 if xa is x else xa.data.reshape(-1, n_in)  # (N, in)
    # With one input and more rows than W has entries per (in + out), folding s B A into W costs
    # fewer flops than the two thin products: y = x (W + s B A)^T, and gx = g (W + s B A) below.
    fold = xa is x and x2.shape[0] * (n_in + n_out) > n_in * n_out
    w = weight.data + lora_delta(A.data, B.data, scaling) if fold else weight.data  # (out, in)
    h = None  # (N, r): s A x, the input projected onto the adapter's r directions
    if not fold or (B.requires_grad and is_grad_enabled()):  # folded, only B's gradient needs it
        h = xa2 @ A.data.T
        h *= scaling
    y = x2 @ w.T  # (N, out)
    if not fold:
        y += h @ B.data.T  # (N, out): + s * B A x
    if bias is not None:
        y += bias.data
    out = y.reshape(*x.shape[:-1], n_out)

    def backward(g):  # g (..., out)
        g2 = g.reshape(-1, n_out)  # (N, out)
        gB = g2.T @ h if B.requires_grad and h is not None else None  # (out, r) = s * g^T (A x)
        gh = None
        if A.requires_grad or xa.requires_grad:
            gh = g2 @ B.data  # (N, r)
            gh *= scaling
        gA = gh.T @ xa2 if A.requires_grad else None  # (r, in)
        gx = gxa = None
        if x.requires_grad:
            gx = g2 @ w  # (N, in)
            if xa is x and not fold:
                gx += gh @ A.data
            gx = gx.reshape(x.data.shape)
        if xa is not x and xa.requires_grad:
            gxa = (gh @ A.data).reshape(xa.data.shape)
        gw = g2.T @ x2 if weight.requires_grad else None  # only if the base is not frozen
        gb = sum_leading(g2) if bias is not None and bias.requires_grad else None
        grads = [gx, gw] + ([gb] if bias is not None else []) + [gA, gB]
        return grads + ([gxa] if xa is not x else [])

    parents = (x, weight) + ((bias,) if bias is not None else ()) + (A, B) + ((xa,) if xa is not x else ())
    return Tensor._node(out, "lora_linear", parents, backward)


# ---- activations ----------------------------------------------------------------------------------


def relu(x) -> Tensor:
    """max(x, 0)."""
    return as_tensor(x).relu()


def gelu(x, approximate: str = "tanh") -> Tensor:
    """GELU: x * Phi(x), exactly ("none", via erf) or in GPT-2's tanh form ("tanh")."""
    x = as_tensor(x)
    a = x.data
    xp = _xp(x)
    if approximate == "tanh":
        out, d = _gelu_tanh(a, x.requires_grad and is_grad_enabled())

        def backward(g):  # d = gelu'(x), left behind by the forward
            return (g * d,)

    elif approximate == "none":
        cdf = 0.5 * (1 + backend.erf(a * (1 / math.sqrt(2.0))))
        out = a * cdf

        def backward(g):  # d/dx = Phi(x) + x phi(x)
            pdf = xp.exp(-0.5 * a * a) * (1 / math.sqrt(2 * math.pi))
            return (g * (cdf + a * pdf),)

    else:
        raise ValueError(f"gelu: approximate must be 'tanh' or 'none', got {approximate!r}")
    return Tensor._node(out.astype(a.dtype, copy=False), "gelu", (x,), backward)


def _gelu_tanh(a, grad: bool) -> tuple:
    """out = a p, p = (1 + tanh(u)) / 2, u = s (a + k a^3); and d(out)/da when grad, else None.

    d/da = p + a dp/da = p + 2 a p (1 - p) s (1 + 3k a^2), since 1 - tanh^2 = 4 p (1 - p).
    The forward leaves the derivative behind, so the backward is one product. Written pass by
    pass into a few buffers; u is a (s + s k a^2), so no power is taken.
    """
    xp = backend.module_of(a)
    a2 = a * a
    p = a2 * (_SQRT_2_OVER_PI * _GELU_C)
    p += _SQRT_2_OVER_PI
    p *= a  # u
    xp.tanh(p, out=p)
    p *= 0.5
    p += 0.5
    out = a * p
    if not grad:
        return out, None
    d = xp.subtract(1, p, dtype=p.dtype)
    d *= out  # a p (1 - p)
    a2 *= 6 * _GELU_C * _SQRT_2_OVER_PI
    a2 += 2 * _SQRT_2_OVER_PI  # 2 s (1 + 3k a^2)
    d *= a2
    d += p
    return out, d


def silu(x) -> Tensor:
    """x * sigmoid(x) (also called swish)."""
    x = as_tensor(x)
    a = x.data
    s = _xp(x).tanh(a * 0.5)
    s += 1
    s *= 0.5  # sigmoid(a), without overflow

    def backward(g):  # d/dx = s (1 + x (1 - s))
        return (g * (s * (1 + a * (1 - s))),)

    return Tensor._node(a * s, "silu", (x,), backward)


def sigmoid(x) -> Tensor:
    """1 / (1 + e^-x)."""
    return as_tensor(x).sigmoid()


def tanh(x) -> Tensor:
    """Hyperbolic tangent."""
    return as_tensor(x).tanh()


# ---- softmax family ---------------------------------------------------------------------------------


def softmax(x, axis: int = -1) -> Tensor:
    """exp(x) / sum(exp(x)) along `axis`, shifted by the max so it never overflows."""
    x = as_tensor(x)
    xp = _xp(x)
    total = sum_last if axis in (-1, x.ndim - 1) else lambda a: a.sum(axis=axis, keepdims=True)
    s = x.data - x.data.max(axis=axis, keepdims=True)
    xp.exp(s, out=s)
    s /= total(s)

    def backward(g):  # dx = s * (g - sum(g * s))
        gx = g - total(g * s)
        gx *= s
        return (gx,)

    return Tensor._node(s, "softmax", (x,), backward)


def log_softmax(x, axis: int = -1) -> Tensor:
    """x - logsumexp(x) along `axis`, computed stably."""
    x = as_tensor(x)
    xp = _xp(x)
    shifted = x.data - x.data.max(axis=axis, keepdims=True)
    out = shifted - xp.log(xp.exp(shifted).sum(axis=axis, keepdims=True))

    def backward(g):  # dx = g - softmax(x) * sum(g)
        return (g - xp.exp(out) * g.sum(axis=axis, keepdims=True),)

    return Tensor._node(out, "log_softmax", (x,), backward)


def _targets(targets, shape: tuple, n_classes: int, ignore_index, op: str, on: str = "numpy"):
    """Validated integer class ids as a backend array of `shape`."""
    t = targets.data if isinstance(targets, Tensor) else targets
    if isinstance(t, (list, tuple, int)):
        t = np.asarray(t)
    if not hasattr(t, "dtype") or t.dtype.kind not in "iu":
        got = getattr(t, "dtype", type(t).__name__)
        raise TypeError(f"{op}: targets must be integer class ids, got {got}")
    if tuple(t.shape) != tuple(shape):
        raise ValueError(
            f"{op}: targets have shape {tuple(t.shape)} but logits need {tuple(shape)} "
            f"(logits shape {tuple(shape) + (n_classes,)})"
        )
    flat = backend.asarray(t.reshape(-1), backend=on)  # targets live where the logits do
    valid = flat if ignore_index is None else flat[flat != ignore_index]
    if valid.size and (int(valid.min()) < 0 or int(valid.max()) >= n_classes):
        host = backend.to_numpy(flat)
        bad = (host < 0) | (host >= n_classes)
        if ignore_index is not None:
            bad &= host != ignore_index
        i = int(np.argmax(bad))
        pos = tuple(int(v) for v in np.unravel_index(i, shape))
        raise ValueError(
            f"{op}: target {int(host[i])} at position {pos[0] if len(pos) == 1 else pos} is out of range "
            f"for {n_classes} classes (valid ids are 0..{n_classes - 1})"
        )
    return flat


def cross_entropy(logits, targets, ignore_index: int | None = None) -> Tensor:
    """Mean negative log-likelihood of integer `targets` under softmax(logits) over the last axis."""
    logits = as_tensor(logits)
    if logits.ndim < 1:
        raise ValueError("cross_entropy: logits need a class axis; got a scalar")
    n_classes = logits.shape[-1]
    t = _targets(targets, logits.shape[:-1], n_classes, ignore_index, "cross_entropy", logits.backend)
    xp = _xp(logits)
    z = logits.data.reshape(-1, n_classes)  # (N, C)
    rows = xp.arange(z.shape[0])
    keep = None if ignore_index is None else t != ignore_index
    t_safe = t if keep is None else xp.where(keep, t, 0)
    p = z - z.max(axis=1, keepdims=True)  # shifted logits: max is 0, exp cannot overflow
    picked = p[rows, t_safe]  # (N,)
    xp.exp(p, out=p)
    total = sum_last(p)  # (N, 1)
    p /= total  # softmax probabilities
    nll = xp.log(total[:, 0]) - picked  # (N,) = logsumexp - target logit
    count = z.shape[0] if keep is None else int(keep.sum())
    if keep is not None:
        nll = nll * keep
    loss = nll.sum() / max(count, 1)
    out = xp.asarray(loss, dtype=z.dtype)

    def backward(g):  # d/dz = (softmax - onehot(target)) / N
        scale = g / max(count, 1)
        gz = p * scale
        gz[rows, t_safe] -= scale
        if keep is not None:
            gz *= keep[:, None]
        return (gz.reshape(logits.data.shape),)

    return Tensor._node(out, "cross_entropy", (logits,), backward)


# ---- normalisation -------------------------------------------------------------------------------


def layer_norm(x, weight=None, bias=None, eps: float = 1e-5) -> Tensor:
    """(x - mean) / sqrt(var + eps) * weight + bias over the last axis."""
    x = as_tensor(x)
    weight = None if weight is None else as_tensor(weight)
    bias = None if bias is None else as_tensor(bias)
    _same_backend("layer_norm", x, weight, bias)
    d = x.shape[-1]
    for name, p in (("weight", weight), ("bias", bias)):
        if p is not None and p.shape != (d,):
            raise ValueError(f"layer_norm: {name} has shape {p.shape} but x has {d} features, so ({d},)")
    xp = _xp(x)
    a = x.data
    xc = a - sum_last(a) * (1.0 / d)  # (..., D) centred
    var = sum_last(xc * xc) * (1.0 / d)  # (..., 1)
    rstd = 1.0 / xp.sqrt(var + eps)  # (..., 1)
    xhat = xc
    xhat *= rstd  # (..., D), xc is not needed again
    out = xhat * weight.data if weight is not None else xhat.copy()
    if bias is not None:
        out += bias.data

    def backward(g):
        gxhat = g * weight.data if weight is not None else g
        gx = gw = gb = None
        if x.requires_grad:  # dx = rstd * (gxhat - mean(gxhat) - xhat * mean(gxhat * xhat))
            gx = xhat * (sum_last(gxhat * xhat) * (-1.0 / d))  # scale the (..., 1) means, not (..., D)
            gx -= sum_last(gxhat) * (1.0 / d)
            gx += gxhat
            gx *= rstd
        if weight is not None and weight.requires_grad:
            gw = sum_leading(g * xhat)
        if bias is not None and bias.requires_grad:
            gb = sum_leading(g)
        return [gx] + [gw] * (weight is not None) + [gb] * (bias is not None)

    parents = tuple(p for p in (x, weight, bias) if p is not None)
    return Tensor._node(out, "layer_norm", parents, backward)


def rms_norm(x, weight=None, eps: float = 1e-6) -> Tensor:
    """x / sqrt(mean(x^2) + eps) * weight over the last axis (LLaMA's RMSNorm)."""
    x = as_tensor(x)
    weight = None if weight is None else as_tensor(weight)
    _same_backend("rms_norm", x, weight)
    d = x.shape[-1]
    if weight is not None and weight.shape != (d,):
        raise ValueError(f"rms_norm: weight has shape {weight.shape} but x has {d} features, so ({d},)")
    xp = _xp(x)
    a = x.data
    rrms = 1.0 / xp.sqrt(sum_last(a * a) * (1.0 / d) + eps)  # (..., 1)
    xhat = a * rrms  # (..., D)
    out = xhat * weight.data if weight is not None else xhat

    def backward(g):
        gxhat = g * weight.data if weight is not None else g
        gx = gw = None
        if x.requires_grad:  # dx = rrms * (gxhat - xhat * mean(gxhat * xhat))
            gx = xhat * (sum_last(gxhat * xhat) * (-1.0 / d))
            gx += gxhat
            gx *= rrms
        if weight is not None and weight.requires_grad:
            gw = sum_leading(g * xhat)
        return (gx, gw) if weight is not None else (gx,)

    parents = (x,) if weight is None else (x, weight)
    return Tensor._node(out, "rms_norm", parents, backward)


# ---- embedding and dropout -----------------------------------------------------------------------


def embedding(ids, weight) -> Tensor:
    """Rows of weight (num, dim) picked by integer ids (any shape) -> (*ids.shape, dim)."""
    weight = as_tensor(weight)
    if weight.ndim != 2:
        raise ValueError(f"embedding: weight must be 2-D (num, dim), got shape {weight.shape}")
    num, dim = weight.shape
    idx = ids.data if isinstance(ids, Tensor) else ids
    if isinstance(idx, (list, tuple, int)):
        idx = np.asarray(idx)
    if not hasattr(idx, "dtype") or idx.dtype.kind not in "iu":
        raise TypeError(f"embedding: ids must be integers, got {getattr(idx, 'dtype', type(idx).__name__)}")
    idx = backend.asarray(idx, backend=backend.backend_of(weight.data))
    if idx.size and (int(idx.min()) < 0 or int(idx.max()) >= num):
        bad = int(idx.max()) if int(idx.max()) >= num else int(idx.min())
        raise ValueError(
            f"embedding: id {bad} is out of range for {num} embeddings (valid ids are 0..{num - 1})"
        )
    out = weight.data[idx]  # (*ids.shape, dim)

    def backward(g):  # scatter-add rows of g back into the rows they came from
        gw = backend.module_of(g).zeros_like(weight.data)
        backend.scatter_add(gw, idx.reshape(-1), g.reshape(-1, dim))
        return (gw,)

    return Tensor._node(out, "embedding", (weight,), backward)


def dropout(x, p: float = 0.5, training: bool = True) -> Tensor:
    """Zero each element with probability p and scale the rest by 1/(1-p), in training only."""
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"dropout: p must be in [0, 1], got {p}")
    x = as_tensor(x)
    if not training or p == 0.0:
        return x
    if p == 1.0:
        return x * 0.0
    mask = (backend.rng(x.backend).random(x.shape, dtype=np.float32) >= p).astype(x.dtype)
    mask *= 1.0 / (1.0 - p)
    return Tensor._node(x.data * mask, "dropout", (x,), lambda g: (g * mask,))
