"""LoRA on a frozen base: the layer's maths, inits, gradients, merging, targeting, counting, many adapters."""

import hashlib
import math

import numpy as np
import pytest
from helpers import check_grad
from hypothesis import given
from hypothesis import strategies as st

import tinylora as tl
import tinylora.functional as F
from tinylora import lora, lowrank, models, nn, optim
from tinylora.lora import LoRAConfig, LoRALinear
from tinylora.tensor import Tensor

TINY = dict(vocab_size=17, block_size=8, n_layer=2, n_head=2, n_embd=16)


def tiny_gpt(seed=0, dtype=None, **kw):
    """A tiny GPT built from seed `seed` (the same seed gives bit-identical weights)."""
    tl.manual_seed(seed)
    model = models.GPT(models.GPTConfig(**dict(TINY, **kw)))
    return model.astype(dtype) if dtype is not None else model


def token_ids(seed=0, batch=2, t=8):
    return np.random.default_rng(seed).integers(0, TINY["vocab_size"], size=(batch, t))


def logits(model, ids):
    return model(ids).numpy().copy()


def fill_adapters(model, seed=1, scale=0.3, name=None):
    """Give every adapter (or only adapter `name`) random A and B, as if it had been trained."""
    rng = np.random.default_rng(seed)
    for _, layer in lora.lora_layers(model):
        for n, ad in layer.adapters.items():
            if name is None or n == name:
                for p in (ad.lora_A, ad.lora_B):
                    p.data = (rng.standard_normal(p.shape) * scale).astype(p.dtype)


def param_hashes(model, skip_lora=True):
    """sha256 of every parameter's bytes, by name (adapters left out unless skip_lora=False)."""
    return {
        n: hashlib.sha256(np.ascontiguousarray(p.numpy()).tobytes()).hexdigest()
        for n, p in model.named_parameters()
        if not (skip_lora and ".adapters." in n)
    }


def layer64(n_in, n_out, r, alpha, rslora=False, bias=True, dropout=0.0, init="kaiming", seed=0):
    """A float64 LoRALinear with random (non-zero) A and B set by hand, and those arrays."""
    tl.manual_seed(seed)
    base = nn.Linear(n_in, n_out, bias=bias, dtype=np.float64)
    layer = LoRALinear(base, r=r, alpha=alpha, dropout=dropout, rslora=rslora, init=init)
    rng = np.random.default_rng(seed + 100)
    A, B = rng.standard_normal((r, n_in)), rng.standard_normal((n_out, r))
    layer.lora_A.data, layer.lora_B.data = A.copy(), B.copy()
    return layer, A, B


def formula(layer, x, A, B, scaling):
    """y = x W^T + b + (x A^T B^T) * scaling in plain numpy."""
    W = layer.base.weight.numpy()
    b = 0.0 if layer.base.bias is None else layer.base.bias.numpy()
    return x @ W.T + b + (x @ A.T @ B.T) * scaling


# ============================================================== the layer's maths


@given(
    n_in=st.integers(1, 7),
    n_out=st.integers(1, 7),
    r=st.integers(1, 6),
    alpha=st.sampled_from([0.5, 1, 3, 16, 32.5]),
    rslora=st.booleans(),
    bias=st.booleans(),
    lead=st.sampled_from([(), (3,), (2, 3)]),
    seed=st.integers(0, 2**16),
)
def test_forward_is_base_plus_scaled_BAx(n_in, n_out, r, alpha, rslora, bias, lead, seed):
    layer, A, B = layer64(n_in, n_out, r, alpha, rslora=rslora, bias=bias, seed=seed)
    scaling = alpha / (math.sqrt(r) if rslora else r)
    assert layer.scaling == pytest.approx(scaling, rel=1e-15)
    assert layer.r == r and layer.lora_A.shape == (r, n_in) and layer.lora_B.shape == (n_out, r)
    x = np.random.default_rng(seed + 1).standard_normal((*lead, n_in))
    y = layer(tl.Tensor(x))
    assert y.shape == (*lead, n_out) and y.dtype == np.float64
    np.testing.assert_allclose(y.numpy(), formula(layer, x, A, B, scaling), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize(
    "r, alpha, rslora, expected", [(8, 16, False, 2.0), (4, 16, True, 8.0), (16, 8, True, 2.0)]
)
def test_scaling_is_alpha_over_r_or_over_sqrt_r_with_rslora(r, alpha, rslora, expected):
    cfg = LoRAConfig(r=r, alpha=alpha, rslora=rslora)
    assert cfg.scaling == expected
    layer = LoRALinear(nn.Linear(32, 24), r=r, alpha=alpha, rslora=rslora)
    assert layer.scaling == expected
    gpt = lora.apply_lora(tiny_gpt(), LoRAConfig(r=r, alpha=alpha, rslora=rslora))
    assert {layer.scaling for _, layer in lora.lora_layers(gpt)} == {expected}


def test_shapes_dtype_and_B_starts_at_zero(backend):
    base = nn.Linear(12, 5)
    layer = LoRALinear(base, r=3, alpha=6)
    assert layer.base is base and layer.in_features == 12 and layer.out_features == 5
    assert layer.lora_A.shape == (3, 12) and layer.lora_B.shape == (5, 3)
    assert layer.lora_A.dtype == layer.lora_B.dtype == np.float32
    assert not np.any(layer.lora_B.numpy()) and np.any(layer.lora_A.numpy())
    assert layer.lora_A.requires_grad and layer.lora_B.requires_grad
    assert not base.weight.requires_grad and not base.bias.requires_grad
    layer64_ = LoRALinear(nn.Linear(4, 3, dtype=np.float64), r=2)
    assert layer64_.lora_A.dtype == layer64_.lora_B.dtype == np.float64


def test_lora_linear_refuses_a_non_linear():
    with pytest.raises(TypeError, match="LayerNorm"):
        LoRALinear(nn.LayerNorm(4))


@pytest.mark.parametrize(
    "kw, word",
    [
        (dict(r=0), "r"),
        (dict(r=2.0), "r"),
        (dict(r=True), "r"),
        (dict(alpha=0), "alpha"),
        (dict(alpha=-1), "alpha"),
        (dict(dropout=1.0), "dropout"),
        (dict(dropout=-0.1), "dropout"),
        (dict(init="xavier"), "init"),
        (dict(bias="some"), "bias"),
        (dict(target_modules=()), "target_modules"),
        (dict(target_modules="q_proj("), "regular expression"),
        (dict(target_modules=("q_proj", "")), "non-empty"),
    ],
)
def test_config_rejects_bad_values(kw, word):
    with pytest.raises(ValueError, match=word):
        LoRAConfig(**kw)


def test_config_round_trips_through_peft_key_names():
    cfg = LoRAConfig(
        r=4,
        alpha=8,
        dropout=0.1,
        target_modules=("q_proj", "up_proj"),
        exclude_modules=r"blocks\.0\..*",
        init="gaussian",
        rslora=True,
        bias="lora_only",
        modules_to_save=("ln_f",),
    )
    d = cfg.to_dict()
    assert d["r"] == 4 and d["lora_alpha"] == 8 and d["lora_dropout"] == 0.1
    assert d["target_modules"] == ["q_proj", "up_proj"] and d["init_lora_weights"] == "gaussian"
    assert d["use_rslora"] is True and d["peft_type"] == "LORA"
    assert LoRAConfig.from_dict(d) == cfg
    with pytest.raises(ValueError, match="lora_alpha"):
        LoRAConfig.from_dict({"r": 4, "target_modules": ["q_proj"]})


# ============================================================== initialisation


def test_kaiming_init_is_uniform_with_bound_one_over_sqrt_in():
    n_in, r = 400, 64
    layer = LoRALinear(nn.Linear(n_in, 8), r=r, init="kaiming")
    A, bound = layer.lora_A.numpy().astype(np.float64), 1 / math.sqrt(n_in)
    assert np.abs(A).max() <= bound
    assert np.abs(A).max() > 0.99 * bound  # 25600 draws reach the edge of the interval
    assert A.var() == pytest.approx(bound**2 / 3, rel=0.05)  # variance of U(-b, b)
    assert abs(A.mean()) < 0.02 * bound * 3
    assert not np.any(layer.lora_B.numpy())


@pytest.mark.parametrize("r", [4, 16])
def test_gaussian_init_has_std_one_over_r_as_peft(r):
    layer = LoRALinear(nn.Linear(3000, 8), r=r, init="gaussian")
    A = layer.lora_A.numpy().astype(np.float64)
    assert A.std() == pytest.approx(1 / r, rel=0.04)  # 1/r, not 1/sqrt(r) or 1/sqrt(in)
    assert abs(A.mean()) < 0.05 / r
    assert not np.any(layer.lora_B.numpy())


@pytest.mark.parametrize("r, alpha, rslora", [(1, 1, False), (3, 12, False), (4, 2, True)])
def test_pissa_init_takes_the_top_singular_triplets_and_leaves_the_residual(r, alpha, rslora):
    tl.manual_seed(3)
    base = nn.Linear(9, 7, dtype=np.float64)
    W = base.weight.numpy().copy()
    x = np.random.default_rng(0).standard_normal((5, 9))
    y0 = base(tl.Tensor(x)).numpy().copy()
    layer = LoRALinear(base, r=r, alpha=alpha, rslora=rslora, init="pissa")
    A, B, s = layer.lora_A.numpy(), layer.lora_B.numpy(), layer.scaling
    U, S, Vt = np.linalg.svd(W, full_matrices=False)
    top = (U[:, :r] * S[:r]) @ Vt[:r]
    np.testing.assert_allclose(s * B @ A, top, atol=1e-12)  # scaling folded in: s*B@A is W's top part
    np.testing.assert_allclose(layer.base.weight.numpy(), W - top, atol=1e-12)  # the residual
    np.testing.assert_allclose(layer.base.weight.numpy() + s * B @ A, W, atol=1e-12)
    # sqrt(S) split evenly, as PEFT: A A^T = B^T B = diag(S_r / s)
    np.testing.assert_allclose(A @ A.T, np.diag(S[:r] / s), atol=1e-10)
    np.testing.assert_allclose(B.T @ B, np.diag(S[:r] / s), atol=1e-10)
    np.testing.assert_allclose(
        np.linalg.svd(layer.base.weight.numpy(), compute_uv=False)[: 7 - r], S[r:], atol=1e-12
    )
    assert lowrank.subspace_similarity(A, Vt[:r], r, r) == pytest.approx(1.0, abs=1e-10)
    assert not np.array_equal(layer.base.weight.numpy(), W)
    np.testing.assert_allclose(layer(tl.Tensor(x)).numpy(), y0, atol=1e-12)  # a no-op at step 0


def test_pissa_on_a_gpt_keeps_the_outputs_to_float32_tolerance():
    ids = token_ids()
    reference = logits(tiny_gpt(), ids)
    model = lora.apply_lora(tiny_gpt(), LoRAConfig(r=4, init="pissa", target_modules=("q_proj", "up_proj")))
    out = logits(model, ids)
    assert np.any(lora.lora_layers(model)[0][1].lora_B.numpy())
    np.testing.assert_allclose(out, reference, atol=1e-5)


def test_pissa_rank_above_the_weight_rank_is_refused():
    with pytest.raises(ValueError, match="pissa"):
        LoRALinear(nn.Linear(8, 3), r=4, init="pissa")


@pytest.mark.parametrize("init", ["kaiming", "gaussian"])
def test_new_adapter_is_exactly_a_no_op(init):
    ids = token_ids()
    reference = tiny_gpt()
    model = lora.apply_lora(
        tiny_gpt(),
        LoRAConfig(r=4, init=init, target_modules=("q_proj", "k_proj", "v_proj", "o_proj", "up_proj")),
    )
    assert np.array_equal(logits(model, ids), logits(reference, ids))
    model.eval(), reference.eval()
    assert np.array_equal(logits(model, ids), logits(reference, ids))
    base = nn.Linear(6, 5)
    x = tl.Tensor(np.random.default_rng(0).standard_normal((4, 6)).astype(np.float32))
    y0 = base(x).numpy().copy()
    assert np.array_equal(LoRALinear(base, r=3, init=init)(x).numpy(), y0)


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


# ============================================================== dropout


def test_dropout_acts_on_the_adapter_path_only_and_only_in_training():
    n, p = 6, 0.5
    layer, _, _ = layer64(n, n, r=n, alpha=n, dropout=p)  # scaling 1
    layer.lora_A.data, layer.lora_B.data = np.eye(n), np.eye(n)  # adapter path = dropout(x)
    x = np.random.default_rng(0).uniform(1, 2, (50, n))
    base = layer.base(tl.Tensor(x)).numpy()
    adapter = layer(tl.Tensor(x)).numpy() - base  # train mode
    kept = np.isclose(adapter, x / (1 - p), rtol=1e-12)
    dropped = np.abs(adapter) < 1e-12
    assert np.all(kept | dropped)  # each input element kept (and scaled by 1/(1-p)) or zeroed
    assert 0.3 < dropped.mean() < 0.7
    layer.eval()
    a, b = layer(tl.Tensor(x)).numpy(), layer(tl.Tensor(x)).numpy()
    assert np.array_equal(a, b)
    np.testing.assert_allclose(a, base + x, rtol=1e-12)  # eval: no dropout at all


def test_dropout_leaves_the_base_path_alone_even_in_train_mode():
    base = nn.Linear(16, 8)
    x = tl.Tensor(np.random.default_rng(0).standard_normal((32, 16)).astype(np.float32))
    y0 = base(x).numpy().copy()
    layer = LoRALinear(base, r=4, dropout=0.9)
    assert layer.training
    assert np.array_equal(layer(x).numpy(), y0)  # B = 0: exactly the base, dropout or not
    layer.lora_B.data = np.ones_like(layer.lora_B.data)
    assert not np.array_equal(layer(x).numpy(), layer(x).numpy())  # train: fresh masks


def test_lora_dropout_in_a_gpt_is_deterministic_in_eval():
    model = lora.apply_lora(tiny_gpt(), LoRAConfig(r=4, dropout=0.5))
    fill_adapters(model)
    ids = token_ids()
    assert not np.array_equal(logits(model, ids), logits(model, ids))
    model.eval()
    assert np.array_equal(logits(model, ids), logits(model, ids))
    with lora.disable_adapters(model):
        model.train()
        assert np.array_equal(logits(model, ids), logits(tiny_gpt(), ids))


# ============================================================== merging


def merged_setup():
    model = lora.apply_lora(
        tiny_gpt(dtype=np.float64), LoRAConfig(r=3, alpha=5, target_modules=("q_proj", "v_proj", "up_proj"))
    )
    fill_adapters(model)
    return model


def base_weights(model):
    return {n: layer.base.weight.numpy().copy() for n, layer in lora.lora_layers(model)}


def test_merged_output_equals_unmerged_and_unmerge_restores_the_base():
    model, ids = merged_setup(), token_ids()
    model.eval()
    unmerged, w0 = logits(model, ids), base_weights(model)
    lora.merge_lora(model)
    for n, layer in lora.lora_layers(model):
        assert layer.merged == "default"
        expected = w0[n] + layer.scaling * layer.lora_B.numpy() @ layer.lora_A.numpy()
        np.testing.assert_allclose(layer.base.weight.numpy(), expected, rtol=0, atol=1e-15)
    merged = logits(model, ids)
    assert not np.array_equal(merged, logits(tiny_gpt(dtype=np.float64), ids))  # the adapter counts
    np.testing.assert_allclose(merged, unmerged, rtol=1e-12, atol=1e-12)
    lora.unmerge_lora(model)
    for n, layer in lora.lora_layers(model):
        assert layer.merged is None
        np.testing.assert_allclose(layer.base.weight.numpy(), w0[n], rtol=0, atol=1e-12)
    np.testing.assert_allclose(logits(model, ids), unmerged, rtol=1e-12, atol=1e-12)


def test_a_second_merge_is_a_no_op():
    model = merged_setup()
    lora.merge_lora(model)
    once = base_weights(model)
    lora.merge_lora(model)
    twice = base_weights(model)
    assert all(np.array_equal(once[n], twice[n]) for n in once)
    lora.unmerge_lora(model)
    lora.unmerge_lora(model)  # and so is a second unmerge
    fresh = tiny_gpt(dtype=np.float64)
    for n, w in base_weights(model).items():
        np.testing.assert_allclose(w, fresh.get_submodule(n).weight.numpy(), atol=1e-12)


def test_training_while_merged_is_refused_but_inference_works():
    model, ids = merged_setup(), token_ids()
    lora.merge_lora(model)
    model.train()
    with pytest.raises(RuntimeError, match="unmerge"):
        model(ids)
    with tl.no_grad():
        a = logits(model, ids)  # train mode, no graph: fine
    model.eval()
    b = logits(model, ids)
    assert np.array_equal(a, b)
    lora.unmerge_lora(model)
    model.train()
    model(ids, ids)[1].backward()  # and after unmerge training works again


def test_merge_and_unload_gives_plain_linears_with_equal_outputs():
    model, ids = merged_setup(), token_ids()
    model.eval()
    adapted = logits(model, ids)
    n_base = tiny_gpt().num_parameters()
    plain = lora.merge_and_unload(model)
    assert lora.lora_layers(plain) == []
    assert type(plain.blocks[0].attn.q_proj) is nn.Linear and type(plain.blocks[1].mlp.up_proj) is nn.Linear
    assert plain.num_parameters() == n_base
    np.testing.assert_allclose(logits(plain, ids), adapted, rtol=1e-12, atol=1e-12)


def test_merge_in_float32_stays_close():
    model = lora.apply_lora(tiny_gpt(), LoRAConfig(r=4))
    fill_adapters(model)
    model.eval()
    ids = token_ids()
    a = logits(model, ids)
    lora.merge_lora(model)
    np.testing.assert_allclose(logits(model, ids), a, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("alpha", [16, 3])  # scaling 2 (exact in binary) and 0.375
def test_merge_folds_exactly_as_a_large_batch_does(alpha):
    """With many rows lora_linear works with W + s B A summed as merge_lora sums it: bit-identical."""
    rng = np.random.default_rng(alpha)
    base = nn.Linear(16, 12)
    layer = LoRALinear(base, r=8, alpha=alpha)
    layer.lora_B.data = rng.standard_normal((12, 8)).astype(np.float32)
    layer.eval()
    x = tl.Tensor(rng.standard_normal((40, 16)).astype(np.float32))  # 40 * (16 + 12) > 16 * 12: folded
    few = tl.Tensor(x.numpy()[:2])  # 2 rows: two thin products
    unmerged, unmerged_few = layer(x).numpy(), layer(few).numpy()
    layer.merge()
    np.testing.assert_array_equal(layer(x).numpy(), unmerged)
    np.testing.assert_allclose(layer(few).numpy(), unmerged_few, rtol=1e-5, atol=1e-5)


# ============================================================== choosing targets


def adapted_names(model):
    return sorted(n for n, _ in lora.lora_layers(model))


class Twin(nn.Module):
    def __init__(self):
        super().__init__()
        self.q_proj = nn.Linear(4, 4)
        self.xq_proj = nn.Linear(4, 4)
        self.inner = nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 4))


def test_target_names_match_whole_dotted_suffixes():
    model = lora.apply_lora(tiny_gpt(), LoRAConfig(target_modules=("q_proj",)))
    assert adapted_names(model) == ["blocks.0.attn.q_proj", "blocks.1.attn.q_proj"]
    twin = lora.apply_lora(Twin(), LoRAConfig(target_modules=("q_proj",)))
    assert adapted_names(twin) == ["q_proj"]  # not xq_proj
    twin = lora.apply_lora(Twin(), LoRAConfig(target_modules=("1",)))
    assert adapted_names(twin) == ["inner.1"]
    model = lora.apply_lora(tiny_gpt(), LoRAConfig(target_modules=("blocks.1.attn.q_proj", "lm_head")))
    assert adapted_names(model) == ["blocks.1.attn.q_proj", "lm_head"]
    model = lora.apply_lora(tiny_gpt(), LoRAConfig(target_modules=("attn.v_proj",)))
    assert adapted_names(model) == ["blocks.0.attn.v_proj", "blocks.1.attn.v_proj"]


def test_a_regex_target_must_match_the_whole_name():
    model = lora.apply_lora(tiny_gpt(), LoRAConfig(target_modules=r"blocks\.0\.attn\.(q|v)_proj"))
    assert adapted_names(model) == ["blocks.0.attn.q_proj", "blocks.0.attn.v_proj"]
    model = lora.apply_lora(tiny_gpt(), LoRAConfig(target_modules=r".*(up|down)_proj"))
    assert adapted_names(model) == [f"blocks.{i}.mlp.{p}" for i in (0, 1) for p in ("down_proj", "up_proj")]
    with pytest.raises(ValueError, match="matches no module"):
        lora.apply_lora(tiny_gpt(), LoRAConfig(target_modules="q_proj"))  # a regex: whole names only


def test_exclude_modules_leaves_some_out():
    cfg = LoRAConfig(target_modules=("q_proj", "v_proj"), exclude_modules=("blocks.0.attn.q_proj",))
    assert adapted_names(lora.apply_lora(tiny_gpt(), cfg)) == [
        "blocks.0.attn.v_proj",
        "blocks.1.attn.q_proj",
        "blocks.1.attn.v_proj",
    ]
    cfg = LoRAConfig(target_modules=("q_proj", "v_proj"), exclude_modules=r"blocks\.1\..*")
    assert adapted_names(lora.apply_lora(tiny_gpt(), cfg)) == ["blocks.0.attn.q_proj", "blocks.0.attn.v_proj"]


def test_a_target_that_matches_nothing_lists_the_linear_layers():
    model = tiny_gpt()
    with pytest.raises(ValueError, match="matches no module") as e:
        lora.apply_lora(model, LoRAConfig(target_modules=("query",)))
    for name in ("blocks.0.attn.q_proj", "blocks.1.mlp.down_proj", "lm_head"):
        assert name in str(e.value)
    assert "ln_1" not in str(e.value) and lora.lora_layers(model) == []


def test_adapting_twice_is_refused_and_points_to_add_adapter():
    model = lora.apply_lora(tiny_gpt(), LoRAConfig())
    before = param_hashes(model, skip_lora=False)
    with pytest.raises(ValueError, match="add_adapter") as e:
        lora.apply_lora(model, LoRAConfig(r=2, target_modules=("q_proj",)))
    assert "blocks.0.attn.q_proj" in str(e.value)
    assert param_hashes(model, skip_lora=False) == before and lora.adapter_names(model) == ["default"]


@pytest.mark.parametrize(
    "target, kind",
    [(("ln_1",), "LayerNorm"), (("attn",), "CausalSelfAttention")],  # nn.Embedding: LoRAEmbedding (issue 15)
)
def test_a_target_that_is_not_linear_is_refused_naming_its_type(target, kind):
    model = tiny_gpt()
    with pytest.raises(ValueError, match=kind) as e:
        lora.apply_lora(model, LoRAConfig(target_modules=target + ("q_proj",)))
    assert "nn.Linear" in str(e.value)
    assert lora.lora_layers(model) == [] and all(p.requires_grad for p in model.parameters())


def test_apply_lora_freezes_everything_but_the_adapters():
    model = lora.apply_lora(tiny_gpt(), LoRAConfig(target_modules=("q_proj", "up_proj")))
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == {
        f"blocks.{i}.{m}.adapters.default.lora_{ab}"
        for i in (0, 1)
        for m in ("attn.q_proj", "mlp.up_proj")
        for ab in "AB"
    }


def trainable_names(model):
    return {n for n, p in model.named_parameters() if p.requires_grad}


def test_mark_only_lora_trainable_bias_modes():
    model = lora.apply_lora(tiny_gpt(), LoRAConfig(target_modules=("q_proj",)))
    lora_params = {n for n in trainable_names(model)}
    model.requires_grad_(True)
    lora.mark_only_lora_trainable(model, bias="none")
    assert trainable_names(model) == lora_params
    lora.mark_only_lora_trainable(model, bias="lora_only")
    assert trainable_names(model) == lora_params | {f"blocks.{i}.attn.q_proj.base.bias" for i in (0, 1)}
    lora.mark_only_lora_trainable(model, bias="all")
    all_biases = {n for n, _ in model.named_parameters() if n.endswith(".bias")}
    assert "blocks.0.ln_1.bias" in all_biases and "blocks.1.mlp.down_proj.bias" in all_biases
    assert trainable_names(model) == lora_params | all_biases
    with pytest.raises(ValueError, match="bias"):
        lora.mark_only_lora_trainable(model, bias="some")
    model = lora.apply_lora(tiny_gpt(), LoRAConfig(target_modules=("v_proj",), bias="lora_only"))
    assert {n for n in trainable_names(model) if "adapters" not in n} == {
        "blocks.0.attn.v_proj.base.bias",
        "blocks.1.attn.v_proj.base.bias",
    }


def test_modules_to_save_stay_trainable():
    model = lora.apply_lora(tiny_gpt(tie_weights=False), LoRAConfig(modules_to_save=("lm_head", "ln_f")))
    extra = {n for n in trainable_names(model) if ".lora_" not in n}  # each saved module: the adapter's copy
    assert extra == {
        "lm_head.adapters.default.weight",
        "ln_f.adapters.default.weight",
        "ln_f.adapters.default.bias",
    }
    model = tiny_gpt()
    with pytest.raises(ValueError, match="modules_to_save"):
        lora.apply_lora(model, LoRAConfig(modules_to_save=("classifier",)))
    assert lora.lora_layers(model) == [] and all(p.requires_grad for p in model.parameters())


def test_a_failed_apply_lora_changes_nothing():
    model = models.MLP([64, 32, 4])  # pissa r=8 fits fc1 (32, 64) but not fc2 (4, 32)
    before = param_hashes(model)
    with pytest.raises(ValueError, match="fc2"):
        lora.apply_lora(model, LoRAConfig(r=8, init="pissa", target_modules=("fc1", "fc2")))
    assert lora.lora_layers(model) == [] and param_hashes(model) == before
    assert all(p.requires_grad for p in model.parameters())
    with pytest.raises(ValueError, match="identifier"):
        lora.apply_lora(
            model, LoRAConfig(r=2, init="pissa", target_modules=("fc1",)), adapter_name="my-adapter"
        )
    assert lora.lora_layers(model) == [] and param_hashes(model) == before
    assert all(p.requires_grad for p in model.parameters())


# ============================================================== counting


def test_count_parameters_trainable_is_r_times_in_plus_out():
    r = 3
    targets = ("q_proj", "v_proj", "up_proj", "down_proj")
    n_base = tiny_gpt().num_parameters()
    model = lora.apply_lora(tiny_gpt(), LoRAConfig(r=r, target_modules=targets))
    expected = sum(r * (layer.in_features + layer.out_features) for _, layer in lora.lora_layers(model))
    assert expected == 2 * (r * 32 + r * 32 + r * 80 + r * 80)
    counts = lora.count_parameters(model)
    assert counts == {"total": n_base + expected, "trainable": expected, "frozen": n_base}
    assert lora.count_parameters(tiny_gpt()) == {"total": n_base, "trainable": n_base, "frozen": 0}


def test_optimizer_state_holds_moments_of_the_adapters_only():
    model = lora.apply_lora(tiny_gpt(), LoRAConfig(r=4, target_modules=("q_proj", "up_proj")))
    opt = optim.AdamW(model.parameters(), lr=1e-3)
    ids = token_ids()
    model(ids, ids)[1].backward()
    opt.step()
    trainable = lora.count_parameters(model)["trainable"]
    assert opt.state_bytes() == 2 * 4 * trainable  # m and v, float32
    lora_ids = {id(p) for n, p in model.named_parameters() if ".adapters." in n}
    assert set(opt.state) == lora_ids  # no state at all for a frozen parameter


def test_parameter_report_agrees_with_count_parameters():
    model = lora.apply_lora(tiny_gpt(), LoRAConfig(r=2, target_modules=("q_proj", "down_proj")))
    report = lora.parameter_report(model)
    counts = lora.count_parameters(model)
    assert report.totals["trainable"] == counts["trainable"] and report.totals["frozen"] == counts["frozen"]
    assert sum(r["trainable"] + r["frozen"] for r in report.rows) == counts["total"]
    assert report.totals["adapter_bytes"] == 4 * counts["trainable"]
    rows = {r["module"]: r for r in report.rows}
    q = rows["blocks.0.attn.q_proj"]
    assert q["type"] == "LoRALinear" and q["shape"] == (16, 16)
    assert q["trainable"] == 2 * 32 and q["frozen"] == 16 * 16 + 16 and q["adapter_bytes"] == 4 * 64
    assert rows["blocks.1.mlp.down_proj"]["trainable"] == 2 * (64 + 16)
    assert rows["blocks.0.ln_1"]["trainable"] == 0 and rows["blocks.0.ln_1"]["frozen"] == 32
    assert len(report.rows) == len(rows)  # each module once (the tied lm_head is not counted twice)
    text, md = str(report), report.to_markdown()
    for name in ("blocks.0.attn.q_proj", "blocks.1.mlp.down_proj", "tok_emb", "total"):
        assert name in text and name in md
    assert f"{counts['trainable']:,}" in text
    assert all(line.startswith("|") and line.endswith("|") for line in md.splitlines())


# ============================================================== many adapters


def two_adapters():
    model = lora.apply_lora(tiny_gpt(), LoRAConfig(r=2, alpha=4))
    lora.add_adapter(model, "second", LoRAConfig(r=4, alpha=2, rslora=True))
    fill_adapters(model, seed=1, name="default")
    fill_adapters(model, seed=2, name="second")
    return model


def test_add_adapter_gives_each_adapter_its_own_weights_and_scaling():
    model = lora.apply_lora(tiny_gpt(), LoRAConfig(r=2, alpha=4))
    ids = token_ids()
    before = logits(model, ids)
    lora.add_adapter(model, "second", LoRAConfig(r=4, alpha=2, rslora=True))
    assert lora.adapter_names(model) == ["default", "second"] and lora.active_adapter(model) == "default"
    for _, layer in lora.lora_layers(model):
        a, b = layer.adapters["default"], layer.adapters["second"]
        assert a.lora_A.shape == (2, 16) and b.lora_A.shape == (4, 16) and b.lora_B.shape == (16, 4)
        assert a.scaling == 2.0 and b.scaling == 1.0 and layer.scaling == 2.0
        assert a.lora_A is not b.lora_A
        assert b.lora_A.requires_grad is False and a.lora_A.requires_grad is True
    fill_adapters(model, name="second")
    assert np.array_equal(logits(model, ids), before)  # the inactive one does nothing


def test_set_adapter_switches_outputs_by_the_formula():
    model = two_adapters()
    layer = model.blocks[0].attn.v_proj
    x = np.random.default_rng(0).standard_normal((3, 16)).astype(np.float32)
    W, b = layer.base.weight.numpy(), layer.base.bias.numpy()
    for name in ("second", "default", "second"):
        lora.set_adapter(model, name)
        ad = layer.adapters[name]
        expected = x @ W.T + b + (x @ ad.lora_A.numpy().T @ ad.lora_B.numpy().T) * ad.scaling
        np.testing.assert_allclose(layer(tl.Tensor(x)).numpy(), expected, rtol=1e-5, atol=1e-5)
        assert lora.active_adapter(model) == name and layer.r == ad.r
    ids = token_ids()
    out_second = logits(model, ids)
    lora.set_adapter(model, "default")
    out_default = logits(model, ids)
    assert not np.allclose(out_second, out_default)
    lora.set_adapter(model, "second")
    assert np.array_equal(logits(model, ids), out_second)


def test_only_the_active_adapter_trains_and_switching_never_touches_the_base():
    model = two_adapters()
    base = param_hashes(model)
    for name in ("second", "default", "second", "default"):
        lora.set_adapter(model, name)
    assert param_hashes(model) == base
    lora.set_adapter(model, "second")
    assert all(("adapters.second." in n) == p.requires_grad for n, p in model.named_parameters())
    everything = param_hashes(model, skip_lora=False)
    opt = optim.SGD(model.parameters(), lr=0.1)
    ids = token_ids()
    model(ids, ids)[1].backward()
    opt.step()
    after = param_hashes(model, skip_lora=False)
    changed = {n for n in everything if everything[n] != after[n]}
    assert changed == {n for n in everything if ".adapters.second." in n}


def copy_adapter(src, name, dst):
    """Copy adapter `name` of model src into the (only) adapter of model dst, layer by layer."""
    dst_layers = dict(lora.lora_layers(dst))
    for path, layer in lora.lora_layers(src):
        if name in layer.adapters:
            dst_layers[path].lora_A.data = layer.adapters[name].lora_A.data.copy()
            dst_layers[path].lora_B.data = layer.adapters[name].lora_B.data.copy()


def test_an_adapter_on_other_targets_leaves_the_rest_plain():
    model = lora.apply_lora(tiny_gpt(), LoRAConfig(r=2, target_modules=("q_proj",)))
    fill_adapters(model, name="default")
    lora.add_adapter(model, "kv", LoRAConfig(r=2, target_modules=("k_proj",)))
    fill_adapters(model, seed=5, name="kv")
    assert isinstance(model.blocks[0].attn.k_proj, LoRALinear) and model.blocks[0].attn.k_proj.active is None
    ids = token_ids()
    q_only = lora.apply_lora(tiny_gpt(), LoRAConfig(r=2, target_modules=("q_proj",)))
    copy_adapter(model, "default", q_only)
    assert np.array_equal(logits(model, ids), logits(q_only, ids))  # "kv" inactive: k_proj is plain
    lora.set_adapter(model, "kv")
    assert model.blocks[0].attn.q_proj.active is None and model.blocks[0].attn.k_proj.active == "kv"
    kv_only = lora.apply_lora(tiny_gpt(), LoRAConfig(r=2, target_modules=("k_proj",)))
    copy_adapter(model, "kv", kv_only)
    assert np.array_equal(logits(model, ids), logits(kv_only, ids))  # now q_proj is plain


def test_delete_adapter_reverts_layers_to_plain_linears():
    model = two_adapters()
    originals = {n: layer.base for n, layer in lora.lora_layers(model)}
    lora.set_adapter(model, "second")
    lora.delete_adapter(model, "second")
    assert lora.adapter_names(model) == ["default"]
    assert all(type(layer) is LoRALinear for _, layer in lora.lora_layers(model))
    lora.delete_adapter(model, "default")
    assert lora.lora_layers(model) == [] and lora.adapter_names(model) == []
    for n, base in originals.items():
        assert model.get_submodule(n) is base and type(base) is nn.Linear
    ids = token_ids()
    assert np.array_equal(logits(model, ids), logits(tiny_gpt(), ids))


def test_deleting_a_pissa_adapter_gives_its_part_of_the_weight_back():
    model = lora.apply_lora(tiny_gpt(), LoRAConfig(r=3, init="pissa"))
    assert not np.allclose(
        model.blocks[0].attn.q_proj.base.weight.numpy(), tiny_gpt().blocks[0].attn.q_proj.weight.numpy()
    )
    lora.delete_adapter(model, "default")
    fresh = tiny_gpt().state_dict()
    assert list(model.state_dict()) == list(fresh)
    for n, w in model.state_dict().items():
        np.testing.assert_allclose(w, fresh[n], rtol=0, atol=1e-7)


def test_disable_adapters_gives_exactly_the_base_and_restores_after():
    model, ids = two_adapters(), token_ids()
    adapted, base = logits(model, ids), logits(tiny_gpt(), ids)
    assert not np.allclose(adapted, base)
    with lora.disable_adapters(model) as m:
        assert m is model
        assert np.array_equal(logits(model, ids), base)
    assert np.array_equal(logits(model, ids), adapted)
    with pytest.raises(KeyError, match="boom"), lora.disable_adapters(model):
        assert np.array_equal(logits(model, ids), base)
        raise KeyError("boom")
    assert np.array_equal(logits(model, ids), adapted)
    assert not any(layer.disabled for _, layer in lora.lora_layers(model))


def test_unknown_adapter_names_and_bad_names_are_refused():
    model = two_adapters()
    with pytest.raises(KeyError, match="default, second"):
        lora.set_adapter(model, "third")
    with pytest.raises(KeyError, match="third"):
        lora.delete_adapter(model, "third")
    with pytest.raises(ValueError, match="already exists"):
        lora.add_adapter(model, "second", LoRAConfig())
    with pytest.raises(ValueError, match="identifier"):
        lora.add_adapter(model, "my adapter", LoRAConfig())
    assert lora.adapter_names(model) == ["default", "second"] and lora.active_adapter(model) == "default"


def test_set_delete_add_and_disable_while_merged_are_refused():
    model, ids = two_adapters(), token_ids()
    lora.merge_lora(model)
    w = base_weights(model)
    with pytest.raises(RuntimeError, match="unmerge"):
        lora.set_adapter(model, "second")
    with pytest.raises(RuntimeError, match="unmerge"):
        lora.delete_adapter(model, "default")
    with pytest.raises(RuntimeError, match="unmerge"):
        lora.add_adapter(model, "third", LoRAConfig())
    with pytest.raises(RuntimeError, match="unmerge"), lora.disable_adapters(model):
        pass
    assert all(np.array_equal(w[n], v) for n, v in base_weights(model).items())
    assert lora.adapter_names(model) == ["default", "second"] and lora.active_adapter(model) == "default"
    lora.set_adapter(model, "default")  # the merged one itself: allowed
    lora.unmerge_lora(model)
    lora.set_adapter(model, "second")
    model(ids, ids)[1].backward()


def test_a_failed_add_adapter_changes_nothing():
    model = models.MLP([64, 32, 4])
    lora.apply_lora(model, LoRAConfig(r=2, target_modules=("fc1",)))
    before = param_hashes(model, skip_lora=False)
    with pytest.raises(ValueError, match="pissa"):
        lora.add_adapter(model, "p", LoRAConfig(r=8, init="pissa", target_modules=("fc1", "fc2")))
    assert param_hashes(model, skip_lora=False) == before and lora.adapter_names(model) == ["default"]
    assert type(model.fc2) is nn.Linear


# ============================================================== LoRA and lowrank


@given(m=st.integers(2, 9), n=st.integers(2, 9), seed=st.integers(0, 2**16), data=st.data())
def test_lora_from_delta_is_the_truncated_svd(m, n, seed, data):
    r = data.draw(st.integers(1, min(m, n)))
    delta = np.random.default_rng(seed).standard_normal((m, n))
    B, A = lowrank.lora_from_delta(delta, r)
    assert B.shape == (m, r) and A.shape == (r, n)
    np.testing.assert_allclose(B @ A, lowrank.low_rank_approx(delta, r), atol=1e-12)


def test_an_adapter_delta_has_rank_r_and_lora_from_delta_recovers_it():
    layer, A, B = layer64(12, 10, r=3, alpha=6)
    delta = layer.adapters["default"].delta()
    np.testing.assert_allclose(delta, layer.scaling * B @ A, atol=1e-14)
    assert np.linalg.matrix_rank(delta) == 3
    B2, A2 = lowrank.lora_from_delta(delta, 3)
    np.testing.assert_allclose(B2 @ A2, delta, atol=1e-12)
    np.testing.assert_allclose(lowrank.low_rank_approx(delta, 3), delta, atol=1e-12)
    assert lowrank.energy(delta, 3) == pytest.approx(1.0, abs=1e-12)
    assert lowrank.subspace_similarity(A, A, 3, 3) == pytest.approx(1.0, abs=1e-12)
    assert lowrank.subspace_similarity(A2, A, 3, 3) == pytest.approx(1.0, abs=1e-10)  # same row space
    assert lowrank.subspace_similarity(A, np.random.default_rng(9).standard_normal((3, 12)), 3, 3) < 0.9


# ============================================================== decisions taken after review


def test_deleting_the_active_adapter_hands_over_to_a_remaining_one():
    model = two_adapters()
    lora.set_adapter(model, "second")
    ids = token_ids()
    lora.set_adapter(model, "default")
    expected = logits(model, ids)
    lora.set_adapter(model, "second")
    lora.delete_adapter(model, "second")
    assert lora.active_adapter(model) == "default"  # as PEFT does
    np.testing.assert_array_equal(logits(model, ids), expected)
    lora.delete_adapter(model, "default")
    assert lora.active_adapter(model) is None and not lora.lora_layers(model)


def test_merge_inside_disable_adapters_is_refused():
    model = two_adapters()
    with lora.disable_adapters(model):
        with pytest.raises(RuntimeError, match="inside disable_adapters"):
            lora.merge_lora(model)
    assert not any(layer.merged for _, layer in lora.lora_layers(model))


def test_add_adapter_on_a_plain_model_freezes_the_base_like_apply_lora():
    model = tiny_gpt()
    lora.add_adapter(model, "first", LoRAConfig(r=2, alpha=4))
    assert lora.active_adapter(model) == "first"
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(".adapters.first.lora_" in n for n in trainable)


def test_a_failed_direct_lora_linear_leaves_its_base_trainable():
    base = nn.Linear(4, 3)
    with pytest.raises(ValueError, match="identifiers"):
        LoRALinear(base, r=2, adapter_name="not-valid")
    assert base.weight.requires_grad and base.bias.requires_grad


def test_layer_delta_is_the_active_adapters_scaled_product():
    model = two_adapters()
    layer = lora.lora_layers(model)[0][1]
    for name in ("default", "second"):
        lora.set_adapter(model, name)
        ad = layer.adapters[name]
        np.testing.assert_allclose(
            layer.delta(), ad.scaling * ad.lora_B.numpy() @ ad.lora_A.numpy(), rtol=1e-6
        )
