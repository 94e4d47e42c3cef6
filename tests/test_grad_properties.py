"""Property tests: every op's analytic gradient against central differences, in float64."""

import numpy as np
import pytest
from helpers import arrays, check_grad, grid, leaf, nonzero, small
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import tinylora as tl
from tinylora.gradcheck import numerical_jacobian

pair_shapes = hnp.mutually_broadcastable_shapes(num_shapes=2, min_dims=0, max_dims=3, max_side=3)
positive = st.floats(0.2, 3.0, width=64)


@st.composite
def two_broadcastable(draw, elements_b=small):
    shapes = draw(pair_shapes)
    a = draw(arrays(shapes.input_shapes[0]))
    b = draw(arrays(shapes.input_shapes[1], elements=elements_b))
    return a, b


@pytest.mark.parametrize(
    "op",
    [lambda a, b: a + b, lambda a, b: a - b, lambda a, b: a * b],
    ids=["add", "sub", "mul"],
)
@given(ab=two_broadcastable())
def test_binary_ops_broadcast(op, ab):
    a, b = ab
    assert check_grad(op, leaf(a), leaf(b))


@given(ab=two_broadcastable(elements_b=st.floats(0.3, 3.0, width=64)))
def test_division_broadcast(ab):
    a, b = ab
    assert check_grad(lambda x, y: x / y, leaf(a), leaf(b))
    assert check_grad(lambda x, y: 1.5 / y - x / 2.0, leaf(a), leaf(b))


@given(a=arrays(hnp.array_shapes(min_dims=0, max_dims=3, max_side=3)), c=st.floats(-2, 2))
def test_python_numbers_on_both_sides(a, c):
    assert check_grad(lambda x: 2.0 * x + c - x * c + (c - x) + 3 * x, leaf(a))


@pytest.mark.parametrize("p", [2, 3, 0.5, -1.0, 1.7])
@given(a=arrays(hnp.array_shapes(max_dims=3, max_side=3), elements=positive))
def test_pow_number_exponent(p, a):
    assert check_grad(lambda x: x**p, leaf(a))


@given(a=arrays(hnp.array_shapes(max_dims=2, max_side=3), elements=st.floats(-2, 2, width=64)))
def test_rpow_and_tensor_exponent(a):
    assert check_grad(lambda x: 2.5**x, leaf(a))
    b = np.abs(a) + 0.5
    assert check_grad(lambda x, y: y**x, leaf(a), leaf(b))


@given(data=st.data())
def test_matmul_all_shapes(data):
    shapes = data.draw(hnp.mutually_broadcastable_shapes(signature=np.matmul.signature, max_side=3))
    sa, sb = shapes.input_shapes
    a, b = data.draw(arrays(sa)), data.draw(arrays(sb))
    assert check_grad(lambda x, y: x @ y, leaf(a), leaf(b))


@given(a=arrays(hnp.array_shapes(max_dims=3, max_side=3)))
def test_neg(a):
    assert check_grad(lambda x: -x, leaf(a))


@st.composite
def array_and_axis(draw, elements=small, unique=False):
    a = draw(arrays(hnp.array_shapes(min_dims=1, max_dims=3, max_side=4), elements=elements, unique=unique))
    axis = draw(
        st.none()
        | st.integers(-a.ndim, a.ndim - 1)
        | st.lists(st.integers(0, a.ndim - 1), min_size=1, max_size=a.ndim, unique=True).map(tuple)
    )
    return a, axis, draw(st.booleans())


@given(aak=array_and_axis())
def test_sum_and_mean(aak):
    a, axis, keepdims = aak
    assert check_grad(lambda x: x.sum(axis=axis, keepdims=keepdims), leaf(a))
    assert check_grad(lambda x: x.mean(axis=axis, keepdims=keepdims), leaf(a))
    np.testing.assert_allclose(tl.to_numpy(leaf(a).mean(axis, keepdims)), a.mean(axis, keepdims=keepdims))


@given(aak=array_and_axis(elements=grid, unique=True))
def test_max_and_min_away_from_ties(aak):
    a, axis, keepdims = aak
    assert check_grad(lambda x: x.max(axis=axis, keepdims=keepdims), leaf(a))
    assert check_grad(lambda x: x.min(axis=axis, keepdims=keepdims), leaf(a))
    np.testing.assert_array_equal(tl.to_numpy(leaf(a).max(axis, keepdims)), a.max(axis, keepdims=keepdims))


unary = [
    ("exp", lambda x: x.exp(), small),
    ("log", lambda x: x.log(), positive),
    ("sqrt", lambda x: x.sqrt(), positive),
    ("tanh", lambda x: x.tanh(), small),
    ("sigmoid", lambda x: x.sigmoid(), small),
    ("relu", lambda x: x.relu(), nonzero),
    ("abs", lambda x: x.abs(), nonzero),
]


@pytest.mark.parametrize("name,fn,elements", unary, ids=[u[0] for u in unary])
@given(data=st.data())
def test_unary(name, fn, elements, data):
    a = data.draw(arrays(hnp.array_shapes(min_dims=0, max_dims=3, max_side=3), elements=elements))
    assert check_grad(fn, leaf(a))


@given(a=arrays(hnp.array_shapes(min_dims=1, max_dims=4, max_side=3)), data=st.data())
def test_reshape_and_transpose(a, data):
    perm = data.draw(st.permutations(range(a.ndim)))
    assert check_grad(lambda x: x.transpose(*perm), leaf(a))
    assert check_grad(lambda x: x.T, leaf(a))
    assert check_grad(lambda x: x.reshape(-1), leaf(a))
    assert check_grad(lambda x: x.reshape((a.size, 1)) * 2, leaf(a))
    np.testing.assert_array_equal(tl.to_numpy(leaf(a).transpose(*perm)), a.transpose(perm))


@given(a=arrays(hnp.array_shapes(min_dims=2, max_dims=3, min_side=2, max_side=4)), data=st.data())
def test_indexing_slices_and_integer_arrays(a, data):
    idx = data.draw(st.lists(st.integers(0, a.shape[0] - 1), min_size=1, max_size=6))  # repeats allowed
    assert check_grad(lambda x: x[np.array(idx)], leaf(a))
    assert check_grad(lambda x: x[1:, ::-1], leaf(a))
    assert check_grad(lambda x: x[np.array(idx), 0], leaf(a))
    assert check_grad(lambda x: x[..., -1], leaf(a))


def test_repeated_indices_scatter_add():
    x = leaf(np.arange(4.0))
    x[np.array([1, 1, 3, 1])].sum().backward()
    np.testing.assert_array_equal(tl.to_numpy(x.grad), [0, 3, 0, 1])


@given(data=st.data())
def test_cat_stack_where(data):
    shape = data.draw(hnp.array_shapes(min_dims=1, max_dims=3, max_side=3))
    a, b = data.draw(arrays(shape)), data.draw(arrays(shape))
    axis = data.draw(st.integers(0, len(shape) - 1))
    cond = data.draw(hnp.arrays(np.bool_, shape))
    assert check_grad(lambda x, y: tl.cat([x, y * 2], axis=axis), leaf(a), leaf(b))
    assert check_grad(lambda x, y: tl.stack([x, y], axis=axis), leaf(a), leaf(b))
    assert check_grad(lambda x, y: tl.where(cond, x, y), leaf(a), leaf(b))


def test_gradcheck_full_jacobian_on_a_composite():
    r = np.random.default_rng(3)
    a, b = leaf(r.standard_normal((3, 4))), leaf(r.standard_normal((4, 2)))
    assert check_grad(lambda x, y: ((x @ y).tanh() * x[:, :2]).exp(), a, b, full_jacobian=True)


def test_gradcheck_perturbs_inputs_that_are_views():
    r = np.random.default_rng(4)
    base = r.standard_normal((4, 3))
    x = tl.Tensor(base.T, requires_grad=True)  # a transposed view, not C-contiguous
    assert not x.data.flags.c_contiguous
    jac = numerical_jacobian(lambda t: (t * t).sum(), [x], 0)
    np.testing.assert_allclose(jac.reshape(3, 4), 2 * base.T, rtol=1e-6)
    np.testing.assert_array_equal(x.data, base.T)  # restored after the perturbations


@given(a=arrays(hnp.array_shapes(min_dims=1, max_dims=2, max_side=3), elements=positive))
def test_astype_passes_the_gradient_back_in_the_input_dtype(a):
    x = leaf(a)
    y = x.astype(np.float32)
    assert y.dtype == np.float32
    u = np.random.default_rng(0).uniform(-2, 2, size=a.shape).astype(np.float32)
    (y * tl.Tensor(u) * y).sum().backward()  # d/dx (u x^2) = 2 u x, computed in float32
    assert x.grad.dtype == np.float64
    np.testing.assert_allclose(x.grad, 2 * u * a.astype(np.float32), rtol=1e-6)
    assert check_grad(lambda x_: x_.astype(np.float64) ** 2, leaf(a))  # a same-dtype cast


@given(a=arrays(st.just((3, 3))))
def test_a_tensor_used_many_times(a):
    assert check_grad(lambda x: x * x + x @ x - x.sum(0) * x.T, leaf(a))
