"""LoRAConfig: which layers get adapters (targeting), and what each adapter is (AdapterSettings)."""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from ..nn.checks import flag, integer, number

INITS = ("kaiming", "gaussian", "pissa")
BIAS_MODES = ("none", "all", "lora_only")


@dataclass(frozen=True)
class AdapterSettings:
    """What configures one adapter on one module; LoRAConfig.settings_for(name) makes them, checked."""

    r: int = 8
    alpha: float = 16
    dropout: float = 0.0
    init: str = "kaiming"
    rslora: bool = False
    dora: bool = False
    bias: str = "none"

    @property
    def scaling(self) -> float:
        """alpha / r, or alpha / sqrt(r) with rslora (rank-stabilised LoRA)."""
        return self.alpha / (self.r**0.5 if self.rslora else self.r)


@dataclass
class LoRAConfig:
    """Settings of one adapter, named as in PEFT where PEFT has the same idea.

    target_modules: a tuple of names matched against the end of each module's dotted name
    ("q_proj" matches "blocks.3.attn.q_proj"), or one string used as a regular expression
    that must match the whole name. exclude_modules works the same way, to leave some out.
    modules_to_save: modules (e.g. a classifier head) trained fully and saved with the adapter.
    rank_pattern / alpha_pattern: {pattern: r or alpha} for the modules a pattern matches (PEFT's rule).
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
    rank_pattern: dict = field(default_factory=dict)
    alpha_pattern: dict = field(default_factory=dict)
    dora: bool = False  # DoRA (Liu et al. 2024): a trained magnitude per output row; PEFT's use_dora

    def __post_init__(self):
        self.r = integer("LoRAConfig", "r", self.r, 1)
        self.alpha = number("LoRAConfig", "alpha", self.alpha, 0, above=True)
        self.dropout = number("LoRAConfig", "dropout", self.dropout, 0.0, 1.0, below=True)
        if self.init not in INITS:
            raise ValueError(f"LoRAConfig: init must be one of {', '.join(INITS)}, got {self.init!r}")
        check_bias("LoRAConfig", self.bias)
        self.target_modules = check_patterns("target_modules", self.target_modules)
        if not self.target_modules:
            raise ValueError("LoRAConfig: target_modules is empty; name at least one module")
        self.exclude_modules = check_patterns("exclude_modules", self.exclude_modules)
        self.modules_to_save = tuple(check_patterns("modules_to_save", self.modules_to_save) or ())
        self.rslora = flag("LoRAConfig", "rslora", self.rslora)
        self.dora = flag("LoRAConfig", "dora", self.dora)
        self.rank_pattern = _pattern_dict("rank_pattern", self.rank_pattern, integer_values=True)
        self.alpha_pattern = _pattern_dict("alpha_pattern", self.alpha_pattern, integer_values=False)

    @property
    def scaling(self) -> float:
        """alpha / r, or alpha / sqrt(r) with rslora (rank-stabilised LoRA)."""
        return self.alpha / (self.r**0.5 if self.rslora else self.r)

    def matches(self, name: str) -> bool:
        """True if the module called `name` is a target and not excluded."""
        return match_names(self.target_modules, name) and not match_names(self.exclude_modules, name)

    def settings_for(self, name: str = "") -> AdapterSettings:
        """The settings of the adapter this config puts on module `name` (rank/alpha patterns applied)."""
        r = _pattern_value(self.rank_pattern, name, self.r)
        alpha = _pattern_value(self.alpha_pattern, name, self.alpha)
        return AdapterSettings(r, alpha, self.dropout, self.init, self.rslora, self.dora, self.bias)

    def to_dict(self) -> dict:
        """The config as PEFT's adapter_config.json writes it (PEFT's keys and values only)."""
        names = lambda v: v if isinstance(v, str) else list(v)
        return {
            "peft_type": "LORA",
            "r": self.r,
            "lora_alpha": self.alpha,
            "lora_dropout": self.dropout,
            "target_modules": names(self.target_modules),
            "exclude_modules": names(self.exclude_modules) or None,
            "bias": self.bias,
            "use_rslora": self.rslora,
            "use_dora": self.dora,
            "init_lora_weights": PEFT_INIT[self.init],
            "modules_to_save": list(self.modules_to_save) or None,
            "rank_pattern": dict(self.rank_pattern),
            "alpha_pattern": dict(self.alpha_pattern),
            "fan_in_fan_out": False,
            "task_type": None,
        }

    @classmethod
    def from_dict(cls, d: dict) -> LoRAConfig:
        """A config from PEFT's adapter_config.json (or an older tinylora one); refuses what it cannot honour."""
        if not isinstance(d, dict):
            raise ValueError(f"LoRAConfig.from_dict: expected a dict, got {type(d).__name__}")
        missing = {"r", "lora_alpha", "target_modules"} - set(d)
        if missing:
            raise ValueError(f"LoRAConfig.from_dict: missing keys {sorted(missing)}")
        _refuse_unsupported(d)
        names = lambda v: () if v is None else v if isinstance(v, str) else tuple(v)
        kw = dict(
            r=d["r"],
            alpha=d["lora_alpha"],
            dropout=_or(d.get("lora_dropout"), 0.0),
            target_modules=names(d["target_modules"]),
            exclude_modules=names(d.get("exclude_modules")),
            modules_to_save=names(d.get("modules_to_save")),
            init=_init_from_peft(d),
            rslora=bool(_or(d.get("use_rslora", d.get("rslora")), False)),
            bias=_or(d.get("bias"), "none"),
            rank_pattern=_or(d.get("rank_pattern"), {}),
            alpha_pattern=_or(d.get("alpha_pattern"), {}),
            dora=bool(_or(d.get("use_dora"), False)),
        )
        return cls(**kw)


# PEFT's init_lora_weights for each of our inits (True is PEFT's default: kaiming-uniform A, B = 0)
PEFT_INIT = {"kaiming": True, "gaussian": "gaussian", "pissa": "pissa"}

# PEFT config keys that carry no setting (bookkeeping), and keys whose neutral value we accept
PEFT_BOOKKEEPING = {
    "peft_type", "task_type", "peft_version", "base_model_name_or_path", "revision", "inference_mode",
    "auto_mapping", "megatron_core", "qalora_group_size", "adapter_name", "tinylora_version",
    "weights_sha256", "fingerprint", "init", "rslora",
}  # fmt: skip
KNOWN = {
    "r", "lora_alpha", "lora_dropout", "target_modules", "exclude_modules", "modules_to_save", "bias",
    "use_rslora", "use_dora", "init_lora_weights", "rank_pattern", "alpha_pattern",
}  # fmt: skip


def _or(value, default):
    return default if value is None else value


def _refuse_unsupported(d: dict) -> None:
    """Raise naming every key whose value asks for something tinylora does not implement."""
    bad = [
        f"{k}={v!r}"
        for k, v in d.items()
        if k not in KNOWN | PEFT_BOOKKEEPING and v not in (None, False, {}, [], "")
    ]
    if d.get("peft_type", "LORA") != "LORA":
        bad.insert(0, f"peft_type={d['peft_type']!r} (only LORA files load here)")
    if bad:
        raise ValueError(
            "LoRAConfig.from_dict: the adapter uses settings tinylora cannot honour: " + ", ".join(bad)
        )


def _init_from_peft(d: dict) -> str:
    """Our init name from PEFT's init_lora_weights (or an older tinylora file's init)."""
    if "init_lora_weights" not in d:
        return d.get("init") or "kaiming"
    v = d["init_lora_weights"]
    if v is True or v is False or v is None:  # False: A and B both random; the file's weights replace them
        return "kaiming"
    if v in ("gaussian", "pissa"):
        return v
    raise ValueError(
        f"LoRAConfig.from_dict: init_lora_weights={v!r} changes the base weights in a way tinylora "
        "does not implement (it knows True, False, 'gaussian' and 'pissa')"
    )


def check_patterns(field_name: str, value):
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


def _pattern_dict(field_name: str, value, integer_values: bool) -> dict:
    """{regex: rank (an integer >= 1) or alpha (a number > 0)}, checked."""
    if not isinstance(value, dict):
        raise ValueError(f"LoRAConfig: {field_name} must be a dict {{pattern: value}}, got {value!r}")
    out = {}
    for k, v in value.items():
        if not isinstance(k, str) or not k:
            raise ValueError(f"LoRAConfig: {field_name} keys must be non-empty strings, got {k!r}")
        try:
            re.compile(k)
        except re.error as e:
            raise ValueError(
                f"LoRAConfig: {field_name} key {k!r} is not a valid regular expression: {e}"
            ) from None
        name = f"{field_name}[{k!r}]"
        out[k] = (
            integer("LoRAConfig", name, v, 1)
            if integer_values
            else number("LoRAConfig", name, v, 0, above=True)
        )
    return out


def _pattern_value(patterns: dict, name: str, default):
    """PEFT's rule (get_pattern_key): the first key k with re.match(rf'(.*\\.)?({k})$', name) wins."""
    for key, value in patterns.items():
        if re.match(rf"(.*\.)?({key})$", name):
            return value
    return default


def match_names(patterns, name: str) -> bool:
    """PEFT's rule: a regex must match the whole name; a name matches itself or a '.'-suffix."""
    if isinstance(patterns, str):
        return re.fullmatch(patterns, name) is not None
    return any(name == p or name.endswith("." + p) for p in patterns)


def check_bias(owner: str, bias) -> None:
    """The one check of a bias mode (LoRAConfig, mark_only_lora_trainable)."""
    if bias not in BIAS_MODES:
        raise ValueError(f"{owner}: bias must be one of {', '.join(BIAS_MODES)}, got {bias!r}")


def check_adapter_name(name) -> None:
    """Adapter names become parts of parameter names, so they must be identifiers."""
    if not isinstance(name, str) or not name.isidentifier():
        raise ValueError(f"adapter names must be identifiers (letters, digits, _), got {name!r}")


def adapter_settings(config) -> AdapterSettings:
    """AdapterSettings from settings or a LoRAConfig (its defaults, patterns aside)."""
    return config if isinstance(config, AdapterSettings) else config.settings_for("")
