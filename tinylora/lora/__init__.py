"""LoRA: adapters beside a frozen base (inject, train, merge, swap, save and load)."""

from .config import AdapterSettings, LoRAConfig
from .dora import dora_linear
from .embedding import EmbeddingAdapter, LoRAEmbedding
from .files import AdapterFileError, load_adapter, read_adapter_config, save_adapter
from .layer import Adapter, LoRALayer, LoRALinear
from .loraplus import create_loraplus_optimizer, loraplus_param_groups
from .model import (
    ModulesToSave,
    ParameterReport,
    active_adapter,
    adapter_names,
    add_adapter,
    apply_lora,
    count_parameters,
    delete_adapter,
    disable_adapters,
    find_targets,
    lora_layers,
    mark_only_lora_trainable,
    merge_and_unload,
    merge_lora,
    parameter_report,
    saved_modules,
    set_adapter,
    unmerge_lora,
)
from .vera import VeRAConfig, VeRALinear, apply_vera, load_vera, save_vera
from .weighted import add_weighted_adapter

__all__ = [
    "LoRAConfig",
    "AdapterSettings",
    "ModulesToSave",
    "saved_modules",
    "LoRALinear",
    "Adapter",
    "apply_lora",
    "add_adapter",
    "set_adapter",
    "delete_adapter",
    "disable_adapters",
    "merge_lora",
    "unmerge_lora",
    "merge_and_unload",
    "mark_only_lora_trainable",
    "count_parameters",
    "parameter_report",
    "ParameterReport",
    "save_adapter",
    "load_adapter",
    "read_adapter_config",
    "AdapterFileError",
    "lora_layers",
    "adapter_names",
    "active_adapter",
    "find_targets",
    "add_weighted_adapter",
    "LoRALayer",
    "LoRAEmbedding",
    "EmbeddingAdapter",
    "dora_linear",
    "create_loraplus_optimizer",
    "loraplus_param_groups",
    "VeRAConfig",
    "VeRALinear",
    "apply_vera",
    "save_vera",
    "load_vera",
]
