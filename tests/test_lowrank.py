"""lowrank: Eckart-Young truncation, energy, effective rank, subspace similarity, delta -> LoRA."""

import math

import numpy as np
import pytest
from helpers import arrays
from hypothesis import given
from hypothesis import strategies as st

import tinylora as tl
from tinylora import lowrank
from tinylora.backend import asarray, backend_of


def gaussian(shape, seed=0):
    return np.random.default_rng(seed).standard_normal(shape)


def fro(M):
    return float(np.linalg.norm(M))


def dropped_energy(M, r):
    """sqrt(s_{r+1}^2 + ... + s_k^2), computed straight from numpy's singular values."""
    s = np.linalg.svd(M, compute_uv=False)
    return math.sqrt(float((s[r:] ** 2).sum()))


@st.composite
def matrix_and_rank(draw, max_side=8):
    """A Gaussian matrix of a drawn shape (full rank, distinct singular values) and a rank r."""
    m, n = draw(st.integers(1, max_side)), draw(st.integers(1, max_side))
    r = draw(st.integers(1, min(m, n)))
    return gaussian((m, n), draw(st.integers(0, 2**32 - 1))), r


# ---------------------------------------------------------------- Eckart-Young


@given(case=matrix_and_rank())
def test_truncation_error_is_the_dropped_singular_values_and_rank_is_r(case):
    M, r = case
    M_r = lowrank.low_rank_approx(M, r)
    assert M_r.shape == M.shape and M_r.dtype == np.float64
    assert fro(M - M_r) == pytest.approx(dropped_energy(M, r), rel=1e-9, abs=1e-12)
    assert np.linalg.matrix_rank(M_r) == r


@given(M=arrays(st.tuples(st.integers(1, 6), st.integers(1, 6))), data=st.data())
def test_truncation_error_formula_holds_on_degenerate_matrices_too(M, data):
    # hypothesis arrays: zeros, repeated rows, huge and tiny entries
    r = data.draw(st.integers(1, min(M.shape)))
    err = fro(M - lowrank.low_rank_approx(M, r))
    assert err == pytest.approx(dropped_energy(M, r), rel=1e-7, abs=1e-9 * (1 + fro(M)))


@given(case=matrix_and_rank(), seed=st.integers(0, 2**32 - 1))
def test_no_other_rank_r_matrix_is_closer(case, seed):
    M, r = case
    m, n = M.shape
    best = fro(M - lowrank.low_rank_approx(M, r))
    rng = np.random.default_rng(seed)
    for _ in range(10):  # random rank-r matrices of M's size
        other = rng.standard_normal((m, r)) @ rng.standard_normal((r, n)) / math.sqrt(r)
        assert fro(M - other) >= best - 1e-9
    B, A = lowrank.lora_from_delta(M, r)
    for eps in (1e-1, 1e-3, 1e-5):  # rank-r perturbations of the optimum itself
        for _ in range(3):
            other = (B + eps * rng.standard_normal(B.shape)) @ (A + eps * rng.standard_normal(A.shape))
            assert fro(M - other) >= best - 1e-9


def test_low_rank_approx_of_a_known_matrix():
    Q1, _ = np.linalg.qr(gaussian((4, 4), 1))
    Q2, _ = np.linalg.qr(gaussian((3, 3), 2))
    s = np.array([5.0, 2.0, 0.5])
    M = Q1[:, :3] @ np.diag(s) @ Q2.T
    expected = Q1[:, :2] @ np.diag(s[:2]) @ Q2[:, :2].T
    np.testing.assert_allclose(lowrank.low_rank_approx(M, 2), expected, atol=1e-12)
    np.testing.assert_allclose(lowrank.low_rank_approx(M, 3), M, atol=1e-12)
    np.testing.assert_allclose(lowrank.singular_values(M), s, rtol=1e-12)
    U, S, Vt = lowrank.svd(M)
    assert U.shape == (4, 3) and S.shape == (3,) and Vt.shape == (3, 3)
    np.testing.assert_allclose((U * S) @ Vt, M, atol=1e-12)
    U32, S32, Vt32 = lowrank.svd(M.astype(np.float32))  # computed in float64, given back as float32
    assert U32.dtype == S32.dtype == Vt32.dtype == lowrank.singular_values(U32).dtype == np.float32
    np.testing.assert_allclose(S32, s, rtol=1e-6)


# ---------------------------------------------------------------- energy


@given(case=matrix_and_rank())
def test_energy_matches_its_definition_and_the_truncation_error(case):
    M, r = case
    s = np.linalg.svd(M, compute_uv=False)
    e = lowrank.energy(M, r)
    assert isinstance(e, float)
    assert e == pytest.approx(float((s[:r] ** 2).sum() / (s**2).sum()), rel=1e-12)
    # what is not kept is exactly what the rank-r approximation misses
    assert 1 - e == pytest.approx(dropped_energy(M, r) ** 2 / fro(M) ** 2, abs=1e-12)


@given(case=matrix_and_rank())
def test_energy_is_monotone_reaches_one_and_agrees_with_the_curve(case):
    M, _ = case
    k = min(M.shape)
    curve = lowrank.energy_curve(M)
    assert curve.shape == (k,) and curve.dtype == np.float64
    energies = [lowrank.energy(M, r) for r in range(1, k + 1)]
    np.testing.assert_array_equal(curve, energies)
    assert all(a <= b for a, b in zip(energies, energies[1:]))
    assert energies[-1] == 1.0
    assert energies[0] >= 1 / k - 1e-12  # the top value carries at least an average share


def test_energy_of_a_diagonal_matrix_by_hand():
    M = np.diag([3.0, 0.0, 4.0])  # s = 4, 3, 0; ||M||_F^2 = 25
    assert lowrank.energy(M, 1) == pytest.approx(16 / 25)
    np.testing.assert_allclose(lowrank.energy_curve(M), [16 / 25, 1.0, 1.0])


def test_all_zero_matrix_conventions():
    Z = np.zeros((3, 4))
    assert lowrank.energy(Z, 1) == 1.0  # nothing to lose: the rank-1 approximation is exact
    np.testing.assert_array_equal(lowrank.energy_curve(Z), [1.0, 1.0, 1.0])
    assert lowrank.effective_rank(Z) == 0.0
    np.testing.assert_array_equal(lowrank.low_rank_approx(Z, 2), Z)


# ---------------------------------------------------------------- effective rank


@pytest.mark.parametrize("n", [1, 2, 5, 17])
def test_effective_rank_of_identity_is_n(n):
    assert lowrank.effective_rank(np.eye(n)) == pytest.approx(n, rel=1e-12)
    assert lowrank.effective_rank(3.0 * np.eye(n)) == pytest.approx(n, rel=1e-12)  # scale-free


def test_effective_rank_of_rank_one_is_one():
    M = np.outer(gaussian(6, 1), gaussian(9, 2))
    assert lowrank.effective_rank(M) == pytest.approx(1.0, abs=1e-9)


def test_effective_rank_by_hand():
    # s = (3, 1): p = (3/4, 1/4), H = -(3/4 log 3/4 + 1/4 log 1/4), exp(H) = 4 / 3^(3/4)
    Q1, _ = np.linalg.qr(gaussian((5, 2), 3))
    Q2, _ = np.linalg.qr(gaussian((4, 2), 4))
    M = Q1 @ np.diag([3.0, 1.0]) @ Q2.T
    assert lowrank.effective_rank(M) == pytest.approx(4 / 3**0.75, rel=1e-12)
    assert lowrank.effective_rank(M) == pytest.approx(1.7547654, rel=1e-6)


@given(case=matrix_and_rank())
def test_effective_rank_lies_between_one_and_the_rank(case):
    M, _ = case
    erank = lowrank.effective_rank(M)
    assert 1 - 1e-12 <= erank <= min(M.shape) + 1e-9


# ---------------------------------------------------------------- subspace similarity


def phi_by_projectors(A1, A2, i, j):
    """trace(P1 P2) / min(i, j) with P = V V^T the projector onto the top right-singular vectors."""
    V1 = np.linalg.svd(A1)[2][:i].T
    V2 = np.linalg.svd(A2)[2][:j].T
    return float(np.trace((V1 @ V1.T) @ (V2 @ V2.T))) / min(i, j)


@st.composite
def two_adapters(draw):
    n_in = draw(st.integers(2, 10))
    r1, r2 = draw(st.integers(1, 6)), draw(st.integers(1, 6))
    seed = draw(st.integers(0, 2**32 - 1))
    A1, A2 = gaussian((r1, n_in), seed), gaussian((r2, n_in), seed + 1)
    i, j = draw(st.integers(1, min(r1, n_in))), draw(st.integers(1, min(r2, n_in)))
    return A1, A2, i, j


@given(case=two_adapters())
def test_subspace_similarity_is_the_projector_overlap_and_symmetric(case):
    A1, A2, i, j = case
    phi = lowrank.subspace_similarity(A1, A2, i, j)
    assert isinstance(phi, float) and 0.0 <= phi <= 1.0
    assert phi == pytest.approx(phi_by_projectors(A1, A2, i, j), abs=1e-12)
    assert lowrank.subspace_similarity(A2, A1, j, i) == pytest.approx(phi, abs=1e-12)


@given(r=st.integers(1, 5), extra=st.integers(0, 5), seed=st.integers(0, 2**32 - 1))
def test_same_row_space_gives_one(r, extra, seed):
    A1 = gaussian((r, r + extra), seed)
    mix = gaussian((r, r), seed + 1) + 3 * np.eye(r)  # invertible (diagonally boosted)
    A2 = mix @ A1  # same row space, different singular vectors
    assert lowrank.subspace_similarity(A1, A2, r, r) == pytest.approx(1.0, abs=1e-9)


def test_orthogonal_nested_and_45_degree_subspaces():
    e = np.eye(8)
    assert lowrank.subspace_similarity(gaussian((4, 4), 1) @ e[:4], e[4:], 4, 4) == pytest.approx(
        0, abs=1e-12
    )
    # a 2-D subspace inside a 4-D one: phi = ||.||_F^2 / min(2, 4) = 2 / 2
    inner = gaussian((2, 2), 2) @ e[:2]
    assert lowrank.subspace_similarity(inner, gaussian((4, 4), 3) @ e[:4], 2, 4) == pytest.approx(1.0)
    # one line at 45 degrees to another: cos^2 = 1/2
    line = ((e[0] + e[1]) / math.sqrt(2))[None, :]
    assert lowrank.subspace_similarity(e[:1], line, 1, 1) == pytest.approx(0.5)


@given(case=two_adapters())
def test_similarity_matrix_agrees_with_the_scalar_version(case):
    A1, A2, _, _ = case
    table = lowrank.subspace_similarity_matrix(A1, A2)
    assert isinstance(table, np.ndarray) and table.shape == (min(A1.shape), min(A2.shape))
    for i in range(1, table.shape[0] + 1):
        for j in range(1, table.shape[1] + 1):
            assert table[i - 1, j - 1] == pytest.approx(lowrank.subspace_similarity(A1, A2, i, j), abs=1e-12)
    small = lowrank.subspace_similarity_matrix(A1, A2, max_i=1, max_j=1)
    assert small.shape == (1, 1) and small[0, 0] == pytest.approx(table[0, 0], abs=1e-15)


# ---------------------------------------------------------------- delta -> LoRA


@given(case=matrix_and_rank())
def test_lora_from_delta_is_the_truncation_split_evenly(case):
    delta, r = case
    B, A = lowrank.lora_from_delta(delta, r)
    assert B.shape == (delta.shape[0], r) and A.shape == (r, delta.shape[1])
    np.testing.assert_allclose(B @ A, lowrank.low_rank_approx(delta, r), atol=1e-10)
    # symmetric split: B^T B = A A^T = diag(s_1..s_r)
    s = np.linalg.svd(delta, compute_uv=False)[:r]
    np.testing.assert_allclose(B.T @ B, np.diag(s), atol=1e-10)
    np.testing.assert_allclose(A @ A.T, np.diag(s), atol=1e-10)


def test_lora_from_delta_at_full_rank_reproduces_delta():
    delta = gaussian((7, 4), 5)
    B, A = lowrank.lora_from_delta(delta, 4)
    assert B.shape == (7, 4) and A.shape == (4, 4)
    np.testing.assert_allclose(B @ A, delta, atol=1e-12)
    B32, A32 = lowrank.lora_from_delta(delta.astype(np.float32), 4)
    assert B32.dtype == np.float32 and A32.dtype == np.float32
    np.testing.assert_allclose(B32 @ A32, delta, atol=1e-5)


# ---------------------------------------------------------------- amplification


def test_amplification_by_hand():
    W = np.diag([10.0, 1.0, 0.1])
    delta = 5.0 * np.outer([0, 0, 1.0], [0, 0, 1.0])  # rank 1, along W's weakest direction
    assert lowrank.amplification(delta, W, 1) == pytest.approx(5.0 / 0.1)  # ||delta|| / |W_33|
    delta2 = np.diag([0.0, 3.0, 4.0])  # rank 2 on W's two weakest directions: ||delta|| = 5
    assert lowrank.amplification(delta2, W, 2) == pytest.approx(5.0 / math.hypot(1.0, 0.1))
    assert lowrank.amplification(delta2, W, 1) == pytest.approx(5.0 / 0.1)  # top direction is e3


def test_amplification_matches_the_explicit_formula():
    W = gaussian((6, 5), 6)
    delta = gaussian((6, 3), 7) @ gaussian((3, 5), 8)
    U, _, Vt = np.linalg.svd(delta)
    for r in (1, 2, 3):
        expected = np.linalg.norm(delta) / np.linalg.norm(U[:, :r].T @ W @ Vt[:r].T)
        assert lowrank.amplification(delta, W, r) == pytest.approx(float(expected), rel=1e-10)


def test_amplification_is_infinite_when_w_misses_the_subspace():
    assert lowrank.amplification(np.diag([0.0, 0.0, 2.0]), np.diag([1.0, 1.0, 0.0]), 1) == math.inf


# ---------------------------------------------------------------- errors


@pytest.mark.parametrize(
    "call",
    [
        lambda x: lowrank.low_rank_approx(x, 1),
        lambda x: lowrank.energy(x, 1),
        lowrank.energy_curve,
        lowrank.effective_rank,
        lowrank.singular_values,
        lowrank.svd,
        lambda x: lowrank.lora_from_delta(x, 1),
    ],
)
def test_non_matrix_input_is_refused(call):
    with pytest.raises(ValueError, match=r"must be a 2-D matrix, got a 1-D array of shape \(3,\)"):
        call(np.ones(3))
    with pytest.raises(ValueError, match=r"must be a 2-D matrix, got a 3-D array of shape \(2, 2, 2\)"):
        call(np.ones((2, 2, 2)))
    with pytest.raises(ValueError, match=r"must be non-empty, got shape \(0, 3\)"):
        call(np.ones((0, 3)))
    with pytest.raises(ValueError, match="contains NaN or infinity"):
        call(np.array([[1.0, np.nan]]))
    with pytest.raises(ValueError, match="must hold real numbers, got dtype complex128"):
        call(np.ones((2, 2), dtype=complex))


@pytest.mark.parametrize("fn", [lowrank.low_rank_approx, lowrank.energy])
def test_bad_ranks_are_refused_naming_the_shape(fn):
    M = np.ones((3, 5))
    with pytest.raises(
        ValueError, match=r"r must be between 1 and 3 = min\(M.shape\) for M of shape \(3, 5\), got 4"
    ):
        fn(M, 4)
    with pytest.raises(ValueError, match=r"r must be between 1 and 3 .* got 0"):
        fn(M, 0)
    with pytest.raises(ValueError, match=r"r must be an integer, got 2.0 \(float\)"):
        fn(M, 2.0)
    with pytest.raises(ValueError, match=r"r must be an integer, got True \(bool\)"):
        fn(M, True)
    assert fn(M, np.int64(2)) is not None  # numpy integers are fine


def test_lora_from_delta_refuses_a_rank_above_the_shape():
    with pytest.raises(
        ValueError, match=r"lora_from_delta: r must be between 1 and 2 = min\(delta.shape\) .*\(2, 6\), got 3"
    ):
        lowrank.lora_from_delta(np.ones((2, 6)), 3)


def test_subspace_similarity_errors():
    A1, A2 = gaussian((2, 6), 1), gaussian((4, 6), 2)
    with pytest.raises(
        ValueError, match=r"i must be between 1 and 2 = min\(A1.shape\) for A1 of shape \(2, 6\), got 3"
    ):
        lowrank.subspace_similarity(A1, A2, 3, 1)
    with pytest.raises(
        ValueError, match=r"j must be between 1 and 4 = min\(A2.shape\) for A2 of shape \(4, 6\), got 5"
    ):
        lowrank.subspace_similarity(A1, A2, 1, 5)
    with pytest.raises(ValueError, match=r"max_j must be between 1 and 4 .* got 0"):
        lowrank.subspace_similarity_matrix(A1, A2, max_j=0)
    with pytest.raises(ValueError, match=r"i must be an integer, got 1.5"):
        lowrank.subspace_similarity(A1, A2, 1.5, 1)
    with pytest.raises(
        ValueError, match=r"same number of columns .* got A1 of shape \(2, 6\) and A2 of shape \(2, 5\)"
    ):
        lowrank.subspace_similarity(A1, gaussian((2, 5), 3), 1, 1)
    with pytest.raises(ValueError, match=r"A2 must be a 2-D matrix"):
        lowrank.subspace_similarity_matrix(A1, np.ones(6))


def test_amplification_errors():
    with pytest.raises(
        ValueError, match=r"delta and W must have the same shape, got delta \(3, 4\) and W \(4, 3\)"
    ):
        lowrank.amplification(np.ones((3, 4)), np.ones((4, 3)), 1)
    with pytest.raises(ValueError, match="delta is all zero"):
        lowrank.amplification(np.zeros((3, 3)), np.eye(3), 1)
    with pytest.raises(ValueError, match=r"r must be between 1 and 3 = min\(delta.shape\)"):
        lowrank.amplification(np.eye(3), np.eye(3), 4)


# ---------------------------------------------------------------- backends, Tensors, dtypes


def test_results_stay_on_the_input_backend(backend):
    M_np = gaussian((6, 4), 9)
    M = tl.xp().asarray(M_np)
    M_r = lowrank.low_rank_approx(M, 2)
    assert backend_of(M_r) == backend
    np.testing.assert_allclose(tl.to_numpy(M_r), lowrank.low_rank_approx(M_np, 2), atol=1e-10)
    B, A = lowrank.lora_from_delta(M, 2)
    assert backend_of(B) == backend and backend_of(A) == backend
    curve = lowrank.energy_curve(M)
    assert backend_of(curve) == backend
    np.testing.assert_allclose(tl.to_numpy(curve), lowrank.energy_curve(M_np), rtol=1e-10)
    for value, expected in [
        (lowrank.energy(M, 2), lowrank.energy(M_np, 2)),
        (lowrank.effective_rank(M), lowrank.effective_rank(M_np)),
        (lowrank.subspace_similarity(M.T, M.T, 2, 3), 1.0),
        (lowrank.amplification(M, M, 2), lowrank.amplification(M_np, M_np, 2)),
    ]:
        assert isinstance(value, float) and value == pytest.approx(expected, rel=1e-9)
    table = lowrank.subspace_similarity_matrix(M.T, M.T)
    assert isinstance(table, np.ndarray) and table[-1, -1] == pytest.approx(1.0)


def test_tensors_lists_and_dtypes_are_accepted(backend):
    M_np = gaussian((5, 3), 10)
    expected = lowrank.low_rank_approx(M_np, 1)
    t = tl.Tensor(M_np, requires_grad=True)  # float64 kept
    np.testing.assert_allclose(tl.to_numpy(lowrank.low_rank_approx(t, 1)), expected, atol=1e-10)
    assert lowrank.energy(t, 1) == pytest.approx(lowrank.energy(M_np, 1), rel=1e-12)
    assert lowrank.subspace_similarity(t.T, tl.Tensor(2 * M_np).T, 3, 3) == pytest.approx(1.0)
    from_list = lowrank.low_rank_approx(M_np.tolist(), 1)  # lists land on the active backend
    assert backend_of(from_list) == backend and from_list.dtype == np.float64
    f32 = lowrank.low_rank_approx(tl.Tensor(M_np.astype(np.float32)), 1)
    assert f32.dtype == np.float32
    np.testing.assert_allclose(tl.to_numpy(f32), expected, atol=1e-5)
    ints = lowrank.low_rank_approx(tl.xp().asarray([[2, 0], [0, 1]]), 1)
    assert ints.dtype == np.float64
    np.testing.assert_array_equal(tl.to_numpy(ints), [[2.0, 0.0], [0.0, 0.0]])


def test_mixed_backends_are_refused():
    if "cupy" not in tl.available_backends():
        pytest.skip("needs CuPy and a CUDA device")
    A_gpu = asarray(gaussian((2, 4), 1), backend="cupy")
    with pytest.raises(ValueError, match="cannot mix backends"):
        lowrank.subspace_similarity(gaussian((2, 4), 2), A_gpu, 1, 1)
