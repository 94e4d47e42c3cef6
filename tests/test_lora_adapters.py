"""Many adapters on one base: add, set, delete, disable, and the guards around them."""

import numpy as np
import pytest
from lora_helpers import (
    base_weights,
    copy_adapter,
    fill_adapters,
    logits,
    param_hashes,
    tiny_gpt,
    token_ids,
    two_adapters,
)

import tinylora as tl
from tinylora import lora, models, nn, optim
from tinylora.lora import LoRAConfig, LoRALinear

# ============================================================== many adapters


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
