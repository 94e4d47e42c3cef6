"""Optimizers against hand-computed updates (and torch.optim), decay groups, frozen parameters,
state bytes, the cosine schedule and gradient clipping."""

import math
import re

import numpy as np
import pytest

import tinylora as tl
from tinylora import models, nn, optim

P0 = np.array([[0.5, -1.0, 2.0], [1.5, 0.25, -0.75]])
B0 = np.array([0.3, -0.2])
GRADS = [
    (np.array([[0.1, -0.2, 0.3], [0.4, 0.0, -0.6]]), np.array([1.0, -2.0])),
    (np.array([[-0.3, 0.5, 0.05], [0.2, -0.1, 0.7]]), np.array([0.5, 0.25])),
    (np.array([[0.7, 0.1, -0.4], [-0.2, 0.3, 0.0]]), np.array([-1.5, 0.75])),
    (np.array([[0.05, -0.6, 0.2], [0.9, 0.4, -0.3]]), np.array([0.1, 0.2])),
    (np.array([[-0.2, 0.2, 0.6], [0.0, -0.8, 0.1]]), np.array([-0.4, -1.0])),
]
for _a in (P0, B0, *(g for pair in GRADS for g in pair)):
    _a.setflags(write=False)  # a test that updates them in place by mistake fails loudly


def make_params(dtype=np.float64):
    return nn.Parameter(P0.astype(dtype)), nn.Parameter(B0.astype(dtype))


def run(opt, params, steps):
    """Set the fixed gradients by hand and step; return the parameter values after each step."""
    history = []
    for gw, gb in GRADS[:steps]:
        for p, g in zip(params, (gw, gb)):
            p.grad = g.astype(p.dtype)
        opt.step()
        history.append([p.data.copy() for p in params])
    return history


# ---------------------------------------------------------------------------------------------
# hand-computed updates, two steps


def test_sgd_plain():
    w, b = make_params()
    hist = run(optim.SGD([w, b], lr=0.1), [w, b], 2)
    (g0w, g0b), (g1w, g1b) = GRADS[:2]
    np.testing.assert_allclose(hist[0][0], P0 - 0.1 * g0w, rtol=1e-14)
    np.testing.assert_allclose(hist[0][1], B0 - 0.1 * g0b, rtol=1e-14)
    np.testing.assert_allclose(hist[1][0], P0 - 0.1 * g0w - 0.1 * g1w, rtol=1e-14)
    np.testing.assert_allclose(hist[1][1], B0 - 0.1 * g0b - 0.1 * g1b, rtol=1e-14)


def test_sgd_momentum():
    w, b = make_params()
    opt = optim.SGD([w, b], lr=0.1, momentum=0.9)
    hist = run(opt, [w, b], 2)
    (g0w, _), (g1w, _) = GRADS[:2]
    buf = g0w  # the first buffer is the gradient itself
    p1 = P0 - 0.1 * buf
    buf = 0.9 * buf + g1w
    p2 = p1 - 0.1 * buf
    np.testing.assert_allclose(hist[0][0], p1, rtol=1e-14)
    np.testing.assert_allclose(hist[1][0], p2, rtol=1e-14)
    np.testing.assert_allclose(opt.state[id(w)]["momentum"], buf, rtol=1e-14)


def test_sgd_weight_decay_with_and_without_momentum():
    (g0w, _), (g1w, _) = GRADS[:2]
    w, b = make_params()
    hist = run(optim.SGD([w, b], lr=0.1, weight_decay=0.01), [w, b], 2)
    p1 = P0 - 0.1 * (g0w + 0.01 * P0)
    p2 = p1 - 0.1 * (g1w + 0.01 * p1)
    np.testing.assert_allclose(hist[1][0], p2, rtol=1e-14)

    w, b = make_params()
    hist = run(optim.SGD([w, b], lr=0.1, momentum=0.5, weight_decay=0.01), [w, b], 2)
    buf = g0w + 0.01 * P0
    p1 = P0 - 0.1 * buf
    buf = 0.5 * buf + (g1w + 0.01 * p1)
    p2 = p1 - 0.1 * buf
    np.testing.assert_allclose(hist[0][0], p1, rtol=1e-14)
    np.testing.assert_allclose(hist[1][0], p2, rtol=1e-14)


def adam_reference(p, grads, lr, b1, b2, eps, wd=0.0, decoupled=False):
    m = np.zeros_like(p)
    v = np.zeros_like(p)
    out = []
    for t, g in enumerate(grads, start=1):
        if decoupled:
            p = p * (1 - lr * wd)
        else:
            g = g + wd * p
        m = b1 * m + (1 - b1) * g
        v = b2 * v + (1 - b2) * g * g
        m_hat = m / (1 - b1**t)
        v_hat = v / (1 - b2**t)
        p = p - lr * m_hat / (np.sqrt(v_hat) + eps)
        out.append(p)
    return out


def test_adam_two_steps():
    w, b = make_params()
    hist = run(optim.Adam([w, b], lr=0.01, betas=(0.8, 0.95), eps=1e-6), [w, b], 2)
    (g0w, g0b), (g1w, g1b) = GRADS[:2]
    # step 1 by hand: m_hat = g, v_hat = g^2, so the step is lr * g / (|g| + eps)
    np.testing.assert_allclose(hist[0][0], P0 - 0.01 * g0w / (np.abs(g0w) + 1e-6), rtol=1e-12)
    # step 2 written out in full
    m = 0.8 * 0.2 * g0w + 0.2 * g1w
    v = 0.95 * 0.05 * g0w**2 + 0.05 * g1w**2
    expected = hist[0][0] - 0.01 * (m / (1 - 0.8**2)) / (np.sqrt(v / (1 - 0.95**2)) + 1e-6)
    np.testing.assert_allclose(hist[1][0], expected, rtol=1e-12)
    ref = adam_reference(B0, [g0b, g1b], 0.01, 0.8, 0.95, 1e-6)
    np.testing.assert_allclose(hist[1][1], ref[1], rtol=1e-12)


def test_adam_l2_weight_decay_goes_through_the_moments():
    w, b = make_params()
    hist = run(optim.Adam([w, b], lr=0.01, weight_decay=0.1), [w, b], 2)
    gw = [g for g, _ in GRADS[:2]]
    ref = adam_reference(P0, gw, 0.01, 0.9, 0.999, 1e-8, wd=0.1)
    np.testing.assert_allclose(hist[0][0], ref[0], rtol=1e-12)
    np.testing.assert_allclose(hist[1][0], ref[1], rtol=1e-12)
    # L2 decay changes the result compared with the decoupled form
    decoupled = adam_reference(P0, gw, 0.01, 0.9, 0.999, 1e-8, wd=0.1, decoupled=True)
    assert not np.allclose(ref[1], decoupled[1], rtol=1e-9, atol=0)


def test_adamw_decoupled_decay():
    w, b = make_params()
    opt = optim.AdamW([w, b], lr=0.01, weight_decay=0.1)
    hist = run(opt, [w, b], 2)
    gw = [g for g, _ in GRADS[:2]]
    gb = [g for _, g in GRADS[:2]]
    ref_w = adam_reference(P0, gw, 0.01, 0.9, 0.999, 1e-8, wd=0.1, decoupled=True)
    ref_b = adam_reference(B0, gb, 0.01, 0.9, 0.999, 1e-8)  # 1-D: no decay by default
    np.testing.assert_allclose(hist[0][0], ref_w[0], rtol=1e-12)
    np.testing.assert_allclose(hist[1][0], ref_w[1], rtol=1e-12)
    np.testing.assert_allclose(hist[1][1], ref_b[1], rtol=1e-12)
    # step 1 by hand
    np.testing.assert_allclose(
        hist[0][0], P0 * (1 - 0.01 * 0.1) - 0.01 * gw[0] / (np.abs(gw[0]) + 1e-8), rtol=1e-12
    )
    assert opt.state[id(w)]["step"] == 2


def test_adam_in_float32_keeps_dtype_and_updates_in_place():
    w, b = make_params(np.float32)
    arrays = (w.data, b.data)
    opt = optim.AdamW([w, b], lr=0.01)
    hist = run(opt, [w, b], 2)
    assert w.data is arrays[0] and b.data is arrays[1]  # updated in place
    assert w.dtype == np.float32 and opt.state[id(w)]["m"].dtype == np.float32
    ref = adam_reference(P0, [g for g, _ in GRADS[:2]], 0.01, 0.9, 0.999, 1e-8, wd=0.01, decoupled=True)
    np.testing.assert_allclose(hist[1][0], ref[1], rtol=1e-5)


def test_optimizers_on_a_backend(backend):
    w = nn.Parameter(tl.xp().array(P0))
    opt = optim.Adam([w], lr=0.01)
    w.grad = tl.xp().array(GRADS[0][0])
    opt.step()
    ref = adam_reference(P0, [GRADS[0][0]], 0.01, 0.9, 0.999, 1e-8)
    np.testing.assert_allclose(tl.to_numpy(w.data), ref[0], rtol=1e-12)
    assert type(w.data) is type(tl.xp().zeros(1))


# ---------------------------------------------------------------------------------------------
# optional oracle: torch.optim over five steps


@pytest.mark.parametrize(
    "name, kwargs",
    [
        ("SGD", dict(lr=0.1)),
        ("SGD", dict(lr=0.1, momentum=0.9)),
        ("SGD", dict(lr=0.05, momentum=0.8, weight_decay=0.1)),
        ("Adam", dict(lr=0.01)),
        ("Adam", dict(lr=0.02, betas=(0.8, 0.9), eps=1e-6, weight_decay=0.1)),
        ("AdamW", dict(lr=0.01, weight_decay=0.1)),
        ("AdamW", dict(lr=0.03, betas=(0.85, 0.99), weight_decay=0.5)),
    ],
)
def test_optimizers_match_torch(name, kwargs):
    torch = pytest.importorskip("torch")
    w, b = make_params()
    ours = getattr(optim, name)([w, b], **kwargs)
    hist = run(ours, [w, b], 5)
    tw = torch.tensor(P0, requires_grad=True)
    tb = torch.tensor(B0, requires_grad=True)
    if name == "AdamW":  # our AdamW decays only tensors with 2 or more dimensions
        groups = [{"params": [tw]}, {"params": [tb], "weight_decay": 0.0}]
    else:
        groups = [tw, tb]
    theirs = getattr(torch.optim, name)(groups, **kwargs)
    for step, (gw, gb) in enumerate(GRADS):
        tw.grad, tb.grad = torch.tensor(gw), torch.tensor(gb)
        theirs.step()
        np.testing.assert_allclose(hist[step][0], tw.detach().numpy(), rtol=1e-12, atol=1e-14)
        np.testing.assert_allclose(hist[step][1], tb.detach().numpy(), rtol=1e-12, atol=1e-14)


# ---------------------------------------------------------------------------------------------
# groups, decay, frozen parameters and state


def test_adamw_decays_only_matrices_by_default():
    ln = nn.LayerNorm(3)
    lin = nn.Linear(3, 2)
    params = [lin.weight, lin.bias, ln.weight, ln.bias]
    before = [p.data.copy() for p in params]
    opt = optim.AdamW(params, lr=0.1, weight_decay=0.5)
    assert [len(g["params"]) for g in opt.param_groups] == [1, 3]
    assert [g["weight_decay"] for g in opt.param_groups] == [0.5, 0.0]
    for p in params:
        p.grad = np.zeros_like(p.data)  # zero gradients: only the decay can move a parameter
    opt.step()
    np.testing.assert_allclose(lin.weight.data, before[0] * (1 - 0.1 * 0.5), rtol=1e-6)
    for p, old in zip(params[1:], before[1:]):
        np.testing.assert_array_equal(p.data, old)  # bias and LayerNorm weights: untouched

    ln2, lin2 = nn.LayerNorm(3), nn.Linear(3, 2)
    params = [lin2.weight, lin2.bias, ln2.weight]
    before = [p.data.copy() for p in params]
    opt = optim.AdamW(params, lr=0.1, weight_decay=0.5, decay_1d=True)
    assert len(opt.param_groups) == 1
    for p in params:
        p.grad = np.zeros_like(p.data)
    opt.step()
    for p, old in zip(params, before):
        np.testing.assert_allclose(p.data, old * 0.95, rtol=1e-6)


def test_adamw_default_groups_for_a_gpt():
    g = models.GPT(models.GPTConfig(vocab_size=10, block_size=4, n_layer=1, n_head=1, n_embd=4))
    opt = optim.AdamW(g, weight_decay=0.1)
    decay, no_decay = opt.param_groups
    names = {id(p): n for n, p in g.named_parameters()}
    assert sorted(names[id(p)] for p in decay["params"]) == sorted(
        n for n, p in g.named_parameters() if p.ndim == 2
    )
    assert "tok_emb.weight" in [names[id(p)] for p in decay["params"]]
    assert all(
        names[id(p)].endswith(("bias", "ln_1.weight", "ln_2.weight", "ln_f.weight"))
        for p in no_decay["params"]
    )


def test_explicit_param_groups_have_their_own_settings():
    w, b = make_params()
    opt = optim.SGD([{"params": [w]}, {"params": [b], "lr": 1.0}], lr=0.1)
    assert [g["lr"] for g in opt.param_groups] == [0.1, 1.0]
    hist = run(opt, [w, b], 1)
    np.testing.assert_allclose(hist[0][0], P0 - 0.1 * GRADS[0][0])
    np.testing.assert_allclose(hist[0][1], B0 - 1.0 * GRADS[0][1])
    w2, b2 = make_params()
    opt = optim.AdamW([{"params": [w2, b2], "weight_decay": 0.2}], lr=0.01)  # groups given: all decay
    assert len(opt.param_groups) == 1 and opt.param_groups[0]["weight_decay"] == 0.2


def test_parameters_without_a_gradient_are_skipped():
    w, b = make_params()
    opt = optim.Adam([w, b], lr=0.1)
    w.grad = GRADS[0][0].copy()
    opt.step()
    np.testing.assert_array_equal(b.data, B0)
    assert id(b) not in opt.state and id(w) in opt.state
    sgd = optim.SGD([w, b], lr=0.1, momentum=0.9, weight_decay=0.1)
    sgd.step()  # no gradients at all: nothing moves (not even by weight decay)
    np.testing.assert_array_equal(b.data, B0)


def test_frozen_parameters_neither_change_nor_get_state():
    frozen = nn.Parameter(P0.copy(), requires_grad=False)
    train_w = nn.Parameter(P0.astype(np.float32))
    train_b = nn.Parameter(B0.copy())  # float64
    for cls in (optim.Adam, optim.AdamW):
        opt = cls([frozen, train_w, train_b], lr=0.1, weight_decay=0.1)
        assert opt.params == [train_w, train_b]
        for p, g in ((frozen, GRADS[0][0]), (train_w, GRADS[0][0]), (train_b, GRADS[0][1])):
            p.grad = g.astype(p.dtype)  # even a gradient set by hand does not move a frozen one
        assert opt.state_bytes() == 0
        opt.step()
        np.testing.assert_array_equal(frozen.data, P0)
        assert id(frozen) not in opt.state
        # two moments per trainable parameter, in its own dtype
        assert opt.state_bytes() == 2 * (train_w.data.nbytes + train_b.data.nbytes) == 2 * (6 * 4 + 2 * 8)
        opt.zero_grad()
        assert train_w.grad is None and train_b.grad is None
        assert frozen.grad is not None  # not this optimizer's parameter
    sgd = optim.SGD([frozen, train_w], lr=0.1, momentum=0.9)
    train_w.grad = np.ones_like(train_w.data)
    sgd.step()
    assert sgd.state_bytes() == train_w.data.nbytes
    assert optim.SGD([train_w], lr=0.1).state_bytes() == 0


def test_state_bytes_for_a_partly_frozen_model():
    m = models.MLP([8, 16, 4])
    m.fc1.requires_grad_(False)
    opt = optim.Adam(m, lr=1e-3)
    m(tl.Tensor(np.ones((2, 8), np.float32))).sum().backward()
    opt.step()
    trainable = m.fc2.weight.data.nbytes + m.fc2.bias.data.nbytes
    assert opt.state_bytes() == 2 * trainable == 2 * 4 * (16 * 4 + 4)


def test_optimizer_argument_errors():
    w, b = make_params()
    with pytest.raises(ValueError, match="SGD: lr must be >= 0, got -0.1"):
        optim.SGD([w], lr=-0.1)
    with pytest.raises(ValueError, match="Adam: lr must be >= 0"):
        optim.Adam([w], lr=-1.0)
    with pytest.raises(ValueError, match=r"betas\[0\] must be in \[0, 1\), got 1.0"):
        optim.Adam([w], betas=(1.0, 0.999))
    with pytest.raises(ValueError, match=r"AdamW: betas\[1\] must be in \[0, 1\)"):
        optim.AdamW([w], betas=(0.9, -0.1))
    with pytest.raises(TypeError, match="parameters must be Tensors, got ndarray"):
        optim.SGD([P0], lr=0.1)
    with pytest.raises(ValueError, match="more than one group"):
        optim.SGD([{"params": [w]}, {"params": [w, b]}], lr=0.1)
    with pytest.raises(ValueError, match="more than one group"):
        optim.SGD([w, w], lr=0.1)


# ---------------------------------------------------------------------------------------------
# cosine schedule


def test_cosine_lr_at_key_steps():
    f = lambda s: optim.cosine_lr(s, max_lr=1.0, total_steps=110, warmup_steps=10, min_lr=0.1)
    assert f(0) == pytest.approx(0.1)  # warm-up starts at max_lr / warmup_steps
    assert f(4) == pytest.approx(0.5)
    assert f(9) == pytest.approx(1.0)  # warm-up reaches max_lr
    assert f(10) == pytest.approx(1.0)  # decay starts at max_lr
    assert f(60) == pytest.approx(0.55)  # half way: the middle of max and min
    assert f(35) == pytest.approx(0.1 + 0.45 * (1 + math.cos(math.pi / 4)))
    assert f(110) == pytest.approx(0.1) and f(500) == pytest.approx(0.1)
    values = [f(s) for s in range(10, 111)]
    assert all(a >= b for a, b in zip(values, values[1:]))  # non-increasing after warm-up
    assert optim.cosine_lr(0, 2.0, 10) == pytest.approx(2.0)  # no warm-up
    assert optim.cosine_lr(5, 2.0, 10) == pytest.approx(1.0)


def test_cosine_schedule_drives_every_group():
    w, b = make_params()
    opt = optim.SGD([{"params": [w]}, {"params": [b], "lr": 0.5}], lr=1.0)
    sched = optim.CosineSchedule(opt, total_steps=20, warmup_steps=4, min_ratio=0.1)
    # set for step 0 already
    assert [g["lr"] for g in opt.param_groups] == pytest.approx([0.25, 0.125])
    lrs = [opt.param_groups[0]["lr"]]
    for _ in range(25):
        lrs.append(sched.step())
    assert lrs[:5] == pytest.approx([0.25, 0.5, 0.75, 1.0, 1.0])
    assert lrs[12] == pytest.approx(0.1 + 0.45 * (1 + math.cos(math.pi * 8 / 16)))
    assert lrs[20] == pytest.approx(0.1) and lrs[25] == pytest.approx(0.1)
    assert opt.param_groups[1]["lr"] == pytest.approx(0.05)  # scaled by the group's own lr
    # the optimizer really uses the scheduled lr
    w2 = nn.Parameter(np.zeros(1))
    opt2 = optim.SGD([w2], lr=1.0)
    optim.CosineSchedule(opt2, total_steps=10, warmup_steps=2)
    w2.grad = np.ones(1)
    opt2.step()
    np.testing.assert_allclose(w2.data, [-0.5])


@pytest.mark.parametrize(
    "total, warmup, words",
    [
        (0, 0, "total_steps must be an integer >= 1, got 0"),
        (10, -1, "warmup_steps must be an integer >= 0, got -1"),
        (10, 11, "warmup_steps=11, total_steps=10"),
        (10.0, 0, "total_steps must be an integer >= 1, got 10.0"),
    ],
)
def test_cosine_schedule_errors(total, warmup, words):
    w, _ = make_params()
    opt = optim.SGD([w], lr=0.1)
    with pytest.raises(ValueError, match=words):
        optim.CosineSchedule(opt, total_steps=total, warmup_steps=warmup)
    assert opt.param_groups[0]["lr"] == 0.1  # untouched


# ---------------------------------------------------------------------------------------------
# clipping


def test_clip_grad_norm(backend):
    xp = tl.xp()
    a = nn.Parameter(xp.zeros((2, 2)))
    b = nn.Parameter(xp.zeros(3))
    c = nn.Parameter(xp.zeros(2))  # no gradient: ignored
    ga = np.array([[3.0, 0.0], [0.0, 4.0]])
    gb = np.array([12.0, 0.0, 0.0])
    a.grad, b.grad = xp.array(ga), xp.array(gb)  # copies: clipping works in place
    total = optim.clip_grad_norm_([a, b, c], max_norm=2.6)
    assert isinstance(total, float)
    assert total == pytest.approx(13.0)  # the norm before clipping: sqrt(9 + 16 + 144)
    new = np.sqrt((tl.to_numpy(a.grad) ** 2).sum() + (tl.to_numpy(b.grad) ** 2).sum())
    assert new == pytest.approx(2.6, rel=1e-5)
    np.testing.assert_allclose(tl.to_numpy(a.grad), ga * 0.2, rtol=1e-5)  # direction kept
    np.testing.assert_allclose(tl.to_numpy(b.grad), gb * 0.2, rtol=1e-5)
    assert c.grad is None
    # below the limit: unchanged, and the norm is still returned
    assert optim.clip_grad_norm_([a, b], max_norm=10.0) == pytest.approx(2.6, rel=1e-5)
    np.testing.assert_allclose(tl.to_numpy(a.grad), ga * 0.2, rtol=1e-5)
    assert optim.clip_grad_norm_([c], 1.0) == 0.0


def test_clip_grad_norm_accepts_a_module():
    m = models.MLP([4, 3])
    m(tl.Tensor(np.full((5, 4), 10.0, np.float32))).sum().backward()
    before = math.sqrt(sum(float((p.grad.astype(np.float64) ** 2).sum()) for p in m.parameters()))
    assert optim.clip_grad_norm_(m, 1.0) == pytest.approx(before, rel=1e-6)
    after = math.sqrt(sum(float((p.grad.astype(np.float64) ** 2).sum()) for p in m.parameters()))
    assert after == pytest.approx(1.0, rel=1e-5)


def test_bad_optimizer_arguments_are_refused():
    p = [tl.Tensor(np.ones(2), requires_grad=True)]
    with pytest.raises(ValueError, match="SGD: momentum must be >= 0, got -0.5"):
        optim.SGD(p, lr=0.1, momentum=-0.5)
    with pytest.raises(ValueError, match="Adam: eps must be > 0, got 0.0"):
        optim.Adam(p, eps=0.0)
    with pytest.raises(ValueError, match=r"min_ratio must be in \[0, 1\], got 2.0"):
        optim.CosineSchedule(optim.SGD(p, lr=0.1), total_steps=10, min_ratio=2.0)
    with pytest.raises(ValueError, match="max_norm must be > 0, got 0.0"):
        optim.clip_grad_norm_(p, 0.0)


BAD_NUMBERS = [float("nan"), float("inf"), -float("inf"), "1e-3", True, None, [0.1]]


@pytest.mark.parametrize("value", BAD_NUMBERS, ids=repr)
@pytest.mark.parametrize(
    "make, field",
    [
        (lambda p, v: optim.SGD(p, lr=v), "lr"),
        (lambda p, v: optim.SGD(p, lr=0.1, momentum=v), "momentum"),
        (lambda p, v: optim.SGD(p, lr=0.1, weight_decay=v), "weight_decay"),
        (lambda p, v: optim.Adam(p, lr=v), "lr"),
        (lambda p, v: optim.Adam(p, eps=v), "eps"),
        (lambda p, v: optim.AdamW(p, weight_decay=v), "weight_decay"),
        (lambda p, v: optim.AdamW(p, betas=(0.9, v)), r"betas\[1\]"),
        (lambda p, v: optim.SGD([{"params": p, "lr": v}], lr=0.1), "lr"),  # a group's own value
        (lambda p, v: optim.clip_grad_norm_(p, v), "max_norm"),
    ],
)
def test_non_finite_or_mistyped_settings_are_refused_naming_the_field(make, field, value):
    p = [tl.Tensor(np.ones(2, np.float32), requires_grad=True)]
    p[0].grad = np.ones(2, np.float32)
    with pytest.raises(ValueError, match=f"{field} must be a finite number.*got {re.escape(repr(value))}"):
        make(p, value)
    np.testing.assert_array_equal(p[0].data, [1.0, 1.0])  # nothing was updated
    np.testing.assert_array_equal(p[0].grad, [1.0, 1.0])


def test_numpy_numbers_are_accepted_and_stored_as_python_numbers():
    p = [tl.Tensor(np.ones(2, np.float32), requires_grad=True)]
    opt = optim.AdamW(p, lr=np.float32(0.5), betas=(np.float64(0.5), 0.9), weight_decay=np.int64(0))
    g = opt.param_groups[0]
    assert g["lr"] == 0.5 and type(g["lr"]) is float and g["betas"] == (0.5, 0.9) and g["weight_decay"] == 0


def test_an_optimizer_with_nothing_to_train_is_refused():
    with pytest.raises(ValueError, match="empty parameter list"):
        optim.SGD([], lr=0.1)
    with pytest.raises(ValueError, match="empty parameter list"):
        optim.AdamW(iter(()), lr=0.1)  # a used-up generator
    m = models.MLP([3, 2])
    m.requires_grad_(False)
    with pytest.raises(ValueError, match="none of the 2 parameters requires grad"):
        optim.Adam(m, lr=0.1)
    with pytest.raises(ValueError, match="AdamW: decay_1d must be True or False, got 'no'"):
        optim.AdamW(m.parameters(), decay_1d="no")
    with pytest.raises(TypeError, match="got one Tensor"):
        optim.SGD(tl.Tensor(np.ones(2), requires_grad=True), lr=0.1)
