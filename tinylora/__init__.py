"""tinylora: LoRA from scratch, on a small autograd engine over NumPy (or CuPy)."""

__version__ = "0.1.0"

from .backend import available_backends, get_backend, keep_freed_memory, set_backend, use_backend, xp
from .tensor import (
    Tensor,
    cat,
    enable_grad,
    is_grad_enabled,
    manual_seed,
    no_grad,
    ones,
    rand,
    randn,
    stack,
    tensor,
    to_numpy,
    where,
    zeros,
)
from .gradcheck import GradcheckError, gradcheck
from . import functional, reference
from . import io, nn, models, optim, lora, lowrank, data

__all__ = [
    "Tensor",
    "tensor",
    "no_grad",
    "enable_grad",
    "is_grad_enabled",
    "set_backend",
    "get_backend",
    "use_backend",
    "available_backends",
    "xp",
    "keep_freed_memory",
    "to_numpy",
    "gradcheck",
    "GradcheckError",
    "manual_seed",
    "zeros",
    "ones",
    "randn",
    "rand",
    "cat",
    "stack",
    "where",
    "functional",
    "reference",
    "io",
    "nn",
    "models",
    "optim",
    "lora",
    "lowrank",
    "data",
]
