"""The LoRA layer's maths, initialisation, dropout, and its delta as a low-rank matrix."""

import math

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from lora_helpers import (
    fill_adapters,
    formula,
    layer64,
    logits,
    tiny_gpt,
    token_ids,
)

import tinylora as tl
from tinylora import lora, lowrank, nn
from tinylora.lora import LoRAConfig, LoRALinear

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
