"""LoRA on nn.Embedding: a low-rank change to the lookup table, laid out as PEFT lays it out.

With A = lora_embedding_A (r, num) and B = lora_embedding_B (dim, r):

    y = W[ids] + (A.T[ids] @ B.T) * s          the table changes by s (B A).T, shape (num, dim)

As in PEFT, A starts at zero and B is random (the reverse of LoRALinear): an id's row of
A.T is all a token owns, so starting it at zero leaves every token's output unchanged.
"""

from __future__ import annotations

import numpy as np

from .. import backend
from .. import functional as F
from ..nn import Embedding, Parameter
from ..nn.layers import normal
from .config import LoRAConfig, adapter_settings
from .layer import AdapterBase, LoRALayer


class EmbeddingAdapter(AdapterBase):
    """One adapter of an embedding: lora_embedding_A (r, num), lora_embedding_B (dim, r)."""

    def __init__(self, num_embeddings: int, embedding_dim: int, config: LoRAConfig, dtype=np.float32):
        super().__init__()
        self.config = config
        self.r, self.scaling, self.dropout = config.r, config.scaling, config.dropout
        self.dora = False
        self.pissa_offset = None
        self.lora_embedding_A = Parameter(np.zeros((config.r, num_embeddings), dtype))
        self.lora_embedding_B = Parameter(normal((embedding_dim, config.r), 1.0, dtype))

    def delta(self):
        """s (B A).T: the (num, dim) change this adapter makes to the table."""
        return F.lora_delta(self.lora_embedding_A.data, self.lora_embedding_B.data, self.scaling).T

    def file_tensors(self) -> dict:
        """{key suffix: Parameter} as PEFT names them in adapter files."""
        return {"lora_embedding_A": self.lora_embedding_A, "lora_embedding_B": self.lora_embedding_B}

    def extra_repr(self) -> str:
        return f"r={self.r}, scaling={self.scaling:g}"


class LoRAEmbedding(LoRALayer):
    """A frozen nn.Embedding (`.base`) with named low-rank adapters; one is active at a time."""

    def __init__(self, base: Embedding, adapter_name: str = "default", config: LoRAConfig | None = None):
        super().__init__()
        if not isinstance(base, Embedding):
            raise TypeError(f"LoRAEmbedding wraps an nn.Embedding, got {type(base).__name__}")
        self._init_layer(base)
        self.add_adapter(adapter_name, adapter_settings(config or LoRAConfig()))
        self.active = adapter_name
        base.requires_grad_(False)

    num_embeddings = property(lambda self: self.base.weight.shape[0])
    embedding_dim = property(lambda self: self.base.weight.shape[1])

    def add_adapter(self, name: str, config: LoRAConfig) -> EmbeddingAdapter:
        """Create adapter `name`: A = 0, B ~ N(0, 1) as PEFT does (PiSSA and DoRA are refused here)."""
        self._check_new_adapter(name)
        if getattr(config, "dora", False) or config.init == "pissa":
            what = "dora=True" if getattr(config, "dora", False) else "init='pissa'"
            raise ValueError(
                f"LoRA on an nn.Embedding supports init 'kaiming' or 'gaussian' without DoRA, got {what}; "
                "leave embeddings out of target_modules (exclude_modules) for this adapter"
            )
        w = self.base.weight
        ad = EmbeddingAdapter(self.num_embeddings, self.embedding_dim, config, dtype=w.dtype)
        for p in ad.parameters():
            p.data = backend.asarray(p.data, backend=w.backend)
        self.adapters[name] = ad
        return ad

    def forward(self, ids):
        if self.active is None or self.disabled:
            return self.base(ids)  # (..., dim)
        ad = self.adapters[self.active]
        if self.merged is not None:
            self._check_trainable_while_merged(ad)
            return self.base(ids)
        A, Bm = ad.lora_embedding_A, ad.lora_embedding_B
        h = F.embedding(ids, A.T)  # (..., r): the rows of A.T the ids pick
        return self.base(ids) + F.linear(h, Bm) * ad.scaling  # (..., dim)
