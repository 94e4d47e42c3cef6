"""VeRA: one shared frozen pair, two trained vectors per layer; formula, gradients, counts,
merge, files (vectors only, regenerated pair), and PEFT's outputs with the same pair."""

import json

import numpy as np
import pytest

import tinylora as tl
from tinylora import lora, models, nn
from tinylora.io import load_weights
from tinylora.lora import VeRAConfig

TINY = dict(vocab_size=17, block_size=8, n_layer=2, n_head=2, n_embd=16)


def tiny_gpt(seed=0, dtype=None):
    tl.manual_seed(seed)
    m = models.GPT(models.GPTConfig(**TINY))
    return m.astype(dtype) if dtype else m


def trained(model, seed=0):
    """Give every VeRA vector random values (b starts at zero, which would hide mistakes)."""
    rng = np.random.default_rng(seed)
    for _, layer in lora.lora_layers(model):
        for p in layer.adapters["default"].parameters():
            p.data = rng.normal(size=p.shape).astype(p.dtype)
    return model


def test_one_shared_pair_and_two_trained_vectors_per_layer():
    cfg = VeRAConfig(r=4, target_modules=("q_proj", "up_proj"), projection_prng_key=3, d_initial=0.2)
    model = lora.apply_vera(tiny_gpt(), cfg)
    layers = lora.lora_layers(model)
    assert len(layers) == 4 and all(isinstance(m, lora.VeRALinear) for _, m in layers)
    ads = [m.adapters["default"] for _, m in layers]
    assert all(ad.vera_A is ads[0].vera_A and ad.vera_B is ads[0].vera_B for ad in ads)  # one pair
    assert ads[0].vera_A.shape == (4, 16) and ads[0].vera_B.shape == (64, 4)  # largest in, largest out
    for ad in ads:
        np.testing.assert_array_equal(ad.vera_lambda_d.data, np.full(4, 0.2, np.float32))
        assert not ad.vera_lambda_b.data.any()
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == {
        f"{n}.adapters.default.{v}" for n, _ in layers for v in ("vera_lambda_b", "vera_lambda_d")
    }
    n = lora.count_parameters(model)
    assert n["trainable"] == 2 * ((16 + 4) + (64 + 4))  # q_proj: out 16, up_proj: out 64
    row = next(r for r in lora.parameter_report(model).rows if r["module"] == "blocks.0.mlp.up_proj")
    assert row["type"] == "VeRALinear" and row["trainable"] == 64 + 4 and row["adapter_bytes"] == 4 * 68


def test_the_pair_is_regenerated_from_the_key_and_kaiming_uniform():
    a1, b1 = lora.vera.projections(VeRAConfig(r=8, projection_prng_key=5), 64, 32)
    a2, b2 = lora.vera.projections(VeRAConfig(r=8, projection_prng_key=5), 64, 32)
    a3, _ = lora.vera.projections(VeRAConfig(r=8, projection_prng_key=6), 64, 32)
    np.testing.assert_array_equal(a1, a2) and np.testing.assert_array_equal(b1, b2)
    assert not np.array_equal(a1, a3)
    assert np.abs(a1).max() <= np.sqrt(6 / 32) and np.abs(a1).max() > 0.9 * np.sqrt(6 / 32)
    assert np.abs(b1).max() <= np.sqrt(6 / 8) and np.abs(b1).max() > 0.9 * np.sqrt(6 / 8)


def test_forward_and_gradients_match_numpy_and_finite_differences():
    model = trained(lora.apply_vera(tiny_gpt(dtype=np.float64), VeRAConfig(r=3, target_modules=("up_proj",))))
    layer = model.blocks[0].mlp.up_proj
    ad = layer.adapters["default"]
    W, bias = layer.base.weight.data, layer.base.bias.data
    A, Bm = ad.vera_A[:, :16], ad.vera_B[:64]
    d, b = ad.vera_lambda_d.data, ad.vera_lambda_b.data
    x = np.random.default_rng(1).normal(size=(2, 5, 16))
    G = np.random.default_rng(2).normal(size=(2, 5, 64))
    want = x @ W.T + bias + b * (((x @ A.T) * d) @ Bm.T)
    xt = tl.Tensor(x, requires_grad=True)
    y = layer(xt)
    np.testing.assert_allclose(y.numpy(), want, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(layer.delta(), np.diag(b) @ Bm @ np.diag(d) @ A, rtol=1e-12, atol=1e-13)
    (y * tl.Tensor(G)).sum().backward()
    x2, G2 = x.reshape(-1, 16), G.reshape(-1, 64)
    u = (x2 @ A.T) * d  # (N, r)
    np.testing.assert_allclose(ad.vera_lambda_b.grad, (G2 * (u @ Bm.T)).sum(0), rtol=1e-12)
    np.testing.assert_allclose(ad.vera_lambda_d.grad, (((G2 * b) @ Bm) * (x2 @ A.T)).sum(0), rtol=1e-12)

    def fn(xx, dd, bb):
        h = tl.functional.linear(xx, A) * dd
        return ((layer.base(xx) + tl.functional.linear(h, Bm) * bb) * tl.Tensor(G)).sum()

    leaves = [tl.Tensor(a.copy(), requires_grad=True) for a in (x, d, b)]
    assert tl.gradcheck(fn, leaves)


def test_merge_and_unmerge_are_exact():
    model = trained(
        lora.apply_vera(tiny_gpt(dtype=np.float64), VeRAConfig(r=3, target_modules=("q_proj", "v_proj")))
    )
    model.eval()
    ids = np.random.default_rng(0).integers(0, 17, size=(2, 8))
    w0 = {n: layer.base.weight.data.copy() for n, layer in lora.lora_layers(model)}
    want = model(ids).numpy()
    lora.merge_lora(model)
    np.testing.assert_allclose(model(ids).numpy(), want, rtol=1e-12, atol=1e-12)
    lora.unmerge_lora(model)
    for n, layer in lora.lora_layers(model):
        np.testing.assert_allclose(layer.base.weight.data, w0[n], rtol=0, atol=1e-14)


def test_files_hold_only_the_vectors_and_reload_exactly(tmp_path):
    cfg = VeRAConfig(r=4, target_modules=("q_proj", "v_proj"), projection_prng_key=7)
    model = trained(lora.apply_vera(tiny_gpt(), cfg))
    ids = np.random.default_rng(0).integers(0, 17, size=(2, 8))
    want = model(ids).numpy()
    lora.save_adapter(model, tmp_path / "v")
    keys = load_weights(tmp_path / "v" / "adapter_model.safetensors")
    assert set(keys) == {
        f"base_model.model.blocks.{i}.attn.{m}.{v}"
        for i in (0, 1)
        for m in ("q_proj", "v_proj")
        for v in ("vera_lambda_b", "vera_lambda_d")
    }
    meta = json.loads((tmp_path / "v" / "adapter_config.json").read_text())
    assert (
        meta["peft_type"] == "VERA" and meta["projection_prng_key"] == 7 and meta["save_projection"] is False
    )
    fresh = lora.load_adapter(tiny_gpt(), tmp_path / "v")
    np.testing.assert_array_equal(fresh(ids).numpy(), want)


def test_a_vera_file_on_another_base_is_refused_and_changes_nothing(tmp_path):
    lora.save_adapter(
        trained(lora.apply_vera(tiny_gpt(), VeRAConfig(r=2, target_modules=("q_proj",)))), tmp_path / "v"
    )
    other = tiny_gpt(seed=1)
    with pytest.raises(lora.AdapterFileError, match="different base"):
        lora.load_adapter(other, tmp_path / "v")
    assert lora.lora_layers(other) == []


def test_bad_vera_settings_are_refused():
    with pytest.raises(ValueError, match="r must be a positive integer"):
        VeRAConfig(r=0)
    with pytest.raises(TypeError, match="VeRAConfig"):
        lora.apply_vera(tiny_gpt(), lora.LoRAConfig())
    with pytest.raises(ValueError, match="nn.Linear layers only"):
        lora.apply_vera(tiny_gpt(), VeRAConfig(r=2, target_modules=("tok_emb",)))
    model = lora.apply_vera(tiny_gpt(), VeRAConfig(r=2))
    with pytest.raises(ValueError, match="already has adapters"):
        lora.apply_vera(model, VeRAConfig(r=2))


def test_outputs_match_peft_given_the_same_pair():
    torch = pytest.importorskip("torch", reason="torch (the PEFT oracle) is not installed")
    peft = pytest.importorskip("peft", reason="peft (the oracle) is not installed")
    torch.manual_seed(0)
    tm = torch.nn.Sequential(torch.nn.Linear(5, 4), torch.nn.Linear(4, 6)).double()
    pm = peft.get_peft_model(tm, peft.VeraConfig(r=3, target_modules=["0", "1"]))
    ours = nn.Sequential(nn.Linear(5, 4, dtype=np.float64), nn.Linear(4, 6, dtype=np.float64))
    for i in (0, 1):
        ours[i].weight.data = tm[i].base_layer.weight.detach().numpy().copy()
        ours[i].bias.data = tm[i].base_layer.bias.detach().numpy().copy()
    lora.apply_vera(ours, VeRAConfig(r=3, target_modules=("0", "1")))
    rng = np.random.default_rng(0)
    pa, pb = pm.base_model.vera_A["default"].double(), pm.base_model.vera_B["default"].double()
    assert tuple(pa.shape) == ours[0].adapters["default"].vera_A.shape  # the same largest shapes
    for i in (0, 1):
        ad, pl = ours[i].adapters["default"], tm[i]
        ad.vera_A, ad.vera_B = pa.numpy().copy(), pb.numpy().copy()  # PEFT's torch-generated pair
        ad.vera_lambda_d.data = rng.normal(size=3)
        ad.vera_lambda_b.data = rng.normal(size=ad.vera_lambda_b.shape)
        with torch.no_grad():
            pl.vera_lambda_d["default"].copy_(torch.tensor(ad.vera_lambda_d.data))
            pl.vera_lambda_b["default"].copy_(torch.tensor(ad.vera_lambda_b.data))
    x = rng.normal(size=(3, 5))
    want = pm(torch.tensor(x)).detach().numpy()
    np.testing.assert_allclose(ours(x).numpy(), want, rtol=1e-10, atol=1e-12)


def test_the_shared_model_functions_work_on_vera_layers():
    model = trained(lora.apply_vera(tiny_gpt(dtype=np.float64), VeRAConfig(r=3, target_modules=("v_proj",))))
    model.eval()
    ids = np.random.default_rng(0).integers(0, 17, size=(2, 8))
    plain = tiny_gpt(dtype=np.float64).eval()(ids).numpy()
    adapted = model(ids).numpy()
    assert not np.allclose(adapted, plain)
    with lora.disable_adapters(model):
        np.testing.assert_allclose(model(ids).numpy(), plain, rtol=1e-12, atol=1e-12)
    lora.merge_and_unload(model)
    assert lora.lora_layers(model) == [] and isinstance(model.blocks[0].attn.v_proj, nn.Linear)
    np.testing.assert_allclose(model(ids).numpy(), adapted, rtol=1e-12, atol=1e-12)
