"""Which modules apply_lora adapts, what trains, and how parameters are counted."""

import pytest
from lora_helpers import (
    adapted_names,
    param_hashes,
    tiny_gpt,
    token_ids,
    trainable_names,
)

from tinylora import lora, models, nn, optim
from tinylora.lora import LoRAConfig

# ============================================================== choosing targets


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
