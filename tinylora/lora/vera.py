"""VeRA (Kopiczko et al. 2024): one frozen random pair A, B shared by every adapted layer.

Each layer trains only two vectors, d = vera_lambda_d (r,) and b = vera_lambda_b (out,):

    y = W x + bias + b * (B[:out] (d * (A[:, :in] x)))        change to W: diag(b) B diag(d) A

As in PEFT, A (r, max in) and B (max out, r) have the largest shape among the targets and each
layer uses its top-left slice; both are regenerated from projection_prng_key, so a file
holds only the vectors. b starts at 0 (the output is unchanged), d at d_initial.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .. import backend
from .. import functional as F
from .._version import __version__
from ..io import WeightFileError, atomic_path, load_weights, read_metadata, save_weights
from ..nn import Linear, Module, Parameter
from ..nn.checks import integer, number
from .config import check_patterns, match_names
from .files import (
    CONFIG_NAME,
    WEIGHTS_NAME,
    AdapterFileError,
    _base_params,
    _check_fingerprint,
    _fingerprint,
    read_adapter_config,
)
from .layer import AdapterBase, LoRALayer
from .model import delete_adapter, find_targets, lora_layers, mark_only_lora_trainable

PREFIX = "base_model.model."


@dataclass
class VeRAConfig:
    """VeRA's settings, named as in PEFT's VeraConfig."""

    r: int = 256
    target_modules: tuple | str = ("q_proj", "v_proj")
    projection_prng_key: int = 0
    d_initial: float = 0.1
    exclude_modules: tuple | str = ()
    bias: str = "none"
    modules_to_save: tuple = ()

    def __post_init__(self):
        self.r = integer("VeRAConfig", "r", self.r)
        if self.r < 1:
            raise ValueError(f"VeRAConfig: r must be a positive integer, got {self.r!r}")
        self.projection_prng_key = integer("VeRAConfig", "projection_prng_key", self.projection_prng_key)
        self.d_initial = number("VeRAConfig", "d_initial", self.d_initial)
        if self.bias != "none" or self.modules_to_save:
            raise ValueError("VeRAConfig: only bias='none' and no modules_to_save are supported here")
        self.target_modules = check_patterns("target_modules", self.target_modules)
        if not self.target_modules:
            raise ValueError("VeRAConfig: target_modules is empty; name at least one module")
        self.exclude_modules = check_patterns("exclude_modules", self.exclude_modules)
        self.modules_to_save = ()

    def matches(self, name: str) -> bool:
        """True if the module called `name` is a target and not excluded."""
        return match_names(self.target_modules, name) and not match_names(self.exclude_modules, name)

    def to_dict(self) -> dict:
        """PEFT's VeraConfig keys (save_projection false: the pair is regenerated from the key)."""
        names = lambda v: v if isinstance(v, str) else list(v)
        return {
            "peft_type": "VERA",
            "r": self.r,
            "target_modules": names(self.target_modules),
            "exclude_modules": names(self.exclude_modules) or None,
            "projection_prng_key": self.projection_prng_key,
            "d_initial": self.d_initial,
            "save_projection": False,
            "vera_dropout": 0.0,
            "bias": "none",
            "fan_in_fan_out": False,
            "modules_to_save": None,
            "init_weights": True,
        }

    @classmethod
    def from_dict(cls, d: dict) -> VeRAConfig:
        """Build a config from to_dict()'s output (PEFT's keys); other keys must be at their defaults."""
        if d.get("peft_type") != "VERA":
            raise ValueError(f"VeRAConfig.from_dict: peft_type must be 'VERA', got {d.get('peft_type')!r}")
        if d.get("vera_dropout") or d.get("fan_in_fan_out") or d.get("bias", "none") != "none":
            raise ValueError(
                "VeRAConfig.from_dict: vera_dropout, fan_in_fan_out and bias are not supported here"
            )
        names = lambda v: v if isinstance(v, str) else tuple(v or ())
        return cls(
            r=d["r"],
            target_modules=names(d["target_modules"]),
            exclude_modules=names(d.get("exclude_modules")),
            projection_prng_key=d.get("projection_prng_key", 0),
            d_initial=d.get("d_initial", 0.1),
        )


def projections(config: VeRAConfig, out_max: int, in_max: int, dtype=np.float32):
    """The shared frozen pair: A (r, in_max), B (out_max, r), kaiming-uniform from the key, as PEFT."""
    rng = np.random.default_rng(config.projection_prng_key)
    a = rng.uniform(-1, 1, (config.r, in_max)) * math.sqrt(6.0 / in_max)  # bound sqrt(6 / fan_in)
    b = rng.uniform(-1, 1, (out_max, config.r)) * math.sqrt(6.0 / config.r)
    return a.astype(dtype), b.astype(dtype)


class VeRAAdapter(AdapterBase):
    """vera_lambda_d (r,) and vera_lambda_b (out,), trained; the shared A, B are plain arrays."""

    def __init__(self, vera_A, vera_B, in_features: int, out_features: int, config: VeRAConfig, dtype):
        super().__init__()
        self.config, self.r, self.dora, self.pissa_offset = config, config.r, False, None
        self.vera_A, self.vera_B = vera_A, vera_B  # shared by every layer: not Parameters, not saved
        self._sliced = {}  # (backend, pair) -> (A[:, :in], B[:out]) on that backend
        self.in_features, self.out_features = in_features, out_features
        self.vera_lambda_d = Parameter(np.full((config.r,), config.d_initial, dtype))
        self.vera_lambda_b = Parameter(np.zeros((out_features,), dtype))

    def sliced(self, like):
        """A[:, :in] (r, in) and B[:out] (out, r), on the backend of `like`."""
        name = backend.backend_of(like)
        key = (name, id(self.vera_A), id(self.vera_B))
        if key not in self._sliced:  # copied to the device once, not at every step
            a = backend.asarray(self.vera_A[:, : self.in_features], backend=name)
            b = backend.asarray(self.vera_B[: self.out_features], backend=name)
            self._sliced = {key: (a, b)}
        return self._sliced[key]

    def delta(self):
        """diag(b) B diag(d) A: the (out, in) change this adapter makes to the weight."""
        d, b = self.vera_lambda_d.data, self.vera_lambda_b.data
        sa, sb = self.sliced(d)
        return (b[:, None] * sb) @ (d[:, None] * sa)

    def file_tensors(self) -> dict:
        return {"vera_lambda_b": self.vera_lambda_b, "vera_lambda_d": self.vera_lambda_d}

    def extra_repr(self) -> str:
        return f"r={self.r} (shared A {self.vera_A.shape}, B {self.vera_B.shape})"


class VeRALinear(LoRALayer):
    """A frozen nn.Linear with one VeRA adapter (lora.apply_vera builds these)."""

    def __init__(self, base: Linear, vera_A, vera_B, config: VeRAConfig, adapter_name: str = "default"):
        super().__init__()
        if not isinstance(base, Linear):
            raise TypeError(f"VeRALinear wraps an nn.Linear, got {type(base).__name__}")
        self._init_layer(base)
        out, n_in = base.weight.shape
        self.adapters[adapter_name] = VeRAAdapter(vera_A, vera_B, n_in, out, config, base.weight.dtype)
        for p in self.adapters[adapter_name].parameters():
            p.data = backend.asarray(p.data, backend=base.weight.backend)
        self.active = adapter_name
        base.requires_grad_(False)

    def add_adapter(self, name: str, config) -> None:
        raise TypeError(
            f"a VeRA layer holds one adapter; cannot add {name!r} (undo VeRA with merge_and_unload, "
            "or apply LoRA to a model without VeRA)"
        )

    def forward(self, x):
        if self.active is None or self.disabled:
            return self.base(x)  # (..., out)
        ad = self.adapters[self.active]
        if self.merged is not None:
            self._check_trainable_while_merged(ad)
            return self.base(x)
        sa, sb = ad.sliced(self.base.weight.data)  # (r, in), (out, r)
        h = F.linear(x, sa) * ad.vera_lambda_d  # (..., r)
        return self.base(x) + F.linear(h, sb) * ad.vera_lambda_b  # (..., out)


def apply_vera(model: Module, config: VeRAConfig, adapter_name: str = "default") -> Module:
    """Replace each targeted nn.Linear with a VeRALinear; only the vectors d and b train."""
    if not isinstance(config, VeRAConfig):
        raise TypeError(f"apply_vera takes a lora.VeRAConfig, got {type(config).__name__}")
    if lora_layers(model):
        raise ValueError("apply_vera: the model already has adapters; VeRA goes on a plain base")
    targets = find_targets(model, config)
    mods = {n: model.get_submodule(n) for n in targets}
    bad = [f"{n} ({type(m).__name__})" for n, m in mods.items() if not isinstance(m, Linear)]
    if bad:
        raise ValueError(f"VeRA adapts nn.Linear layers only; target_modules also matches {', '.join(bad)}")
    out_max = max(m.weight.shape[0] for m in mods.values())
    in_max = max(m.weight.shape[1] for m in mods.values())
    dtype = next(iter(mods.values())).weight.dtype
    vera_A, vera_B = projections(config, out_max, in_max, dtype)
    for n, m in mods.items():
        model.set_submodule(n, VeRALinear(m, vera_A, vera_B, config, adapter_name))
    mark_only_lora_trainable(model, "none", ())
    return model


def vera_layers(model: Module) -> list:
    """(dotted name, VeRALinear) for every VeRA layer."""
    return [(n, m) for n, m in model.named_modules() if isinstance(m, VeRALinear)]


def save_vera(model: Module, directory) -> dict:
    """Write the VeRA adapter in PEFT's layout: only the vectors (the pair comes from the key)."""
    layers = vera_layers(model)
    if not layers:
        raise ValueError("save_vera: the model has no VeRA layers")
    if any(layer.merged for _, layer in layers):
        raise RuntimeError("save_vera: unmerge_lora(model) first")
    ad0 = layers[0][1]._adapter()
    tensors = {
        f"{PREFIX}{path}.{k}": p.data
        for path, layer in layers
        for k, p in layer._adapter().file_tensors().items()
    }
    directory = Path(directory)
    if directory.exists() and not directory.is_dir():
        raise NotADirectoryError(
            f"save_vera: {str(directory)!r} exists and is not a folder; give a folder path"
        )
    fingerprint = _fingerprint(_base_params(model), set())
    meta = {"format": "pt", "tinylora_version": __version__, "tinylora_fingerprint": fingerprint}
    with (
        atomic_path(directory / WEIGHTS_NAME, suffix=".safetensors") as wtmp,
        atomic_path(directory / CONFIG_NAME) as ctmp,
    ):
        save_weights(tensors, wtmp, metadata=meta)
        ctmp.write_text(json.dumps(ad0.config.to_dict(), indent=2) + "\n")
    return {
        "directory": str(directory),
        "parameters": sum(int(t.size) for t in tensors.values()),
        "weights_bytes": (directory / WEIGHTS_NAME).stat().st_size,
    }


def load_vera(model: Module, directory) -> Module:
    """Load a VeRA adapter saved by save_vera onto a plain base (or its VeRA model); all or nothing."""
    directory = Path(directory)
    try:
        config = VeRAConfig.from_dict(read_adapter_config(directory))
    except (KeyError, ValueError, TypeError) as e:
        raise AdapterFileError(f"{str(directory / CONFIG_NAME)!r}: bad VeRA config: {e}") from None
    path = directory / WEIGHTS_NAME
    if not path.is_file():
        raise FileNotFoundError(f"{str(path)!r} is missing (the adapter directory is incomplete)")
    try:
        tensors, meta = load_weights(path), read_metadata(path)
    except WeightFileError as e:
        raise AdapterFileError(str(e)) from None
    if "tinylora_fingerprint" in meta:
        _check_fingerprint(meta["tinylora_fingerprint"], _base_params(model), directory)
    tensors = {k.removeprefix(PREFIX): v for k, v in tensors.items()}
    had = bool(vera_layers(model))
    expected = {}
    for n in find_targets(model, config):
        out = (
            model.get_submodule(n).weight.shape[0] if not had else model.get_submodule(n).base.weight.shape[0]
        )
        expected |= {f"{n}.vera_lambda_b": (out,), f"{n}.vera_lambda_d": (config.r,)}
    problems = [
        f"{k}: missing from the file (expected shape {s})" for k, s in expected.items() if k not in tensors
    ]
    problems += [f"{k}: the model has no such VeRA vector" for k in tensors if k not in expected]
    problems += [
        f"{k}: file has {tuple(v.shape)}, model needs {expected[k]}"
        for k, v in tensors.items()
        if k in expected and tuple(v.shape) != expected[k]
    ]
    if problems:
        raise AdapterFileError(
            f"VeRA adapter in {str(directory)!r} does not fit this model:\n  " + "\n  ".join(problems)
        )
    if had:
        old = vera_layers(model)[0][1]._adapter().config
        if old.to_dict() != config.to_dict():
            raise AdapterFileError(
                f"the model's VeRA config {old.to_dict()} differs from the file's {config.to_dict()}"
            )
    else:
        apply_vera(model, config)
    try:
        for n, layer in vera_layers(model):
            for k, p in layer._adapter().file_tensors().items():
                p.data = backend.asarray(tensors[f"{n}.{k}"], backend=p.backend).astype(p.dtype)
    except Exception:
        if not had:
            delete_adapter(model, "default")
        raise
    return model
