"""Putting adapters into a model: apply, freeze, count, merge, and many adapters on one base."""

from __future__ import annotations

import contextlib

from ..nn import Embedding, Linear, Module
from .config import LoRAConfig
from .embedding import LoRAEmbedding
from .layer import LoRALayer, LoRALinear, tied_weight_error


def lora_layers(model: Module) -> list:
    """(dotted name, layer) for every adapted layer in the model (LoRALinear, LoRAEmbedding, VeRA)."""
    return [(n, m) for n, m in model.named_modules() if isinstance(m, LoRALayer)]


def _wrap(mod: Module, adapter_name: str, config: LoRAConfig, tied: tuple = ()) -> LoRALayer:
    """The adapted layer for a plain target: LoRAEmbedding for an nn.Embedding, else LoRALinear."""
    if isinstance(mod, Embedding):
        layer = LoRAEmbedding(mod, adapter_name=adapter_name, config=config)
    else:
        layer = LoRALinear(mod, adapter_name=adapter_name, config=config)
    layer.tied_to = tied  # where else its weight is used: merging there is refused
    return layer


def tied_to(model: Module, name: str) -> tuple:
    """Where else the weight of the layer `name` is used ("tok_emb.weight" for a tied lm_head)."""
    mod = model.get_submodule(name)
    weight = (mod.base if isinstance(mod, LoRALayer) else mod).weight
    own = (name, f"{name}.base") if name else ("", "base")
    return tuple(
        f"{n}.{k}" if n else k
        for n, m in model.named_modules()
        if n not in own
        for k, v in vars(m).items()
        if v is weight
    )


def _inside_lora(name: str, lora_names: list) -> bool:
    return any(name.startswith(ln + ".") for ln in lora_names)


def find_targets(model: Module, config: LoRAConfig) -> list:
    """Names of the modules config targets, checked: each must be an nn.Linear or nn.Embedding (or adapted)."""
    lora_names = [n for n, _ in lora_layers(model)]
    matches, refused = [], []
    for name, mod in model.named_modules():
        if not name or _inside_lora(name, lora_names) or not config.matches(name):
            continue
        if isinstance(mod, (Linear, Embedding, LoRALayer)):
            matches.append(name)
        else:
            refused.append(f"{name} ({type(mod).__name__})")
    if refused:
        raise ValueError(
            f"LoRA adapts nn.Linear and nn.Embedding layers only; target_modules={config.target_modules!r} also matches "
            f"{', '.join(refused)}. Narrow target_modules or add exclude_modules."
        )
    if not matches:
        linears = [
            n for n, m in model.named_modules() if isinstance(m, Linear) and not _inside_lora(n, lora_names)
        ]
        linears += lora_names
        raise ValueError(
            f"target_modules={config.target_modules!r} matches no module. The Linear layers in this "
            f"model are: {', '.join(linears) or 'none'}"
        )
    return matches


def apply_lora(model: Module, config: LoRAConfig, adapter_name: str = "default") -> Module:
    """Replace each targeted nn.Linear with a LoRALinear and freeze everything but the adapters.

    As PEFT's get_peft_model does, all other parameters are frozen (see mark_only_lora_trainable
    for config.bias and config.modules_to_save). A target that is already adapted is refused:
    use add_adapter for a second adapter.
    """
    targets = find_targets(model, config)
    adapted = [n for n in targets if isinstance(model.get_submodule(n), LoRALayer)]
    if adapted:
        raise ValueError(
            f"{', '.join(adapted)} already has LoRA adapters; use lora.add_adapter(model, name, config) "
            "to add another adapter"
        )
    _check_can_adapt(model, targets, config, adapter_name)
    if config.modules_to_save:  # checked here too, so that a bad name changes nothing
        probe = LoRAConfig(target_modules=config.modules_to_save)
        if not any(n and probe.matches(n) for n, _ in model.named_modules()):
            raise ValueError(f"modules_to_save={config.modules_to_save!r} matches no module")
    for name in targets:
        model.set_submodule(
            name, _wrap(model.get_submodule(name), adapter_name, config, tied_to(model, name))
        )
    mark_only_lora_trainable(model, config.bias, config.modules_to_save)
    return model


def _check_can_adapt(model: Module, targets: list, config: LoRAConfig, adapter_name: str) -> None:
    """Raise before anything changes if adding the adapter to `targets` would fail part-way."""
    if not isinstance(adapter_name, str) or not adapter_name.isidentifier():
        raise ValueError(f"adapter names must be identifiers (letters, digits, _), got {adapter_name!r}")
    if config.init == "pissa":
        for name in targets:
            mod = model.get_submodule(name)
            base = mod.base if isinstance(mod, LoRALayer) else mod
            if tied_to(model, name) and not isinstance(base, Embedding):  # (embeddings refuse PiSSA anyway)
                raise tied_weight_error("a PiSSA init", name, tied_to(model, name))
            shape = base.weight.shape
            if config.r > min(shape):
                raise ValueError(
                    f"pissa init: r={config.r} is larger than min{shape} of the weight of {name}"
                )


def add_adapter(model: Module, name: str, config: LoRAConfig) -> Module:
    """Add a second (third, ...) adapter called `name`; the active adapter stays as it was.

    Targets already adapted get the new adapter beside their others; plain nn.Linear targets
    are wrapped. Activate it with set_adapter(model, name).
    """
    existing = {n for _, layer in lora_layers(model) for n in layer.adapters}
    if name in existing:
        raise ValueError(f"adapter {name!r} already exists; delete_adapter first or pick another name")
    targets = find_targets(model, config)
    _check_can_adapt(model, targets, config, name)
    had_lora = bool(lora_layers(model))
    merged = [n for n, layer in lora_layers(model) if layer.merged]
    if merged:
        raise RuntimeError(f"unmerge before adding adapters (merged layers: {', '.join(merged)})")
    for target in targets:
        mod = model.get_submodule(target)
        if isinstance(mod, LoRALayer):
            mod.add_adapter(name, config)
        else:
            layer = _wrap(mod, name, config, tied_to(model, target))
            layer.set_adapter(None)  # a plain layer stays plain until `name` is activated
            model.set_submodule(target, layer)
    if not any(layer.active for _, layer in lora_layers(model)):
        set_adapter(model, name)
        if not had_lora:  # the first adapter: freeze the base as apply_lora does
            mark_only_lora_trainable(model, config.bias, config.modules_to_save)
    else:
        _freeze_inactive(model)
    return model


def adapter_names(model: Module, layers: list | None = None) -> list:
    """Names of all adapters in the model, in the order they were added."""
    names = []
    for _, layer in lora_layers(model) if layers is None else layers:
        names += [n for n in layer.adapters if n not in names]
    return names


def active_adapter(model: Module):
    """The name of the active adapter (None if the model runs as its base)."""
    actives = {layer.active for _, layer in lora_layers(model)} - {None}
    return actives.pop() if actives else None


def set_adapter(model: Module, name: str) -> Module:
    """Make `name` the active adapter in every layer that has it; only it will train."""
    layers = lora_layers(model)  # one walk of the module tree: swapping is meant to be cheap
    names = adapter_names(model, layers)
    if name not in names:
        raise KeyError(f"no adapter named {name!r}; the model has: {', '.join(names) or 'none'}")
    merged = [layer.merged for _, layer in layers if layer.merged and layer.merged != name]
    if merged:
        raise RuntimeError(f"adapter {merged[0]!r} is merged; call lora.unmerge_lora(model) before switching")
    for _, layer in layers:
        layer.set_adapter(name if name in layer.adapters else None)
    _freeze_inactive(model, layers)
    return model


def _freeze_inactive(model: Module, layers: list | None = None) -> None:
    """Adapters other than the active one never train (nor hold optimizer state)."""
    for _, layer in lora_layers(model) if layers is None else layers:
        for n, ad in layer.adapters.items():
            ad.requires_grad_(n == layer.active)  # A, B and any other adapter parameter


def delete_adapter(model: Module, name: str) -> Module:
    """Remove adapter `name` everywhere; a layer left with no adapter becomes its nn.Linear again."""
    layers = [(n, layer) for n, layer in lora_layers(model) if name in layer.adapters]
    if not layers:
        raise KeyError(
            f"no adapter named {name!r}; the model has: {', '.join(adapter_names(model)) or 'none'}"
        )
    merged = [n for n, layer in layers if layer.merged == name]
    if merged:
        raise RuntimeError(f"adapter {name!r} is merged in {', '.join(merged)}; unmerge before deleting it")
    was_active = active_adapter(model) == name
    for path, layer in layers:
        layer.delete_adapter(name)
        if not len(layer.adapters):
            base = layer.base
            model.set_submodule(path, base)
    remaining = adapter_names(model)
    if was_active and remaining:  # as PEFT does: another adapter takes over
        set_adapter(model, remaining[0])
    return model


@contextlib.contextmanager
def disable_adapters(model: Module):
    """Inside this block every adapted layer computes exactly its base output."""
    layers = [layer for _, layer in lora_layers(model)]
    merged = [layer.merged for layer in layers if layer.merged]
    if merged:
        raise RuntimeError(f"adapter {merged[0]!r} is merged into the weights; unmerge_lora(model) first")
    previous = [layer.disabled for layer in layers]
    for layer in layers:
        layer.disabled = True
    try:
        yield model
    finally:
        for layer, was in zip(layers, previous):
            layer.disabled = was


def merge_lora(model: Module) -> Module:
    """Fold each layer's active adapter into its base weight (inference at base speed)."""
    layers = [layer for _, layer in lora_layers(model)]
    if any(layer.disabled for layer in layers):
        raise RuntimeError(
            "merge_lora inside disable_adapters(): the block promises base outputs; merge after it"
        )
    _check_untied(model)
    for layer in layers:
        layer.merge()
    return model


def _check_untied(model: Module) -> None:
    """Refuse, before anything changes, to merge into a weight another module shares."""
    for path, layer in lora_layers(model):
        layer.tied_to = tied_to(model, path)  # as the model is now (it may have been untied since)
        if layer.active is not None and layer.merged is None and layer.tied_to:
            raise tied_weight_error("merging", path, layer.tied_to)


def unmerge_lora(model: Module) -> Module:
    """Undo merge_lora: subtract each merged adapter from its base weight."""
    for _, layer in lora_layers(model):
        layer.unmerge()
    return model


def merge_and_unload(model: Module) -> Module:
    """Merge the active adapters and put plain nn.Linear layers back (no LoRA left)."""
    _check_untied(model)
    for path, layer in lora_layers(model):
        layer.merge()
        model.set_submodule(path, layer.base)
    return model


def mark_only_lora_trainable(model: Module, bias: str = "none", modules_to_save=None) -> Module:
    """Freeze every parameter except the active adapters' A and B.

    bias="all" also trains every bias, bias="lora_only" the biases of adapted layers;
    modules_to_save (names, matched like target_modules; by default those of the adapters'
    configs) train fully, e.g. a new classifier head.
    """
    if modules_to_save is None:
        modules_to_save = tuple(
            {
                m
                for _, layer in lora_layers(model)
                for ad in layer.adapters.items()
                for m in ad[1].config.modules_to_save
            }
        )
    if bias not in ("none", "all", "lora_only"):
        raise ValueError(f"mark_only_lora_trainable: bias must be 'none', 'all' or 'lora_only', got {bias!r}")
    model.requires_grad_(False)
    _freeze_inactive(model)
    for _, layer in lora_layers(model):
        if bias == "lora_only" and getattr(layer.base, "bias", None) is not None:
            layer.base.bias.requires_grad_(True)
    if bias == "all":
        for n, p in model.named_parameters():
            if n.endswith("bias"):
                p.requires_grad_(True)
    if modules_to_save:
        probe = LoRAConfig(
            target_modules=tuple(modules_to_save) if not isinstance(modules_to_save, str) else modules_to_save
        )
        found = [m for n, m in model.named_modules() if n and probe.matches(n)]
        if not found:
            raise ValueError(f"modules_to_save={modules_to_save!r} matches no module")
        for m in found:
            m.requires_grad_(True)
    return model


def count_parameters(model: Module) -> dict:
    """{"total", "trainable", "frozen"} parameter counts (tied weights counted once)."""
    total = trainable = 0
    for p in model.parameters():
        total += p.size
        trainable += p.size if p.requires_grad else 0
    return {"total": total, "trainable": trainable, "frozen": total - trainable}


class ParameterReport:
    """Per-module parameter counts of a (LoRA) model: rows, totals, and a printable table."""

    columns = ("module", "type", "shape", "frozen", "trainable", "adapter bytes")

    def __init__(self, rows: list, totals: dict):
        self.rows, self.totals = rows, totals

    def _cells(self) -> list:
        out = [
            [
                r["module"],
                r["type"],
                "x".join(map(str, r["shape"])),
                f"{r['frozen']:,}",
                f"{r['trainable']:,}",
                f"{r['adapter_bytes']:,}" if r["adapter_bytes"] else "",
            ]
            for r in self.rows
        ]
        t = self.totals
        out.append(["total", "", "", f"{t['frozen']:,}", f"{t['trainable']:,}", f"{t['adapter_bytes']:,}"])
        return out

    def __str__(self) -> str:
        cells = [list(self.columns)] + self._cells()
        widths = [max(len(row[i]) for row in cells) for i in range(len(self.columns))]
        lines = [
            "  ".join(c.ljust(w) if i < 3 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths)))
            for row in cells
        ]
        lines.insert(1, "  ".join("-" * w for w in widths))
        return "\n".join(lines)

    def to_markdown(self) -> str:
        lines = ["| " + " | ".join(self.columns) + " |", "|" + "---|" * 3 + "---:|" * 3]
        lines += ["| " + " | ".join(row) + " |" for row in self._cells()]
        return "\n".join(lines)

    def __repr__(self) -> str:
        return str(self)


def parameter_report(model: Module) -> ParameterReport:
    """A row per module that holds parameters (an adapted layer is one row: base frozen, adapters trainable)."""
    rows, seen = [], set()
    lora_names = [n for n, _ in lora_layers(model)]
    for name, mod in model.named_modules():
        if _inside_lora(name, lora_names):
            continue
        if isinstance(mod, LoRALayer):
            params = list(mod.named_parameters())
            shape = mod.base.weight.shape
            adapter_bytes = sum(p.data.nbytes for n, p in params if n.startswith("adapters."))
        else:
            params = [(n, mod.__dict__[n]) for n in mod._param_names if mod.__dict__[n] is not None]
            shape = params[0][1].shape if params else ()
            adapter_bytes = 0
        params = [(n, p) for n, p in params if id(p) not in seen]
        if not params:
            continue
        seen.update(id(p) for _, p in params)
        frozen = sum(p.size for _, p in params if not p.requires_grad)
        trainable = sum(p.size for _, p in params if p.requires_grad)
        rows.append(
            {
                "module": name or "(model)",
                "type": type(mod).__name__,
                "shape": tuple(shape),
                "frozen": frozen,
                "trainable": trainable,
                "adapter_bytes": adapter_bytes,
            }
        )
    totals = {k: sum(r[k] for r in rows) for k in ("frozen", "trainable", "adapter_bytes")}
    return ParameterReport(rows, totals)
