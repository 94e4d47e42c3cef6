"""DoRA: forward and both gradients in float64 against NumPy formulas and finite differences,
merge/unmerge, counts, files, and PEFT's outputs and update on the same tiny layer."""

import numpy as np
import pytest

import tinylora as tl
from tinylora import lora, models, nn, optim
from tinylora.gradcheck import GradcheckError
from tinylora.lora import LoRAConfig

TINY = dict(vocab_size=17, block_size=8, n_layer=2, n_head=2, n_embd=16)


def dora_layer(seed=0, n_in=5, n_out=4, r=2, alpha=3.0, dtype=np.float64, bias=True):
    """A DoRA layer with random (non-zero) A, B and a perturbed magnitude."""
    rng = np.random.default_rng(seed)
    base = nn.Linear(n_in, n_out, bias=bias, dtype=dtype)
    base.weight.data = rng.normal(size=(n_out, n_in)).astype(dtype)
    if bias:
        base.bias.data = rng.normal(size=n_out).astype(dtype)
    layer = lora.LoRALinear(base, config=LoRAConfig(r=r, alpha=alpha, dora=True, target_modules=("x",)))
    ad = layer.adapters["default"]
    ad.lora_B.data = rng.normal(size=(n_out, r)).astype(dtype)
    ad.lora_magnitude_vector.data = ad.lora_magnitude_vector.data * rng.uniform(0.5, 1.5, n_out)
    return layer


def numpy_dora(x, W, b, A, Bm, m, s):
    """The DoRA formula written out in NumPy: m * (V x) / ||V||_row + b, V = W + s B A."""
    V = W + s * Bm @ A
    out = (x @ V.T) * (m / np.sqrt((V**2).sum(axis=1)))
    return out + b if b is not None else out


def test_magnitude_starts_at_the_row_norms_of_w_and_leaves_the_output_unchanged():
    base = nn.Linear(6, 3, dtype=np.float64)
    w = base.weight.data.copy()
    x = np.random.default_rng(0).normal(size=(4, 6))
    before = base(x).numpy()
    layer = lora.LoRALinear(base, config=LoRAConfig(r=2, dora=True, target_modules=("x",)))
    m = layer.adapters["default"].lora_magnitude_vector
    assert m.shape == (3,) and m.requires_grad
    np.testing.assert_allclose(m.numpy(), np.linalg.norm(w, axis=1), rtol=1e-14)
    np.testing.assert_allclose(layer(x).numpy(), before, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("exact", [False, True])
def test_forward_matches_the_numpy_formula(exact):
    layer = dora_layer()
    layer.adapters["default"].dora_exact = exact
    ad = layer.adapters["default"]
    x = np.random.default_rng(1).normal(size=(2, 3, 5))
    want = numpy_dora(
        x,
        layer.base.weight.data,
        layer.base.bias.data,
        ad.lora_A.data,
        ad.lora_B.data,
        ad.lora_magnitude_vector.data,
        ad.scaling,
    )
    np.testing.assert_allclose(layer(x).numpy(), want, rtol=1e-12, atol=1e-12)


def _loss_fn(layer, upstream):
    def fn(x, A, Bm, m):
        ad = layer.adapters["default"]
        b = layer.base
        y = lora.dora_linear(x, b.weight, b.bias, A, Bm, m, ad.scaling, exact=ad.dora_exact)
        return (y * upstream).sum()

    return fn


def _inputs(layer, seed=2):
    ad = layer.adapters["default"]
    x = tl.Tensor(np.random.default_rng(seed).normal(size=(3, 5)), requires_grad=True)
    return [x] + [
        tl.Tensor(p.data.copy(), requires_grad=True) for p in (ad.lora_A, ad.lora_B, ad.lora_magnitude_vector)
    ]


def test_exact_gradient_passes_gradcheck():
    layer = dora_layer()
    layer.adapters["default"].dora_exact = True
    up = tl.Tensor(np.random.default_rng(3).normal(size=(3, 4)))
    assert tl.gradcheck(_loss_fn(layer, up), _inputs(layer))


def test_detached_gradient_fails_gradcheck_as_it_should():
    """PEFT's gradient treats ||W + sBA|| as a constant: it is not the gradient of the forward."""
    layer = dora_layer()
    up = tl.Tensor(np.random.default_rng(3).normal(size=(3, 4)))
    with pytest.raises(GradcheckError):
        tl.gradcheck(_loss_fn(layer, up), _inputs(layer))


def test_detached_gradient_matches_its_numpy_formula():
    """With c = ||V||_row held constant and f = m / c: dL/dB = s (G f)^T (x A^T), dL/dA = s B^T (G f)^T x,
    dL/dm = sum over rows of G * (V x) / c, dL/dx = (G f) V."""
    layer = dora_layer()
    ad, base = layer.adapters["default"], layer.base
    x = np.random.default_rng(2).normal(size=(3, 5))
    G = np.random.default_rng(3).normal(size=(3, 4))
    xt = tl.Tensor(x, requires_grad=True)
    (layer(xt) * tl.Tensor(G)).sum().backward()
    W, A, Bm, m, s = (
        base.weight.data,
        ad.lora_A.data,
        ad.lora_B.data,
        ad.lora_magnitude_vector.data,
        ad.scaling,
    )
    V = W + s * Bm @ A
    c = np.sqrt((V**2).sum(axis=1))
    Gf = G * (m / c)
    np.testing.assert_allclose(ad.lora_B.grad, s * Gf.T @ (x @ A.T), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(ad.lora_A.grad, s * Bm.T @ Gf.T @ x, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(ad.lora_magnitude_vector.grad, (G * (x @ V.T) / c).sum(axis=0), rtol=1e-12)
    np.testing.assert_allclose(xt.grad, Gf @ V, rtol=1e-12, atol=1e-12)
    assert base.weight.grad is None and not base.weight.requires_grad


def test_exact_and_detached_gradients_differ_only_through_the_norm():
    layer = dora_layer()
    grads = {}
    for exact in (False, True):
        layer.zero_grad()
        layer.adapters["default"].dora_exact = exact
        x = np.random.default_rng(2).normal(size=(3, 5))
        (layer(x) * tl.Tensor(np.random.default_rng(3).normal(size=(3, 4)))).sum().backward()
        grads[exact] = {n: p.grad.copy() for n, p in layer.named_parameters() if p.requires_grad}
    assert not np.allclose(grads[False]["adapters.default.lora_A"], grads[True]["adapters.default.lora_A"])
    # the magnitude enters y linearly and not through the norm: its gradient is the same in both
    np.testing.assert_allclose(
        grads[False]["adapters.default.lora_magnitude_vector"],
        grads[True]["adapters.default.lora_magnitude_vector"],
        rtol=1e-12,
    )


def test_merge_and_unmerge_are_exact():
    layer = dora_layer().eval()
    x = np.random.default_rng(4).normal(size=(3, 5))
    w0 = layer.base.weight.data.copy()
    want = layer(x).numpy()
    delta = layer.delta()
    layer.merge()
    assert layer.merged == "default"
    np.testing.assert_allclose(layer(x).numpy(), want, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(layer.base.weight.data - w0, delta, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(layer.delta(), delta, rtol=1e-12, atol=1e-12)
    layer.unmerge()
    np.testing.assert_allclose(layer.base.weight.data, w0, rtol=0, atol=1e-14)
    np.testing.assert_allclose(layer(x).numpy(), want, rtol=1e-12, atol=1e-12)


def test_dora_adds_one_magnitude_per_output_row_to_the_counts():
    cfg = dict(r=4, target_modules=("q_proj", "v_proj"))
    tl.manual_seed(0)
    plain = lora.apply_lora(models.GPT(models.GPTConfig(**TINY)), LoRAConfig(**cfg))
    tl.manual_seed(0)
    dora = lora.apply_lora(models.GPT(models.GPTConfig(**TINY)), LoRAConfig(dora=True, **cfg))
    n_layers = 2 * TINY["n_layer"]
    c, d = lora.count_parameters(plain), lora.count_parameters(dora)
    assert d["trainable"] - c["trainable"] == n_layers * TINY["n_embd"]
    assert d["frozen"] == c["frozen"]
    rep = lora.parameter_report(dora)
    row = next(r for r in rep.rows if r["module"] == "blocks.0.attn.q_proj")
    assert row["trainable"] == 4 * (16 + 16) + 16 and row["adapter_bytes"] == row["trainable"] * 4


def test_dora_adapter_survives_a_save_load_round_trip(tmp_path):
    tl.manual_seed(0)
    model = lora.apply_lora(models.GPT(models.GPTConfig(**TINY)), LoRAConfig(r=2, dora=True))
    rng = np.random.default_rng(0)
    for _, layer in lora.lora_layers(model):
        ad = layer.adapters["default"]
        ad.lora_B.data = rng.normal(size=ad.lora_B.shape).astype(np.float32)
        ad.lora_magnitude_vector.data = ad.lora_magnitude_vector.data * 1.5
    ids = rng.integers(0, 17, size=(2, 8))
    want = model(ids).numpy()
    lora.save_adapter(model, tmp_path / "a")
    from tinylora.io import load_weights

    keys = load_weights(tmp_path / "a" / "adapter_model.safetensors")
    assert any(k.endswith("q_proj.lora_magnitude_vector") for k in keys)
    tl.manual_seed(0)
    fresh = lora.load_adapter(models.GPT(models.GPTConfig(**TINY)), tmp_path / "a")
    assert lora.lora_layers(fresh)[0][1].adapters["default"].dora
    np.testing.assert_array_equal(fresh(ids).numpy(), want)


def test_dora_config_is_checked_and_saved_as_peft_use_dora():
    with pytest.raises(ValueError, match="dora must be True or False"):
        LoRAConfig(dora="yes")
    d = LoRAConfig(dora=True).to_dict()
    assert d["use_dora"] is True and LoRAConfig.from_dict(d).dora is True


def test_outputs_and_one_update_match_peft():
    torch = pytest.importorskip("torch", reason="torch (the PEFT oracle) is not installed")
    peft = pytest.importorskip("peft", reason="peft (the oracle) is not installed")
    torch.manual_seed(0)
    tm = torch.nn.Sequential(torch.nn.Linear(5, 4)).double()
    pm = peft.get_peft_model(tm, peft.LoraConfig(r=2, lora_alpha=3, target_modules=["0"], use_dora=True))
    rng = np.random.default_rng(0)
    B0 = rng.normal(size=(4, 2))
    pl = pm.base_model.model[0]
    with torch.no_grad():
        pl.lora_B["default"].weight.copy_(torch.tensor(B0))
    ours = nn.Sequential(nn.Linear(5, 4, dtype=np.float64))
    ours[0].weight.data = pl.base_layer.weight.detach().numpy().copy()
    ours[0].bias.data = pl.base_layer.bias.detach().numpy().copy()
    lora.apply_lora(ours, LoRAConfig(r=2, alpha=3, dora=True, target_modules=("0",)))
    ad = ours[0].adapters["default"]
    ad.lora_A.data = pl.lora_A["default"].weight.detach().numpy().copy()
    ad.lora_B.data = B0.copy()
    np.testing.assert_allclose(
        ad.lora_magnitude_vector.data, pl.lora_magnitude_vector["default"].weight.detach().numpy(), rtol=1e-12
    )
    x = rng.normal(size=(6, 5))
    target = rng.normal(size=(6, 4))
    y_t = pm(torch.tensor(x))
    np.testing.assert_allclose(ours(x).numpy(), y_t.detach().numpy(), rtol=1e-10, atol=1e-12)
    ((y_t - torch.tensor(target)) ** 2).mean().backward()
    torch.optim.SGD([p for p in pm.parameters() if p.requires_grad], lr=0.1).step()
    y = ours(x)
    ((y - tl.Tensor(target)) ** 2).mean().backward()
    optim.SGD(ours.parameters(), lr=0.1).step()
    np.testing.assert_allclose(ad.lora_A.data, pl.lora_A["default"].weight.detach().numpy(), rtol=1e-10)
    np.testing.assert_allclose(ad.lora_B.data, pl.lora_B["default"].weight.detach().numpy(), rtol=1e-10)
    np.testing.assert_allclose(
        ad.lora_magnitude_vector.data, pl.lora_magnitude_vector["default"].weight.detach().numpy(), rtol=1e-10
    )
    np.testing.assert_allclose(ours(x).numpy(), pm(torch.tensor(x)).detach().numpy(), rtol=1e-10, atol=1e-12)


def test_only_the_active_adapter_s_magnitude_trains():
    tl.manual_seed(0)
    model = lora.apply_lora(models.GPT(models.GPTConfig(**TINY)), LoRAConfig(r=2, dora=True))
    lora.add_adapter(model, "other", LoRAConfig(r=2, dora=True))
    trainable = lambda: {n.split(".adapters.")[1] for n, p in model.named_parameters() if p.requires_grad}
    assert trainable() == {"default.lora_A", "default.lora_B", "default.lora_magnitude_vector"}
    lora.set_adapter(model, "other")
    assert trainable() == {"other.lora_A", "other.lora_B", "other.lora_magnitude_vector"}
