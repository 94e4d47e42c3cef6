"""LoRALinear: a frozen nn.Linear plus named low-rank adapters, y = base(x) + s * B A x.

For the active adapter with A (r, in), B (out, r) and scaling s = alpha / r:

    y = x @ W.T + b + (dropout(x) @ A.T @ B.T) * s

B starts at zero, so a new adapter leaves the output unchanged; only A and B get
gradients, and the frozen W never has its weight-gradient matmul computed at all.
"""

from __future__ import annotations

import hashlib
import math

import numpy as np

from .. import backend as B
from .. import functional as F
from ..nn import Linear, Module, ModuleDict, Parameter
from ..nn.layers import normal, uniform
from ..tensor import is_grad_enabled
from .config import AdapterSettings, LoRAConfig, adapter_settings


def digest(*arrays) -> str:
    """sha256 of arrays' shapes, dtypes and bytes (the identity of a frozen weight)."""
    h = hashlib.sha256()
    for a in arrays:
        if a is None:
            continue
        host = np.ascontiguousarray(B.to_numpy(a))
        h.update(f"{host.shape}{host.dtype.str}".encode())
        h.update(host.tobytes())
    return h.hexdigest()


class Adapter(Module):
    """One adapter: lora_A (r, in), lora_B (out, r), its scaling and dropout."""

    def __init__(self, in_features: int, out_features: int, config: LoRAConfig, dtype=np.float32):
        super().__init__()
        self.config = config
        self.r, self.scaling, self.dropout = config.r, config.scaling, config.dropout
        self.lora_A = Parameter(np.zeros((config.r, in_features), dtype))
        self.lora_B = Parameter(np.zeros((out_features, config.r), dtype))
        self.pissa_offset = None  # the (scaled) B0 @ A0 taken out of W by a PiSSA init

    def delta(self):
        """scaling * B @ A: the (out, in) change this adapter makes to the weight."""
        return F.lora_delta(self.lora_A.data, self.lora_B.data, self.scaling)

    def extra_repr(self) -> str:
        return f"r={self.r}, scaling={self.scaling:g}, dropout={self.dropout}"


class LoRALinear(Module):
    """A frozen nn.Linear (`.base`) with named adapters; one is active at a time."""

    def __init__(
        self,
        base: Linear,
        r: int = 8,
        alpha: float = 16,
        dropout: float = 0.0,
        init: str = "kaiming",
        rslora: bool = False,
        adapter_name: str = "default",
        config: LoRAConfig | AdapterSettings | None = None,
    ):
        super().__init__()
        if not isinstance(base, Linear):
            raise TypeError(f"LoRALinear wraps an nn.Linear, got {type(base).__name__}")
        self.base = base
        self.base_digest = digest(base.weight.data)  # the base weight as it was: fingerprints use it
        self.adapters = ModuleDict()
        self.active = None  # name of the adapter in use, or None
        self.merged = None  # name of the adapter folded into base.weight, or None
        self.disabled = False
        if config is None:  # LoRAConfig checks the values; the layer keeps only the per-adapter part
            config = LoRAConfig(r=r, alpha=alpha, dropout=dropout, init=init, rslora=rslora)
        self.add_adapter(adapter_name, adapter_settings(config))
        self.active = adapter_name
        base.requires_grad_(False)  # frozen only once the adapter exists (a failure leaves it as it was)

    # ---- the active adapter, as the contract names it ---------------------------------------

    in_features = property(lambda self: self.base.in_features)
    out_features = property(lambda self: self.base.out_features)

    def _adapter(self) -> Adapter:
        if self.active is None:
            raise AttributeError("this LoRALinear has no active adapter (see lora.set_adapter)")
        return self.adapters[self.active]

    lora_A = property(lambda self: self._adapter().lora_A, doc="A (r, in) of the active adapter.")
    lora_B = property(lambda self: self._adapter().lora_B, doc="B (out, r) of the active adapter.")
    scaling = property(lambda self: self._adapter().scaling, doc="alpha / r of the active adapter.")
    r = property(lambda self: self._adapter().r, doc="Rank of the active adapter.")

    def delta(self):
        """scaling * B @ A of the active adapter: the (out, in) change it makes to the weight."""
        return self._adapter().delta()

    # ---- adapters ---------------------------------------------------------------------------

    def add_adapter(self, name: str, config: LoRAConfig) -> Adapter:
        """Create adapter `name`, initialised as config.init says (B = 0 unless PiSSA)."""
        if not isinstance(name, str) or not name.isidentifier():
            raise ValueError(f"adapter names must be identifiers (letters, digits, _), got {name!r}")
        if name in self.adapters:
            raise ValueError(f"adapter {name!r} already exists in this layer")
        if self.merged is not None:
            raise RuntimeError(f"cannot add adapter {name!r} while {self.merged!r} is merged; unmerge first")
        w = self.base.weight
        ad = Adapter(self.in_features, self.out_features, config, dtype=w.dtype)
        n_in, r = self.in_features, config.r
        if config.init == "kaiming":  # PyTorch/PEFT: kaiming_uniform(a=sqrt(5)) = U(+-1/sqrt(in))
            a = uniform((r, n_in), 1.0 / math.sqrt(n_in), w.dtype)
            ad.lora_A.data = B.asarray(a, backend=w.backend)
        elif config.init == "gaussian":  # PEFT's "gaussian": A ~ N(0, (1/r)^2)
            ad.lora_A.data = B.asarray(normal((r, n_in), 1.0 / r, w.dtype), backend=w.backend)
        else:  # "pissa": A, B from the top-r singular triplets of W; W keeps only the rest
            from ..lowrank import lora_from_delta

            if r > min(w.shape):
                raise ValueError(f"pissa init: r={r} is larger than min{w.shape} of the weight")
            b0, a0 = lora_from_delta(w.data.astype(np.float64), r)  # b0 @ a0 = W's best rank-r part
            root = math.sqrt(ad.scaling)
            ad.lora_A.data = (a0 / root).astype(w.dtype)
            ad.lora_B.data = (b0 / root).astype(w.dtype)
            ad.pissa_offset = ad.delta()
            w.data = w.data - ad.pissa_offset  # residual: output unchanged at step 0
        self.adapters[name] = ad
        return ad

    def delete_adapter(self, name: str) -> None:
        """Remove adapter `name` (a PiSSA adapter gives its part of W back)."""
        if self.merged == name:
            raise RuntimeError(f"adapter {name!r} is merged into the base weight; unmerge it before deleting")
        ad = self.adapters[name]
        if ad.pissa_offset is not None:
            self.base.weight.data = self.base.weight.data + ad.pissa_offset
        del self.adapters[name]
        if self.active == name:
            self.active = None

    def set_adapter(self, name: str | None) -> None:
        """Make `name` the active adapter (None: run as the plain base)."""
        if name is not None and name not in self.adapters:
            raise KeyError(f"no adapter {name!r} here (have: {', '.join(self.adapters) or 'none'})")
        if self.merged is not None and name != self.merged:
            raise RuntimeError(f"adapter {self.merged!r} is merged; unmerge before switching to {name!r}")
        self.active = name

    # ---- merging ---------------------------------------------------------------------------

    def merge(self) -> None:
        """Fold scaling * B @ A of the active adapter into base.weight (a second call does nothing)."""
        if self.merged is not None or self.active is None:
            return
        w = self.base.weight
        w.data = w.data + self._adapter().delta().astype(w.dtype)
        self.merged = self.active

    def unmerge(self) -> None:
        """Take the merged adapter back out of base.weight (does nothing if none is merged)."""
        if self.merged is None:
            return
        w = self.base.weight
        w.data = w.data - self.adapters[self.merged].delta().astype(w.dtype)
        self.merged = None

    # ---- forward ---------------------------------------------------------------------------

    def forward(self, x):
        if self.active is None or self.disabled:
            return self.base(x)  # (..., out), the frozen path alone
        ad = self.adapters[self.active]
        if self.merged is not None:
            if self.training and is_grad_enabled() and ad.lora_A.requires_grad:
                raise RuntimeError(
                    f"adapter {self.merged!r} is merged into the base weight, so training it now would "
                    "count its update twice: call lora.unmerge_lora(model) before training "
                    "(or use model.eval() / tl.no_grad() for inference)"
                )
            return self.base(x)
        xd = (
            F.dropout(x, ad.dropout, self.training) if ad.dropout and self.training else None
        )  # adapter input only
        b = self.base
        return F.lora_linear(
            x, b.weight, b.bias, ad.lora_A, ad.lora_B, ad.scaling, x_adapter=xd
        )  # (..., out)

    def extra_repr(self) -> str:
        state = f"active={self.active!r}" + (f", merged={self.merged!r}" if self.merged else "")
        return state + (", disabled" if self.disabled else "")
