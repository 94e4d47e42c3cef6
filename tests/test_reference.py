"""functional (fused, hand-written backward) and reference (textbook, engine backward) agree.

For every op: the same value and the same gradient for every input (float64), with some
inputs frozen (requires_grad=False) and, for attention, q/k/v as head views of one array.
"""

import numpy as np
import pytest
from helpers import arrays, check_grad, leaf
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import tinylora as tl
import tinylora.functional as F
import tinylora.reference as R

batch_shapes = hnp.array_shapes(min_dims=0, max_dims=2, max_side=3)
TOL = {"rtol": 1e-9, "atol": 1e-11}


def agree(op, arrs, trains, *args, views=None, **kwargs):
    """Run F.op and R.op on fresh leaves of the arrays in `arrs` (other entries pass as they are,
    trains[i] is arrs[i]'s requires_grad); compare values and every input's gradient."""
    results = []
    for module in (F, R):
        make = views or (lambda a, flag: leaf(a, flag))
        ins = [make(a, flag) if isinstance(a, np.ndarray) else a for a, flag in zip(arrs, trains)]
        out = getattr(module, op)(*ins, *args, **kwargs)
        if out.requires_grad:
            u = np.random.default_rng(0).uniform(-1.5, 1.5, size=out.shape)
            out.backward(u)
        results.append((out, ins))
    (fo, fins), (ro, rins) = results
    np.testing.assert_allclose(fo.data, ro.data, **TOL, err_msg=f"{op}: values differ")
    for i, (a, b) in enumerate(zip(fins, rins)):
        if not isinstance(a, tl.Tensor):
            continue
        if not a.requires_grad:
            assert a.grad is None and b.grad is None, f"{op}: frozen input {i} got a gradient"
            continue
        assert a.grad is not None and b.grad is not None, f"{op}: input {i} got no gradient"
        assert a.grad.shape == a.shape and b.grad.shape == b.shape
        np.testing.assert_allclose(a.grad, b.grad, **TOL, err_msg=f"{op}: gradient of input {i} differs")


def flags(n):
    return st.lists(st.booleans(), min_size=n, max_size=n)


@st.composite
def linear_case(draw):
    lead = draw(batch_shapes)
    n_in, n_out = draw(st.integers(1, 4)), draw(st.integers(1, 4))
    return [draw(arrays(s)) for s in (lead + (n_in,), (n_out, n_in), (n_out,))]


@given(case=linear_case(), trains=flags(3), use_bias=st.booleans())
def test_linear(case, trains, use_bias):
    x, w, b = case
    agree("linear", [x, w, b if use_bias else None], trains)


@st.composite
def lora_case(draw):
    lead = draw(batch_shapes)
    n_in, n_out, r = draw(st.integers(1, 4)), draw(st.integers(1, 4)), draw(st.integers(1, 3))
    shapes = (lead + (n_in,), (n_out, n_in), (n_out,), (r, n_in), (n_out, r), lead + (n_in,))
    return [draw(arrays(s)) for s in shapes], draw(st.floats(0.25, 4.0))


@given(case=lora_case(), trains=flags(6), use_bias=st.booleans(), separate=st.booleans())
def test_lora_linear(case, trains, use_bias, separate):
    (x, w, b, a, bm, xa), s = case
    arrs = [x, w, b if use_bias else None, a, bm]
    if separate:  # the adapter's own input (dropout(x) in training) as a sixth argument
        agree("lora_linear", arrs[:5] + [s, xa], trains[:5] + [True, trains[5]])
    else:
        agree("lora_linear", arrs + [s], trains + [True])


@pytest.mark.parametrize("rows", [1, 64])
def test_lora_linear_on_both_sides_of_the_fold(rows):
    """F folds s B A into W when rows are many; the reference never does: same results."""
    rng = np.random.default_rng(rows)
    arrs = [rng.standard_normal(s) for s in ((rows, 8), (8, 8), (8,), (2, 8), (8, 2))]
    agree("lora_linear", arrs + [1.5], [True, False, False, True, True, True])
    agree("lora_linear", arrs + [1.5], [True] * 6)


@st.composite
def axis_case(draw):
    a = draw(arrays(hnp.array_shapes(min_dims=1, max_dims=3, max_side=4)))
    return a, draw(st.integers(-a.ndim, a.ndim - 1))


@given(case=axis_case(), train=st.booleans())
def test_softmax_and_log_softmax(case, train):
    a, axis = case
    agree("softmax", [a], [train], axis)
    agree("log_softmax", [a], [train], axis)


@st.composite
def logits_case(draw):
    lead = draw(hnp.array_shapes(min_dims=1, max_dims=2, max_side=4))
    c = draw(st.integers(1, 5))
    t = draw(hnp.arrays(np.int64, lead, elements=st.integers(0, c - 1)))
    ignored = draw(hnp.arrays(np.bool_, lead))
    return draw(arrays(lead + (c,))), t, np.where(ignored, -100, t)


@given(case=logits_case())
def test_cross_entropy(case):
    z, t, t_ignored = case
    agree("cross_entropy", [z], [True], t)
    agree("cross_entropy", [z], [True], t_ignored, ignore_index=-100)


@st.composite
def norm_case(draw):
    lead = draw(batch_shapes)
    d = draw(st.integers(2, 5))
    x = draw(arrays(lead + (d,))) + np.arange(d) * 0.5  # rows away from constant (var ~ 0)
    return x, draw(arrays((d,))), draw(arrays((d,)))


@given(case=norm_case(), trains=flags(3), use=flags(2))
def test_layer_norm_and_rms_norm(case, trains, use):
    x, w, b = case
    w, b = (w if use[0] else None), (b if use[1] else None)
    agree("layer_norm", [x, w, b], trains)
    agree("rms_norm", [x, w], trains[:2])


@pytest.mark.parametrize("approximate", ["tanh", "none"])
@given(a=arrays(hnp.array_shapes(max_dims=3, max_side=3), elements=st.floats(-6, 6, width=64)))
def test_gelu(approximate, a):
    agree("gelu", [a], [True], approximate)


@st.composite
def attention_case(draw):
    b, hk, groups = draw(st.integers(1, 2)), draw(st.integers(1, 2)), draw(st.integers(1, 2))
    tq = draw(st.integers(1, 4))
    tk = draw(st.integers(tq, 5))
    d, dv = draw(st.integers(1, 3)), draw(st.integers(1, 3))
    return [draw(arrays(s)) for s in ((b, hk * groups, tq, d), (b, hk, tk, d), (b, hk, tk, dv))]


def head_view(a, requires_grad):
    """The same values as a (B, H, T, D) view of a (B, T, H, D) array, as the GPT makes q, k, v."""
    return (
        leaf(np.ascontiguousarray(a.swapaxes(1, 2)), requires_grad)
        .swapaxes(1, 2)
        .detach()
        .requires_grad_(requires_grad)
    )


@given(case=attention_case(), trains=flags(3), causal=st.booleans(), as_views=st.booleans())
def test_scaled_dot_product_attention(case, trains, causal, as_views):
    agree("scaled_dot_product_attention", case, trains, causal, views=head_view if as_views else None)


@given(case=attention_case(), data=st.data())
def test_attention_with_a_key_mask(case, data):
    q, k, v = case
    keep = data.draw(hnp.arrays(np.bool_, (q.shape[0], 1, 1, k.shape[2])))
    keep[..., -1] = True  # every query sees at least one key
    agree("scaled_dot_product_attention", case, [True] * 3, False, mask=keep)


def test_attention_dropout_draws_the_same_mask():
    rng = np.random.default_rng(0)
    q, k, v = (rng.standard_normal((1, 2, 4, 3)) for _ in range(3))
    outs = []
    for module in (F, R):
        tl.manual_seed(7)
        outs.append(module.scaled_dot_product_attention(*map(leaf, (q, k, v)), dropout_p=0.5).data)
    np.testing.assert_allclose(outs[0], outs[1], **TOL)
    tl.manual_seed(8)
    assert not np.allclose(R.scaled_dot_product_attention(*map(leaf, (q, k, v)), dropout_p=0.5).data, outs[1])


def test_head_views_are_not_contiguous():
    """The view strategy above really gives strided q/k/v (else the view cases test nothing new)."""
    t = head_view(np.ones((1, 2, 3, 4)), True)
    assert t.shape == (1, 2, 3, 4) and not t.data.flags.c_contiguous


@given(a=arrays(hnp.array_shapes(max_dims=2, max_side=3), elements=st.floats(-3, 3, width=64)))
def test_erf_primitive_matches_finite_differences(a):
    assert check_grad(lambda x: x.erf(), leaf(a))
