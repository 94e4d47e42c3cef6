"""LoRAConfig: which layers get adapters, their rank, alpha, dropout and initialisation."""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field

from ..nn.checks import flag, integer, number

INITS = ("kaiming", "gaussian", "pissa")
BIAS_MODES = ("none", "all", "lora_only")


@dataclass
class LoRAConfig:
    """Settings of one adapter, named as in PEFT where PEFT has the same idea.

    target_modules: a tuple of names matched against the end of each module's dotted name
    ("q_proj" matches "blocks.3.attn.q_proj"), or one string used as a regular expression
    that must match the whole name. exclude_modules works the same way, to leave some out.
    modules_to_save: modules (e.g. a classifier head) trained fully and saved with the adapter.
    """

    r: int = 8
    alpha: float = 16
    dropout: float = 0.0
    target_modules: tuple | str = ("q_proj", "v_proj")
    init: str = "kaiming"
    rslora: bool = False
    exclude_modules: tuple | str = ()
    bias: str = "none"
    modules_to_save: tuple = field(default_factory=tuple)
    dora: bool = False  # DoRA (Liu et al. 2024): a trained magnitude per output row; PEFT's use_dora

    def __post_init__(self):
        self.r = integer("LoRAConfig", "r", self.r, 1)
        self.alpha = number("LoRAConfig", "alpha", self.alpha, 0, above=True)
        self.dropout = number("LoRAConfig", "dropout", self.dropout, 0.0, 1.0, below=True)
        if self.init not in INITS:
            raise ValueError(f"LoRAConfig: init must be one of {', '.join(INITS)}, got {self.init!r}")
        if self.bias not in BIAS_MODES:
            raise ValueError(f"LoRAConfig: bias must be one of {', '.join(BIAS_MODES)}, got {self.bias!r}")
        self.target_modules = _patterns("target_modules", self.target_modules)
        if not self.target_modules:
            raise ValueError("LoRAConfig: target_modules is empty; name at least one module")
        self.exclude_modules = _patterns("exclude_modules", self.exclude_modules)
        self.modules_to_save = tuple(_patterns("modules_to_save", self.modules_to_save) or ())
        self.rslora = flag("LoRAConfig", "rslora", self.rslora)
        self.dora = flag("LoRAConfig", "dora", self.dora)

    @property
    def scaling(self) -> float:
        """alpha / r, or alpha / sqrt(r) with rslora (rank-stabilised LoRA)."""
        return self.alpha / (self.r**0.5 if self.rslora else self.r)

    def matches(self, name: str) -> bool:
        """True if the module called `name` is a target and not excluded."""
        return _match(self.target_modules, name) and not _match(self.exclude_modules, name)

    def to_dict(self) -> dict:
        """The config with PEFT's key names (r, lora_alpha, lora_dropout, target_modules, ...)."""
        d = asdict(self)
        return {
            "r": d["r"],
            "lora_alpha": d["alpha"],
            "lora_dropout": d["dropout"],
            "target_modules": list(d["target_modules"])
            if not isinstance(d["target_modules"], str)
            else d["target_modules"],
            "exclude_modules": list(d["exclude_modules"])
            if not isinstance(d["exclude_modules"], str)
            else d["exclude_modules"],
            "modules_to_save": list(d["modules_to_save"]),
            "init": d["init"],
            "rslora": d["rslora"],
            "bias": d["bias"],
            "use_dora": d["dora"],
        }

    @classmethod
    def from_dict(cls, d: dict) -> LoRAConfig:
        """Build a config from to_dict()'s output (PEFT key names); other keys are ignored."""
        if not isinstance(d, dict):
            raise ValueError(f"LoRAConfig.from_dict: expected a dict, got {type(d).__name__}")
        missing = {"r", "lora_alpha", "target_modules"} - set(d)
        if missing:
            raise ValueError(f"LoRAConfig.from_dict: missing keys {sorted(missing)}")
        names = lambda v: v if isinstance(v, str) else tuple(v)
        return cls(
            r=d["r"],
            alpha=d["lora_alpha"],
            dropout=d.get("lora_dropout", 0.0),
            target_modules=names(d["target_modules"]),
            exclude_modules=names(d.get("exclude_modules", ())),
            modules_to_save=names(d.get("modules_to_save", ())),
            init=d.get("init", "kaiming"),
            rslora=d.get("rslora", False),
            bias=d.get("bias", "none"),
            dora=bool(d.get("use_dora") or False),
        )


def _patterns(field_name: str, value):
    """A regex string stays a string; a name or list of names becomes a tuple of names."""
    if isinstance(value, str):
        if field_name == "modules_to_save":
            return (value,)
        try:
            re.compile(value)
        except re.error as e:
            raise ValueError(
                f"LoRAConfig: {field_name} {value!r} is not a valid regular expression: {e}"
            ) from None
        return value
    try:
        names = tuple(value)
    except TypeError:
        raise ValueError(
            f"LoRAConfig: {field_name} must be a string (regex) or a list of names, got {value!r}"
        ) from None
    for n in names:
        if not isinstance(n, str) or not n:
            raise ValueError(f"LoRAConfig: {field_name} entries must be non-empty strings, got {n!r}")
    return names


def _match(patterns, name: str) -> bool:
    """PEFT's rule: a regex must match the whole name; a name matches itself or a '.'-suffix."""
    if isinstance(patterns, str):
        return re.fullmatch(patterns, name) is not None
    return any(name == p or name.endswith("." + p) for p in patterns)
