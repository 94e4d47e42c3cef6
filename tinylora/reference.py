"""The textbook version of every op that `functional` fuses, built from Tensor primitives only.

Same names and signatures as `tinylora.functional`; no backward is written here: the engine
in `tensor.py` differentiates each line. Slower, and the thing to read first.
"""

from __future__ import annotations

import math

import numpy as np

from . import backend
from .tensor import Tensor


def _t(x) -> Tensor:
    """x as a Tensor (arrays and numbers become constant leaves)."""
    return x if isinstance(x, Tensor) else Tensor(x)


def linear(x, weight, bias=None) -> Tensor:
    """y = x @ weight.T + bias, with weight (out, in) and bias (out,)."""
    y = _t(x) @ _t(weight).T  # (..., in) @ (in, out) -> (..., out)
    return y if bias is None else y + bias


def lora_linear(x, weight, bias, lora_A, lora_B, scaling: float, x_adapter=None) -> Tensor:
    """LoRA: the frozen layer plus the scaled low-rank path, W x + b + s * B (A dropout(x))."""
    x_adapter = x if x_adapter is None else x_adapter  # dropout(x) while training, else x
    h = linear(x_adapter, lora_A)  # (..., r): x projected onto the adapter's r directions
    return linear(x, weight, bias) + scaling * linear(h, lora_B)  # (..., out)


def softmax(x, axis: int = -1) -> Tensor:
    """exp(x) / sum(exp(x)) along `axis`, shifted by the max so exp cannot overflow."""
    x = _t(x)
    e = (x - x.max(axis, keepdims=True).detach()).exp()  # the shift is a constant: same result
    return e / e.sum(axis, keepdims=True)


def log_softmax(x, axis: int = -1) -> Tensor:
    """x - log(sum(exp(x))) along `axis`, shifted by the max so exp cannot overflow."""
    x = _t(x)
    shifted = x - x.max(axis, keepdims=True).detach()
    return shifted - shifted.exp().sum(axis, keepdims=True).log()


def cross_entropy(logits, targets, ignore_index: int | None = None) -> Tensor:
    """Mean negative log-likelihood of integer `targets` under softmax(logits) over the last axis."""
    logits = _t(logits)
    t = targets.data if isinstance(targets, Tensor) else targets
    t = backend.asarray(np.asarray(t) if isinstance(t, (list, int)) else t, backend=logits.backend)
    t = t.reshape(-1)  # (N,)
    logp = log_softmax(logits.reshape(-1, logits.shape[-1]))  # (N, C)
    xp = backend.module_of(t)
    keep = xp.ones(t.shape, dtype=bool) if ignore_index is None else t != ignore_index  # (N,)
    picked = logp[xp.arange(t.shape[0]), xp.where(keep, t, 0)]  # (N,) log p(target)
    return -(picked * Tensor(keep.astype(logits.dtype))).sum() / max(int(keep.sum()), 1)


def layer_norm(x, weight=None, bias=None, eps: float = 1e-5) -> Tensor:
    """(x - mean) / sqrt(var + eps) * weight + bias over the last axis."""
    x = _t(x)
    xc = x - x.mean(-1, keepdims=True)  # (..., D) centred
    var = (xc * xc).mean(-1, keepdims=True)  # (..., 1)
    y = xc / (var + eps).sqrt()
    y = y if weight is None else y * weight
    return y if bias is None else y + bias


def rms_norm(x, weight=None, eps: float = 1e-6) -> Tensor:
    """x / sqrt(mean(x^2) + eps) * weight over the last axis (LLaMA's RMSNorm)."""
    x = _t(x)
    y = x / ((x * x).mean(-1, keepdims=True) + eps).sqrt()
    return y if weight is None else y * weight


def gelu(x, approximate: str = "tanh") -> Tensor:
    """GELU: x * Phi(x), exactly ("none", via erf) or in GPT-2's tanh form ("tanh")."""
    x = _t(x)
    if approximate == "tanh":
        return 0.5 * x * (1 + (math.sqrt(2 / math.pi) * (x + 0.044715 * x**3)).tanh())
    if approximate == "none":
        return 0.5 * x * (1 + (x * (1 / math.sqrt(2))).erf())
    raise ValueError(f"gelu: approximate must be 'tanh' or 'none', got {approximate!r}")


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
    """softmax(q @ k^T * scale + masks) @ v over (..., T, head_dim) inputs."""
    q, k, v = _t(q), _t(k), _t(v)
    xp = backend.module_of(q.data)
    if q.ndim >= 3 and k.ndim >= 3 and q.shape[-3] != k.shape[-3] and k.shape[-3] != 1:
        heads = xp.arange(q.shape[-3]) // (q.shape[-3] // k.shape[-3])  # query head -> its kv head
        k, v = k[..., heads, :, :], v[..., heads, :, :]  # (..., Hq, Tk, D): shared heads repeated
    scale = 1 / math.sqrt(q.shape[-1]) if scale is None else scale
    s = (q @ k.swapaxes(-1, -2)) * scale  # (..., Tq, Tk)
    tq, tk = s.shape[-2:]
    if causal:  # queries are the last tq of the tk positions; a key after the query is -inf
        future = xp.arange(tk)[None, :] > xp.arange(tk - tq, tk)[:, None]  # (Tq, Tk)
        s = s + Tensor(xp.where(future, -xp.inf, 0.0).astype(s.dtype))
    if mask is not None:  # True where attention is allowed
        allowed = backend.asarray(mask.data if isinstance(mask, Tensor) else mask, backend=q.backend)
        s = s + Tensor(xp.where(allowed, 0.0, -xp.inf).astype(s.dtype))
    p = softmax(s, -1)  # (..., Tq, Tk) attention weights
    if dropout_p > 0.0 and training:
        keep = backend.rng(q.backend).random(p.shape, dtype=np.float32) >= dropout_p
        p = p * Tensor(keep.astype(p.dtype) / (1 - dropout_p))
    return p @ v  # (..., Tq, Dv)
