"""tinylora: LoRA from scratch, on a small autograd engine over NumPy (or CuPy)."""

from ._version import __version__
from .backend import available_backends, get_backend, keep_freed_memory, set_backend, use_backend, xp
from .tensor import Tensor, as_tensor, enable_grad, is_grad_enabled, no_grad, to_numpy
from .factories import cat, manual_seed, ones, rand, randn, stack, tensor, where, zeros
from .gradcheck import GradcheckError, gradcheck
from . import functional, reference
from . import io, nn, models, optim, lora, lowrank, data

__all__ = [
    "__version__",
    "Tensor",
    "tensor",
    "as_tensor",
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
