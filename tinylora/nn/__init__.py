"""Layers and the Module container (no LoRA here: that lives in tinylora.lora)."""

from .layers import GELU, Dropout, Embedding, Identity, LayerNorm, Linear, ReLU, RMSNorm, SiLU, Tanh
from .module import IncompatibleKeys, Module, ModuleDict, ModuleList, Parameter, Sequential, StateDictError

__all__ = [
    "Module",
    "Parameter",
    "Sequential",
    "ModuleList",
    "ModuleDict",
    "StateDictError",
    "IncompatibleKeys",
    "Linear",
    "Embedding",
    "LayerNorm",
    "RMSNorm",
    "Dropout",
    "GELU",
    "ReLU",
    "SiLU",
    "Tanh",
    "Identity",
]
