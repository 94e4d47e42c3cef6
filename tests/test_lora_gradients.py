"""Gradients through LoRA: zero-step gradients, frozen bases never formed, gradchecks, a torch oracle."""

import numpy as np
import pytest
from helpers import check_grad
from hypothesis import given
from hypothesis import strategies as st
from lora_helpers import (
    fill_adapters,
    layer64,
    param_hashes,
    tiny_gpt,
    token_ids,
)

import tinylora as tl
import tinylora.functional as F
from tinylora import lora, nn, optim
from tinylora.lora import LoRAConfig
from tinylora.tensor import Tensor

# ============================================================== gradients


def test_at_step_zero_A_gets_an_exactly_zero_gradient_and_B_does_not():
    model = lora.apply_lora(tiny_gpt(), LoRAConfig(r=4, target_modules=("q_proj", "v_proj", "down_proj")))
    ids = token_ids()
    _, loss = model(ids, ids)
    loss.backward()
    layers = lora.lora_layers(model)
    assert len(layers) == 6
    for _, layer in layers:
        assert layer.lora_A.grad is not None and not np.any(layer.lora_A.grad)  # dL/dA = s B^T g x = 0
        assert np.abs(layer.lora_B.grad).max() > 0


def test_frozen_base_gets_no_grad_and_is_bit_identical_after_training():
    model = lora.apply_lora(tiny_gpt(), LoRAConfig(r=2, target_modules=("q_proj", "v_proj", "up_proj")))
    before = param_hashes(model)
    adapters0 = {n: p.numpy().copy() for n, p in model.named_parameters() if ".adapters." in n}
    opt = optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.1)
    ids = token_ids()
    for _ in range(3):
        opt.zero_grad()
        _, loss = model(ids, np.roll(ids, 1, axis=1))
        loss.backward()
        for n, p in model.named_parameters():
            if ".adapters." not in n:
                assert p.grad is None, n
        opt.step()
    assert param_hashes(model) == before
    for n, p in model.named_parameters():
        if ".adapters." in n:
            assert not np.array_equal(p.numpy(), adapters0[n]), f"{n} did not train"


class Spy(np.ndarray):
    """An ndarray that logs each matmul it takes part in: (tag, position, shape of the other operand)."""

    log: list = []

    def __array_finalize__(self, obj):
        self.tag = getattr(obj, "tag", None)

    def __array_ufunc__(self, ufunc, method, *inputs, **kwargs):
        if ufunc is np.matmul:
            for pos, a in enumerate(inputs):
                if isinstance(a, Spy):
                    other = inputs[1 - pos] if len(inputs) == 2 else None
                    Spy.log.append((a.tag, pos, np.shape(other)))
        plain = [np.asarray(a) if isinstance(a, Spy) else a for a in inputs]
        if "out" in kwargs:
            kwargs["out"] = tuple(np.asarray(o) if isinstance(o, Spy) else o for o in kwargs["out"])
        return getattr(ufunc, method)(*plain, **kwargs)


@pytest.fixture
def spying_linear(monkeypatch):
    """Route the input of F.linear and F.lora_linear through a Spy tagged with id(weight).

    In the backward of both ops the weight-gradient of W (out, in) is g.T @ x: a matmul with
    the input as its right operand (position 1) and a left operand of out rows. The LoRA
    A-gradient is (s g B).T @ x, whose left operand has r rows. The log records, per op
    input, (tag, position, shape of the other operand).
    """
    originals = {"linear": F.linear, "lora_linear": F.lora_linear}
    Spy.log = []

    def spied(x, weight):
        x = x if isinstance(x, Tensor) else tl.Tensor(x)
        spy = x.data.view(Spy)
        spy.tag = id(weight)
        return Tensor._node(spy, "spy", (x,), lambda g: (g,))  # identity, kept in the graph

    monkeypatch.setattr(
        F, "linear", lambda x, weight, bias=None: originals["linear"](spied(x, weight), weight, bias)
    )
    monkeypatch.setattr(
        F,
        "lora_linear",
        lambda x, weight, bias, *rest, **kw: originals["lora_linear"](
            spied(x, weight), weight, bias, *rest, **kw
        ),
    )
    return Spy.log


def gradient_products(log, weight, rows):
    """Matmuls that used `weight`'s op input on the right with a `rows`-row left operand."""
    return [e for e in log if e[0] == id(weight) and e[1] == 1 and e[2][0] == rows]


def test_the_frozen_weight_gradient_matmul_is_never_formed(spying_linear):
    layer, _, _ = layer64(6, 5, r=2, alpha=4)
    x = tl.Tensor(np.random.default_rng(0).standard_normal((3, 4, 6)), requires_grad=True)
    (layer(x) * tl.Tensor(np.random.default_rng(1).standard_normal((3, 4, 5)))).sum().backward()
    log = spying_linear
    assert gradient_products(log, layer.base.weight, rows=5) == []  # no g.T @ x for the frozen W
    assert gradient_products(log, layer.base.weight, rows=2) == [(id(layer.base.weight), 1, (2, 12))]  # A's
    assert layer.lora_A.grad.shape == (2, 6) and layer.lora_B.grad.shape == (5, 2)
    assert layer.base.weight.grad is None and layer.base.bias.grad is None and x.grad is not None
    # control: the same layer with its base unfrozen does form g.T @ x for the base weight
    log.clear()
    layer.base.requires_grad_(True)
    layer(x).sum().backward()
    assert gradient_products(log, layer.base.weight, rows=5) == [(id(layer.base.weight), 1, (5, 12))]


def test_no_frozen_weight_in_a_lora_gpt_gets_a_weight_gradient_matmul(spying_linear):
    model = lora.apply_lora(tiny_gpt(), LoRAConfig(r=2, target_modules=("q_proj", "v_proj", "down_proj")))
    ids = token_ids()
    _, loss = model(ids, ids)
    loss.backward()
    linears = [m for _, m in model.named_modules() if isinstance(m, nn.Linear)]
    formed = [m for m in linears if gradient_products(spying_linear, m.weight, rows=m.out_features)]
    assert formed == []  # not one frozen weight-gradient matmul in the whole model
    adapted = [layer for _, layer in lora.lora_layers(model)]
    assert all(gradient_products(spying_linear, layer.base.weight, rows=2) for layer in adapted)  # A grads
    lora_names = {n for n, p in model.named_parameters() if ".adapters." in n}
    assert all(p.grad is not None for n, p in model.named_parameters() if n in lora_names)
    assert all(p.grad is None for n, p in model.named_parameters() if n not in lora_names)


@given(
    n_in=st.integers(1, 5),
    n_out=st.integers(1, 5),
    r=st.integers(1, 4),
    alpha=st.sampled_from([0.5, 1, 3, 16]),
    rslora=st.booleans(),
    bias=st.booleans(),
    lead=st.sampled_from([(2,), (2, 3)]),
    seed=st.integers(0, 2**16),
)
def test_gradcheck_through_lora_linear(n_in, n_out, r, alpha, rslora, bias, lead, seed):
    layer, _, _ = layer64(n_in, n_out, r, alpha, rslora=rslora, bias=bias, seed=seed)
    assert np.any(layer.lora_B.numpy())  # B != 0, so A's gradient is not trivially zero
    x = tl.Tensor(np.random.default_rng(seed + 7).standard_normal((*lead, n_in)), requires_grad=True)
    assert check_grad(lambda x_, a_, b_: layer(x_), x, layer.lora_A, layer.lora_B, seed=seed)
    layer.lora_A.grad = layer.lora_B.grad = None
    layer(x).sum().backward()
    assert np.abs(layer.lora_A.grad).max() > 0


def test_gradcheck_through_a_lora_gpt_in_float64():
    model = lora.apply_lora(tiny_gpt(dtype=np.float64), LoRAConfig(r=2, alpha=4, target_modules=("v_proj",)))
    fill_adapters(model)
    layer = model.blocks[1].attn.v_proj
    assert layer.lora_A.dtype == np.float64
    ids = token_ids(batch=1, t=5)
    assert tl.gradcheck(lambda a, b: model(ids, ids)[1], [layer.lora_A, layer.lora_B])


def test_lora_matches_a_hand_written_torch_oracle():
    torch = pytest.importorskip("torch")
    layer, A, B = layer64(7, 5, r=3, alpha=6, rslora=True)
    W, b, s = layer.base.weight.numpy(), layer.base.bias.numpy(), layer.scaling
    rng = np.random.default_rng(4)
    x, g = rng.standard_normal((2, 4, 7)), rng.standard_normal((2, 4, 5))
    xt = tl.Tensor(x, requires_grad=True)
    y = layer(xt)
    (y * tl.Tensor(g)).sum().backward()
    tx, tA, tB = (torch.tensor(a, requires_grad=True) for a in (x, A, B))
    ty = tx @ torch.tensor(W).T + torch.tensor(b) + (tx @ tA.T @ tB.T) * s
    (ty * torch.tensor(g)).sum().backward()
    np.testing.assert_allclose(y.numpy(), ty.detach().numpy(), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(layer.lora_A.grad, tA.grad.numpy(), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(layer.lora_B.grad, tB.grad.numpy(), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(xt.grad, tx.grad.numpy(), rtol=1e-12, atol=1e-12)
