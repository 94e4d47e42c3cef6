"""Low-rank tools on the SVD: truncation, energy, effective rank, subspace similarity, delta -> LoRA.

Each function takes a 2-D array (NumPy or CuPy) or a Tensor (its `.data`; no gradient flows) and
returns arrays of the input's backend; scalar results are python floats.
"""

from __future__ import annotations

import math

import numpy as np

from . import backend
from .tensor import Tensor


def _matrix(fn: str, M, name: str = "M"):
    """`M` as a 2-D float64 array of its backend, and the float dtype to give results back in."""
    if isinstance(M, Tensor):
        M = M.data
    if not hasattr(M, "shape"):  # nested lists: an array of the active backend
        M = backend.asarray(M)
    if M.ndim != 2:
        raise ValueError(
            f"{fn}: {name} must be a 2-D matrix, got a {M.ndim}-D array of shape {tuple(M.shape)}"
        )
    if 0 in M.shape:
        raise ValueError(f"{fn}: {name} must be non-empty, got shape {tuple(M.shape)}")
    if M.dtype.kind not in "biuf":
        raise ValueError(f"{fn}: {name} must hold real numbers, got dtype {M.dtype}")
    dtype = M.dtype if M.dtype.kind == "f" else np.dtype(np.float64)
    # float64 inside: float32 SVDs lose digits in the small singular values, and it is cheap here
    M = M.astype(np.float64, copy=False)
    if not bool(backend.module_of(M).isfinite(M).all()):
        raise ValueError(f"{fn}: {name} contains NaN or infinity")
    return M, dtype


def _count(fn: str, name: str, value, matrix: str, shape) -> int:
    """Check that `value` is an integer in 1..min(shape), the ranks a matrix of `shape` offers."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise ValueError(f"{fn}: {name} must be an integer, got {value!r} ({type(value).__name__})")
    k = min(shape)
    if not 1 <= value <= k:
        raise ValueError(
            f"{fn}: {name} must be between 1 and {k} = min({matrix}.shape) "
            f"for {matrix} of shape {tuple(shape)}, got {value}"
        )
    return int(value)


def _svd64(M):
    """Thin SVD of a float64 array: U (m, k), S (k,) descending, Vt (k, n), k = min(m, n)."""
    return backend.module_of(M).linalg.svd(M, full_matrices=False)


def svd(M):
    """Thin SVD (U, S, Vt) with M = U @ diag(S) @ Vt, S descending, in M's float dtype."""
    M, dtype = _matrix("svd", M)
    return tuple(a.astype(dtype, copy=False) for a in _svd64(M))


def singular_values(M):
    """The singular values of M, largest first, in M's float dtype."""
    M, dtype = _matrix("singular_values", M)
    return backend.module_of(M).linalg.svd(M, compute_uv=False).astype(dtype, copy=False)


def low_rank_approx(M, r: int):
    """The best rank-r approximation of M (truncated SVD), in M's float dtype."""
    M, dtype = _matrix("low_rank_approx", M)
    r = _count("low_rank_approx", "r", r, "M", M.shape)
    U, S, Vt = _svd64(M)
    # Eckart-Young: M_r = U_r diag(S_r) Vt_r is the closest rank-r matrix in Frobenius norm,
    # with error ||M - M_r||_F = sqrt(s_{r+1}^2 + ... + s_k^2)
    return ((U[:, :r] * S[:r]) @ Vt[:r]).astype(dtype, copy=False)


def _cumulative_energy(M):
    """sum(s[:r]^2) / sum(s^2) for r = 1..k as a float64 array (all ones when M is zero)."""
    xp = backend.module_of(M)
    kept = xp.cumsum(xp.linalg.svd(M, compute_uv=False) ** 2)  # ||M_r||_F^2 for r = 1..k
    total = float(kept[-1])  # = ||M||_F^2
    # an all-zero M loses nothing at any rank (its rank-r approximation is exact): energy 1.0
    return kept / total if total > 0 else xp.ones_like(kept)


def energy(M, r: int) -> float:
    """Fraction of ||M||_F^2 kept by the top-r singular values, sum(s[:r]^2)/sum(s^2); 1.0 for M = 0."""
    M, _ = _matrix("energy", M)
    r = _count("energy", "r", r, "M", M.shape)
    return float(_cumulative_energy(M)[r - 1])


def energy_curve(M):
    """energy(M, r) for r = 1..min(M.shape), as a float64 array of M's backend."""
    M, _ = _matrix("energy_curve", M)
    return _cumulative_energy(M)


def effective_rank(M) -> float:
    """Effective rank (Roy & Vetterli 2007): exp(entropy of s / sum(s)); 0.0 for an all-zero M."""
    M, _ = _matrix("effective_rank", M)
    xp = backend.module_of(M)
    s = xp.linalg.svd(M, compute_uv=False)
    total = float(s.sum())
    if total == 0:  # p = s / sum(s) is undefined; the zero matrix has rank 0
        return 0.0
    p = s / total
    p = p[p > 0]  # 0 log 0 = 0
    # erank = exp(H(p)), H(p) = -sum_i p_i log p_i: n for n equal singular values, 1 for rank 1
    return float(xp.exp(-(p * xp.log(p)).sum()))


def _right_vectors(fn: str, A1, A2):
    """Vt of A1 and of A2 (rows: right-singular vectors, strongest first), and their shapes."""
    A1, _ = _matrix(fn, A1, "A1")
    A2, _ = _matrix(fn, A2, "A2")
    backend.check_same_backend(fn, A1, A2)
    if A1.shape[1] != A2.shape[1]:
        raise ValueError(
            f"{fn}: A1 and A2 must have the same number of columns (input features), "
            f"got A1 of shape {tuple(A1.shape)} and A2 of shape {tuple(A2.shape)}"
        )
    return _svd64(A1)[2], _svd64(A2)[2], A1.shape, A2.shape


def subspace_similarity(A1, A2, i: int, j: int) -> float:
    """LoRA paper (Hu et al. 2021, sec. 7): overlap in [0, 1] of A1's top-i and A2's top-j row spaces.

    "Top" follows the singular values: if they are all equal (A with orthonormal rows) the order
    of the directions is arbitrary, and only i, j = min(A.shape) are meaningful.
    """
    fn = "subspace_similarity"
    Vt1, Vt2, shape1, shape2 = _right_vectors(fn, A1, A2)
    i = _count(fn, "i", i, "A1", shape1)
    j = _count(fn, "j", j, "A2", shape2)
    # phi = ||U1_i^T U2_j||_F^2 / min(i, j), where U_i holds the top-i right-singular vectors as
    # columns (the rows Vt[:i]). The singular values of U1_i^T U2_j are the cosines of the
    # principal angles between the subspaces: phi = 1 if one contains the other, 0 if orthogonal.
    overlap = Vt1[:i] @ Vt2[:j].T  # (i, j)
    return min(float((overlap**2).sum()) / min(i, j), 1.0)  # min: round-off can pass 1 by an ulp


def subspace_similarity_matrix(A1, A2, max_i: int | None = None, max_j: int | None = None) -> np.ndarray:
    """phi(A1, A2, i, j) for i = 1..max_i, j = 1..max_j as a NumPy array, entry [i-1, j-1]."""
    fn = "subspace_similarity_matrix"
    Vt1, Vt2, shape1, shape2 = _right_vectors(fn, A1, A2)
    max_i = min(shape1) if max_i is None else _count(fn, "max_i", max_i, "A1", shape1)
    max_j = min(shape2) if max_j is None else _count(fn, "max_j", max_j, "A2", shape2)
    xp = backend.module_of(Vt1)
    overlap2 = (Vt1[:max_i] @ Vt2[:max_j].T) ** 2  # (max_i, max_j)
    # ||U1_i^T U2_j||_F^2 is the sum over the top-left i x j block: a 2-D cumulative sum
    block_sums = overlap2.cumsum(axis=0).cumsum(axis=1)
    i = xp.arange(1, max_i + 1)[:, None]
    j = xp.arange(1, max_j + 1)[None, :]
    return backend.to_numpy(xp.minimum(block_sums / xp.minimum(i, j), 1.0))


def lora_from_delta(delta, r: int):
    """LoRA factors (B (out, r), A (r, in)) with B @ A the best rank-r approximation of delta."""
    D, dtype = _matrix("lora_from_delta", delta, "delta")
    r = _count("lora_from_delta", "r", r, "delta", D.shape)
    U, S, Vt = _svd64(D)
    # split the singular values evenly, B = U_r sqrt(S_r) and A = sqrt(S_r) Vt_r: then
    # B @ A = U_r S_r Vt_r (the Eckart-Young optimum) and B, A have the same scale
    root = backend.module_of(D).sqrt(S[:r])
    B = U[:, :r] * root  # (out, r)
    A = root[:, None] * Vt[:r]  # (r, in)
    return B.astype(dtype, copy=False), A.astype(dtype, copy=False)


def amplification(delta, W, r: int) -> float:
    """LoRA paper (sec. 7.3) amplification factor ||delta||_F / ||U_r^T W Vt_r^T||_F (inf if that is 0).

    The factor scales with the size of delta: compare deltas of similar norm, or compare the
    projection norms themselves.
    """
    fn = "amplification"
    D, _ = _matrix(fn, delta, "delta")
    W, _ = _matrix(fn, W, "W")
    backend.check_same_backend(fn, D, W)
    if D.shape != W.shape:
        raise ValueError(
            f"{fn}: delta and W must have the same shape, got delta {tuple(D.shape)} and W {tuple(W.shape)}"
        )
    r = _count(fn, "r", r, "delta", D.shape)
    xp = backend.module_of(D)
    norm_delta = float(xp.linalg.norm(D))
    if norm_delta == 0:
        raise ValueError(f"{fn}: delta is all zero, so it has no subspace to compare W with")
    U, _, Vt = _svd64(D)
    # project W onto delta's top-r left and right singular subspaces: U_r^T W Vt_r^T is (r, r).
    # A factor >> 1 means delta strongly amplifies directions that W itself barely uses.
    norm_projected = float(xp.linalg.norm(U[:, :r].T @ W @ Vt[:r].T))
    return norm_delta / norm_projected if norm_projected > 0 else math.inf
