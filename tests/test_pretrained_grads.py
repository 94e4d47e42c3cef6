"""LoRA gradients inside the pretrained-model architectures, against finite differences in float64.

Tiny random configurations: Llama (grouped-query attention, RoPE, SwiGLU, tied lm_head),
MiniLM (BERT, padding mask, exact GELU) and the 4-bit QuantizedLinear path (QLoRA's base).
"""

import numpy as np
import pytest

import tinylora as tl
from tinylora import lora, models, nn

RNG = np.random.default_rng(0)


def _float64(model):
    for p in model.parameters():
        p.data = p.data.astype(np.float64)
    return model


def _adapt(model, targets, r=2):
    """LoRA on `targets` with random (non-zero) B, so every A and B gets a gradient."""
    lora.apply_lora(model, lora.LoRAConfig(r=r, alpha=2 * r, target_modules=targets))
    rng = np.random.default_rng(1)
    params = []
    for _, layer in lora.lora_layers(model):
        for p in (layer.lora_A, layer.lora_B):
            p.data = rng.standard_normal(p.shape) * 0.5
            params.append(p)
    return params


def _check(model, params, run):
    """gradcheck of a fixed random projection of model outputs w.r.t. every adapter parameter."""
    with tl.no_grad():
        out_shape = run().shape
    weights = RNG.standard_normal(out_shape)
    fn = lambda *ps: (run() * weights).sum()
    assert tl.gradcheck(fn, params)
    frozen = [p for p in model.parameters() if not p.requires_grad]
    assert frozen and all(p.grad is None for p in frozen)  # the base never gets a weight gradient


def test_lora_gradients_inside_llama_with_gqa_and_rope():
    tl.manual_seed(0)
    cfg = models.LlamaConfig(
        vocab_size=13, dim=8, n_layers=1, n_heads=4, n_kv_heads=2, hidden_dim=12, context_length=16
    )
    model = _float64(models.Llama(cfg))
    assert model.layers[0].self_attn.k_proj.out_features == 4  # 2 key/value heads serve 4 query heads
    params = _adapt(model, ("q_proj", "k_proj", "v_proj", "o_proj", "down_proj"))
    ids = np.array([[1, 5, 2, 7, 3], [4, 4, 0, 9, 12]])
    _check(model, params, lambda: model(ids))


def test_lora_gradients_inside_minilm_with_a_padding_mask():
    tl.manual_seed(0)
    cfg = models.minilm.BertConfig(
        vocab_size=17, hidden_size=8, n_layers=1, n_heads=2, intermediate_size=12, max_position_embeddings=8
    )
    model = _float64(models.MiniLM(cfg))
    params = _adapt(model, ("q_proj", "v_proj", "up_proj"))
    ids = np.array([[2, 5, 7, 3], [4, 9, 0, 0]])
    mask = np.array([[1, 1, 1, 1], [1, 1, 0, 0]], bool)
    _check(model, params, lambda: model(ids, mask))


def test_lora_and_input_gradients_through_a_4_bit_quantized_linear():
    quants = pytest.importorskip("gguf.quants")
    import gguf

    w = RNG.standard_normal((4, 32)).astype(np.float32)
    blocks = quants.quantize(w, gguf.GGMLQuantizationType.Q4_0)
    model = nn.Sequential(models.QuantizedLinear(blocks, "Q4_0", (4, 32)))
    x = tl.Tensor(RNG.standard_normal((3, 32)), requires_grad=True)
    up = np.arange(1.0, 13.0).reshape(3, 4)
    assert tl.gradcheck(lambda x: (model(x) * up).sum(), [x])  # its own backward (dequantises again)
    params = _adapt(model, ("0",))  # LoRA runs the dequantised weight through lora_linear
    assert tl.gradcheck(lambda x, *ps: (model(x) * up).sum(), [x, *params])
    layer = model[0]
    with tl.no_grad():  # and the value: the dequantised weight plus s B A
        expected = x.numpy() @ (layer.base.dequantized().astype(np.float64) + layer.delta()).T
        np.testing.assert_allclose(model(x).numpy(), expected, rtol=1e-12, atol=1e-12)
