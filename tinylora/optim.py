"""Optimizers (SGD, Adam, AdamW), a cosine schedule with warm-up, and gradient clipping.

Optimizers keep only parameters that require grad and hold state only for them, so a frozen
base costs nothing here. Updates happen in place on each parameter's array.
"""

from __future__ import annotations

import math

from . import backend
from .nn.checks import flag, integer, number
from .tensor import Tensor


def _param_groups(params, defaults: dict, owner: str = "optimizer") -> list:
    """Normalise params (Tensors, a Module's parameters(), or dicts of groups) into checked groups."""
    if isinstance(params, Tensor):
        raise TypeError(
            f"{owner}: params must be an iterable of Tensors (e.g. model.parameters()), got one Tensor"
        )
    if hasattr(params, "parameters") and callable(params.parameters):
        params = params.parameters()
    params = list(params)
    if not params:
        raise ValueError(f"{owner}: got an empty parameter list; pass model.parameters() (or groups of them)")
    if all(isinstance(g, dict) for g in params):
        groups = [dict(defaults, **g) for g in params]
    else:
        groups = [dict(defaults, params=params)]
    seen, total = set(), 0
    for g in groups:
        ps = list(g["params"])
        for p in ps:
            if not isinstance(p, Tensor):
                raise TypeError(f"{owner}: parameters must be Tensors, got {type(p).__name__}")
            if id(p) in seen:
                raise ValueError(f"{owner}: a parameter appears in more than one group")
            seen.add(id(p))
        _check_hyperparameters(owner, g)
        g["params"] = [p for p in ps if p.requires_grad]  # frozen parameters cost nothing
        total += len(g["params"])
    if not total:
        raise ValueError(
            f"{owner}: none of the {len(seen)} parameters requires grad, so it would train nothing; "
            "unfreeze some (model.requires_grad_(True), or lora.apply_lora) before building the optimizer"
        )
    return groups


def _check_hyperparameters(owner: str, group: dict) -> None:
    """Refuse NaN, infinities, strings and bools for lr, momentum, betas, eps, weight_decay."""
    for key in ("lr", "momentum", "weight_decay"):
        if key in group:
            group[key] = number(owner, key, group[key], 0)
    if "eps" in group:
        group["eps"] = number(owner, "eps", group["eps"], 0, above=True)
    if "betas" in group:
        betas = group["betas"]
        if isinstance(betas, (str, bytes)) or not hasattr(betas, "__len__") or len(betas) != 2:
            raise ValueError(f"{owner}: betas must be a pair (beta1, beta2), got {betas!r}")
        group["betas"] = tuple(number(owner, f"betas[{i}]", b, 0, 1, below=True) for i, b in enumerate(betas))


class Optimizer:
    """Holds parameter groups (each with its own lr, weight_decay, ...) and per-parameter state."""

    def __init__(self, params, defaults: dict):
        owner = type(self).__name__
        _check_hyperparameters(owner, defaults)
        self.defaults = defaults
        self.param_groups = _param_groups(params, defaults, owner)
        self.state: dict = {}  # id(param) -> dict of arrays

    def zero_grad(self) -> None:
        """Drop the gradients of every parameter this optimizer updates."""
        for g in self.param_groups:
            for p in g["params"]:
                p.grad = None

    def step(self) -> None:
        """Update every parameter that has a gradient."""
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is not None:
                    self._update(p, p.grad, group)

    def _update(self, p, grad, group) -> None:
        raise NotImplementedError

    def _state(self, p, *names) -> dict:
        s = self.state.get(id(p))
        if s is None:
            xp = backend.module_of(p.data)
            s = self.state[id(p)] = {n: xp.zeros_like(p.data) for n in names}
            s["step"] = 0
        return s

    def state_bytes(self) -> int:
        """Bytes of optimizer state arrays (moments and momentum buffers)."""
        return sum(a.nbytes for s in self.state.values() for a in s.values() if hasattr(a, "nbytes"))

    @property
    def params(self) -> list:
        return [p for g in self.param_groups for p in g["params"]]


class SGD(Optimizer):
    """p -= lr * (grad + weight_decay * p), with optional momentum (PyTorch's formulation)."""

    def __init__(self, params, lr: float, momentum: float = 0.0, weight_decay: float = 0.0):
        super().__init__(params, dict(lr=lr, momentum=momentum, weight_decay=weight_decay))

    def _update(self, p, grad, group) -> None:
        if group["weight_decay"]:
            grad = grad + group["weight_decay"] * p.data
        if group["momentum"]:
            s = self.state.get(id(p))
            if s is None:  # first step: the buffer starts as the gradient itself
                s = self.state[id(p)] = {"momentum": grad.copy()}
            else:
                buf = s["momentum"]
                buf *= group["momentum"]
                buf += grad
            grad = s["momentum"]
        p.data -= group["lr"] * grad


class Adam(Optimizer):
    """Adam (Kingma & Ba); weight_decay here is L2 added to the gradient, as torch.optim.Adam does."""

    decoupled = False

    def __init__(
        self, params, lr: float = 1e-3, betas=(0.9, 0.999), eps: float = 1e-8, weight_decay: float = 0.0
    ):
        super().__init__(params, dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay))

    def _update(self, p, grad, group) -> None:
        b1, b2 = group["betas"]
        lr, wd = group["lr"], group["weight_decay"]
        if wd and self.decoupled:
            p.data *= 1 - lr * wd  # AdamW: decay the weight itself, outside the moments
        elif wd:
            grad = grad + wd * p.data
        s = self._state(p, "m", "v")
        s["step"] += 1
        m, v, t = s["m"], s["v"], s["step"]
        xp = backend.module_of(p.data)
        m *= b1
        m += (1 - b1) * grad  # m = b1 m + (1 - b1) g
        work = grad * grad  # one scratch array for the rest of the update
        work *= 1 - b2
        v *= b2
        v += work  # v = b2 v + (1 - b2) g^2
        xp.sqrt(v, out=work)
        work *= 1 / math.sqrt(1 - b2**t)
        work += group["eps"]  # sqrt(v_hat) + eps
        xp.divide(m, work, out=work)
        work *= lr / (1 - b1**t)  # lr * m_hat / (sqrt(v_hat) + eps)
        p.data -= work


class AdamW(Adam):
    """Adam with decoupled weight decay (Loshchilov & Hutter).

    By default, as nanoGPT does, only parameters with 2 or more dimensions (matmul weights and
    embeddings) decay; biases and norm weights do not. Pass groups to choose otherwise.
    """

    decoupled = True

    def __init__(
        self,
        params,
        lr: float = 1e-3,
        betas=(0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0.01,
        decay_1d: bool = False,
    ):
        decay_1d = flag("AdamW", "decay_1d", decay_1d)
        if hasattr(params, "parameters") and callable(params.parameters):
            params = params.parameters()
        params = list(params)
        if params and not isinstance(params[0], dict) and not decay_1d:  # (one group may be empty)
            params = [
                {"params": [p for p in params if p.ndim >= 2]},
                {"params": [p for p in params if p.ndim < 2], "weight_decay": 0.0},
            ]
        super().__init__(params, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay)


def cosine_lr(
    step: int, max_lr: float, total_steps: int, warmup_steps: int = 0, min_lr: float = 0.0
) -> float:
    """Linear warm-up to max_lr over warmup_steps, then cosine decay to min_lr at total_steps."""
    if step < warmup_steps:
        return max_lr * (step + 1) / warmup_steps
    if step >= total_steps:
        return min_lr
    progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    return min_lr + 0.5 * (max_lr - min_lr) * (1 + math.cos(math.pi * progress))


class CosineSchedule:
    """Sets every group's lr to cosine_lr(step) (scaled by the group's starting lr) on each step()."""

    def __init__(self, optimizer: Optimizer, total_steps: int, warmup_steps: int = 0, min_ratio: float = 0.1):
        min_ratio = number("CosineSchedule", "min_ratio", min_ratio, 0.0, 1.0)
        total_steps = integer("CosineSchedule", "total_steps", total_steps, 1)
        warmup_steps = integer("CosineSchedule", "warmup_steps", warmup_steps, 0)
        if warmup_steps > total_steps:
            raise ValueError(
                f"CosineSchedule: need 0 <= warmup_steps <= total_steps and total_steps >= 1, "
                f"got warmup_steps={warmup_steps}, total_steps={total_steps}"
            )
        self.optimizer, self.total, self.warmup, self.min_ratio = (
            optimizer,
            total_steps,
            warmup_steps,
            min_ratio,
        )
        self.base_lrs = [g["lr"] for g in optimizer.param_groups]
        self.last_step = -1
        self.step()

    def step(self) -> float:
        """Advance one step and return the new lr of the first group."""
        self.last_step += 1
        for g, base in zip(self.optimizer.param_groups, self.base_lrs):
            g["lr"] = cosine_lr(self.last_step, base, self.total, self.warmup, base * self.min_ratio)
        return self.optimizer.param_groups[0]["lr"]


def clip_grad_norm_(params, max_norm: float) -> float:
    """Scale gradients in place so their global L2 norm is at most max_norm; return the norm before."""
    max_norm = number("clip_grad_norm_", "max_norm", max_norm, 0, above=True)
    if hasattr(params, "parameters") and callable(params.parameters):
        params = params.parameters()
    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        return 0.0
    total = math.sqrt(sum(float((g * g).sum(dtype="float64")) for g in grads))
    if total > max_norm:
        scale = max_norm / (total + 1e-6)
        for g in grads:
            g *= scale
    return total
