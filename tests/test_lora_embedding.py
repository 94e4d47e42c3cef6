"""LoRA on nn.Embedding: PEFT's layout, forward and gradient against NumPy and finite differences,
merge, files, tied embeddings, and PEFT's outputs on the same table."""

import numpy as np
import pytest

import tinylora as tl
from tinylora import lora, models, nn
from tinylora.lora import LoRAConfig

TINY = dict(vocab_size=17, block_size=8, n_layer=2, n_head=2, n_embd=16)


def emb_layer(seed=0, num=7, dim=3, r=2, alpha=5.0):
    rng = np.random.default_rng(seed)
    base = nn.Embedding(num, dim, dtype=np.float64)
    base.weight.data = rng.normal(size=(num, dim))
    layer = lora.LoRAEmbedding(base, config=LoRAConfig(r=r, alpha=alpha, target_modules=("x",)))
    ad = layer.adapters["default"]
    ad.lora_embedding_A.data = rng.normal(size=(r, num))  # trained: no longer zero
    return layer


def test_layout_and_init_are_peft_s():
    base = nn.Embedding(11, 4)
    layer = lora.LoRAEmbedding(base, config=LoRAConfig(r=3, target_modules=("x",)))
    ad = layer.adapters["default"]
    assert ad.lora_embedding_A.shape == (3, 11) and ad.lora_embedding_B.shape == (4, 3)
    assert not ad.lora_embedding_A.data.any() and ad.lora_embedding_B.data.std() > 0.3  # A = 0, B ~ N(0, 1)
    ids = np.array([[0, 3, 10]])
    np.testing.assert_array_equal(layer(ids).numpy(), base(ids).numpy())
    assert not base.weight.requires_grad


def test_forward_matches_the_numpy_formula():
    layer = emb_layer()
    ad = layer.adapters["default"]
    ids = np.array([[1, 6, 1], [0, 2, 5]])
    W, A, Bm, s = layer.base.weight.data, ad.lora_embedding_A.data, ad.lora_embedding_B.data, ad.scaling
    want = (W + s * (Bm @ A).T)[ids]  # the table changed by s (B A).T, (num, dim)
    np.testing.assert_allclose(layer(ids).numpy(), want, rtol=1e-13, atol=1e-13)
    np.testing.assert_allclose(layer.delta(), s * (Bm @ A).T, rtol=1e-13)


def test_gradients_match_finite_differences_and_the_numpy_formula():
    layer = emb_layer()
    ad = layer.adapters["default"]
    ids = np.array([[1, 6, 1], [0, 2, 5]])
    G = np.random.default_rng(1).normal(size=(2, 3, 3))

    def fn(A, Bm):
        h = tl.functional.embedding(ids, A.T)
        y = layer.base(ids) + tl.functional.linear(h, Bm) * ad.scaling
        return (y * tl.Tensor(G)).sum()

    A = tl.Tensor(ad.lora_embedding_A.data.copy(), requires_grad=True)
    Bm = tl.Tensor(ad.lora_embedding_B.data.copy(), requires_grad=True)
    assert tl.gradcheck(fn, [A, Bm])
    (layer(ids) * tl.Tensor(G)).sum().backward()
    # dL/dA[:, k] = s B^T (sum of G rows of id k); dL/dB = s sum_t G_t (A.T[id_t])^T
    s, Ad, Bd = ad.scaling, ad.lora_embedding_A.data, ad.lora_embedding_B.data
    Gsum = np.zeros((7, 3))
    np.add.at(Gsum, ids.reshape(-1), G.reshape(-1, 3))
    np.testing.assert_allclose(ad.lora_embedding_A.grad, s * Bd.T @ Gsum.T, rtol=1e-12, atol=1e-13)
    np.testing.assert_allclose(ad.lora_embedding_B.grad, s * Gsum.T @ Ad.T, rtol=1e-12, atol=1e-13)
    assert layer.base.weight.grad is None


def test_merge_and_unmerge_are_exact():
    layer = emb_layer().eval()
    ids = np.array([[1, 6, 1], [0, 2, 5]])
    w0 = layer.base.weight.data.copy()
    want = layer(ids).numpy()
    layer.merge()
    np.testing.assert_allclose(layer(ids).numpy(), want, rtol=1e-13, atol=1e-13)
    layer.unmerge()
    np.testing.assert_allclose(layer.base.weight.data, w0, rtol=0, atol=1e-14)


def tiny_gpt(seed=0, **kw):
    tl.manual_seed(seed)
    return models.GPT(models.GPTConfig(**dict(TINY, **kw)))


def test_a_gpt_with_an_adapted_tok_emb_counts_and_reports_it():
    model = lora.apply_lora(
        tiny_gpt(tie_weights=False), LoRAConfig(r=4, target_modules=("tok_emb", "q_proj"))
    )
    layer = model.tok_emb
    assert isinstance(layer, lora.LoRAEmbedding) and ("tok_emb", layer) in lora.lora_layers(model)
    n = lora.count_parameters(model)
    assert n["trainable"] == 4 * (17 + 16) + 2 * 4 * (16 + 16)
    row = next(r for r in lora.parameter_report(model).rows if r["module"] == "tok_emb")
    assert row["type"] == "LoRAEmbedding" and row["trainable"] == 4 * (17 + 16) and row["frozen"] == 17 * 16


def test_embedding_adapter_survives_a_save_load_round_trip(tmp_path):
    model = lora.apply_lora(tiny_gpt(), LoRAConfig(r=2, target_modules=("tok_emb", "v_proj")))
    rng = np.random.default_rng(0)
    for _, layer in lora.lora_layers(model):
        for p in layer.adapters["default"].parameters():
            p.data = rng.normal(size=p.shape).astype(np.float32)
    ids = rng.integers(0, 17, size=(2, 8))
    want = model(ids).numpy()
    lora.save_adapter(model, tmp_path / "e")
    from tinylora.io import load_weights

    keys = set(load_weights(tmp_path / "e" / "adapter_model.safetensors"))
    assert {k for k in keys if "tok_emb" in k} == {
        k for k in keys if k.endswith(("tok_emb.lora_embedding_A", "tok_emb.lora_embedding_B"))
    }
    assert len([k for k in keys if "tok_emb" in k]) == 2
    fresh = lora.load_adapter(tiny_gpt(), tmp_path / "e")
    np.testing.assert_array_equal(fresh(ids).numpy(), want)


def test_tied_embedding_unmerged_adapter_changes_only_the_input_side():
    """lm_head shares tok_emb's weight; an unmerged embedding adapter leaves the output head as it was."""
    model = lora.apply_lora(tiny_gpt(), LoRAConfig(r=2, target_modules=("tok_emb",)))
    assert model.lm_head.weight is model.tok_emb.base.weight
    model.tok_emb.adapters["default"].lora_embedding_A.data[:] = 1.0
    np.testing.assert_array_equal(model.lm_head.weight.data, tiny_gpt().lm_head.weight.data)


def test_dora_and_pissa_on_an_embedding_are_refused_with_a_reason():
    for cfg in (
        LoRAConfig(dora=True, target_modules=("tok_emb",)),
        LoRAConfig(init="pissa", target_modules=("tok_emb",)),
    ):
        model = tiny_gpt(tie_weights=False)  # (a tied table is refused for PiSSA by the tied-weight rule)
        with pytest.raises(ValueError, match="nn.Embedding") as e:
            lora.apply_lora(model, cfg)
        assert "exclude_modules" in str(e.value)
        assert lora.lora_layers(model) == []


def test_outputs_match_peft():
    torch = pytest.importorskip("torch", reason="torch (the PEFT oracle) is not installed")
    peft = pytest.importorskip("peft", reason="peft (the oracle) is not installed")
    torch.manual_seed(0)
    tm = torch.nn.Sequential(torch.nn.Embedding(7, 3)).double()
    pm = peft.get_peft_model(tm, peft.LoraConfig(r=2, lora_alpha=5, target_modules=["0"]))
    pl = pm.base_model.model[0]
    rng = np.random.default_rng(0)
    with torch.no_grad():
        pl.lora_embedding_A["default"].copy_(torch.tensor(rng.normal(size=(2, 7))))
    ours = nn.Sequential(nn.Embedding(7, 3, dtype=np.float64))
    ours[0].weight.data = pl.base_layer.weight.detach().numpy().copy()
    lora.apply_lora(ours, LoRAConfig(r=2, alpha=5, target_modules=("0",)))
    ad = ours[0].adapters["default"]
    ad.lora_embedding_A.data = pl.lora_embedding_A["default"].detach().numpy().copy()
    ad.lora_embedding_B.data = pl.lora_embedding_B["default"].detach().numpy().copy()
    ids = np.array([[1, 6, 1], [0, 2, 5]])
    want = pm(torch.tensor(ids)).detach().numpy()
    np.testing.assert_allclose(ours(ids).numpy(), want, rtol=1e-12, atol=1e-12)


def test_disable_and_merge_and_unload_work_on_an_embedding_adapter():
    model = lora.apply_lora(tiny_gpt(tie_weights=False), LoRAConfig(r=2, target_modules=("tok_emb",))).eval()
    model.tok_emb.adapters["default"].lora_embedding_A.data[:] = 0.5
    ids = np.random.default_rng(0).integers(0, 17, size=(2, 8))
    plain = tiny_gpt(tie_weights=False).eval()(ids).numpy()
    adapted = model(ids).numpy()
    assert not np.allclose(adapted, plain)
    with lora.disable_adapters(model):
        np.testing.assert_array_equal(model(ids).numpy(), plain)
    lora.merge_and_unload(model)
    assert isinstance(model.tok_emb, nn.Embedding)
    np.testing.assert_allclose(model(ids).numpy(), adapted, rtol=1e-5, atol=1e-6)
