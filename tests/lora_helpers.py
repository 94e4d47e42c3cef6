"""Models and adapters shared by the LoRA test files (tests/test_lora_*.py)."""

import hashlib

import numpy as np

import tinylora as tl
from tinylora import lora, models, nn
from tinylora.lora import LoRAConfig, LoRALinear

TINY = dict(vocab_size=17, block_size=8, n_layer=2, n_head=2, n_embd=16)


def tiny_gpt(seed=0, dtype=None, **kw):
    """A tiny GPT built from seed `seed` (the same seed gives bit-identical weights)."""
    tl.manual_seed(seed)
    model = models.GPT(models.GPTConfig(**dict(TINY, **kw)))
    return model.astype(dtype) if dtype is not None else model


def token_ids(seed=0, batch=2, t=8):
    return np.random.default_rng(seed).integers(0, TINY["vocab_size"], size=(batch, t))


def logits(model, ids):
    return model(ids).numpy().copy()


def fill_adapters(model, seed=1, scale=0.3, name=None):
    """Give every adapter (or only adapter `name`) random A and B, as if it had been trained."""
    rng = np.random.default_rng(seed)
    for _, layer in lora.lora_layers(model):
        for n, ad in layer.adapters.items():
            if name is None or n == name:
                for p in (ad.lora_A, ad.lora_B):
                    p.data = (rng.standard_normal(p.shape) * scale).astype(p.dtype)


def param_hashes(model, skip_lora=True):
    """sha256 of every parameter's bytes, by name (adapters left out unless skip_lora=False)."""
    return {
        n: hashlib.sha256(np.ascontiguousarray(p.numpy()).tobytes()).hexdigest()
        for n, p in model.named_parameters()
        if not (skip_lora and ".adapters." in n)
    }


def layer64(n_in, n_out, r, alpha, rslora=False, bias=True, dropout=0.0, init="kaiming", seed=0):
    """A float64 LoRALinear with random (non-zero) A and B set by hand, and those arrays."""
    tl.manual_seed(seed)
    base = nn.Linear(n_in, n_out, bias=bias, dtype=np.float64)
    layer = LoRALinear(base, r=r, alpha=alpha, dropout=dropout, rslora=rslora, init=init)
    rng = np.random.default_rng(seed + 100)
    A, B = rng.standard_normal((r, n_in)), rng.standard_normal((n_out, r))
    layer.lora_A.data, layer.lora_B.data = A.copy(), B.copy()
    return layer, A, B


def formula(layer, x, A, B, scaling):
    """y = x W^T + b + (x A^T B^T) * scaling in plain numpy."""
    W = layer.base.weight.numpy()
    b = 0.0 if layer.base.bias is None else layer.base.bias.numpy()
    return x @ W.T + b + (x @ A.T @ B.T) * scaling


def merged_setup():
    model = lora.apply_lora(
        tiny_gpt(dtype=np.float64), LoRAConfig(r=3, alpha=5, target_modules=("q_proj", "v_proj", "up_proj"))
    )
    fill_adapters(model)
    return model


def base_weights(model):
    return {n: layer.base.weight.numpy().copy() for n, layer in lora.lora_layers(model)}


def adapted_names(model):
    return sorted(n for n, _ in lora.lora_layers(model))


def trainable_names(model):
    return {n for n, p in model.named_parameters() if p.requires_grad}


def two_adapters():
    model = lora.apply_lora(tiny_gpt(), LoRAConfig(r=2, alpha=4))
    lora.add_adapter(model, "second", LoRAConfig(r=4, alpha=2, rslora=True))
    fill_adapters(model, seed=1, name="default")
    fill_adapters(model, seed=2, name="second")
    return model


def copy_adapter(src, name, dst):
    """Copy adapter `name` of model src into the (only) adapter of model dst, layer by layer."""
    dst_layers = dict(lora.lora_layers(dst))
    for path, layer in lora.lora_layers(src):
        if name in layer.adapters:
            dst_layers[path].lora_A.data = layer.adapters[name].lora_A.data.copy()
            dst_layers[path].lora_B.data = layer.adapters[name].lora_B.data.copy()


def fill(model, name="default", seed=1):
    """Random A and B for adapter `name`, as if trained."""
    rng = np.random.default_rng(seed)
    for _, layer in lora.lora_layers(model):
        if name in layer.adapters:
            for p in (layer.adapters[name].lora_A, layer.adapters[name].lora_B):
                p.data = (rng.standard_normal(p.shape) * 0.3).astype(p.dtype)
    return model
