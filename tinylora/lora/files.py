"""Adapter files that Hugging Face PEFT reads and writes: adapter_config.json + adapter_model.safetensors.

The safetensors file keys each tensor as PEFT does: `base_model.model.<module path>.lora_A.weight`
(r, in), `.lora_B.weight` (out, r), `.lora_magnitude_vector` (DoRA), a trained bias of an adapted
layer as `.base_layer.bias`, and a module in modules_to_save under its plain name. Module paths
are the Hugging Face model's when the model says how its names map (`peft_module_names()`, and
`peft_row_order(path)` for rows stored in another order, e.g. RoPE-permuted q/k rows of a GGUF
file). The JSON holds PEFT's keys only. What only tinylora needs (its version, a fingerprint of
the frozen base that refuses a mismatched one, a checksum of the tensors) is in the safetensors
metadata, where PEFT does not look. Files written by older tinylora versions still load.
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from pathlib import Path

import numpy as np

from .. import backend
from .._version import __version__
from ..io import WeightFileError, atomic_path, load_weights, read_metadata, save_weights
from ..lowrank import lora_from_delta
from ..nn import Embedding, Linear, Module
from .config import LoRAConfig, check_adapter_name, match_names
from .layer import LoRALayer, digest
from .model import (
    ModulesToSave,
    active_adapter,
    adapter_names,
    attach_adapter,
    check_unmerged,
    delete_adapter,
    lora_layers,
    mark_only_lora_trainable,
    set_adapter,
)

CONFIG_NAME = "adapter_config.json"
WEIGHTS_NAME = "adapter_model.safetensors"
PREFIX = "base_model.model."  # PEFT's PeftModel -> LoraModel -> the model
WEIGHT_SUFFIX = ("lora_A", "lora_B")  # nn.Linear modules in PEFT, so their keys end in ".weight"
OUT_AXIS = ("lora_B", "lora_magnitude_vector", "vera_lambda_b", "weight", "bias")  # axis 0 is `out`


class AdapterFileError(ValueError):
    """An adapter directory is incomplete, corrupt, or does not fit the model."""


# ---- names: tinylora's module paths <-> the Hugging Face model's ------------------------------------


class NameMap:
    """tinylora module paths <-> Hugging Face module paths, and rows stored in another order."""

    def __init__(self, model: Module, identity: bool = False):
        hf = getattr(model, "peft_module_names", None)
        self.to_hf = {} if identity or hf is None else dict(hf())
        self.from_hf = {v: k for k, v in self.to_hf.items()}
        self.rows = None if identity else getattr(model, "peft_row_order", None)

    def hf(self, path: str) -> str:
        return self.to_hf.get(path, path)

    def ours(self, hf_path: str) -> str:
        return self.from_hf.get(hf_path, hf_path)

    def to_file(self, path: str, param: str, array):
        """The array as the Hugging Face model lays it out (rows of q/k un-permuted)."""
        order = self.rows(path) if self.rows and param in OUT_AXIS else None
        return array if order is None else array[order]

    def from_file(self, path: str, param: str, array):
        order = self.rows(path) if self.rows and param in OUT_AXIS else None
        return array if order is None else array[np.argsort(order)]


def file_key(hf_path: str, param: str) -> str:
    """PEFT's key of an adapter tensor: lora_A/lora_B end in '.weight', the others do not."""
    return f"{PREFIX}{hf_path}.{param}" + (".weight" if param in WEIGHT_SUFFIX else "")


def split_key(key: str) -> tuple:
    """(hf module path, our parameter name, kind) of a PEFT key (PREFIX already removed)."""
    for param in WEIGHT_SUFFIX:
        if key.endswith(f".{param}.weight"):
            return key[: -len(param) - 8], param, "adapter"
    path, _, leaf = key.rpartition(".")
    if leaf.startswith(("lora_", "vera_")):
        return path, leaf, "adapter"
    if path.endswith(".base_layer"):  # a bias (or PEFT's copy of an embedding) of an adapted layer
        return path[: -len(".base_layer")], leaf, "base"
    return path, leaf, "module"


# ---- what the frozen base is: names and fingerprint --------------------------------------------------


def _holders(model: Module) -> dict:
    """{path: LoRA layer or ModulesToSave} for every module that holds adapters."""
    return {n: m for n, m in model.named_modules() if isinstance(m, (LoRALayer, ModulesToSave))}


def _base_params(model: Module) -> dict:
    """{plain name: (param, frozen-base digest or None)} for every non-adapter parameter.

    Names are those of the model without LoRA ('blocks.0.attn.q_proj.weight', not
    '...q_proj.base.weight'). An adapted layer reports the digest of its weight as it was
    when the adapter was attached, so merging or a PiSSA init does not change the fingerprint.
    """
    holders = _holders(model)
    skip = tuple(_join(n, "adapters.") for n in holders)
    out = {}
    for name, p in model.named_parameters():
        if name.startswith(skip):
            continue
        plain, known = name, None
        for path, holder in holders.items():
            base = _join(path, "base.")
            if name.startswith(base) and "." not in name[len(base) :]:
                plain = _join(path, name[len(base) :])
                if isinstance(holder, LoRALayer) and plain.endswith("weight"):
                    known = holder.base_digest
        out[plain] = (p, known)
    return out


def _join(path: str, leaf: str) -> str:
    return f"{path}.{leaf}" if path else leaf


def _fingerprint(params: dict, skip: set) -> dict:
    """Shapes and sha256 of the frozen base weights (everything not saved in the adapter)."""
    modules = {}
    for name, (p, known) in params.items():
        if name in skip:
            continue
        modules[name] = {"shape": list(p.shape), "sha256": known or digest(p.data)}
    overall = hashlib.sha256(json.dumps(modules, sort_keys=True).encode()).hexdigest()
    return {"sha256": overall, "modules": modules}


def _tensors_digest(tensors: dict) -> str:
    """sha256 of every tensor (sorted by key): the checksum kept in the file's metadata."""
    h = hashlib.sha256()
    for k in sorted(tensors):
        h.update(k.encode())
        h.update(digest(tensors[k]).encode())
    return h.hexdigest()


# ---- saving -----------------------------------------------------------------------------------------


def save_adapter(model: Module, directory, adapter_name: str | None = None) -> dict:
    """Write one adapter (default: the active one) as PEFT writes it; returns sizes of what was written."""
    from .vera import save_vera, vera_layers  # hook: VeRA has its own layout (lora/vera.py)

    if vera_layers(model):
        return save_vera(model, directory)
    name = adapter_name or active_adapter(model)
    if name is None:
        raise ValueError("save_adapter: the model has no active adapter; name one with adapter_name=")
    layers = [(p, layer) for p, layer in lora_layers(model) if name in layer.adapters]
    if not layers:
        raise ValueError(f"save_adapter: no layer has an adapter named {name!r}")
    check_unmerged(model, "save_adapter")
    directory = Path(directory)
    if directory.exists() and not directory.is_dir():
        raise NotADirectoryError(
            f"save_adapter: {str(directory)!r} exists and is not a folder; give a folder path"
        )
    names = NameMap(model)
    settings = {path: _settings(layer.adapters[name]) for path, layer in layers}
    config = peft_config(model, name, settings, names)
    tensors, trained = adapter_tensors(model, name, settings, names)
    metadata = {
        "format": "pt",
        "tinylora_version": json.dumps(__version__),  # JSON strings: read_metadata decodes them
        "tinylora_adapter_name": json.dumps(name),
        "tinylora_fingerprint": json.dumps(_fingerprint(_base_params(model), trained)),
        "tinylora_tensors_sha256": json.dumps(_tensors_digest(tensors)),
    }
    # both files are written to temporaries first and renamed over the old ones only when
    # both are complete: a failure part-way leaves an existing adapter loadable
    weights_path = directory / WEIGHTS_NAME
    with (
        atomic_path(weights_path, suffix=".safetensors") as wtmp,
        atomic_path(directory / CONFIG_NAME) as ctmp,
    ):
        save_weights(tensors, wtmp, metadata=metadata)
        _sort_metadata(wtmp)
        ctmp.write_text(json.dumps(config, indent=2) + "\n")
    n_params = sum(int(t.size) for t in tensors.values())
    payload = sum(int(t.nbytes) for t in tensors.values())
    size = weights_path.stat().st_size
    return {
        "directory": str(directory),
        "adapter_name": name,
        "parameters": n_params,
        "weights_bytes": size,
        "payload_bytes": payload,
        "header_bytes": size - payload,
        "config_bytes": (directory / CONFIG_NAME).stat().st_size,
    }


def _sort_metadata(path: Path) -> None:
    """Rewrite the safetensors header with its metadata keys sorted, so equal adapters give equal bytes.

    (safetensors keeps metadata in a hash map: its order changes from one save to the next.)
    """
    raw = path.read_bytes()
    n = int.from_bytes(raw[:8], "little")
    header = json.loads(raw[8 : 8 + n])
    header["__metadata__"] = dict(sorted(header.get("__metadata__", {}).items()))
    text = json.dumps({"__metadata__": header.pop("__metadata__"), **header}, separators=(",", ":"))
    path.write_bytes(raw[:8] + text.encode().ljust(n) + raw[8 + n :])


def _settings(adapter) -> dict:
    """The per-adapter settings of one layer's adapter, as plain values."""
    c = adapter.config
    return {
        "r": c.r,
        "alpha": c.alpha,
        "dropout": c.dropout,
        "init": c.init,
        "rslora": c.rslora,
        "dora": bool(getattr(c, "dora", False)),
        "bias": getattr(c, "bias", "none"),
        "pissa": getattr(adapter, "pissa_offset", None) is not None,
    }


def peft_config(model: Module, name: str, settings: dict, names: NameMap) -> dict:
    """PEFT's adapter_config.json for adapter `name`, derived from the layers that hold it."""
    shared = {}
    for key in ("dropout", "rslora", "dora", "bias", "init"):
        values = {s[key] for s in settings.values()}
        if len(values) > 1:
            raise ValueError(
                f"save_adapter: adapter {name!r} has different {key} in different layers ({sorted(values)}); "
                "a PEFT file holds one value per adapter"
            )
        shared[key] = values.pop()
    pissa = any(s["pissa"] for s in settings.values())
    rank = {path: s["r"] * (2 if s["pissa"] else 1) for path, s in settings.items()}  # see _pissa_as_lora
    alpha = {path: _file_alpha(s) for path, s in settings.items()}
    r, lora_alpha = Counter(rank.values()).most_common(1)[0][0], Counter(alpha.values()).most_common(1)[0][0]
    targets = [names.hf(p) for p in settings]
    holders = list(_holders(model))
    every = [p for p, _ in model.named_modules() if p and not any(p.startswith(h + ".") for h in holders)]
    every = [names.hf(p) for p in every if not names.to_hf or p in names.to_hf]
    saves = [
        names.hf(p) for p, m in model.named_modules() if isinstance(m, ModulesToSave) and name in m.adapters
    ]
    config = LoRAConfig(
        r=r,
        alpha=lora_alpha,
        dropout=shared["dropout"],
        target_modules=tuple(_target_names(targets, every)),
        init="kaiming" if pissa else shared["init"],
        rslora=shared["rslora"],
        bias=shared["bias"],
        modules_to_save=tuple(saves),
        rank_pattern={names.hf(p): v for p, v in rank.items() if v != r},
        alpha_pattern={names.hf(p): v for p, v in alpha.items() if v != lora_alpha},
    )
    out = config.to_dict()
    out["use_dora"] = shared["dora"]
    out["base_model_name_or_path"] = getattr(model, "peft_base_model", None)
    return out


def _file_alpha(s: dict):
    """lora_alpha in the file: a PiSSA adapter written as rank 2r keeps its scaling (PEFT does the same)."""
    if not s["pissa"]:
        return s["alpha"]
    return s["alpha"] * (2**0.5 if s["rslora"] else 2)


def _target_names(targets: list, every: list) -> list:
    """target_modules for exactly `targets` among `every` module path: each leaf name that picks
    out only targets (PEFT's suffix rule: "q_proj"), and the full path of the others."""
    chosen = []
    for path in targets:
        leaf = path.rpartition(".")[2]
        exact = all(p in targets for p in every if match_names((leaf,), p))
        name = leaf if exact else path
        if name not in chosen:
            chosen.append(name)
    return chosen


def adapter_tensors(model: Module, name: str, settings: dict, names: NameMap) -> tuple:
    """({PEFT key: array} of adapter `name`, set of plain names of base parameters it trains)."""
    tensors, trained = {}, set()
    for path, layer in lora_layers(model):
        if name not in layer.adapters:
            continue
        hf, ad = names.hf(path), layer.adapters[name]
        arrays = {p: backend.to_numpy(t.data) for p, t in ad.named_parameters() if "." not in p}
        if getattr(ad, "pissa_offset", None) is not None:
            arrays = _pissa_as_lora(ad, arrays)
        for param, arr in arrays.items():
            tensors[file_key(hf, param)] = names.to_file(path, param, arr)
    bias = next(iter(settings.values()))["bias"]
    params = _base_params(model)
    adapted = {path for path, _ in lora_layers(model)}
    if bias != "none":
        for plain, (p, _) in params.items():
            path, _, leaf = plain.rpartition(".")
            if leaf == "bias" and (bias == "all" or path in settings):
                where = f"{names.hf(path)}.base_layer" if path in adapted else names.hf(path)
                tensors[f"{PREFIX}{where}.bias"] = names.to_file(path, "bias", backend.to_numpy(p.data))
                trained.add(plain)
    for path, m in model.named_modules():
        if isinstance(m, ModulesToSave) and name in m.adapters:
            for leaf, p in m.adapters[name].named_parameters():
                tensors[f"{PREFIX}{names.hf(path)}.{leaf}"] = names.to_file(
                    path, leaf, backend.to_numpy(p.data)
                )
    return tensors, trained


def _pissa_as_lora(ad, arrays: dict) -> dict:
    """PEFT's conversion of a PiSSA adapter to plain LoRA on the original weights, rank 2r.

    Here the base holds W_res = W - s B0 A0, so the adapter's change to the original W is
    s (B A - B0 A0) = s [B | -B0] [A ; A0]; B0 A0 is refactored from the offset kept at init.
    """
    b0, a0 = lora_from_delta(backend.to_numpy(ad.pissa_offset).astype(np.float64) / ad.scaling, ad.r)
    dtype = arrays["lora_A"].dtype
    if set(arrays) != {"lora_A", "lora_B"}:
        raise ValueError("save_adapter: a PiSSA adapter with DoRA cannot be written as PEFT's LoRA form")
    return {
        "lora_A": np.concatenate([arrays["lora_A"], a0.astype(dtype)], axis=0),  # (2r, in)
        "lora_B": np.concatenate([arrays["lora_B"], -b0.astype(dtype)], axis=1),  # (out, 2r)
    }


# ---- reading ----------------------------------------------------------------------------------------


def read_adapter_config(directory) -> dict:
    """The parsed adapter_config.json of an adapter directory, with clear errors."""
    path = Path(directory) / CONFIG_NAME
    if not Path(directory).is_dir():
        raise FileNotFoundError(f"adapter directory {str(directory)!r} does not exist")
    if not path.is_file():
        raise FileNotFoundError(
            f"{str(path)!r} is missing: not an adapter directory (expected {CONFIG_NAME} and {WEIGHTS_NAME})"
        )
    try:
        meta = json.loads(path.read_text())
    except (ValueError, UnicodeDecodeError) as e:
        raise AdapterFileError(f"{str(path)!r} is not valid JSON (truncated or edited?): {e}") from None
    if not isinstance(meta, dict):
        raise AdapterFileError(f"{str(path)!r} should hold a JSON object, got {type(meta).__name__}")
    return meta


def _read_weights(directory: Path, meta: dict) -> tuple:
    """(tensors, tinylora metadata) of the weights file, checked against its checksum."""
    weights_path = directory / WEIGHTS_NAME
    if not weights_path.is_file():
        raise FileNotFoundError(f"{str(weights_path)!r} is missing (the adapter directory is incomplete)")
    old_sha = meta.get("weights_sha256")  # files of tinylora <= 0.1 kept the checksum in the JSON
    if old_sha and hashlib.sha256(weights_path.read_bytes()).hexdigest() != old_sha:
        raise AdapterFileError(
            f"{str(weights_path)!r} does not match its {CONFIG_NAME} (sha256 differs): the file is corrupt "
            "or was replaced after saving"
        )
    try:
        tensors, info = load_weights(weights_path), read_metadata(weights_path)
    except WeightFileError as e:
        raise AdapterFileError(str(e)) from None
    expected = info.get("tinylora_tensors_sha256")
    if expected and _tensors_digest(tensors) != expected:
        raise AdapterFileError(
            f"{str(weights_path)!r}: its tensors do not match the sha256 saved with them: the file is "
            "corrupt or was edited after saving"
        )
    return tensors, info


def _fingerprint_of(meta: dict, info: dict, directory: Path):
    """The saved fingerprint: in the safetensors metadata, or (older files) in the JSON."""
    return info["tinylora_fingerprint"] if "tinylora_fingerprint" in info else meta.get("fingerprint")


def _check_fingerprint(saved: dict, params: dict, directory) -> None:
    """Refuse a base that differs from the one the adapter was trained on, naming what differs."""
    if saved is None:
        return  # an adapter written without a fingerprint (PEFT's): nothing to compare
    modules = saved.get("modules") if isinstance(saved, dict) else None
    if not isinstance(modules, dict) or not all(
        isinstance(e, dict) and isinstance(e.get("shape"), list) and isinstance(e.get("sha256"), str)
        for e in modules.values()
    ):
        raise AdapterFileError(f"{str(directory)!r}: the fingerprint saved with the adapter is malformed")
    structural, weights = [], []  # missing or mis-shaped parameters first: they say the most
    for name, entry in modules.items():
        if name not in params:
            structural.append(
                f"the model has no parameter {name!r} (shape {tuple(entry['shape'])} in the adapter's base)"
            )
            continue
        p, known = params[name]
        if list(p.shape) != list(entry["shape"]):
            structural.append(
                f"{name}: adapter's base has shape {tuple(entry['shape'])}, this model {p.shape}"
            )
        elif (known or digest(p.data)) != entry["sha256"]:
            weights.append(f"{name}: same shape {p.shape} but different weights")
    problems = structural + weights
    if problems:
        shown = problems[:8] + ([f"... and {len(problems) - 8} more"] if len(problems) > 8 else [])
        raise AdapterFileError(
            f"the adapter in {str(directory)!r} was trained on a different base model "
            f"(fingerprint {saved.get('sha256', '?')[:12]}); {len(problems)} difference(s):\n  "
            + "\n  ".join(shown)
        )


# ---- loading ----------------------------------------------------------------------------------------


class _Plan:
    """What a file puts where: per-layer settings and arrays, modules_to_save arrays, trained biases."""

    def __init__(self):
        self.settings, self.adapter, self.saves, self.base = {}, {}, {}, {}
        self.problems = []


def load_adapter(model: Module, directory, name: str | None = None) -> Module:
    """Load an adapter saved by save_adapter or by PEFT's save_pretrained and make it active; all or nothing.

    On a plain base it applies LoRA from the saved config; on a model that already has an
    adapter of that name (and the same config) it loads into it; otherwise it adds a new one.
    Any mismatch (other base, shapes, missing or corrupt files) raises and changes nothing.
    """
    directory = Path(directory)
    meta = read_adapter_config(directory)
    if meta.get("peft_type") == "VERA":
        from .vera import load_vera  # lazy: vera imports this module

        return load_vera(model, directory)
    check_unmerged(model, "load_adapter")
    try:
        config = LoRAConfig.from_dict(meta)
    except (ValueError, TypeError) as e:
        raise AdapterFileError(f"{str(directory / CONFIG_NAME)!r}: bad config: {e}") from None
    tensors, info = _read_weights(directory, meta)
    _check_fingerprint(_fingerprint_of(meta, info, directory), _base_params(model), directory)
    peft_layout = any(k.startswith(PREFIX) for k in tensors)  # older tinylora files: plain names
    plan = _plan_from_file(model, config, tensors, NameMap(model, identity=not peft_layout), peft_layout)
    if plan.problems:
        raise AdapterFileError(
            f"adapter in {str(directory)!r} does not fit this model:\n  " + "\n  ".join(plan.problems)
        )
    name = name or info.get("tinylora_adapter_name") or meta.get("adapter_name") or "default"
    check_adapter_name(name)
    _install(model, name, config, plan)
    return model


def _plan_from_file(model: Module, config: LoRAConfig, tensors: dict, names: NameMap, peft_layout: bool):
    """Sort the file's tensors into a _Plan, checking each against the config and the model."""
    plan = _Plan()
    holders = _holders(model)
    modules = {
        p: m for p, m in model.named_modules() if p and not any(p.startswith(h + ".") for h in holders)
    }
    for key, arr in tensors.items():
        if peft_layout and not key.startswith(PREFIX):
            plan.problems.append(f"{key}: not a PEFT key (expected the prefix {PREFIX!r})")
            continue
        hf, param, kind = split_key(key[len(PREFIX) :]) if peft_layout else _old_key(key, config)
        path = names.ours(hf)
        if path not in modules:
            plan.problems.append(f"{key}: the model has no such module ({path!r})")
            continue
        arr = names.from_file(path, param, arr)
        if kind == "adapter":
            plan.adapter.setdefault(path, {})[param] = arr
        elif kind == "module" and config.modules_to_save and match_names(config.modules_to_save, hf):
            plan.saves.setdefault(path, {})[param] = arr
        elif param == "bias" and config.bias != "none":
            plan.base[_join(path, "bias")] = arr
        elif kind == "base" and param == "weight":  # PEFT's copy of a targeted embedding: must be ours
            mod = modules[path]
            own = backend.to_numpy((mod.base if isinstance(mod, LoRALayer) else mod).weight.data)
            if own.shape != arr.shape or not np.array_equal(own, arr):
                plan.problems.append(f"{key}: the file's copy of this base weight differs from the model's")
        else:
            plan.problems.append(f"{key}: the config does not say why this tensor is saved (not a LoRA "
                                 "tensor, not in modules_to_save, and bias is 'none')")  # fmt: skip
    _targets_agree(model, config, names, plan, modules)
    _check_shapes(model, plan, modules)
    return plan


def _old_key(key: str, config: LoRAConfig) -> tuple:
    """(module path, parameter, kind) of a key written by tinylora <= 0.1 (no prefix, plain names)."""
    for param in WEIGHT_SUFFIX:
        if key.endswith(f".{param}.weight"):
            return key[: -len(param) - 8], param, "adapter"
    path, _, leaf = key.rpartition(".")
    if leaf == "bias" and config.bias != "none":
        return path, leaf, "base"
    return path, leaf, "module"


def _targets_agree(model: Module, config: LoRAConfig, names: NameMap, plan: _Plan, modules: dict) -> None:
    """The config's targets must be exactly the modules the file holds LoRA tensors for."""
    targeted = []
    for path, mod in modules.items():
        holder = mod.base if isinstance(mod, (LoRALayer, ModulesToSave)) else mod
        if config.matches(names.hf(path)) and (
            isinstance(holder, (Linear, Embedding)) or path in plan.adapter
        ):
            targeted.append(path)
    for path in targeted:
        if path not in plan.adapter:
            plan.problems.append(f"{path}: targeted by target_modules={config.target_modules!r} but the file "
                                 "has no LoRA tensors for it")  # fmt: skip
        else:
            plan.settings[path] = config.settings_for(names.hf(path))
    for path in plan.adapter:
        if path not in targeted:
            plan.problems.append(f"{path}: the file has LoRA tensors for it but target_modules="
                                 f"{config.target_modules!r} does not target it")  # fmt: skip
    if config.modules_to_save:
        for path in modules:
            if match_names(config.modules_to_save, names.hf(path)) and path not in plan.saves:
                if not any(path.startswith(s + ".") for s in plan.saves):
                    plan.problems.append(f"{path}: in modules_to_save but missing from the file")


def _check_shapes(model: Module, plan: _Plan, modules: dict) -> None:
    """Every array must have the shape the model (and the config's rank) needs."""
    for path, arrays in plan.adapter.items():
        settings = plan.settings.get(path)
        mod = modules[path]
        base = mod.base if isinstance(mod, LoRALayer) else mod
        if settings is None or not hasattr(base, "weight"):
            continue
        need = file_shapes(base, settings)
        for param, shape in need.items():
            have = arrays.get(param)
            if have is None:
                plan.problems.append(f"{path}.{param}: missing from the file (expected shape {shape})")
            elif tuple(have.shape) != shape:
                plan.problems.append(f"{path}.{param}: file has {tuple(have.shape)}, model needs {shape}")
        for param in set(arrays) - set(need):
            plan.problems.append(f"{path}.{param}: the config does not use this tensor")
    for path, arrays in plan.saves.items():
        mod = modules[path]
        own = dict((mod.base if isinstance(mod, ModulesToSave) else mod).named_parameters())
        for leaf, arr in arrays.items():
            if leaf not in own:
                plan.problems.append(f"{path}.{leaf}: the model has no such parameter")
            elif tuple(arr.shape) != own[leaf].shape:
                plan.problems.append(
                    f"{path}.{leaf}: file has {tuple(arr.shape)}, model has {own[leaf].shape}"
                )
    params = _base_params(model)
    for plain, arr in plan.base.items():
        if plain not in params:
            plan.problems.append(f"{plain}: the model has no such parameter")
        elif tuple(arr.shape) != params[plain][0].shape:
            plan.problems.append(f"{plain}: file has {tuple(arr.shape)}, model has {params[plain][0].shape}")


def file_shapes(base: Module, settings) -> dict:
    """{parameter: shape} of an adapter with `settings` on module `base`, as PEFT names them."""
    out, n_in = base.weight.shape
    if isinstance(base, Embedding):  # the table is (num, dim)
        return {"lora_embedding_A": (settings.r, out), "lora_embedding_B": (n_in, settings.r)}
    shapes = {"lora_A": (settings.r, n_in), "lora_B": (out, settings.r)}
    return shapes | ({"lora_magnitude_vector": (out,)} if settings.dora else {})


def _install(model: Module, name: str, config: LoRAConfig, plan: _Plan) -> None:
    """Create (or reuse) adapter `name` as the plan says and fill it; a failure leaves the model as it was."""
    had_adapters = bool(adapter_names(model))
    if name in adapter_names(model):
        have = {p: layer.adapters[name].config for p, layer in lora_layers(model) if name in layer.adapters}
        have = {p: (s.r, s.alpha, s.rslora, bool(getattr(s, "dora", False))) for p, s in have.items()}
        want = {p: (s.r, s.alpha, s.rslora, s.dora) for p, s in plan.settings.items()}
        if have != want:
            raise AdapterFileError(
                f"the model already has an adapter {name!r} with a different config; pass name= to load "
                "this one as a new adapter"
            )
        created = False
    else:
        attach_adapter(model, name, plan.settings, list(plan.saves))
        created = True
    try:
        set_adapter(model, name)
        if not had_adapters:
            mark_only_lora_trainable(model, config.bias)
        _fill(model, name, plan)
    except Exception:
        if created:
            delete_adapter(model, name)  # back to the model as it was
        raise


def _fill(model: Module, name: str, plan: _Plan) -> None:
    """Copy the plan's arrays into the adapter's parameters, modules_to_save copies and biases."""

    def put(p, arr):
        p.data = backend.asarray(arr, backend=p.backend).astype(p.dtype)

    for path, arrays in plan.adapter.items():
        ad = model.get_submodule(path).adapters[name]
        for param, arr in arrays.items():
            put(getattr(ad, param), arr)
    for path, arrays in plan.saves.items():
        own = dict(model.get_submodule(path).adapters[name].named_parameters())
        for leaf, arr in arrays.items():
            put(own[leaf], arr)
    params = _base_params(model)
    for plain, arr in plan.base.items():
        put(params[plain][0], arr)
