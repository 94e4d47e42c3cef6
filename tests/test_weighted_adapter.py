"""add_weighted_adapter: cat is exact, svd is the best rank-r approximation, linear is what its formula says."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import tinylora as tl
from tinylora import lora, lowrank, models
from tinylora.lora import LoRAConfig


def two_adapters(seed=0, r1=2, r2=3, alpha1=4, alpha2=5, rslora=False):
    """A float64 MLP with two trained adapters on both layers ('a' everywhere, 'b' on fc1 only for r2 != r1)."""
    tl.manual_seed(seed)
    model = models.MLP([6, 5, 4]).astype(np.float64)
    lora.apply_lora(model, LoRAConfig(r=r1, alpha=alpha1, target_modules=("fc1", "fc2")), adapter_name="a")
    lora.add_adapter(model, "b", LoRAConfig(r=r2, alpha=alpha2, rslora=rslora, target_modules=("fc1", "fc2")))
    rng = np.random.default_rng(seed)
    for _, layer in lora.lora_layers(model):
        for _, ad in layer.adapters.items():
            for p in (ad.lora_A, ad.lora_B):
                p.data = rng.standard_normal(p.shape)
    return model


def delta(layer, name):
    return layer.adapters[name].delta()


weights = st.lists(st.floats(-2, 2, allow_nan=False).filter(lambda w: abs(w) > 1e-3), min_size=2, max_size=2)


@settings(max_examples=20, deadline=None)
@given(w=weights, seed=st.integers(0, 1000), rslora=st.booleans())
def test_cat_is_exact(w, seed, rslora):
    model = two_adapters(seed, rslora=rslora)
    lora.add_weighted_adapter(model, ["a", "b"], w, "mix", combination_type="cat")
    for _, layer in lora.lora_layers(model):
        assert layer.adapters["mix"].r == 5 and layer.adapters["mix"].scaling == 1.0
        want = w[0] * delta(layer, "a") + w[1] * delta(layer, "b")
        np.testing.assert_allclose(delta(layer, "mix"), want, rtol=1e-12, atol=1e-12)


@settings(max_examples=20, deadline=None)
@given(w=weights, seed=st.integers(0, 1000), r=st.integers(1, 4))
def test_svd_is_the_best_rank_r_approximation(w, seed, r):
    model = two_adapters(seed)
    lora.add_weighted_adapter(model, ["a", "b"], w, "mix", combination_type="svd", svd_rank=r)
    for _, layer in lora.lora_layers(model):
        target = w[0] * delta(layer, "a") + w[1] * delta(layer, "b")
        got = delta(layer, "mix")
        np.testing.assert_allclose(got, lowrank.low_rank_approx(target, r), atol=1e-10)
        s = np.linalg.svd(target, compute_uv=False)
        assert np.linalg.norm(target - got) == pytest.approx(np.sqrt((s[r:] ** 2).sum()), abs=1e-10)


@settings(max_examples=20, deadline=None)
@given(w=weights, seed=st.integers(0, 1000))
def test_linear_mixes_the_factors_as_stated(w, seed):
    model = two_adapters(seed, r1=3, r2=3)
    lora.add_weighted_adapter(model, ["a", "b"], w, "mix", combination_type="linear")
    for _, layer in lora.lora_layers(model):
        a, b = layer.adapters["a"], layer.adapters["b"]
        k = [w[0] * a.scaling, w[1] * b.scaling]
        B = np.sqrt(abs(k[0])) * a.lora_B.data + np.sqrt(abs(k[1])) * b.lora_B.data
        A = (
            np.sign(k[0]) * np.sqrt(abs(k[0])) * a.lora_A.data
            + np.sign(k[1]) * np.sqrt(abs(k[1])) * b.lora_A.data
        )
        np.testing.assert_allclose(delta(layer, "mix"), B @ A, rtol=1e-12, atol=1e-12)
        weighted_sum = w[0] * delta(layer, "a") + w[1] * delta(layer, "b")
        assert not np.allclose(delta(layer, "mix"), weighted_sum)  # the cross terms: not the weighted sum


@pytest.mark.parametrize("w", [0.7, -1.3])
def test_linear_of_one_adapter_scales_it(w):
    model = two_adapters()
    lora.add_weighted_adapter(model, ["b"], [w], "half", combination_type="svd")  # one adapter: linear
    for _, layer in lora.lora_layers(model):
        np.testing.assert_allclose(delta(layer, "half"), w * delta(layer, "b"), rtol=1e-12, atol=1e-12)


def test_the_new_adapter_runs_as_its_delta_says_and_is_not_activated():
    model = two_adapters()
    x = np.random.default_rng(0).standard_normal((3, 6))
    lora.add_weighted_adapter(model, ["a", "b"], [1.0, 1.0], "sum", combination_type="cat")
    assert lora.active_adapter(model) == "a" and not any(
        p.requires_grad for n, p in model.named_parameters() if ".sum." in n
    )
    lora.set_adapter(model, "a")
    ya = model(x).numpy()
    lora.set_adapter(model, "b")
    yb = model(x).numpy()
    with lora.disable_adapters(model):
        y0 = model(x).numpy()
    lora.set_adapter(model, "sum")
    assert lora.active_adapter(model) == "sum"
    # one layer's deltas add; through the ReLU between layers the outputs need not, so check fc1 alone
    h = model.fc1(x).numpy()
    lora.set_adapter(model, "a")
    ha = model.fc1(x).numpy()
    lora.set_adapter(model, "b")
    hb = model.fc1(x).numpy()
    with lora.disable_adapters(model):
        h0 = model.fc1(x).numpy()
    np.testing.assert_allclose(h - h0, (ha - h0) + (hb - h0), atol=1e-12)
    assert not np.allclose(ya, y0) and not np.allclose(yb, y0)


def test_refusals_name_what_is_wrong_and_change_nothing():
    model = two_adapters(r1=2, r2=3)
    before = lora.adapter_names(model)
    with pytest.raises(ValueError, match="one rank"):
        lora.add_weighted_adapter(model, ["a", "b"], [1, 1], "m", combination_type="linear")
    with pytest.raises(ValueError, match="one weight per adapter"):
        lora.add_weighted_adapter(model, ["a", "b"], [1], "m", combination_type="cat")
    with pytest.raises(KeyError, match="zz"):
        lora.add_weighted_adapter(model, ["a", "zz"], [1, 1], "m")
    with pytest.raises(ValueError, match="combination_type"):
        lora.add_weighted_adapter(model, ["a", "b"], [1, 1], "m", combination_type="ties")
    with pytest.raises(ValueError, match="already exists"):
        lora.add_weighted_adapter(model, ["a", "b"], [1, 1], "b")
    lora.merge_lora(model)
    with pytest.raises(RuntimeError, match="unmerge"):
        lora.add_weighted_adapter(model, ["a", "b"], [1, 1], "m")
    assert lora.adapter_names(model) == before


def test_matches_peft_add_weighted_adapter():
    torch = pytest.importorskip("torch", reason="the [interop] extra (torch, peft) is not installed")
    peft = pytest.importorskip("peft", reason="the [interop] extra (torch, peft) is not installed")
    model = two_adapters(seed=3, r1=2, r2=2, alpha1=4, alpha2=3)
    net = torch.nn.Sequential()
    net.add_module("fc1", torch.nn.Linear(6, 5).double())
    net.add_module("fc2", torch.nn.Linear(5, 4).double())
    cfg = dict(r=2, target_modules=["fc1", "fc2"], init_lora_weights=False)
    pm = peft.get_peft_model(net, peft.LoraConfig(lora_alpha=4, **cfg), adapter_name="a")
    pm.add_adapter("b", peft.LoraConfig(lora_alpha=3, **cfg))
    for path, layer in lora.lora_layers(model):
        theirs = pm.base_model.model.get_submodule(path)
        for name in ("a", "b"):
            ad = layer.adapters[name]
            theirs.lora_A[name].weight.data = torch.from_numpy(ad.lora_A.data.copy())
            theirs.lora_B[name].weight.data = torch.from_numpy(ad.lora_B.data.copy())
    before = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)  # PEFT builds its mixing weights with torch.tensor(list)
    try:
        for kind in ("cat", "linear", "svd"):
            pm.add_weighted_adapter(["a", "b"], [0.8, -0.5], kind, combination_type=kind)
    finally:
        torch.set_default_dtype(before)
    for kind in ("cat", "linear", "svd"):
        lora.add_weighted_adapter(model, ["a", "b"], [0.8, -0.5], kind, combination_type=kind)
        for path, layer in lora.lora_layers(model):
            want = pm.base_model.model.get_submodule(path).get_delta_weight(kind).detach().numpy()
            np.testing.assert_allclose(delta(layer, kind), want, atol=1e-10)
