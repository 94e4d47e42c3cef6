"""Adapter files: PEFT's config keys and values, older tinylora files still load, refusals that name the key."""

import json
from pathlib import Path

import numpy as np
import pytest
from lora_helpers import fill
from safetensors.numpy import load_file, save_file

import tinylora as tl
from tinylora import lora, models
from tinylora.lora import AdapterFileError, LoRAConfig

OLD = Path(__file__).parent / "fixtures" / "adapter-82c9350"  # written by tests/fixtures/make_old_adapters.py
TINY = dict(vocab_size=17, block_size=8, n_layer=2, n_head=2, n_embd=16)
P = "base_model.model."


def tiny_gpt(seed=0, **kw):
    tl.manual_seed(seed)
    return models.GPT(models.GPTConfig(**dict(TINY, **kw)))


def old_base():
    model = models.GPT(models.GPTConfig(**TINY, tie_weights=False))
    model.load(OLD / "base.safetensors")
    return model.eval()


def ids():
    return np.random.default_rng(0).integers(0, TINY["vocab_size"], size=(2, 8))


# ============================================================== files of tinylora at 82c9350


@pytest.mark.parametrize("name", ["plain", "rslora-head-bias"])
def test_files_written_by_older_tinylora_still_load(name):
    old = json.loads((OLD / name / "adapter_config.json").read_text())
    assert "fingerprint" in old and "init" in old  # the old layout: no PEFT prefix, tinylora keys
    assert not any(k.startswith(P) for k in load_file(str(OLD / name / "adapter_model.safetensors")))
    model = lora.load_adapter(old_base(), OLD / name)
    want = np.load(OLD / name / "logits.npy")
    np.testing.assert_array_equal(model(np.load(OLD / "ids.npy")).numpy(), want)


def test_an_old_file_still_refuses_another_base():
    tl.manual_seed(123)
    other = models.GPT(models.GPTConfig(**TINY, tie_weights=False))  # other random weights
    with pytest.raises(AdapterFileError, match="different base model"):
        lora.load_adapter(other, OLD / "plain")
    assert lora.lora_layers(other) == []


def test_an_old_file_saved_again_is_in_peft_layout(tmp_path):
    model = lora.load_adapter(old_base(), OLD / "rslora-head-bias")
    lora.save_adapter(model, tmp_path / "new")
    meta = json.loads((tmp_path / "new" / "adapter_config.json").read_text())
    assert meta["use_rslora"] is True and meta["init_lora_weights"] == "gaussian" and meta["r"] == 3
    assert meta["modules_to_save"] == ["lm_head"] and meta["bias"] == "lora_only"
    keys = set(load_file(str(tmp_path / "new" / "adapter_model.safetensors")))
    assert all(k.startswith(P) for k in keys) and f"{P}lm_head.weight" in keys
    again = lora.load_adapter(old_base(), tmp_path / "new")
    np.testing.assert_array_equal(again(ids()).numpy(), model(ids()).numpy())


# ============================================================== the config PEFT reads


def test_config_holds_peft_keys_and_values_only(tmp_path):
    model = fill(lora.apply_lora(tiny_gpt(), LoRAConfig(r=2, alpha=4, dropout=0.1, rslora=True)))
    lora.save_adapter(model, tmp_path)
    meta = json.loads((tmp_path / "adapter_config.json").read_text())
    assert meta == {
        "peft_type": "LORA",
        "r": 2,
        "lora_alpha": 4,
        "lora_dropout": 0.1,
        "target_modules": ["q_proj", "v_proj"],
        "exclude_modules": None,
        "bias": "none",
        "use_rslora": True,
        "use_dora": False,
        "init_lora_weights": True,
        "modules_to_save": None,
        "rank_pattern": {},
        "alpha_pattern": {},
        "fan_in_fan_out": False,
        "task_type": None,
        "base_model_name_or_path": None,
    }


def test_two_ranks_in_one_adapter_are_written_as_a_rank_pattern_and_reload(tmp_path):
    model = tiny_gpt()
    lora.apply_lora(model, LoRAConfig(r=2, alpha=4, target_modules=("q_proj",)))
    lora.apply_lora(model, LoRAConfig(r=4, alpha=3, target_modules=("blocks.1.attn.v_proj",)))
    fill(model)
    lora.save_adapter(model, tmp_path)
    meta = json.loads((tmp_path / "adapter_config.json").read_text())
    assert (
        meta["r"] == 2
        and meta["lora_alpha"] == 4
        and meta["target_modules"] == ["q_proj", "blocks.1.attn.v_proj"]
    )
    assert meta["rank_pattern"] == {"blocks.1.attn.v_proj": 4}
    assert meta["alpha_pattern"] == {"blocks.1.attn.v_proj": 3}
    fresh = lora.load_adapter(tiny_gpt(), tmp_path)
    assert fresh.blocks[1].attn.v_proj.r == 4 and fresh.blocks[0].attn.q_proj.r == 2
    np.testing.assert_array_equal(fresh(ids()).numpy(), model(ids()).numpy())


def test_rank_and_alpha_patterns_follow_peft_matching():
    cfg = LoRAConfig(
        r=8, alpha=16, rank_pattern={"q_proj": 2, r"blocks\.1\.attn\.v_proj": 4}, alpha_pattern={"v_proj": 3}
    )
    assert cfg.settings_for("blocks.0.attn.q_proj").r == 2
    assert cfg.settings_for("blocks.1.attn.v_proj").r == 4 and cfg.settings_for("blocks.0.attn.v_proj").r == 8
    assert (
        cfg.settings_for("blocks.0.attn.v_proj").alpha == 3
        and cfg.settings_for("blocks.0.attn.q_proj").alpha == 16
    )
    assert cfg.settings_for("blocks.0.attn.xq_proj").r == 8  # a pattern matches whole dotted parts
    model = lora.apply_lora(tiny_gpt(), cfg)
    assert model.blocks[0].attn.q_proj.lora_A.shape == (2, 16) and model.blocks[1].attn.v_proj.r == 4
    with pytest.raises(ValueError, match=r"rank_pattern\['q_proj'\] must be an integer >= 1"):
        LoRAConfig(rank_pattern={"q_proj": 0})


def test_a_layer_needs_no_targets_to_be_configured():
    layer = lora.LoRALinear(tl.nn.Linear(4, 3), r=2, alpha=6, rslora=True)
    assert layer.adapters["default"].config == lora.AdapterSettings(r=2, alpha=6, rslora=True)
    assert layer.scaling == 6 / 2**0.5
    with pytest.raises(ValueError, match="r must be an integer"):
        lora.LoRALinear(tl.nn.Linear(4, 3), r=0)


def peft_file(tmp_path, **changes):
    """A directory as PEFT's save_pretrained writes it for the tiny GPT (keys, nulls, bookkeeping)."""
    model = fill(lora.apply_lora(tiny_gpt(), LoRAConfig(r=2, alpha=4)))
    lora.save_adapter(model, tmp_path)
    tensors = load_file(str(tmp_path / "adapter_model.safetensors"))
    save_file(tensors, str(tmp_path / "adapter_model.safetensors"), metadata={"format": "pt"})
    meta = json.loads((tmp_path / "adapter_config.json").read_text())
    meta.update(
        {
            "target_modules": ["v_proj", "q_proj"],  # PEFT writes a set: any order
            "peft_version": "0.21.2",
            "auto_mapping": None,
            "revision": None,
            "inference_mode": True,
            "layers_to_transform": None,
            "layers_pattern": None,
            "loftq_config": {},
            "megatron_config": None,
            "megatron_core": "megatron.core",
            "lora_bias": False,
            "use_qalora": False,
            "qalora_group_size": 16,
            "trainable_token_indices": None,
        }
    )
    meta.update(changes)
    (tmp_path / "adapter_config.json").write_text(json.dumps(meta))
    return model


def test_a_file_as_peft_writes_it_loads(tmp_path):
    model = peft_file(tmp_path, lora_dropout=None, rank_pattern=None, modules_to_save=None)
    fresh = lora.load_adapter(tiny_gpt(), tmp_path)
    np.testing.assert_array_equal(fresh(ids()).numpy(), model(ids()).numpy())


@pytest.mark.parametrize(
    "key, value",
    [
        ("layers_to_transform", [0]),
        ("lora_bias", True),
        ("use_qalora", True),
        ("fan_in_fan_out", True),
        ("init_lora_weights", "olora"),
        ("peft_type", "IA3"),
        ("some_future_option", 3),
    ],
)
def test_settings_tinylora_cannot_honour_are_refused_naming_the_key(tmp_path, key, value):
    peft_file(tmp_path, **{key: value})
    model = tiny_gpt()
    with pytest.raises(AdapterFileError, match=key):
        lora.load_adapter(model, tmp_path)
    assert lora.lora_layers(model) == []


def test_targets_and_tensors_must_agree(tmp_path):
    peft_file(tmp_path, target_modules=["q_proj", "v_proj", "k_proj"])
    with pytest.raises(AdapterFileError, match="k_proj: targeted by target_modules"):
        lora.load_adapter(tiny_gpt(), tmp_path)
    peft_file(tmp_path, target_modules=["q_proj"])
    with pytest.raises(AdapterFileError, match="does not target it"):
        lora.load_adapter(tiny_gpt(), tmp_path)


def test_a_pissa_adapter_is_written_in_peft_rank_2r_form(tmp_path):
    model = lora.apply_lora(tiny_gpt(), LoRAConfig(r=3, alpha=6, init="pissa", target_modules=("q_proj",)))
    for _, layer in lora.lora_layers(model):
        layer.lora_B.data = layer.lora_B.data * 1.5  # "trained"
    lora.save_adapter(model, tmp_path)
    meta = json.loads((tmp_path / "adapter_config.json").read_text())
    assert meta["r"] == 6 and meta["lora_alpha"] == 12 and meta["init_lora_weights"] is True
    plain = tiny_gpt()  # the ORIGINAL weights (not PiSSA's residual), as PEFT applies it
    t = load_file(str(tmp_path / "adapter_model.safetensors"))
    a, b = t[f"{P}blocks.0.attn.q_proj.lora_A.weight"], t[f"{P}blocks.0.attn.q_proj.lora_B.weight"]
    layer = model.blocks[0].attn.q_proj
    w_now = layer.base.weight.numpy() + layer.delta()  # residual + this adapter = what the model uses
    np.testing.assert_allclose(plain.blocks[0].attn.q_proj.weight.numpy() + 2.0 * b @ a, w_now, atol=1e-5)
    fresh = lora.load_adapter(plain, tmp_path)
    np.testing.assert_allclose(fresh(ids()).numpy(), model(ids()).numpy(), atol=1e-5)


# ============================================================== modules_to_save per adapter


def with_head(name, seed):
    """A tiny GPT with adapter `name` whose own copy of lm_head is 'trained'."""
    model = tiny_gpt(tie_weights=False)
    lora.apply_lora(model, LoRAConfig(r=2, alpha=4, modules_to_save=("lm_head",)), adapter_name=name)
    fill(model, name, seed)
    head = model.lm_head.adapters[name].weight
    head.data = head.data + np.float32(0.1 * seed)
    return model


def test_each_adapter_keeps_its_own_trained_head(tmp_path):
    a = with_head("a", seed=1)
    lora.save_adapter(a, tmp_path / "a")
    b = with_head("b", seed=2)
    lora.save_adapter(b, tmp_path / "b")
    model = lora.load_adapter(tiny_gpt(tie_weights=False), tmp_path / "a")
    out_a = model(ids()).numpy()
    lora.load_adapter(model, tmp_path / "b")  # must not overwrite a's head
    np.testing.assert_array_equal(model(ids()).numpy(), b(ids()).numpy())
    lora.set_adapter(model, "a")
    np.testing.assert_array_equal(model(ids()).numpy(), out_a)
    np.testing.assert_array_equal(out_a, a(ids()).numpy())
    assert {n for n, p in model.named_parameters() if p.requires_grad} >= {"lm_head.adapters.a.weight"}
    assert (
        not model.lm_head.adapters["b"].weight.requires_grad and not model.lm_head.base.weight.requires_grad
    )


def test_disabling_adapters_restores_the_original_head():
    model = with_head("a", seed=1)
    plain = tiny_gpt(tie_weights=False)
    assert not np.allclose(model(ids()).numpy(), plain(ids()).numpy())
    with lora.disable_adapters(model):
        np.testing.assert_array_equal(model(ids()).numpy(), plain(ids()).numpy())
    lora.delete_adapter(model, "a")
    assert type(model.lm_head).__name__ == "Linear"  # the wrapper goes with the last adapter
    np.testing.assert_array_equal(model(ids()).numpy(), plain(ids()).numpy())
