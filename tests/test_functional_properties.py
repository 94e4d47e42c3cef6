"""Property tests for tinylora.functional: gradients (float64, central differences) and values."""

import math
import warnings

import numpy as np
import pytest
from helpers import arrays, check_grad, leaf, nonzero
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from scipy.special import erf

import tinylora as tl
import tinylora.functional as F

batch_shapes = hnp.array_shapes(min_dims=0, max_dims=2, max_side=3)


@st.composite
def linear_case(draw):
    lead = draw(batch_shapes)
    n_in, n_out = draw(st.integers(1, 4)), draw(st.integers(1, 4))
    x = draw(arrays(lead + (n_in,)))
    w = draw(arrays((n_out, n_in)))
    b = draw(arrays((n_out,)))
    return x, w, b


@given(case=linear_case(), use_bias=st.booleans())
def test_linear(case, use_bias):
    x, w, b = case
    if use_bias:
        assert check_grad(lambda x_, w_, b_: F.linear(x_, w_, b_), leaf(x), leaf(w), leaf(b))
        expected = x @ w.T + b
    else:
        assert check_grad(lambda x_, w_: F.linear(x_, w_), leaf(x), leaf(w))
        expected = x @ w.T
    out = F.linear(leaf(x), leaf(w), leaf(b) if use_bias else None)
    np.testing.assert_allclose(tl.to_numpy(out), expected, rtol=1e-12, atol=1e-12)


def test_linear_frozen_weight_gets_no_gradient_computed():
    x = leaf(np.ones((2, 3)))
    w = leaf(np.ones((4, 3)), requires_grad=False)
    F.linear(x, w).sum().backward()
    assert w.grad is None and x.grad is not None


@st.composite
def matrix_and_axis(draw, min_dims=1):
    a = draw(arrays(hnp.array_shapes(min_dims=min_dims, max_dims=3, max_side=4)))
    return a, draw(st.integers(-a.ndim, a.ndim - 1))


@given(case=matrix_and_axis())
def test_softmax_and_log_softmax(case):
    a, axis = case
    assert check_grad(lambda x: F.softmax(x, axis=axis), leaf(a))
    assert check_grad(lambda x: F.log_softmax(x, axis=axis), leaf(a))
    e = np.exp(a - a.max(axis, keepdims=True))
    expected = e / e.sum(axis, keepdims=True)
    np.testing.assert_allclose(tl.to_numpy(F.softmax(leaf(a), axis)), expected, rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(
        tl.to_numpy(F.log_softmax(leaf(a), axis)), np.log(expected), rtol=1e-10, atol=1e-12
    )


@st.composite
def logits_and_targets(draw):
    lead = draw(hnp.array_shapes(min_dims=1, max_dims=2, max_side=4))
    c = draw(st.integers(1, 5))
    z = draw(arrays(lead + (c,)))
    t = draw(hnp.arrays(np.int64, lead, elements=st.integers(0, c - 1)))
    return z, t


@given(case=logits_and_targets())
def test_cross_entropy(case):
    z, t = case
    assert check_grad(lambda x: F.cross_entropy(x, t), leaf(z))
    zz = z.reshape(-1, z.shape[-1])
    lse = np.log(np.exp(zz - zz.max(1, keepdims=True)).sum(1)) + zz.max(1)
    expected = np.mean(lse - zz[np.arange(len(zz)), t.ravel()])
    np.testing.assert_allclose(F.cross_entropy(leaf(z), t).item(), expected, rtol=1e-10)


@given(case=logits_and_targets(), data=st.data())
def test_cross_entropy_ignore_index(case, data):
    z, t = case
    ignore = data.draw(hnp.arrays(np.bool_, t.shape))
    t = np.where(ignore, -100, t)
    assert check_grad(lambda x: F.cross_entropy(x, t, ignore_index=-100), leaf(z))
    keep = t.ravel() != -100
    zz = z.reshape(-1, z.shape[-1])[keep]
    if keep.any():
        lse = np.log(np.exp(zz - zz.max(1, keepdims=True)).sum(1)) + zz.max(1)
        expected = np.mean(lse - zz[np.arange(len(zz)), t.ravel()[keep]])
        np.testing.assert_allclose(
            F.cross_entropy(leaf(z), t, ignore_index=-100).item(), expected, rtol=1e-10
        )


@pytest.mark.parametrize("approximate", ["tanh", "none"])
@given(a=arrays(hnp.array_shapes(max_dims=3, max_side=3), elements=st.floats(-5, 5, width=64)))
def test_gelu(approximate, a):
    assert check_grad(lambda x: F.gelu(x, approximate=approximate), leaf(a))
    if approximate == "none":
        expected = 0.5 * a * (1 + erf(a / math.sqrt(2)))
    else:
        expected = 0.5 * a * (1 + np.tanh(math.sqrt(2 / math.pi) * (a + 0.044715 * a**3)))
    np.testing.assert_allclose(tl.to_numpy(F.gelu(leaf(a), approximate)), expected, rtol=1e-12, atol=1e-15)
    with_grad = F.gelu(leaf(a), approximate).data
    with tl.no_grad():  # the tanh form skips its derivative here: the values must not change
        np.testing.assert_array_equal(F.gelu(leaf(a), approximate).data, with_grad)
    np.testing.assert_array_equal(F.gelu(leaf(a, False), approximate).data, with_grad)


@given(a=arrays(hnp.array_shapes(max_dims=3, max_side=3), elements=st.floats(-8, 8, width=64)))
def test_silu_and_sigmoid(a):
    assert check_grad(F.silu, leaf(a))
    assert check_grad(F.sigmoid, leaf(a))
    np.testing.assert_allclose(tl.to_numpy(F.silu(leaf(a))), a / (1 + np.exp(-a)), rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(tl.to_numpy(F.sigmoid(leaf(a))), 1 / (1 + np.exp(-a)), rtol=1e-12, atol=1e-15)


@given(a=arrays(hnp.array_shapes(max_dims=3, max_side=3), elements=nonzero))
def test_relu(a):
    assert check_grad(F.relu, leaf(a))
    np.testing.assert_array_equal(tl.to_numpy(F.relu(leaf(a))), np.maximum(a, 0))


@st.composite
def norm_case(draw):
    lead = draw(batch_shapes)
    d = draw(st.integers(2, 5))
    x = draw(arrays(lead + (d,), elements=st.floats(-3, 3, width=64)))
    # keep rows away from constant (var ~ 0 makes the normalisation ill-conditioned)
    return x + np.arange(d) * 0.5, draw(arrays((d,))), draw(arrays((d,)))


@given(case=norm_case(), which=st.sampled_from(["both", "weight", "none"]))
def test_layer_norm(case, which):
    x, w, b = case
    if which == "both":
        assert check_grad(lambda x_, w_, b_: F.layer_norm(x_, w_, b_), leaf(x), leaf(w), leaf(b))
    elif which == "weight":
        assert check_grad(lambda x_, w_: F.layer_norm(x_, w_, None), leaf(x), leaf(w))
    else:
        assert check_grad(lambda x_: F.layer_norm(x_, None, None), leaf(x))
    mu, var = x.mean(-1, keepdims=True), x.var(-1, keepdims=True)
    expected = (x - mu) / np.sqrt(var + 1e-5) * w + b
    np.testing.assert_allclose(
        tl.to_numpy(F.layer_norm(leaf(x), leaf(w), leaf(b))), expected, rtol=1e-10, atol=1e-12
    )


@given(case=norm_case(), use_weight=st.booleans())
def test_rms_norm(case, use_weight):
    x, w, _ = case
    if use_weight:
        assert check_grad(lambda x_, w_: F.rms_norm(x_, w_), leaf(x), leaf(w))
    else:
        assert check_grad(lambda x_: F.rms_norm(x_, None), leaf(x))
    expected = x / np.sqrt((x * x).mean(-1, keepdims=True) + 1e-6) * w
    np.testing.assert_allclose(tl.to_numpy(F.rms_norm(leaf(x), leaf(w))), expected, rtol=1e-10, atol=1e-12)


@given(data=st.data())
def test_embedding(data):
    num, dim = data.draw(st.integers(1, 5)), data.draw(st.integers(1, 3))
    w = data.draw(arrays((num, dim)))
    ids = data.draw(
        hnp.arrays(
            np.int64, hnp.array_shapes(min_dims=1, max_dims=2, max_side=4), elements=st.integers(0, num - 1)
        )
    )
    assert check_grad(lambda w_: F.embedding(ids, w_), leaf(w))
    np.testing.assert_array_equal(tl.to_numpy(F.embedding(ids, leaf(w))), w[ids])


@given(a=arrays(hnp.array_shapes(min_dims=1, max_dims=2, max_side=4)), p=st.sampled_from([0.1, 0.5, 0.9]))
def test_dropout_gradient_is_the_mask(a, p):
    tl.manual_seed(1)
    x = leaf(a)
    out = F.dropout(x, p, training=True)
    out.backward(np.ones_like(a))
    mask = tl.to_numpy(x.grad)
    assert set(np.unique(mask)).issubset({0.0, 1.0 / (1 - p)})
    np.testing.assert_allclose(tl.to_numpy(out), a * mask)
    tl.manual_seed(1)
    assert check_grad(lambda x_: (tl.manual_seed(1), F.dropout(x_, p, True))[1], leaf(a))
    assert F.dropout(x, p, training=False) is x


@st.composite
def attention_case(draw):
    b = draw(st.integers(1, 2))
    hk = draw(st.integers(1, 2))
    groups = draw(st.integers(1, 2))
    tq = draw(st.integers(1, 4))
    tk = draw(st.integers(tq, 5))
    d, dv = draw(st.integers(1, 3)), draw(st.integers(1, 3))
    q = draw(arrays((b, hk * groups, tq, d)))
    k = draw(arrays((b, hk, tk, d)))
    v = draw(arrays((b, hk, tk, dv)))
    return q, k, v


def reference_attention(q, k, v, causal, mask=None):
    hq, hk = q.shape[1], k.shape[1]
    k = np.repeat(k, hq // hk, axis=1)
    v = np.repeat(v, hq // hk, axis=1)
    s = q @ k.swapaxes(-1, -2) / math.sqrt(q.shape[-1])
    tq, tk = s.shape[-2:]
    if causal:
        s = np.where(np.arange(tk)[None, :] > np.arange(tk - tq, tk)[:, None], -np.inf, s)
    if mask is not None:
        s = np.where(mask, s, -np.inf)
    e = np.exp(s - s.max(-1, keepdims=True))
    return (e / e.sum(-1, keepdims=True)) @ v


@given(case=attention_case(), causal=st.booleans())
def test_scaled_dot_product_attention(case, causal):
    q, k, v = case
    f = lambda q_, k_, v_: F.scaled_dot_product_attention(q_, k_, v_, causal=causal)
    assert check_grad(f, leaf(q), leaf(k), leaf(v))
    np.testing.assert_allclose(
        tl.to_numpy(f(leaf(q), leaf(k), leaf(v))),
        reference_attention(q, k, v, causal),
        rtol=1e-10,
        atol=1e-12,
    )


def heads_last(a):
    """The same values as a (B, H, T, D) view of a (B, T, H, D) array, as the GPT makes q, k, v."""
    return np.ascontiguousarray(a.swapaxes(1, 2)).swapaxes(1, 2)


@given(case=attention_case(), causal=st.booleans())
def test_attention_on_head_views_gives_the_same_values_laid_out_like_q(case, causal):
    q, k, v = case
    f = lambda q_, k_, v_: F.scaled_dot_product_attention(q_, k_, v_, causal=causal)
    views = [leaf(heads_last(a)) for a in (q, k, v)]
    assert not views[0].data.flags.c_contiguous or q.shape[1] == 1 or q.shape[2] == 1
    out = f(*views)
    np.testing.assert_allclose(out.data, reference_attention(q, k, v, causal), rtol=1e-10, atol=1e-12)
    assert check_grad(f, *views)
    out.backward(np.ones(out.shape))
    plain = [leaf(a) for a in (q, k, v)]
    f(*plain).backward(np.ones(out.shape))
    for t, p in zip(views, plain):  # a view's gradient equals the contiguous input's
        assert t.grad.shape == t.shape
        np.testing.assert_allclose(t.grad, p.grad, rtol=1e-12, atol=1e-12)
    if q.shape[1] == k.shape[1] and v.shape[-1] == q.shape[-1]:  # no grouping: heads merge without a copy
        assert out.data.swapaxes(1, 2).flags.c_contiguous


@given(case=attention_case(), data=st.data())
def test_attention_with_key_padding_mask(case, data):
    q, k, v = case
    keep = data.draw(hnp.arrays(np.bool_, (q.shape[0], 1, 1, k.shape[2])))
    keep[..., 0] = True  # every query sees at least one key
    f = lambda q_, k_, v_: F.scaled_dot_product_attention(q_, k_, v_, causal=False, mask=keep)
    assert check_grad(f, leaf(q), leaf(k), leaf(v))
    np.testing.assert_allclose(
        tl.to_numpy(f(leaf(q), leaf(k), leaf(v))),
        reference_attention(q, k, v, False, keep),
        rtol=1e-10,
        atol=1e-12,
    )


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_causal_attention_survives_a_past_score_far_above_the_own_one(dtype):
    """Causal rows are shifted by each query's own score; a row where exp(gap) overflows is redone."""
    rng = np.random.default_rng(0)
    q, k, v = (rng.standard_normal((2, 2, 4, 3)) for _ in range(3))
    q[0, 1, 2], k[0, 1, 0], k[0, 1, 2] = [40, 0, 0], [45, 0, 0], [-40, 0, 0]  # gap ~ 1960 > log(max float)
    f = lambda *a: F.scaled_dot_product_attention(*(tl.Tensor(x.astype(dtype)) for x in a), causal=True)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no overflow warning escapes
        out = f(q, k, v).data
    expected = reference_attention(q, k, v, True)
    assert (
        np.isfinite(out).all() and np.abs(expected[0, 1, 2] - v[0, 1, 0]).max() < 1e-12
    )  # the row is saturated
    tol = 1e-6 if dtype == np.float32 else 1e-13
    np.testing.assert_allclose(out, expected, rtol=tol, atol=tol)
    # each row depends on itself alone: the other batch item is bit-identical on its own
    np.testing.assert_array_equal(f(q[1:], k[1:], v[1:]).data[0], out[1])
    assert check_grad(lambda *a: F.scaled_dot_product_attention(*a, causal=True), leaf(q), leaf(k), leaf(v))


@st.composite
def lora_case(draw):
    lead = draw(batch_shapes)
    n_in, n_out, r = draw(st.integers(1, 4)), draw(st.integers(1, 4)), draw(st.integers(1, 3))
    arrs = [
        draw(arrays(s))
        for s in (lead + (n_in,), (n_out, n_in), (n_out,), (r, n_in), (n_out, r), lead + (n_in,))
    ]
    return arrs, draw(st.floats(0.25, 4.0))


@given(case=lora_case(), use_bias=st.booleans(), separate_input=st.booleans())
def test_lora_linear(case, use_bias, separate_input):
    (x, w, b, a, bm, xa), s = case
    xa_arg = leaf(xa) if separate_input else None
    if use_bias:
        f = lambda x_, w_, b_, a_, bm_: F.lora_linear(x_, w_, b_, a_, bm_, s, x_adapter=xa_arg)
        assert check_grad(f, leaf(x), leaf(w), leaf(b), leaf(a), leaf(bm))
    else:
        f = lambda x_, w_, a_, bm_: F.lora_linear(x_, w_, None, a_, bm_, s, x_adapter=xa_arg)
        assert check_grad(f, leaf(x), leaf(w), leaf(a), leaf(bm))
    if separate_input:  # the adapter's own input gets its gradient too
        assert check_grad(
            lambda xa_: F.lora_linear(leaf(x), leaf(w), None, leaf(a), leaf(bm), s, x_adapter=xa_), leaf(xa)
        )
    out = F.lora_linear(
        leaf(x), leaf(w), leaf(b) if use_bias else None, leaf(a), leaf(bm), s, x_adapter=xa_arg
    )
    adapter_in = xa if separate_input else x
    expected = x @ w.T + (b if use_bias else 0) + (adapter_in @ a.T @ bm.T) * s
    np.testing.assert_allclose(tl.to_numpy(out), expected, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("rows", [1, 3, 64])
def test_lora_linear_with_and_without_folding_b_a_into_w(rows):
    """Fewer than in*out/(in+out) = 4 rows: two thin products; more: y = x (W + s B A)^T."""
    rng = np.random.default_rng(rows)
    x, w, b, a, bm = (rng.standard_normal(s) for s in ((rows, 8), (8, 8), (8,), (2, 8), (8, 2)))
    f = lambda x_, w_, b_, a_, bm_: F.lora_linear(x_, w_, b_, a_, bm_, 1.5)
    out = f(*map(leaf, (x, w, b, a, bm)))
    np.testing.assert_allclose(out.data, x @ w.T + b + (x @ a.T @ bm.T) * 1.5, rtol=1e-12, atol=1e-12)
    with tl.no_grad():  # inference skips what only the backward needs: same values
        np.testing.assert_array_equal(f(*map(leaf, (x, w, b, a, bm))).data, out.data)
    assert check_grad(f, *map(leaf, (x, w, b, a, bm)))
    frozen = leaf(w, requires_grad=False)
    xs, As, Bs = leaf(x), leaf(a), leaf(bm)
    (f(xs, frozen, None, As, Bs) * tl.Tensor(np.ones((rows, 8)))).sum().backward()
    np.testing.assert_allclose(xs.grad, np.ones((rows, 8)) @ (w + 1.5 * bm @ a), rtol=1e-12)
    np.testing.assert_array_equal(frozen.data, w)  # the fold never writes into W


def test_lora_linear_shape_errors():
    x, w = leaf(np.ones((2, 3))), leaf(np.ones((4, 3)))
    with pytest.raises(
        ValueError, match=r"lora_linear: A \(2, 5\) and B \(4, 2\) do not fit weight \(4, 3\)"
    ):
        F.lora_linear(x, w, None, leaf(np.ones((2, 5))), leaf(np.ones((4, 2))), 1.0)
    with pytest.raises(ValueError, match="lora_linear: x has 2 features but weight expects 3"):
        F.lora_linear(leaf(np.ones((2, 2))), w, None, leaf(np.ones((2, 3))), leaf(np.ones((4, 2))), 1.0)
