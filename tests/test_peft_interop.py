"""Oracle tests against the real thing: PEFT loads tinylora's adapter files and tinylora loads PEFT's.

For SmolLM2 (LlamaForCausalLM from the same GGUF file, Q4_1 dequantised in both) and MiniLM
(BertModel from the same safetensors): no missing or unexpected keys, the same outputs within
float32 round-off, with a non-zero lora_B so an ignored adapter fails. Needs the [interop] extra.
"""

import copy
import json

import numpy as np
import pytest

import tinylora as tl
from tinylora import lora, models
from tinylora.models import MiniLM, SmolLM2, pretrained

torch = pytest.importorskip(
    "torch", reason="the [interop] extra (torch, transformers, peft) is not installed"
)
transformers = pytest.importorskip("transformers", reason="the [interop] extra is not installed")
peft = pytest.importorskip("peft", reason="the [interop] extra is not installed")

N_LAYERS = 2  # the first layers of each model: enough to cross every kind of module, and fast


def needs(name):
    if not pretrained.is_available(name):
        pytest.skip(f"the {name} weights are not installed ({pretrained.INSTALL_MODELS})")


def randomise(model, scale=0.05, seed=0):
    """Non-zero A and B (and trained copies) in every adapter, as if trained."""
    rng = np.random.default_rng(seed)
    for p in model.parameters():
        if p.requires_grad:
            p.data = p.data + (rng.standard_normal(p.shape) * scale).astype(p.dtype)
    return model


def peft_loads(hf_model, directory):
    """PeftModel.from_pretrained, and the LoRA keys it reported missing or unexpected."""
    pm = peft.PeftModel.from_pretrained(hf_model, str(directory)).eval()
    result = peft.set_peft_model_state_dict(pm, peft.utils.load_peft_weights(str(directory)))
    missing = [k for k in result.missing_keys if "lora_" in k or "modules_to_save" in k]
    return pm, missing, list(result.unexpected_keys)


# ============================================================== SmolLM2 as LlamaForCausalLM


@pytest.fixture(scope="module")
def smollm2_pair():
    needs("smollm2")
    path = pretrained.model_file("smollm2")
    hf = transformers.LlamaForCausalLM.from_pretrained(
        str(path.parent), gguf_file=path.name, num_hidden_layers=N_LAYERS, torch_dtype=torch.float32
    ).eval()
    return SmolLM2.from_pretrained(n_layers=N_LAYERS), hf


IDS = np.array([[1, 504, 3458, 282, 4649, 314, 2]])


def test_smollm2_same_base_logits(smollm2_pair):
    ours, hf = smollm2_pair
    with torch.no_grad():
        theirs = hf(torch.tensor(IDS)).logits.numpy()
    np.testing.assert_allclose(ours(IDS).numpy(), theirs, atol=2e-3, rtol=1e-4)


def test_peft_loads_a_smollm2_adapter_saved_here(smollm2_pair, tmp_path):
    ours, hf = smollm2_pair
    model = copy.deepcopy(ours)
    targets = ("q_proj", "k_proj", "v_proj", "o_proj", "up_proj")
    config = lora.LoRAConfig(
        r=4, alpha=8, target_modules=targets, rslora=True, dora=True
    )  # DoRA: m (out,) too
    lora.apply_lora(model, config)
    randomise(model)
    lora.save_adapter(model, tmp_path)
    meta = json.loads((tmp_path / "adapter_config.json").read_text())
    assert sorted(meta["target_modules"]) == sorted(targets)
    assert meta["base_model_name_or_path"] == "HuggingFaceTB/SmolLM2-135M-Instruct"
    pm, missing, unexpected = peft_loads(copy.deepcopy(hf), tmp_path)
    assert missing == [] and unexpected == []
    with torch.no_grad():
        theirs = pm(torch.tensor(IDS)).logits.numpy()
    mine = model(IDS).numpy()
    assert np.abs(mine - ours(IDS).numpy()).max() > 0.5  # the adapter matters: ignoring it would fail
    np.testing.assert_allclose(mine, theirs, atol=2e-3, rtol=1e-4)


def test_a_peft_smollm2_adapter_loads_here(smollm2_pair, tmp_path):
    ours, hf = smollm2_pair
    config = peft.LoraConfig(
        r=4,
        lora_alpha=16,
        target_modules=["k_proj", "q_proj", "gate_proj"],
        rank_pattern={"model.layers.1.self_attn.q_proj": 2},
        init_lora_weights=False,  # B is random too: a non-zero adapter from the start
    )
    torch.manual_seed(0)
    pm = peft.get_peft_model(copy.deepcopy(hf), config).eval()
    pm.save_pretrained(str(tmp_path))
    model = lora.load_adapter(copy.deepcopy(ours), tmp_path)
    assert model.layers[1].self_attn.q_proj.r == 2 and model.layers[0].self_attn.q_proj.r == 4
    with torch.no_grad():
        theirs = pm(torch.tensor(IDS)).logits.numpy()
    mine = model(IDS).numpy()
    assert np.abs(mine - ours(IDS).numpy()).max() > 0.5
    np.testing.assert_allclose(mine, theirs, atol=2e-3, rtol=1e-4)


# ============================================================== MiniLM as BertModel


@pytest.fixture(scope="module")
def minilm_pair():
    needs("minilm")
    folder = pretrained.model_file("minilm").parent
    hf = transformers.BertModel.from_pretrained(
        str(folder), add_pooling_layer=False, num_hidden_layers=N_LAYERS, torch_dtype=torch.float32
    ).eval()
    return MiniLM.from_pretrained(n_layers=N_LAYERS), hf


def bert_inputs(model):
    ids, mask = model.encode(["A man is eating food.", "LoRA adapters travel."])
    return ids, mask


def hf_hidden(hf, ids, mask):
    with torch.no_grad():
        out = hf(
            input_ids=torch.tensor(np.asarray(ids)), attention_mask=torch.tensor(np.asarray(mask)).long()
        )
    return out.last_hidden_state.numpy()


def test_peft_loads_a_minilm_adapter_saved_here(minilm_pair, tmp_path):
    ours, hf = minilm_pair
    model = copy.deepcopy(ours)
    config = lora.LoRAConfig(r=4, alpha=4, target_modules=("q_proj", "v_proj", "o_proj"), bias="lora_only")
    randomise(lora.apply_lora(model, config))
    lora.save_adapter(model, tmp_path)
    meta = json.loads((tmp_path / "adapter_config.json").read_text())
    assert {"query", "value"} <= set(meta["target_modules"])
    assert "encoder.layer.0.attention.output.dense" in meta["target_modules"]
    pm, missing, unexpected = peft_loads(copy.deepcopy(hf), tmp_path)
    assert missing == [] and unexpected == []
    ids, mask = bert_inputs(ours)
    mine = model(ids, mask).numpy()
    assert np.abs(mine - ours(ids, mask).numpy()).max() > 0.1
    np.testing.assert_allclose(mine, hf_hidden(pm, ids, mask), atol=1e-4, rtol=1e-4)


def test_a_peft_minilm_adapter_with_a_saved_module_loads_here(minilm_pair, tmp_path):
    ours, hf = minilm_pair
    config = peft.LoraConfig(
        r=2,
        lora_alpha=6,
        target_modules=["key", "intermediate.dense"],
        modules_to_save=["encoder.layer.1.output.dense"],
        use_rslora=True,
        init_lora_weights=False,
    )
    torch.manual_seed(1)
    pm = peft.get_peft_model(copy.deepcopy(hf), config).eval()
    with torch.no_grad():  # "train" the saved module's copy
        pm.base_model.model.encoder.layer[1].output.dense.modules_to_save["default"].weight.add_(0.05)
    pm.save_pretrained(str(tmp_path))
    model = lora.load_adapter(copy.deepcopy(ours), tmp_path)
    ids, mask = bert_inputs(ours)
    mine = model(ids, mask).numpy()
    assert np.abs(mine - ours(ids, mask).numpy()).max() > 0.1
    np.testing.assert_allclose(mine, hf_hidden(pm, ids, mask), atol=1e-4, rtol=1e-4)
    with lora.disable_adapters(model):  # the original module comes back too
        np.testing.assert_array_equal(model(ids, mask).numpy(), ours(ids, mask).numpy())


def test_tiny_gpt_files_use_the_gpt_own_names(tmp_path):
    tl.manual_seed(0)
    model = tl.models.GPT(tl.models.GPTConfig(vocab_size=11, block_size=8, n_layer=1, n_head=2, n_embd=8))
    lora.save_adapter(randomise(lora.apply_lora(model, lora.LoRAConfig(r=2))), tmp_path)
    keys = set(peft.utils.load_peft_weights(str(tmp_path)))
    assert keys == {
        f"base_model.model.blocks.0.attn.{m}.lora_{ab}.weight" for m in ("q_proj", "v_proj") for ab in "AB"
    }


# ============================================================== DoRA and embeddings, on a tiny random BERT


def tiny_bert_pair(seed=0):
    """A random 2-layer BertModel and tinylora's MiniLM holding the same weights."""
    torch.manual_seed(seed)
    cfg = transformers.BertConfig(
        vocab_size=40, hidden_size=16, num_hidden_layers=2, num_attention_heads=2, intermediate_size=32
    )
    hf = transformers.BertModel(cfg, add_pooling_layer=False).eval()
    weights = {k: v.detach().numpy().copy() for k, v in hf.state_dict().items()}
    ours = MiniLM.from_weights(
        models.BertConfig.from_hf(cfg.to_dict()), models.minilm.rename_checkpoint(weights)
    )
    return ours, hf


TINY_IDS = np.array([[2, 5, 7, 11, 13, 3], [2, 17, 19, 23, 3, 0]])
TINY_MASK = TINY_IDS > 0


def test_dora_and_embedding_adapters_travel_both_ways(tmp_path):
    ours, hf = tiny_bert_pair()
    config = lora.LoRAConfig(r=2, alpha=4, target_modules=("q_proj", "v_proj"), dora=True)
    model = randomise(lora.apply_lora(copy.deepcopy(ours), config), scale=1.0)
    lora.save_adapter(model, tmp_path / "dora")
    pm, missing, unexpected = peft_loads(copy.deepcopy(hf), tmp_path / "dora")
    assert missing == [] and unexpected == [] and pm.peft_config["default"].use_dora
    mine = model(TINY_IDS, TINY_MASK).numpy()
    assert np.abs(mine - ours(TINY_IDS, TINY_MASK).numpy()).max() > 0.05
    np.testing.assert_allclose(mine, hf_hidden(pm, TINY_IDS, TINY_MASK), atol=1e-5, rtol=1e-5)

    config = peft.LoraConfig(
        r=3, lora_alpha=6, target_modules=["word_embeddings", "query"], init_lora_weights=False
    )
    pm = peft.get_peft_model(copy.deepcopy(hf), config).eval()
    pm.save_pretrained(str(tmp_path / "emb"))  # PEFT also writes its copy of the embedding table
    model = lora.load_adapter(copy.deepcopy(ours), tmp_path / "emb")
    assert type(model.embeddings.word_embeddings).__name__ == "LoRAEmbedding"
    mine = model(TINY_IDS, TINY_MASK).numpy()
    assert np.abs(mine - ours(TINY_IDS, TINY_MASK).numpy()).max() > 0.05
    np.testing.assert_allclose(mine, hf_hidden(pm, TINY_IDS, TINY_MASK), atol=1e-5, rtol=1e-5)
