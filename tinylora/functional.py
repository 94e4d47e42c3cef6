"""Differentiable functions on Tensors, each with a hand-written (fused) backward pass."""

from __future__ import annotations

import math

import numpy as np

from . import backend
from .tensor import Tensor, is_grad_enabled

_SQRT_2_OVER_PI = math.sqrt(2.0 / math.pi)
_GELU_C = 0.044715


def _t(x) -> Tensor:
    """x as a Tensor (arrays and numbers become constant leaves)."""
    return x if isinstance(x, Tensor) else Tensor(x)


def _xp(t: Tensor):
    return backend.module_of(t.data)


def _same_backend(op: str, *ts) -> None:
    kinds = {type(t.data) for t in ts if t is not None}
    if len(kinds) > 1:
        backend.check_same_backend(op, *[t.data for t in ts if t is not None])


def _flat_rows(data, n: int):
    """A (rows, n) view of data (..., n), copying only if it is not contiguous."""
    return data.reshape(-1, n)


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


# Sums over an axis written as matrix-vector products: BLAS runs them several times faster
# than numpy's reductions (and on both cores), and they are a good part of a training step.


def sum_last(a):
    """a.sum(axis=-1, keepdims=True) for a float array (..., D), computed as a @ ones."""
    d = a.shape[-1]
    return (_flat_rows(a, d) @ _ones(d, a)).reshape(*a.shape[:-1], 1)


def sum_leading(a):
    """Sum of a float array (..., D) over every axis but the last, as ones @ a -> (D,)."""
    a2 = _flat_rows(a, a.shape[-1])
    return _ones(a2.shape[0], a) @ a2


# ---- linear -------------------------------------------------------------------------------------


def _check_linear(op: str, x, weight, bias) -> tuple:
    """Tensors for x, weight (out, in), bias (out,) or None, with errors in the reader's terms."""
    x, weight = _t(x), _t(weight)
    bias = None if bias is None else _t(bias)
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
    x2 = _flat_rows(x.data, n_in)  # (N, in)
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
    A, Bm = _t(lora_A), _t(lora_B)
    _same_backend("lora_linear", weight, A, Bm, None if x_adapter is None else _t(x_adapter))
    n_out, n_in = weight.shape
    r = A.shape[0]
    if A.shape != (r, n_in) or Bm.shape != (n_out, r):
        raise ValueError(
            f"lora_linear: A {A.shape} and B {Bm.shape} do not fit weight {weight.shape} "
            f"(need A (r, {n_in}) and B ({n_out}, r))"
        )
    xa = x if x_adapter is None else _t(x_adapter)
    x2 = _flat_rows(x.data, n_in)  # (N, in)
    xa2 = x2 if xa is x else _flat_rows(xa.data, n_in)  # (N, in)
    # With one input and more rows than W has entries per (in + out), folding s B A into W costs
    # fewer flops than the two thin products: y = x (W + s B A)^T, and gx = g (W + s B A) below.
    fold = xa is x and x2.shape[0] * (n_in + n_out) > n_in * n_out
    w = weight.data + lora_delta(A.data, Bm.data, scaling) if fold else weight.data  # (out, in)
    h = None  # (N, r): s A x, the input projected onto the adapter's r directions
    if not fold or (Bm.requires_grad and is_grad_enabled()):  # folded, only B's gradient needs it
        h = xa2 @ A.data.T
        h *= scaling
    y = x2 @ w.T  # (N, out)
    if not fold:
        y += h @ Bm.data.T  # (N, out): + s * B A x
    if bias is not None:
        y += bias.data
    out = y.reshape(*x.shape[:-1], n_out)

    def backward(g):  # g (..., out)
        g2 = g.reshape(-1, n_out)  # (N, out)
        gB = g2.T @ h if Bm.requires_grad and h is not None else None  # (out, r) = s * g^T (A x)
        gh = None
        if A.requires_grad or xa.requires_grad:
            gh = g2 @ Bm.data  # (N, r)
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

    parents = (x, weight) + ((bias,) if bias is not None else ()) + (A, Bm) + ((xa,) if xa is not x else ())
    return Tensor._node(out, "lora_linear", parents, backward)


# ---- activations ----------------------------------------------------------------------------------


def relu(x) -> Tensor:
    """max(x, 0)."""
    return _t(x).relu()


def gelu(x, approximate: str = "tanh") -> Tensor:
    """GELU: x * Phi(x), exactly ("none", via erf) or in GPT-2's tanh form ("tanh")."""
    x = _t(x)
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
    pass into a few buffers (and never a**3: numpy's pow is ~300x slower than two products).
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
    x = _t(x)
    a = x.data
    s = _xp(x).tanh(a * 0.5)
    s += 1
    s *= 0.5  # sigmoid(a), without overflow

    def backward(g):  # d/dx = s (1 + x (1 - s))
        return (g * (s * (1 + a * (1 - s))),)

    return Tensor._node(a * s, "silu", (x,), backward)


def sigmoid(x) -> Tensor:
    """1 / (1 + e^-x)."""
    return _t(x).sigmoid()


def tanh(x) -> Tensor:
    """Hyperbolic tangent."""
    return _t(x).tanh()


# ---- softmax family ---------------------------------------------------------------------------------


def softmax(x, axis: int = -1) -> Tensor:
    """exp(x) / sum(exp(x)) along `axis`, shifted by the max so it never overflows."""
    x = _t(x)
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
    x = _t(x)
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
    logits = _t(logits)
    if logits.ndim < 1:
        raise ValueError("cross_entropy: logits need a class axis; got a scalar")
    n_classes = logits.shape[-1]
    t = _targets(targets, logits.shape[:-1], n_classes, ignore_index, "cross_entropy", logits.backend)
    xp = _xp(logits)
    z = _flat_rows(logits.data, n_classes)  # (N, C)
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
    x = _t(x)
    weight = None if weight is None else _t(weight)
    bias = None if bias is None else _t(bias)
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
    x = _t(x)
    weight = None if weight is None else _t(weight)
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
    weight = _t(weight)
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
    x = _t(x)
    if not training or p == 0.0:
        return x
    if p == 1.0:
        return x * 0.0
    mask = (backend.rng(x.backend).random(x.shape, dtype=np.float32) >= p).astype(x.dtype)
    mask *= 1.0 / (1.0 - p)
    return Tensor._node(x.data * mask, "dropout", (x,), lambda g: (g * mask,))


# ---- attention ------------------------------------------------------------------------------------

_causal_cache: dict = {}


def _causal_bias(tq: int, tk: int, dtype, xp):
    """(tq, tk) scores to add: 0 where a query may see a key, -inf where the key is in its future.

    Queries are the last tq positions of the tk keys (so it also serves a KV cache). Adding it
    is one pass, cheaper than a masked copy.
    """
    key = (tq, tk, np.dtype(dtype).str, xp.__name__)
    if key not in _causal_cache:
        if len(_causal_cache) > 64:
            _causal_cache.clear()
        bias = xp.zeros((tq, tk), dtype=dtype)
        bias[xp.arange(tk)[None, :] > xp.arange(tk - tq, tk)[:, None]] = -xp.inf  # keys after the query
        _causal_cache[key] = bias
    return _causal_cache[key]


def scaled_dot_product_attention(
    q,
    k,
    v,
    causal: bool = True,
    mask=None,
    scale: float | None = None,
    dropout_p: float = 0.0,
    training: bool = True,
) -> Tensor:
    """softmax(q @ k^T * scale + masks) @ v over (..., T, head_dim) inputs.

    q (..., Hq, Tq, D), k (..., Hk, Tk, D), v (..., Hk, Tk, Dv); when Hq is a multiple of Hk
    the query heads share key/value heads in groups (grouped-query attention). `mask` is a
    boolean array broadcastable to (..., Tq, Tk), True where attention is allowed.
    """
    q, k, v = _t(q), _t(k), _t(v)
    _same_backend("scaled_dot_product_attention", q, k, v)
    if q.ndim < 2 or k.ndim < 2 or v.ndim < 2:
        raise ValueError(
            f"scaled_dot_product_attention: need (..., T, D) inputs, got {q.shape}, {k.shape}, {v.shape}"
        )
    if q.shape[-1] != k.shape[-1] or k.shape[-2] != v.shape[-2]:
        raise ValueError(
            f"scaled_dot_product_attention: q {q.shape}, k {k.shape}, v {v.shape}: q and k need the "
            "same head_dim and k and v the same length"
        )
    xp = _xp(q)
    qd, kd, vd = q.data, k.data, v.data
    groups = 1
    if q.ndim >= 3 and k.ndim >= 3 and q.shape[-3] != k.shape[-3] and k.shape[-3] != 1:
        hq, hk = q.shape[-3], k.shape[-3]
        if hq % hk or k.shape[-3] != v.shape[-3]:
            raise ValueError(
                f"scaled_dot_product_attention: {hq} query heads cannot share {hk} key/value heads"
            )
        groups = hq // hk  # q (..., Hk, G, Tq, D); k, v (..., Hk, 1, Tk, D)
        qd = qd.reshape(*q.shape[:-3], hk, groups, *q.shape[-2:])
        kd, vd = kd[..., None, :, :], vd[..., None, :, :]
    tq, tk = q.shape[-2], k.shape[-2]
    if causal and tq > tk:
        raise ValueError(f"scaled_dot_product_attention: causal attention needs Tq <= Tk, got {tq} > {tk}")
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else scale
    qs = qd * scale  # scaling q (Tq x D) is cheaper than scaling the scores (Tq x Tk)
    s = qs @ xp.ascontiguousarray(
        kd.swapaxes(-1, -2)
    )  # (..., Tq, Tk) = q k^T / sqrt(D); BLAS likes k^T laid out
    if causal:
        s += _causal_bias(tq, tk, s.dtype, xp)
    if mask is not None:
        allowed = mask.data if isinstance(mask, Tensor) else backend.asarray(mask, backend=q.backend)
        if groups > 1 and allowed.ndim >= 3:
            allowed = (
                allowed[..., None, :, :]
                if allowed.shape[-3] == 1
                else allowed.reshape(*allowed.shape[:-3], -1, groups, *allowed.shape[-2:])
            )
        xp.copyto(s, xp.finfo(s.dtype).min, where=~allowed.astype(bool))
    # causal without a mask: each query may always see its own position, tk - tq + i
    own = xp.diagonal(s, tk - tq, -2, -1)[..., None] if causal and mask is None else None  # (..., Tq, 1)
    p = _softmax_rows(s, own)  # attention weights (..., Tq, Tk)
    drop = None
    if dropout_p > 0.0 and training:
        drop = (backend.rng(q.backend).random(p.shape, dtype=np.float32) >= dropout_p).astype(p.dtype) / (
            1 - dropout_p
        )
    pd = p if drop is None else p * drop
    out = _matmul_like(pd, vd, qd)  # (..., Tq, Dv), laid out like q (heads-last: no copy to merge heads)

    def backward(g):
        g = g.reshape(out.shape)
        gq = gk = gv = None
        if v.requires_grad:
            gv = _ungroup(_matmul_like(pd.swapaxes(-1, -2), g, vd), v.data.shape, groups)  # (..., Tk, Dv)
        if q.requires_grad or k.requires_grad:
            gp = g @ xp.ascontiguousarray(vd.swapaxes(-1, -2))  # (..., Tq, Tk)
            if drop is not None:
                gp *= drop
            gs = gp
            _softmax_rows_backward(gs, p)
            if q.requires_grad:
                gq = _matmul_like(gs, kd, qd)  # (..., Tq, D), laid out like q
                gq *= scale
                gq = gq.reshape(q.data.shape)
            if k.requires_grad:
                gk = _ungroup(_matmul_like(gs.swapaxes(-1, -2), qs, kd), k.data.shape, groups)  # (..., Tk, D)
        return gq, gk, gv

    final = out.reshape(*out.shape[:-4], -1, *out.shape[-2:]) if groups > 1 else out
    return Tensor._node(final, "attention", (q, k, v), backward)


def _matmul_like(a, b, like):
    """a @ b, written into an array with the memory layout of `like` when the shapes agree.

    q, k and v are usually views of a (B, T, H, D) projection; results laid out the same way
    turn back into (B, T, C) without a copy.
    """
    if a.shape[:-2] != b.shape[:-2] or like.shape != (*a.shape[:-1], b.shape[-1]):
        return a @ b
    xp = backend.module_of(a)
    return xp.matmul(a, b, out=xp.empty_like(like))


def _softmax_rows(s, own=None):
    """Softmax over the last axis of scores s (..., Tk), shifted so that exp cannot overflow.

    The shift is each row's max (in place on s), or `own` (..., 1): a score the row is sure to
    contain, such as a query's score with its own position. That saves the max over short
    rows, which is slow, and each row still sums to at least exp(0) = 1; a row where some score
    exceeds its own by enough to overflow exp is redone with its max. Either way a row's result
    depends on that row alone.
    """
    xp = backend.module_of(s)
    if own is None:
        s -= s.max(axis=-1, keepdims=True)
        xp.exp(s, out=s)
        s /= sum_last(s)  # row sums as one matrix-vector product: much faster than .sum(axis=-1) here
        return s
    e = s - own
    with np.errstate(over="ignore"):
        xp.exp(e, out=e)
    total = sum_last(e)  # (..., 1)
    bad = ~xp.isfinite(total[..., 0])
    if bad.any():
        e[bad] = _softmax_rows(s[bad])
        total[bad] = 1
    e /= total
    return e


def _softmax_rows_backward(gp, p):
    """gp <- p * (gp - sum(gp * p)): the softmax backward, in place on the incoming gradient."""
    gp -= sum_last(gp * p)
    gp *= p


def _ungroup(g, shape, groups: int):
    """Sum a grouped (..., Hk, G, T, D) key/value gradient over its G query heads."""
    return g.sum(axis=-3) if groups > 1 else g  # the engine unbroadcasts anything else
