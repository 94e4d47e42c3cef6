"""LoRA+ (Hayou et al. 2024): B learns loraplus_lr_ratio times faster than A.

The same grouping as PEFT's create_loraplus_optimizer: lora_B and every other trainable 1-D
parameter (biases, DoRA's magnitude) get lr * ratio, embedding adapters get their own
rate, everything else (lora_A, full weights) gets lr.
"""

from __future__ import annotations

from ..nn import LayerNorm, Module, RMSNorm
from .embedding import LoRAEmbedding


def loraplus_param_groups(
    model: Module,
    lr: float,
    loraplus_lr_ratio: float = 16,
    loraplus_lr_embedding: float = 1e-6,
    loraplus_weight_decay: float = 0.0,
) -> list:
    """PEFT's four groups: A (lr), embedding adapters, B with decay, B without (lr * ratio)."""
    for what, v in (
        ("lr", lr),
        ("loraplus_lr_ratio", loraplus_lr_ratio),
        ("loraplus_lr_embedding", loraplus_lr_embedding),
    ):
        if isinstance(v, bool) or not isinstance(v, (int, float)) or v < 0:
            raise ValueError(f"create_loraplus_optimizer: {what} must be a number >= 0, got {v!r}")
    embedding_params = {
        id(p)
        for _, m in model.named_modules()
        if isinstance(m, LoRAEmbedding)
        for p in m.adapters.parameters()
    }
    norm_params = {
        id(p) for _, m in model.named_modules() if isinstance(m, (LayerNorm, RMSNorm)) for p in m.parameters()
    }
    groups = {"A": [], "embedding": [], "B": [], "B_no_decay": []}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        if id(p) in embedding_params:
            groups["embedding"].append(p)
        elif "lora_B" in name or p.ndim == 1:
            decays = "bias" not in name and id(p) not in norm_params  # PEFT's rule for weight decay
            groups["B" if decays else "B_no_decay"].append(p)
        else:
            groups["A"].append(p)
    wd = loraplus_weight_decay
    return [
        {"params": groups["A"], "weight_decay": wd, "lr": lr},
        {"params": groups["embedding"], "weight_decay": wd, "lr": loraplus_lr_embedding},
        {"params": groups["B"], "weight_decay": wd, "lr": lr * loraplus_lr_ratio},
        {"params": groups["B_no_decay"], "weight_decay": 0.0, "lr": lr * loraplus_lr_ratio},
    ]


def create_loraplus_optimizer(
    model: Module, optimizer_cls, lr: float, loraplus_lr_ratio: float = 16, **kwargs
):
    """optimizer_cls over PEFT's LoRA+ groups; kwargs go to the optimizer, except
    loraplus_lr_embedding (default 1e-6) and loraplus_weight_decay (default 0), as in PEFT."""
    groups = loraplus_param_groups(
        model,
        lr,
        loraplus_lr_ratio,
        kwargs.pop("loraplus_lr_embedding", 1e-6),
        kwargs.pop("loraplus_weight_decay", 0.0),
    )
    if not any(g["params"] for g in groups):
        raise ValueError(
            "create_loraplus_optimizer: the model has no trainable parameters (apply_lora first)"
        )
    groups = [g for g in groups if g["params"]]
    return optimizer_cls(groups, lr=lr, **kwargs)
