"""add_weighted_adapter: a new adapter made from others, as PEFT combines them ("linear", "cat", "svd").

With adapters i of weights w_i, scalings s_i and factors B_i (out, r_i), A_i (r_i, in), the new
adapter has scaling 1 and

    cat:    A = [w_1 s_1 A_1; w_2 s_2 A_2; ...], B = [B_1 | B_2 | ...]   rank sum(r_i), exact:
            B A = sum_i w_i s_i B_i A_i
    svd:    B A = the best rank-r approximation of sum_i w_i s_i B_i A_i (B = U_r S_r, A = Vt_r)
    linear: A = sum_i sign(w_i s_i) sqrt|w_i s_i| A_i, B = sum_i sqrt|w_i s_i| B_i   (same ranks)
            so B A = sum_i w_i s_i B_i A_i + cross terms sqrt|..|sqrt|..| B_i A_j (i != j):
            exact for one adapter, a rough mix for several (PEFT says so too)
"""

from __future__ import annotations

import math

from .. import backend
from ..lowrank import svd
from ..nn import Module
from .config import AdapterSettings, check_adapter_name
from .model import adapter_names, attach_adapter, check_unmerged, lora_layers, saved_modules

COMBINATIONS = ("linear", "cat", "svd")


def add_weighted_adapter(
    model: Module,
    adapters: list,
    weights: list,
    adapter_name: str,
    combination_type: str = "svd",
    svd_rank: int | None = None,
) -> Module:
    """Add adapter `adapter_name` combining `adapters` with `weights` (see the module docstring)."""
    layers = _check(model, adapters, weights, adapter_name, combination_type)
    if len(adapters) == 1:  # as PEFT: one adapter can only be scaled
        combination_type = "linear"
    rank = _new_rank(layers, adapters, combination_type, svd_rank)
    first = next(layer.adapters[adapters[0]].config for _, layer in layers if adapters[0] in layer.adapters)
    settings = AdapterSettings(r=rank, alpha=rank, dropout=first.dropout, bias=getattr(first, "bias", "none"))
    plan = {path: settings for path, _ in layers}
    factors = {path: _combine(layer, adapters, weights, combination_type, rank) for path, layer in layers}
    attach_adapter(model, adapter_name, plan)
    for path, layer in layers:
        ad, (b, a) = layer.adapters[adapter_name], factors[path]
        ad.lora_A.data, ad.lora_B.data = a.astype(ad.lora_A.dtype), b.astype(ad.lora_B.dtype)
        ad.requires_grad_(layer.active == adapter_name)
    return model


def _check(model, adapters, weights, adapter_name, combination_type) -> list:
    """The layers holding any of `adapters`, after every check (nothing changes on failure)."""
    check_adapter_name(adapter_name)
    if combination_type not in COMBINATIONS:
        raise ValueError(
            f"add_weighted_adapter: combination_type must be one of {', '.join(COMBINATIONS)}, "
            f"got {combination_type!r}"
        )
    adapters, weights = list(adapters), list(weights)
    if not adapters or len(adapters) != len(weights):
        raise ValueError(
            f"add_weighted_adapter: give one weight per adapter, got {len(adapters)} adapters and "
            f"{len(weights)} weights"
        )
    have = adapter_names(model)
    if adapter_name in have:
        raise ValueError(f"add_weighted_adapter: adapter {adapter_name!r} already exists; pick another name")
    unknown = [a for a in adapters if a not in have]
    if unknown:
        raise KeyError(
            f"add_weighted_adapter: no adapter named {unknown!r}; the model has: {', '.join(have)}"
        )
    check_unmerged(model, "add_weighted_adapter")
    saving = [a for _, m in saved_modules(model) for a in adapters if a in m.adapters]
    if saving:
        raise ValueError(
            f"add_weighted_adapter combines LoRA layers only; adapter {saving[0]!r} also trains "
            "modules_to_save, which cannot be combined"
        )
    layers = [(p, layer) for p, layer in lora_layers(model) if any(a in layer.adapters for a in adapters)]
    for path, layer in layers:
        for a in adapters:
            ad = layer.adapters[a] if a in layer.adapters else None
            if ad is None:
                continue
            extra = sorted({n for n, _ in ad.named_parameters()} - {"lora_A", "lora_B"})
            if extra or getattr(ad, "pissa_offset", None) is not None:
                why = f"it has {', '.join(extra)}" if extra else "its base weight here is PiSSA's residual"
                raise ValueError(f"add_weighted_adapter: adapter {a!r} in {path} is not plain LoRA ({why})")
    return layers


def _new_rank(layers, adapters, combination_type, svd_rank) -> int:
    """PEFT's rule: linear keeps the (common) rank, cat adds them, svd takes svd_rank or the largest."""
    ranks = [max(layer.adapters[a].r for _, layer in layers if a in layer.adapters) for a in adapters]
    if combination_type == "linear":
        per_layer = {layer.adapters[a].r for _, layer in layers for a in adapters if a in layer.adapters}
        if len(per_layer) != 1:
            raise ValueError(
                f"add_weighted_adapter: 'linear' needs adapters of one rank, got ranks {sorted(per_layer)}; "
                "use 'cat' or 'svd'"
            )
        return per_layer.pop()
    if combination_type == "cat":
        return sum(ranks)
    if svd_rank is not None and (isinstance(svd_rank, bool) or not isinstance(svd_rank, int) or svd_rank < 1):
        raise ValueError(f"add_weighted_adapter: svd_rank must be a positive integer, got {svd_rank!r}")
    return svd_rank or max(ranks)


def _combine(layer, adapters, weights, combination_type, rank) -> tuple:
    """(B (out, rank), A (rank, in)) of the combined adapter in one layer."""
    present = [(layer.adapters[a], w) for a, w in zip(adapters, weights) if a in layer.adapters]
    xp = backend.module_of(layer.base.weight.data)
    n_out, n_in = layer.out_features, layer.in_features
    B, A = xp.zeros((n_out, rank), xp.float64), xp.zeros((rank, n_in), xp.float64)
    if combination_type == "cat":
        col = 0
        for ad, w in present:
            A[col : col + ad.r] = w * ad.scaling * ad.lora_A.data
            B[:, col : col + ad.r] = ad.lora_B.data
            col += ad.r
    elif combination_type == "linear":
        for ad, w in present:
            ws = w * ad.scaling
            A += math.copysign(math.sqrt(abs(ws)), ws) * ad.lora_A.data  # the sign on one side only
            B += math.sqrt(abs(ws)) * ad.lora_B.data
    else:
        delta = sum(w * ad.delta().astype(xp.float64) for ad, w in present)  # (out, in)
        U, S, Vt = svd(delta)
        k = min(rank, S.shape[0])
        B[:, :k], A[:k] = U[:, :k] * S[:k], Vt[:k]
    return B, A
