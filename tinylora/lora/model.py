"""Putting adapters into a model: apply, freeze, count, merge, and many adapters on one base."""

from __future__ import annotations

import contextlib
import copy

from ..nn import Embedding, Linear, Module, ModuleDict
from .config import LoRAConfig, check_adapter_name, check_bias, match_names
from .embedding import LoRAEmbedding
from .layer import LoRALayer, LoRALinear, tied_weight_error


def lora_layers(model: Module) -> list:
    """(dotted name, layer) for every adapted layer in the model (LoRALinear, LoRAEmbedding, VeRA)."""
    return [(n, m) for n, m in model.named_modules() if isinstance(m, LoRALayer)]


def _wrap(mod: Module, adapter_name: str, settings, tied: tuple = ()) -> LoRALayer:
    """The adapted layer for a plain target: LoRAEmbedding for an nn.Embedding, else LoRALinear."""
    if isinstance(mod, Embedding):
        layer = LoRAEmbedding(mod, adapter_name=adapter_name, config=settings)
    else:
        layer = LoRALinear(mod, adapter_name=adapter_name, config=settings)
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


class ModulesToSave(Module):
    """A module some adapters train fully (PEFT's modules_to_save): the original and one copy per adapter.

    `.base` is the original (frozen); `.adapters[name]` is adapter name's own trained copy. The active
    adapter's copy runs; with no active adapter, or inside disable_adapters(), the original runs.
    """

    def __init__(self, base: Module):
        super().__init__()
        self.base = base
        self.adapters = ModuleDict()
        self.active = None
        self.merged = None  # never merged: the copy replaces the original, it is not added to it
        self.disabled = False

    def add_adapter(self, name: str) -> Module:
        """Give adapter `name` its own copy of the original module, trainable."""
        self.adapters[name] = copy.deepcopy(self.base).requires_grad_(True)
        return self.adapters[name]

    def delete_adapter(self, name: str) -> None:
        del self.adapters[name]
        if self.active == name:
            self.active = None

    def set_adapter(self, name: str | None) -> None:
        self.active = name if name in self.adapters else None

    def current(self) -> Module:
        """The module that runs now: the active adapter's copy, or the original."""
        d = self.__dict__
        if d["active"] is None or d["disabled"]:
            return d["base"]
        return d["adapters"][d["active"]]

    def forward(self, *args, **kwargs):
        return self.current()(*args, **kwargs)

    def __getattr__(self, name: str):  # only for names the wrapper lacks: lm_head.weight etc.
        if name.startswith("_") or "base" not in self.__dict__:
            raise AttributeError(name)
        return getattr(self.current(), name)

    def extra_repr(self) -> str:
        return f"active={self.active!r}" + (", disabled" if self.disabled else "")


def saved_modules(model: Module) -> list:
    """(dotted name, ModulesToSave) for every module adapters train fully."""
    return [(n, m) for n, m in model.named_modules() if isinstance(m, ModulesToSave)]


def _wrapped(model: Module) -> list:
    """Every LoRA layer and ModulesToSave wrapper: the modules that hold adapters."""
    return [(n, m) for n, m in model.named_modules() if isinstance(m, (LoRALayer, ModulesToSave))]


def _inside(name: str, outer: list) -> bool:
    return any(name.startswith(o + ".") for o in outer)


def check_unmerged(
    model: Module, doing: str, allowed: str | None = None, only: str | None = None, layers: list | None = None
) -> None:
    """The one "refused while merged" guard: raise if an adapter is merged (other than `allowed`; or `only` that one).

    `layers`: the model's (name, module) wrappers if the caller already walked the tree."""
    layers = lora_layers(model) if layers is None else [(n, m) for n, m in layers if isinstance(m, LoRALayer)]
    merged = [(n, layer.merged) for n, layer in layers if layer.merged]
    merged = [(n, m) for n, m in merged if m != allowed and (only is None or m == only)]
    if merged:
        raise RuntimeError(
            f"{doing}: adapter {merged[0][1]!r} is merged into the weights of "
            f"{', '.join(n for n, _ in merged)}; call lora.unmerge_lora(model) first"
        )


def find_targets(model: Module, config: LoRAConfig) -> list:
    """Names of the modules config targets, checked: each must be an nn.Linear (or adapted)."""
    outer = [n for n, _ in _wrapped(model)]
    matches, refused = [], []
    for name, mod in model.named_modules():
        if not name or _inside(name, outer) or not config.matches(name):
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
        linears = [n for n, m in model.named_modules() if isinstance(m, Linear) and not _inside(n, outer)]
        linears += [n for n, _ in lora_layers(model)]
        raise ValueError(
            f"target_modules={config.target_modules!r} matches no module. The Linear layers in this "
            f"model are: {', '.join(linears) or 'none'}"
        )
    return matches


def find_modules_to_save(model: Module, names) -> list:
    """Paths of the modules `names` match (outermost only; matched like target_modules)."""
    if not names:
        return []
    names = (names,) if isinstance(names, str) else tuple(names)
    found = []
    for path, _ in model.named_modules():
        if path and match_names(names, path) and not _inside(path, found):
            found.append(path)
    if not found:
        raise ValueError(f"modules_to_save={names!r} matches no module")
    return found


def plan_adapter(model: Module, config: LoRAConfig) -> dict:
    """{module path: AdapterSettings} for every module `config` targets (rank/alpha patterns applied)."""
    return {path: config.settings_for(path) for path in find_targets(model, config)}


def attach_adapter(model: Module, name: str, plan: dict, modules_to_save=(), extend: bool = False) -> Module:
    """Add adapter `name` with plan's settings to each module, and a trained copy of each of
    modules_to_save; all or nothing. Returns model; the active adapter does not change.
    extend=True lets an existing adapter `name` reach more modules (apply_lora called twice)."""
    _check_attach(model, name, plan, modules_to_save, extend)
    flags = {id(p): p.requires_grad for p in model.parameters()}
    done = []  # (path, the module there before, its weight array before) for a rollback
    try:
        for path, settings in plan.items():
            mod = model.get_submodule(path)
            base = mod.base if isinstance(mod, LoRALayer) else mod
            done.append((path, mod, base.weight.data if settings.init == "pissa" else None))
            if isinstance(mod, LoRALayer):
                mod.add_adapter(name, settings)
            else:
                layer = _wrap(mod, name, settings, tied_to(model, path))
                layer.set_adapter(None)  # a plain layer stays plain until `name` is activated
                model.set_submodule(path, layer)
        for path in modules_to_save:
            mod = model.get_submodule(path)
            if isinstance(mod, ModulesToSave) and name in mod.adapters:
                continue
            done.append((path, mod, None))
            if not isinstance(mod, ModulesToSave):
                mod = ModulesToSave(mod)
                model.set_submodule(path, mod)
            mod.add_adapter(name)
    except Exception as e:
        _rollback(model, name, done, flags)
        if isinstance(e, ValueError) and done and done[-1][0] not in str(e):
            raise ValueError(f"{done[-1][0]}: {e}") from None  # name the module that failed
        raise
    return model


def _check_attach(model: Module, name: str, plan: dict, modules_to_save, extend: bool) -> None:
    """What attach_adapter checks before anything changes."""
    check_adapter_name(name)
    if name in adapter_names(model) and not extend:
        raise ValueError(f"adapter {name!r} already exists; delete_adapter first or pick another name")
    check_unmerged(model, f"adding adapter {name!r}")
    overlap = sorted(set(plan) & set(modules_to_save))
    if overlap:
        raise ValueError(f"{', '.join(overlap)} cannot be both a LoRA target and in modules_to_save")
    for path, settings in plan.items():  # PiSSA writes into W (an embedding refuses PiSSA itself)
        mod = model.get_submodule(path)
        linear = isinstance(mod.base if isinstance(mod, LoRALayer) else mod, Linear)
        if settings.init == "pissa" and linear and tied_to(model, path):
            raise tied_weight_error("a PiSSA init", path, tied_to(model, path))


def _rollback(model: Module, name: str, done: list, flags: dict) -> None:
    """Undo a part-way attach_adapter: modules, PiSSA's weights and requires_grad as they were."""
    for path, before, weight in reversed(done):
        now = model.get_submodule(path)
        if name in getattr(now, "adapters", ()):
            del now.adapters[name]
        if now is not before:
            model.set_submodule(path, before)
        if weight is not None:
            (before.base if isinstance(before, LoRALayer) else before).weight.data = weight
    for p in model.parameters():
        p.requires_grad = flags.get(id(p), p.requires_grad)


def apply_lora(model: Module, config: LoRAConfig, adapter_name: str = "default") -> Module:
    """Replace each targeted nn.Linear with a LoRALinear and freeze everything but the adapters.

    As PEFT's get_peft_model does, all other parameters are frozen (see mark_only_lora_trainable
    for config.bias); config.modules_to_save get a trained copy of their own. A target that is
    already adapted is refused: use add_adapter for a second adapter.
    """
    plan = plan_adapter(model, config)
    adapted = [n for n in plan if isinstance(model.get_submodule(n), LoRALayer)]
    if adapted:
        raise ValueError(
            f"{', '.join(adapted)} already has LoRA adapters; use lora.add_adapter(model, name, config) "
            "to add another adapter"
        )
    saves = find_modules_to_save(model, config.modules_to_save)
    attach_adapter(model, adapter_name, plan, saves, extend=True)
    set_adapter(model, adapter_name)
    mark_only_lora_trainable(model, config.bias)
    return model


def add_adapter(model: Module, name: str, config: LoRAConfig) -> Module:
    """Add a second (third, ...) adapter called `name`; the active adapter stays as it was.

    Targets already adapted get the new adapter beside their others; plain nn.Linear targets
    are wrapped. Activate it with set_adapter(model, name).
    """
    had_lora = bool(lora_layers(model))
    plan = plan_adapter(model, config)
    attach_adapter(model, name, plan, find_modules_to_save(model, config.modules_to_save))
    if active_adapter(model) is None:
        set_adapter(model, name)
        if not had_lora:  # the first adapter: freeze the base as apply_lora does
            mark_only_lora_trainable(model, config.bias)
    else:
        _freeze_inactive(model)
    return model


def adapter_names(model: Module, layers: list | None = None) -> list:
    """Names of all adapters in the model, in the order they were added."""
    names = []
    for _, layer in _wrapped(model) if layers is None else layers:
        names += [n for n in layer.adapters if n not in names]
    return names


def active_adapter(model: Module):
    """The name of the active adapter (None if the model runs as its base)."""
    actives = {layer.active for _, layer in lora_layers(model)} - {None}
    return actives.pop() if actives else None


def set_adapter(model: Module, name: str) -> Module:
    """Make `name` the active adapter in every layer that has it; only it will train."""
    layers = _wrapped(model)  # one walk of the module tree: swapping is meant to be cheap
    names = adapter_names(model, layers)
    if name not in names:
        raise KeyError(f"no adapter named {name!r}; the model has: {', '.join(names) or 'none'}")
    check_unmerged(model, f"switching to adapter {name!r}", allowed=name, layers=layers)
    for _, layer in layers:
        layer.set_adapter(name if name in layer.adapters else None)
    _freeze_inactive(model, layers)
    return model


def _freeze_inactive(model: Module, layers: list | None = None) -> None:
    """Adapters other than the active one never train (nor hold optimizer state)."""
    for _, layer in _wrapped(model) if layers is None else layers:
        for n, ad in layer.adapters.items():
            ad.requires_grad_(n == layer.active)


def delete_adapter(model: Module, name: str) -> Module:
    """Remove adapter `name` everywhere; a layer left with no adapter becomes its plain module again."""
    layers = [(n, layer) for n, layer in _wrapped(model) if name in layer.adapters]
    if not layers:
        raise KeyError(
            f"no adapter named {name!r}; the model has: {', '.join(adapter_names(model)) or 'none'}"
        )
    check_unmerged(model, f"deleting adapter {name!r}", only=name)
    was_active = active_adapter(model) == name
    for path, layer in layers:
        layer.delete_adapter(name)
        if not len(layer.adapters):
            model.set_submodule(path, layer.base)
    remaining = adapter_names(model)
    if was_active and remaining:  # as PEFT does: another adapter takes over
        set_adapter(model, remaining[0])
    return model


@contextlib.contextmanager
def disable_adapters(model: Module):
    """Inside this block every adapted layer computes exactly its base output (and saved modules their original)."""
    check_unmerged(model, "disable_adapters")
    layers = [layer for _, layer in _wrapped(model)]
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
    """Merge the active adapters and put plain modules back (no LoRA left; saved modules keep the active copy)."""
    _check_untied(model)
    for path, layer in _wrapped(model):
        if isinstance(layer, LoRALayer):
            layer.merge()
            model.set_submodule(path, layer.base)
        else:
            model.set_submodule(path, layer.current())
    return model


def mark_only_lora_trainable(model: Module, bias: str = "none", modules_to_save=None) -> Module:
    """Freeze every parameter except the active adapters' (and their modules_to_save copies).

    bias="all" also trains every bias, bias="lora_only" the biases of adapted layers;
    modules_to_save (names, matched like target_modules) also train fully, e.g. a new classifier head.
    """
    check_bias("mark_only_lora_trainable", bias)
    found = [model.get_submodule(p) for p in find_modules_to_save(model, modules_to_save)]
    model.requires_grad_(False)
    _freeze_inactive(model)
    for _, layer in lora_layers(model):
        if bias == "lora_only" and getattr(layer.base, "bias", None) is not None:
            layer.base.bias.requires_grad_(True)
    if bias == "all":
        originals = [n + ".base." for n, _ in saved_modules(model)]
        for n, p in model.named_parameters():
            if n.endswith("bias") and not n.startswith(tuple(originals)):
                p.requires_grad_(True)
    for m in found:
        (m.current() if isinstance(m, ModulesToSave) else m).requires_grad_(True)
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
        if _inside(name, lora_names):
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
