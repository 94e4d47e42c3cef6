"""A small GPT: nanoGPT's pre-LayerNorm decoder with separate q/k/v/o projections."""

from __future__ import annotations

import math
import numbers
from dataclasses import asdict, dataclass

import numpy as np

from .. import backend
from .. import functional as F
from ..nn import Dropout, Embedding, LayerNorm, Linear, Module, ModuleList
from ..nn.checks import flag
from ..nn.layers import normal
from ..tensor import Tensor, no_grad


@dataclass
class GPTConfig:
    """Sizes of a GPT. n_embd must be a multiple of n_head."""

    vocab_size: int
    block_size: int
    n_layer: int = 4
    n_head: int = 4
    n_embd: int = 128
    dropout: float = 0.0
    bias: bool = True
    tie_weights: bool = True

    def __post_init__(self):
        for name in ("vocab_size", "block_size", "n_layer", "n_head", "n_embd"):
            v = getattr(self, name)
            if isinstance(v, (bool, np.bool_)) or not isinstance(v, numbers.Integral) or v < 1:
                raise ValueError(f"GPTConfig: {name} must be a positive integer, got {v!r}")
            setattr(self, name, int(v))  # NumPy integers become plain ints (JSON cards)
        if self.n_embd % self.n_head:
            raise ValueError(f"GPTConfig: n_embd={self.n_embd} is not a multiple of n_head={self.n_head}")
        d = self.dropout
        if isinstance(d, (bool, str)) or not isinstance(d, numbers.Real) or not 0.0 <= d < 1.0:
            raise ValueError(f"GPTConfig: dropout must be in [0, 1), got {d!r}")
        self.dropout = float(d)
        self.bias = flag("GPTConfig", "bias", self.bias)
        self.tie_weights = flag("GPTConfig", "tie_weights", self.tie_weights)

    def to_dict(self) -> dict:
        return asdict(self)


class CausalSelfAttention(Module):
    """Multi-head causal self-attention with q_proj, k_proj, v_proj and o_proj."""

    def __init__(self, cfg: GPTConfig):
        super().__init__()
        c = cfg.n_embd
        self.n_head, self.dropout = cfg.n_head, cfg.dropout
        self.q_proj = Linear(c, c, bias=cfg.bias)
        self.k_proj = Linear(c, c, bias=cfg.bias)
        self.v_proj = Linear(c, c, bias=cfg.bias)
        self.o_proj = Linear(c, c, bias=cfg.bias)
        self.resid_drop = Dropout(cfg.dropout)

    def forward(self, x):
        b, t, c = x.shape  # (B, T, C)
        h = self.n_head
        q = self.q_proj(x).reshape(b, t, h, c // h).transpose(0, 2, 1, 3)  # (B, H, T, D)
        k = self.k_proj(x).reshape(b, t, h, c // h).transpose(0, 2, 1, 3)  # (B, H, T, D)
        v = self.v_proj(x).reshape(b, t, h, c // h).transpose(0, 2, 1, 3)  # (B, H, T, D)
        y = F.scaled_dot_product_attention(
            q, k, v, causal=True, dropout_p=self.dropout, training=self.training
        )
        y = y.transpose(0, 2, 1, 3).reshape(b, t, c)  # (B, T, C): heads side by side
        return self.resid_drop(self.o_proj(y))


class FeedForward(Module):
    """up_proj (C -> 4C), GELU (tanh form), down_proj (4C -> C)."""

    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.up_proj = Linear(cfg.n_embd, 4 * cfg.n_embd, bias=cfg.bias)
        self.down_proj = Linear(4 * cfg.n_embd, cfg.n_embd, bias=cfg.bias)
        self.drop = Dropout(cfg.dropout)

    def forward(self, x):
        return self.drop(self.down_proj(F.gelu(self.up_proj(x), approximate="tanh")))  # (B, T, C)


class Block(Module):
    """x + attn(ln_1(x)), then x + mlp(ln_2(x))."""

    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.ln_1 = LayerNorm(cfg.n_embd, bias=cfg.bias)
        self.attn = CausalSelfAttention(cfg)
        self.ln_2 = LayerNorm(cfg.n_embd, bias=cfg.bias)
        self.mlp = FeedForward(cfg)

    def forward(self, x):
        x = x + self.attn(self.ln_1(x))  # (B, T, C)
        return x + self.mlp(self.ln_2(x))  # (B, T, C)


class GPT(Module):
    """Token + learned position embeddings, n_layer Blocks, a final LayerNorm and lm_head."""

    def __init__(self, config: GPTConfig):
        super().__init__()
        self.config = config
        c = config.n_embd
        self.tok_emb = Embedding(config.vocab_size, c)
        self.pos_emb = Embedding(config.block_size, c)
        self.drop = Dropout(config.dropout)
        self.blocks = ModuleList(Block(config) for _ in range(config.n_layer))
        self.ln_f = LayerNorm(c, bias=config.bias)
        self.lm_head = Linear(c, config.vocab_size, bias=False)
        self._init_weights()
        if config.tie_weights:
            self.lm_head.weight = self.tok_emb.weight  # one Parameter, two uses

    def _init_weights(self) -> None:
        """nanoGPT's initialisation: N(0, 0.02), residual projections scaled by 1/sqrt(2 n_layer)."""
        for name, p in self.named_parameters():
            if name.endswith("bias"):
                p.data = backend.asarray(np.zeros(p.shape, p.dtype), backend=p.backend)
            elif p.ndim == 2:
                std = (
                    0.02 / math.sqrt(2 * self.config.n_layer)
                    if name.endswith(("o_proj.weight", "down_proj.weight"))
                    else 0.02
                )
                p.data = backend.asarray(normal(p.shape, std, p.dtype), backend=p.backend)

    def forward(self, idx, targets=None):
        ids = idx.data if isinstance(idx, Tensor) else backend.asarray(idx)
        if ids.ndim != 2:
            raise ValueError(f"GPT: idx must be (batch, time) integer ids, got shape {tuple(ids.shape)}")
        b, t = ids.shape
        if t > self.config.block_size:
            raise ValueError(f"GPT: sequence length {t} is longer than block_size {self.config.block_size}")
        pos = backend.module_of(ids).arange(t)
        x = self.drop(self.tok_emb(ids) + self.pos_emb(pos))  # (B, T, C) + (T, C)
        for block in self.blocks:
            x = block(x)  # (B, T, C)
        logits = self.lm_head(self.ln_f(x))  # (B, T, vocab)
        if targets is None:
            return logits
        return logits, F.cross_entropy(logits, targets)

    def num_parameters(self) -> int:
        return sum(p.size for p in self.parameters())

    @no_grad()
    def generate(
        self,
        idx,
        max_new_tokens: int,
        temperature: float = 1.0,
        top_k: int | None = None,
        seed: int | None = None,
    ) -> np.ndarray:
        """Append max_new_tokens sampled ids to idx (B, T); temperature 0 picks the most likely."""
        ids = np.array(backend.to_numpy(idx.data if isinstance(idx, Tensor) else idx), dtype=np.int64)
        if ids.ndim == 1:
            ids = ids[None, :]
        if temperature < 0:
            raise ValueError(f"generate: temperature must be >= 0, got {temperature}")
        if max_new_tokens < 0:
            raise ValueError(f"generate: max_new_tokens must be >= 0, got {max_new_tokens}")
        if top_k is not None and top_k < 1:
            raise ValueError(f"generate: top_k must be a positive integer or None, got {top_k}")
        rng = np.random.default_rng(seed)
        was_training = self.training
        self.eval()
        try:
            for _ in range(max_new_tokens):
                context = ids[:, -self.config.block_size :]
                logits = backend.to_numpy(self(context).data[:, -1, :]).astype(np.float64)  # (B, vocab)
                ids = np.concatenate([ids, sample_next(logits, temperature, top_k, rng)[:, None]], axis=1)
        finally:
            self.train(was_training)
        return ids


def sample_next(logits: np.ndarray, temperature: float, top_k: int | None, rng) -> np.ndarray:
    """One id per row of logits (B, vocab): greedy at temperature 0, else sampled (top-k)."""
    if temperature == 0:
        return logits.argmax(axis=-1)
    logits = logits / temperature
    if top_k is not None and top_k < logits.shape[-1]:
        kth = np.partition(logits, -top_k, axis=-1)[:, -top_k][:, None]
        logits = np.where(logits < kth, -np.inf, logits)
    p = np.exp(logits - logits.max(axis=-1, keepdims=True))
    p /= p.sum(axis=-1, keepdims=True)
    return np.array([rng.choice(p.shape[-1], p=row) for row in p])
