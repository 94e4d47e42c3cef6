"""Finite-difference gradient checking, with torch.autograd.gradcheck's defaults."""

from __future__ import annotations

import numpy as np

from . import backend
from .tensor import Tensor, _topological_order, no_grad


class GradcheckError(AssertionError):
    """An analytic gradient disagrees with the numerical one."""


def _outputs(fn, inputs) -> list:
    out = fn(*inputs)
    outs = out if isinstance(out, (tuple, list)) else [out]
    return [o for o in outs if isinstance(o, Tensor)]


def numerical_jacobian(fn, inputs, index: int, eps: float = 1e-6) -> np.ndarray:
    """d(flattened outputs)/d(inputs[index]) by central differences: (n_out, n_in) array."""
    data = inputs[index].data  # perturbed in place (element by element, so views work too), then restored
    columns = []
    with no_grad():
        for i in np.ndindex(data.shape):  # C order, as ravel() orders the analytic gradient
            old = data[i].item()
            data[i] = old + eps
            plus = np.concatenate([backend.to_numpy(o.data).ravel() for o in _outputs(fn, inputs)])
            data[i] = old - eps
            minus = np.concatenate([backend.to_numpy(o.data).ravel() for o in _outputs(fn, inputs)])
            data[i] = old
            columns.append((plus - minus) / (2 * eps))
    return np.stack(columns, axis=1) if columns else np.zeros((0, 0))


def analytical_jacobians(fn, inputs, indices) -> dict:
    """{index: d(flattened outputs)/d(inputs[index])} from backward with one-hot upstream grads."""
    outs = _outputs(fn, inputs)
    n_out = sum(o.data.size for o in outs)
    jac = {i: np.zeros((n_out, inputs[i].data.size)) for i in indices}
    leaves = {id(n): n for o in outs if o.requires_grad for n in _topological_order(o) if n.is_leaf}
    saved = {k: n.grad for k, n in leaves.items()}
    try:
        row = 0
        for o in outs:
            for j in range(o.data.size):
                if o.requires_grad:
                    for n in leaves.values():
                        n.grad = None
                    seed = np.zeros(o.data.size, dtype=o.data.dtype)
                    seed[j] = 1.0
                    o.backward(seed.reshape(o.shape))
                    for i in indices:
                        if inputs[i].grad is not None:
                            jac[i][row] = backend.to_numpy(inputs[i].grad).ravel()
                row += 1
    finally:
        for k, n in leaves.items():
            n.grad = saved[k]
    return jac


def gradcheck(fn, inputs, eps: float = 1e-6, atol: float = 1e-5, rtol: float = 1e-3) -> bool:
    """Compare fn's analytic Jacobian with central differences for every input that requires grad.

    `inputs` is a Tensor or a sequence of arguments for fn; the Tensors that require grad must
    be float64. Returns True, or raises GradcheckError naming the input, the entry and both values.
    """
    inputs = list(inputs) if isinstance(inputs, (list, tuple)) else [inputs]
    checked = [i for i, x in enumerate(inputs) if isinstance(x, Tensor) and x.requires_grad]
    if not checked:
        raise ValueError("gradcheck: no input is a Tensor with requires_grad=True")
    for i in checked:
        if inputs[i].dtype != np.float64:
            raise TypeError(
                f"gradcheck: input {i} is {inputs[i].dtype}; finite differences need float64 inputs "
                "(make them with dtype=numpy.float64)"
            )
    analytic = analytical_jacobians(fn, inputs, checked)
    for i in checked:
        _compare(analytic[i], numerical_jacobian(fn, inputs, i, eps), inputs, i, atol, rtol)
    return True


def _compare(analytic, numeric, inputs, i, atol, rtol) -> None:
    if analytic.shape != numeric.shape:
        raise GradcheckError(
            f"gradcheck: input {i}: analytic Jacobian has shape {analytic.shape}, numerical {numeric.shape}"
        )
    excess = np.abs(analytic - numeric) - (atol + rtol * np.abs(numeric))
    if excess.size == 0 or not (excess > 0).any() and np.isfinite(analytic).all():
        return
    excess = np.where(np.isfinite(analytic), excess, np.inf)
    out_j, in_j = np.unravel_index(int(np.argmax(excess)), excess.shape)
    where = np.unravel_index(int(in_j), inputs[i].shape)
    raise GradcheckError(
        f"gradcheck: input {i}, element {tuple(int(w) for w in where)} (output element {int(out_j)}): "
        f"analytic gradient {analytic[out_j, in_j]:.10g} vs numerical {numeric[out_j, in_j]:.10g} "
        f"(allowed difference {atol + rtol * abs(numeric[out_j, in_j]):.3g})"
    )
