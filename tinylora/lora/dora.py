"""DoRA (Liu et al. 2024): a LoRA update split into a direction and a trained magnitude.

With V = W + s B A (out, in) and a trained magnitude m (out,), one value per output row:

    y = m * (V x) / ||V||_row + b          ||V||_row = sqrt(sum_j V[i, j]^2), shape (out,)

m starts at ||W + s B A||_row (= ||W||_row while B = 0), so a new adapter changes nothing.
Two gradients: the exact one, and PEFT's default (paper, section 4.3), which treats ||V||_row
as a constant: cheaper, and no longer the gradient of the forward it runs.
"""

from __future__ import annotations

from .. import backend
from .. import functional as F
from ..tensor import Tensor


def row_norm(v):
    """||v||_row: the Euclidean norm of each row of an (out, in) array -> (out,)."""
    xp = backend.module_of(v)
    return xp.sqrt((v * v).sum(axis=1))


def dora_factor(magnitude, v):
    """m / ||V||_row (out,): the scale DoRA puts on each output row of V = W + s B A."""
    return magnitude / row_norm(v)


def dora_linear(x, weight, bias, lora_A, lora_B, magnitude, scaling: float, x_adapter=None, exact=False):
    """y = m * (W x + s B A x_adapter) / ||W + s B A||_row + b, built from Tensor ops.

    exact=False detaches the norm as PEFT does (its gradient is then not that of y);
    exact=True differentiates it too.
    """
    A, Bm, m = (t if isinstance(t, Tensor) else Tensor(t) for t in (lora_A, lora_B, magnitude))
    w = weight if isinstance(weight, Tensor) else Tensor(weight)
    if m.shape != (w.shape[0],):
        raise ValueError(
            f"dora_linear: magnitude has shape {m.shape}, the weight {w.shape} needs ({w.shape[0]},)"
        )
    xa = x if x_adapter is None else x_adapter
    if exact:
        v = w + (Bm @ A) * scaling  # (out, in), differentiable in A and B
        norm = ((v * v).sum(axis=1)).sqrt()  # (out,)
    else:
        v = w.data + F.lora_delta(A.data, Bm.data, scaling).astype(w.dtype)
        norm = Tensor(row_norm(v))  # (out,), a constant to the graph
    h = F.linear(x, w) + F.linear(F.linear(xa, A), Bm) * scaling  # (..., out) = V x
    y = h * (m / norm)  # (..., out)
    return y + bias if bias is not None else y
