"""Scaled dot-product attention with a hand-written backward, and the helpers that make it fast.

`reference.scaled_dot_product_attention` is the same op in eight lines of Tensor primitives;
this one differs only in speed: no (..., Tq, Tk) copies beyond the scores and weights, results
laid out like q so heads merge without a copy, and a softmax shifted by each query's own score.
"""

from __future__ import annotations

import math

import numpy as np

from . import backend
from .sums import sum_last
from .tensor import Tensor, as_tensor

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
    q, k, v = as_tensor(q), as_tensor(k), as_tensor(v)
    _check_shapes(q, k, v, causal)
    xp = backend.module_of(q.data)
    qd, kd, vd, groups = _group_heads(q.data, k.data, v.data)
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else scale
    qs = qd * scale  # scaling q (Tq x D) is cheaper than scaling the scores (Tq x Tk)
    s = qs @ xp.ascontiguousarray(
        kd.swapaxes(-1, -2)
    )  # (..., Tq, Tk) = q k^T / sqrt(D); BLAS likes k^T laid out
    own = _mask_scores(s, causal, mask, groups, q.backend)  # (..., Tq, 1) or None
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


def _check_shapes(q: Tensor, k: Tensor, v: Tensor, causal: bool) -> None:
    """Raise, in the reader's terms, unless q (..., Tq, D), k (..., Tk, D), v (..., Tk, Dv) fit."""
    op = "scaled_dot_product_attention"
    backend.check_same_backend(op, q.data, k.data, v.data)
    if q.ndim < 2 or k.ndim < 2 or v.ndim < 2:
        raise ValueError(f"{op}: need (..., T, D) inputs, got {q.shape}, {k.shape}, {v.shape}")
    if q.shape[-1] != k.shape[-1] or k.shape[-2] != v.shape[-2]:
        raise ValueError(
            f"{op}: q {q.shape}, k {k.shape}, v {v.shape}: q and k need the same head_dim and k and v the same length"
        )
    if causal and q.shape[-2] > k.shape[-2]:
        raise ValueError(f"{op}: causal attention needs Tq <= Tk, got {q.shape[-2]} > {k.shape[-2]}")


def _group_heads(qd, kd, vd) -> tuple:
    """(q, k, v, groups): with Hq = G * Hk query heads, q (..., Hk, G, Tq, D), k, v (..., Hk, 1, Tk, D)."""
    if qd.ndim < 3 or kd.ndim < 3 or qd.shape[-3] == kd.shape[-3] or kd.shape[-3] == 1:
        return qd, kd, vd, 1
    hq, hk = qd.shape[-3], kd.shape[-3]
    if hq % hk or kd.shape[-3] != vd.shape[-3]:
        raise ValueError(f"scaled_dot_product_attention: {hq} query heads cannot share {hk} key/value heads")
    groups = hq // hk
    qd = qd.reshape(*qd.shape[:-3], hk, groups, *qd.shape[-2:])
    return qd, kd[..., None, :, :], vd[..., None, :, :], groups


def _mask_scores(s, causal: bool, mask, groups: int, on: str):
    """Mask the scores s (..., Tq, Tk) in place; return each query's own score (..., Tq, 1) when causal.

    The own score (query i sees its own position, Tk - Tq + i) is a safe shift for the softmax.
    """
    xp = backend.module_of(s)
    tq, tk = s.shape[-2:]
    if causal:
        s += _causal_bias(tq, tk, s.dtype, xp)
    if mask is None:
        return xp.diagonal(s, tk - tq, -2, -1)[..., None] if causal else None
    allowed = mask.data if isinstance(mask, Tensor) else backend.asarray(mask, backend=on)
    if groups > 1 and allowed.ndim >= 3:
        allowed = (
            allowed[..., None, :, :]
            if allowed.shape[-3] == 1
            else allowed.reshape(*allowed.shape[:-3], -1, groups, *allowed.shape[-2:])
        )
    xp.copyto(s, xp.finfo(s.dtype).min, where=~allowed.astype(bool))
    return None


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
    contain, such as a query's score with its own position. That saves a pass (the max) over
    the scores, and each row still sums to at least exp(0) = 1; a row where some score
    exceeds its own by enough to overflow exp is redone with its max. Either way a row's result
    depends on that row alone.
    """
    xp = backend.module_of(s)
    if own is None:
        s -= s.max(axis=-1, keepdims=True)
        xp.exp(s, out=s)
        s /= sum_last(s)  # row sums as one matrix-vector product (see sums.py)
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
