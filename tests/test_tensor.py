"""Tensor behaviour: dtype rules, accumulation, no_grad, errors, numerical stability."""

import numpy as np
import pytest

import tinylora as tl
import tinylora.functional as F


def test_dtype_rules(backend):
    assert tl.Tensor([1, 2, 3]).dtype == np.float32  # lists -> float32, ints included
    assert tl.Tensor([[1.5, 2.0]]).dtype == np.float32
    assert tl.Tensor(3.0).dtype == np.float32
    assert tl.Tensor(np.zeros(3, np.float64)).dtype == np.float64  # float arrays keep their dtype
    assert tl.Tensor(np.zeros(3, np.float16)).dtype == np.float16
    assert tl.Tensor(np.arange(3)).dtype.kind == "i"  # integer arrays stay integer
    x = tl.Tensor(np.ones(3, np.float32), requires_grad=True)
    for y in (x * 2.5, 2.5 * x, x + 1, 1 - x, x / 3.0, 3.0 / x, x**2, 2.0**x, -x, x.exp(), F.gelu(x)):
        assert y.dtype == np.float32, y  # python scalars never upcast float32
    assert (tl.Tensor(np.ones(2)) * tl.Tensor(np.ones(2, np.float32))).dtype == np.float64


def test_mixed_precision_gradients_come_back_in_each_inputs_dtype():
    a = tl.Tensor(np.ones(3, np.float32), requires_grad=True)
    b = tl.Tensor(np.full(3, 2.0), requires_grad=True)
    (a * b).sum().backward()
    assert a.grad.dtype == np.float32 and b.grad.dtype == np.float64
    np.testing.assert_array_equal(a.grad, [2, 2, 2])


def test_integer_tensors_cannot_require_grad():
    with pytest.raises(TypeError, match="only float tensors can require grad.*int"):
        tl.Tensor(np.arange(3), requires_grad=True)


def test_gradients_accumulate_across_uses_and_calls():
    x = tl.Tensor([1.0, 2.0, 3.0], requires_grad=True)
    (x * x).sum().backward()  # d/dx x^2 = 2x, x used twice in one op
    np.testing.assert_allclose(x.grad, [2, 4, 6])
    (x * 3.0).sum().backward()  # a second backward adds
    np.testing.assert_allclose(x.grad, [5, 7, 9])
    x.zero_grad()
    assert x.grad is None


def test_shared_upstream_gradient_is_not_aliased_between_leaves():
    a = tl.Tensor([1.0, 2.0], requires_grad=True)
    b = tl.Tensor([3.0, 4.0], requires_grad=True)
    (a + b).sum().backward()
    a.grad += 10  # in-place on one leaf's grad must not leak into the other
    np.testing.assert_array_equal(b.grad, [1, 1])
    (a + b).sum().backward()
    np.testing.assert_array_equal(a.grad, [12, 12])
    np.testing.assert_array_equal(b.grad, [2, 2])


def test_user_grad_array_is_not_modified():
    x = tl.Tensor([1.0, 2.0], requires_grad=True)
    g = np.array([1.0, 1.0], dtype=np.float32)
    (x + 0).backward(g)
    (x + 0).backward(g)
    np.testing.assert_array_equal(g, [1.0, 1.0])
    np.testing.assert_array_equal(x.grad, [2.0, 2.0])


def test_frozen_tensors_keep_grad_none_and_intermediates_keep_none():
    w = tl.Tensor(np.ones((2, 2)))  # requires_grad=False
    x = tl.Tensor(np.ones(2), requires_grad=True)
    h = x @ w
    (h * 2).sum().backward()
    assert w.grad is None and h.grad is None and x.grad is not None
    h2 = (x @ w).retain_grad()
    (h2 * 2).sum().backward()
    np.testing.assert_array_equal(h2.grad, [2.0, 2.0])


def test_no_grad_builds_no_graph():
    x = tl.Tensor([1.0, 2.0], requires_grad=True)
    with tl.no_grad():
        y = (x * 2).sum()
    assert not y.requires_grad and y.is_leaf
    with pytest.raises(RuntimeError, match="does not require grad"):
        y.backward()
    assert tl.is_grad_enabled()

    @tl.no_grad()
    def f(t):
        return t * 3

    assert not f(x).requires_grad
    with tl.no_grad(), tl.enable_grad():
        assert (x * 2).requires_grad


def test_backward_needs_grad_for_non_scalar():
    x = tl.Tensor(np.ones((2, 3)), requires_grad=True)
    with pytest.raises(RuntimeError, match=r"one-element tensor.*\(2, 3\)"):
        (x * 2).backward()
    with pytest.raises(ValueError, match=r"grad has shape \(3,\) but the tensor has \(2, 3\)"):
        (x * 2).backward(np.ones(3))
    (x * 2).backward(np.ones((2, 3)))
    np.testing.assert_array_equal(x.grad, 2 * np.ones((2, 3)))


def test_backward_on_graph_without_grad_raises():
    with pytest.raises(RuntimeError, match="does not require grad"):
        (tl.Tensor([1.0]) * 2).sum().backward()


def test_backward_handles_deep_graphs_without_recursion():
    x = tl.Tensor([1.0], requires_grad=True)
    y = x
    for _ in range(5000):
        y = y * 1.0001
    y.sum().backward()
    np.testing.assert_allclose(x.grad, [1.0001**5000], rtol=1e-4)


def test_shape_errors_name_the_op_and_shapes():
    a, b = tl.Tensor(np.ones((4, 3))), tl.Tensor(np.ones((5, 2)))
    with pytest.raises(ValueError, match=r"matmul: \(4, 3\) @ \(5, 2\): inner dimensions 3 and 5 differ"):
        a @ b
    with pytest.raises(ValueError, match="batch dimensions"):
        tl.Tensor(np.ones((2, 3, 4))) @ tl.Tensor(np.ones((3, 4, 5)))
    with pytest.raises(ValueError, match=r"reshape: cannot reshape \(4, 3\) \(12 elements\) into \(5,\)"):
        a.reshape(5)
    with pytest.raises(ValueError, match="linear: x has 63 features but weight expects 64"):
        F.linear(tl.Tensor(np.ones((2, 63))), tl.Tensor(np.ones((128, 64))))
    with pytest.raises(ValueError, match="axis 2 is out of range"):
        a.sum(axis=2)
    with pytest.raises(ValueError, match="not a permutation"):
        a.transpose(0, 0)
    with pytest.raises(ValueError, match="layer_norm: weight has shape"):
        F.layer_norm(a, tl.Tensor(np.ones(4)))


def test_cross_entropy_checks_targets():
    z = tl.Tensor(np.zeros((4, 10)))
    with pytest.raises(ValueError, match=r"target 12 at position 2 is out of range for 10 classes"):
        F.cross_entropy(z, np.array([0, 1, 12, 3]))
    with pytest.raises(ValueError, match="target -1"):
        F.cross_entropy(z, np.array([0, -1, 2, 3]))
    with pytest.raises(TypeError, match="integer class ids"):
        F.cross_entropy(z, np.array([0.0, 1, 2, 3]))
    with pytest.raises(ValueError, match=r"targets have shape \(3,\)"):
        F.cross_entropy(z, np.array([0, 1, 2]))
    assert np.isclose(F.cross_entropy(z, [0, 1, 2, 3]).item(), np.log(10))  # lists of ids work too


def test_embedding_and_gelu_errors():
    w = tl.Tensor(np.ones((5, 2)))
    with pytest.raises(ValueError, match="id 7 is out of range for 5 embeddings"):
        F.embedding(np.array([1, 7]), w)
    with pytest.raises(TypeError, match="ids must be integers"):
        F.embedding(np.array([1.0]), w)
    with pytest.raises(ValueError, match="approximate must be 'tanh' or 'none'"):
        F.gelu(w, approximate="fast")
    with pytest.raises(ValueError, match=r"dropout: p must be in \[0, 1\]"):
        F.dropout(w, 1.5)


def test_softmax_and_cross_entropy_are_stable_at_extreme_logits(backend):
    z = tl.Tensor(np.array([[1e4, 0.0, -1e4], [-1e4, -1e4, -1e4 + 1]], dtype=np.float32), requires_grad=True)
    p = tl.to_numpy(F.softmax(z))
    assert np.all(np.isfinite(p))
    np.testing.assert_allclose(p[0], [1, 0, 0])
    np.testing.assert_allclose(p[1], np.exp([-1, -1, 0]) / np.exp([-1, -1, 0]).sum(), rtol=1e-6)
    logp = tl.to_numpy(F.log_softmax(z))
    assert np.all(np.isfinite(logp)) and np.isclose(logp[0, 2], -2e4)
    loss = F.cross_entropy(z, np.array([2, 0]))
    assert np.isfinite(loss.item())
    np.testing.assert_allclose(loss.item(), (2e4 + 1 + np.log1p(2 * np.exp(-1))) / 2, rtol=1e-5)
    loss.backward()
    assert np.all(np.isfinite(tl.to_numpy(z.grad)))


def test_sigmoid_and_silu_do_not_overflow():
    x = tl.Tensor(np.array([-1e4, 0.0, 1e4], dtype=np.float32))
    with np.errstate(all="raise"):
        np.testing.assert_array_equal(tl.to_numpy(x.sigmoid()), [0.0, 0.5, 1.0])
        np.testing.assert_array_equal(tl.to_numpy(F.silu(x)), [0.0, 0.0, 1e4])


def test_attention_causal_mask_and_kv_cache_alignment():
    r = np.random.default_rng(0)
    q, k, v = (r.standard_normal((1, 2, 5, 4)) for _ in range(3))
    full = tl.to_numpy(F.scaled_dot_product_attention(tl.Tensor(q), tl.Tensor(k), tl.Tensor(v)))
    # the last query attending over all 5 keys equals the full causal result's last row
    last = F.scaled_dot_product_attention(tl.Tensor(q[:, :, -1:]), tl.Tensor(k), tl.Tensor(v))
    np.testing.assert_allclose(tl.to_numpy(last)[:, :, 0], full[:, :, -1], rtol=1e-12)
    # the first query only sees the first key
    np.testing.assert_allclose(full[:, :, 0], v[:, :, 0], rtol=1e-12)


def test_indexing_with_tensors_and_errors():
    x = tl.Tensor(np.arange(6.0).reshape(3, 2))
    np.testing.assert_array_equal(tl.to_numpy(x[tl.Tensor(np.array([2, 0]))]), [[4, 5], [0, 1]])
    with pytest.raises(IndexError, match="tensor shape"):
        x[5]
    with pytest.raises(IndexError, match="integer or boolean"):
        x[np.array([0.5])]


def test_repr_item_numpy_detach():
    x = tl.Tensor([[1.0, 2.0]], requires_grad=True)
    assert "requires_grad=True" in repr(x)
    assert tl.Tensor([3.5]).item() == 3.5
    with pytest.raises(ValueError, match="only one-element tensors"):
        x.item()
    assert isinstance(x.numpy(), np.ndarray)
    d = (x * 2).detach()
    assert d.is_leaf and not d.requires_grad
    assert x.T.shape == (2, 1) and x.ndim == 2 and x.size == 2 and len(x) == 1


def test_comparisons_return_arrays():
    x = tl.Tensor([1.0, 2.0, 3.0])
    np.testing.assert_array_equal(x > 1.5, [False, True, True])
    np.testing.assert_array_equal(x == tl.Tensor([1.0, 0.0, 3.0]), [True, False, True])
    assert len({x, tl.Tensor([1.0])}) == 2  # tensors stay hashable


def test_numpy_array_on_the_left_defers_to_tensor():
    x = tl.Tensor(np.ones(2), requires_grad=True)
    y = np.array([2.0, 3.0]) * x
    assert isinstance(y, tl.Tensor)
    y.sum().backward()
    np.testing.assert_array_equal(x.grad, [2.0, 3.0])


def test_factories_are_seeded():
    tl.manual_seed(5)
    a = tl.randn(2, 3)
    tl.manual_seed(5)
    b = tl.randn((2, 3))
    np.testing.assert_array_equal(a.numpy(), b.numpy())
    assert a.dtype == np.float32 and tl.zeros(2).dtype == np.float32
    assert tl.ones(2, 2, requires_grad=True).requires_grad


def test_row_scatter_handles_negative_and_repeated_indices():
    x = tl.Tensor(np.arange(10.0).reshape(5, 2), requires_grad=True)
    x[np.array([-1, 4, 0, -1, 2])].sum().backward()
    np.testing.assert_array_equal(tl.to_numpy(x.grad)[:, 0], [1, 0, 1, 0, 3])
    y = tl.Tensor(np.ones((3, 2)), requires_grad=True)
    y[np.array([], dtype=int)].sum().backward()
    np.testing.assert_array_equal(tl.to_numpy(y.grad), np.zeros((3, 2)))


def test_no_grad_decorator_is_safe_under_recursion():
    @tl.no_grad()
    def depth(n):
        return depth(n - 1) if n else tl.is_grad_enabled()

    assert depth(3) is False
    assert tl.is_grad_enabled()
