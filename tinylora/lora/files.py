"""Adapter files in PEFT's layout: adapter_config.json + adapter_model.safetensors.

The safetensors file holds `<module path>.lora_A.weight` (r, in) and `.lora_B.weight`
(out, r) for each adapted layer, plus any trained non-LoRA weights (modules_to_save, trained
biases) under their plain names. The JSON holds the config with PEFT's key names and a
fingerprint of the base (names, shapes and sha256 of the frozen weights), so an adapter
is never silently loaded onto a base it was not trained on.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from .. import __version__, backend
from ..io import WeightFileError, atomic_path, load_weights, save_weights
from ..nn import Embedding, Module
from .config import LoRAConfig
from .layer import LoRALayer, digest
from .model import (
    active_adapter,
    add_adapter,
    apply_lora,
    delete_adapter,
    find_targets,
    lora_layers,
    set_adapter,
)

CONFIG_NAME = "adapter_config.json"
WEIGHTS_NAME = "adapter_model.safetensors"


class AdapterFileError(ValueError):
    """An adapter directory is incomplete, corrupt, or does not fit the model."""


def _base_params(model: Module) -> dict:
    """{plain name: (param, frozen-base digest or None)} for every non-adapter parameter.

    Names are those of the model without LoRA ('blocks.0.attn.q_proj.weight', not
    '...q_proj.base.weight'). An adapted layer reports the digest of its weight as it was
    when the adapter was attached, so merging or a PiSSA init does not change the fingerprint.
    """
    layers = dict(lora_layers(model))
    adapter_prefixes = tuple(_join(n, "adapters.") for n in layers)
    out = {}
    for name, p in model.named_parameters():
        path, _, leaf = name.rpartition(".")  # 'blocks.0.attn.q_proj.base', 'weight'
        owner, _, sub = path.rpartition(".")  # 'blocks.0.attn.q_proj', 'base'
        if path in ("base",) and "" in layers:
            owner, sub = "", "base"
        if sub == "base" and owner in layers:  # a frozen weight inside an adapted layer
            out[_join(owner, leaf)] = (p, layers[owner].base_digest if leaf == "weight" else None)
        elif not name.startswith(adapter_prefixes):
            out[name] = (p, None)
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


def _extras(model: Module, config: LoRAConfig, params: dict) -> dict:
    """Non-LoRA parameters the adapter carries: modules_to_save and trained biases."""
    names = set()
    if config.modules_to_save:  # by module, so that a tied weight (lm_head = tok_emb) is found too
        probe = LoRAConfig(target_modules=config.modules_to_save)
        plain = {id(p): n for n, (p, _) in params.items()}
        for path, mod in model.named_modules():
            if path and probe.matches(path):
                names |= {plain[id(p)] for _, p in mod.named_parameters() if id(p) in plain}
    if config.bias == "all":
        names |= {n for n in params if n.endswith(".bias") or n == "bias"}
    elif config.bias == "lora_only":
        names |= {f"{path}.bias" for path, layer in lora_layers(model) if layer.base.bias is not None}
    return {n: params[n][0] for n in sorted(names) if n in params}


def save_adapter(model: Module, directory, adapter_name: str | None = None) -> dict:
    """Write one adapter (default: the active one) to `directory`; returns sizes of what was written."""
    from .vera import save_vera, vera_layers  # VeRA has its own layout (issue 15)

    if vera_layers(model):
        return save_vera(model, directory)
    name = adapter_name or active_adapter(model)
    if name is None:
        raise ValueError("save_adapter: the model has no active adapter; name one with adapter_name=")
    layers = [(p, layer) for p, layer in lora_layers(model) if name in layer.adapters]
    if not layers:
        raise ValueError(f"save_adapter: no layer has an adapter named {name!r}")
    merged = [p for p, layer in lora_layers(model) if layer.merged]
    if merged:
        raise RuntimeError(f"save_adapter: unmerge_lora(model) first (merged layers: {', '.join(merged)})")
    config = layers[0][1].adapters[name].config
    params = _base_params(model)
    extras = _extras(model, config, params)
    tensors = {}
    for path, layer in layers:  # lora_A/B.weight, lora_magnitude_vector, lora_embedding_A/B
        tensors.update({f"{path}.{k}": p.data for k, p in layer.adapters[name].file_tensors().items()})
    tensors.update({n: p.data for n, p in extras.items()})
    directory = Path(directory)
    if directory.exists() and not directory.is_dir():
        raise NotADirectoryError(
            f"save_adapter: {str(directory)!r} exists and is not a folder; give a folder path"
        )
    weights_path = directory / WEIGHTS_NAME
    # both files are written to temporaries first and renamed over the old ones only when
    # both are complete: a failure part-way leaves an existing adapter loadable
    weights_tmp = atomic_path(weights_path, suffix=".safetensors")
    with weights_tmp as wtmp, atomic_path(directory / CONFIG_NAME) as ctmp:
        save_weights(tensors, wtmp, metadata={"format": "pt"})
        meta = dict(
            config.to_dict(),
            peft_type="LORA",
            adapter_name=name,
            tinylora_version=__version__,
            weights_sha256=hashlib.sha256(wtmp.read_bytes()).hexdigest(),
            fingerprint=_fingerprint(params, set(extras)),
        )
        ctmp.write_text(json.dumps(meta, indent=2) + "\n")
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


def _check_fingerprint(saved: dict, params: dict, directory) -> None:
    """Refuse a base that differs from the one the adapter was trained on, naming what differs."""
    if saved is None:
        return  # an adapter written without a fingerprint: nothing to compare
    modules = saved.get("modules") if isinstance(saved, dict) else None
    if not isinstance(modules, dict) or not all(
        isinstance(e, dict) and isinstance(e.get("shape"), list) and isinstance(e.get("sha256"), str)
        for e in modules.values()
    ):
        raise AdapterFileError(f"{str(directory)!r}: the fingerprint in {CONFIG_NAME} is malformed")
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


def file_shapes(out: int, n_in: int, config: LoRAConfig, module) -> dict:
    """{key suffix: shape} an adapter of `config` on a weight (out, n_in) keeps in its file."""
    if isinstance(getattr(module, "base", module), Embedding):  # the table is (num, dim)
        return {"lora_embedding_A": (config.r, out), "lora_embedding_B": (n_in, config.r)}
    shapes = {"lora_A.weight": (config.r, n_in), "lora_B.weight": (out, config.r)}
    return shapes | ({"lora_magnitude_vector": (out,)} if config.dora else {})


def load_adapter(model: Module, directory, name: str | None = None) -> Module:
    """Load an adapter saved by save_adapter and make it active; all or nothing.

    On a plain base it applies LoRA from the saved config; on a model that already has an
    adapter of that name (and the same config) it loads into it; otherwise it adds a new one.
    Any mismatch (other base, shapes, missing or corrupt files) raises and changes nothing.
    """
    directory = Path(directory)
    meta = read_adapter_config(directory)
    if meta.get("peft_type") == "VERA":
        from .vera import load_vera

        return load_vera(model, directory)
    merged = [p for p, layer in lora_layers(model) if layer.merged]
    if merged:  # loading into a merged adapter would leave its old update in the weights
        raise RuntimeError(f"load_adapter: unmerge_lora(model) first (merged layers: {', '.join(merged)})")
    try:
        config = LoRAConfig.from_dict(meta)
    except (ValueError, TypeError) as e:
        raise AdapterFileError(f"{str(directory / CONFIG_NAME)!r}: bad config: {e}") from None
    weights_path = directory / WEIGHTS_NAME
    if not weights_path.is_file():
        raise FileNotFoundError(f"{str(weights_path)!r} is missing (the adapter directory is incomplete)")
    expected_sha = meta.get("weights_sha256")
    if expected_sha and hashlib.sha256(weights_path.read_bytes()).hexdigest() != expected_sha:
        raise AdapterFileError(
            f"{str(weights_path)!r} does not match its {CONFIG_NAME} (sha256 differs): the file is corrupt "
            "or was replaced after saving"
        )
    try:
        tensors = load_weights(weights_path)
    except WeightFileError as e:
        raise AdapterFileError(str(e)) from None

    params = _base_params(model)
    _check_fingerprint(meta.get("fingerprint"), params, directory)
    targets = find_targets(model, config)
    problems = []
    expected = {}
    for path in targets:
        mod = model.get_submodule(path)
        out, n_in = (mod.base if isinstance(mod, LoRALayer) else mod).weight.shape
        expected.update({f"{path}.{k}": s for k, s in file_shapes(out, n_in, config, mod).items()})
    for key, arr in tensors.items():
        if key in expected:
            if tuple(arr.shape) != expected[key]:
                problems.append(f"{key}: file has {tuple(arr.shape)}, model needs {expected[key]}")
        elif key in params:
            if tuple(arr.shape) != params[key][0].shape:
                problems.append(f"{key}: file has {tuple(arr.shape)}, model has {params[key][0].shape}")
        else:
            problems.append(f"{key}: the model has no such module or parameter")
    problems += [
        f"{key}: missing from the file (expected shape {shape})"
        for key, shape in expected.items()
        if key not in tensors
    ]
    if problems:
        raise AdapterFileError(
            f"adapter in {str(directory)!r} does not fit this model:\n  " + "\n  ".join(problems)
        )

    name = name or meta.get("adapter_name") or "default"
    layers = lora_layers(model)
    existing = {n for _, layer in layers for n in layer.adapters}
    if name in existing:
        have = next(layer.adapters[name].config for _, layer in layers if name in layer.adapters)
        if have.to_dict() != config.to_dict():
            raise AdapterFileError(
                f"the model already has an adapter {name!r} with a different config ({have.to_dict()} vs "
                f"{config.to_dict()}); pass name= to load this one as a new adapter"
            )
    created = None
    try:
        if not layers:
            apply_lora(model, config, adapter_name=name)
            created = "apply"
        elif name not in existing:
            add_adapter(model, name, config)
            created = "add"
        set_adapter(model, name)
        for path, layer in lora_layers(model):
            if name in layer.adapters:
                for part, p in layer.adapters[name].file_tensors().items():
                    p.data = backend.asarray(tensors[f"{path}.{part}"], backend=p.backend).astype(p.dtype)
        params = _base_params(model)
        for key, arr in tensors.items():
            if key not in expected:
                p = params[key][0]
                p.data = backend.asarray(arr, backend=p.backend).astype(p.dtype)
    except Exception:
        if created:
            delete_adapter(model, name)  # back to the model as it was
        raise
    return model
