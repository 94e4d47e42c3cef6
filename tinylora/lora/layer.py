"""LoRALinear: a frozen nn.Linear plus named low-rank adapters, y = base(x) + s * B A x.

For the active adapter with A (r, in), B (out, r) and scaling s = alpha / r:

    y = x @ W.T + b + (dropout(x) @ A.T @ B.T) * s

B starts at zero, so a new adapter leaves the output unchanged; only A and B get
gradients, and the frozen W never has its weight-gradient matmul computed at all.

Tied weights: when W is also used by another module (a GPT's lm_head tied to tok_emb), the
unmerged adapter changes only this layer's output; merging and a PiSSA init would write into
the shared W, so they are refused with how to untie.
"""

from __future__ import annotations

import hashlib
import math

import numpy as np

from .. import backend
from .. import functional as F
from ..lowrank import lora_from_delta
from ..nn import Linear, Module, ModuleDict, Parameter
from ..nn.layers import normal, uniform
from ..tensor import is_grad_enabled
from .config import AdapterSettings, LoRAConfig, adapter_settings, check_adapter_name
from .dora import dora_factor, dora_linear


def digest(*arrays) -> str:
    """sha256 of arrays' shapes, dtypes and bytes (the identity of a frozen weight)."""
    h = hashlib.sha256()
    for a in arrays:
        if a is None:
            continue
        host = np.ascontiguousarray(backend.to_numpy(a))
        h.update(f"{host.shape}{host.dtype.str}".encode())
        h.update(host.tobytes())
    return h.hexdigest()


def tied_weight_error(what: str, name: str, others) -> RuntimeError:
    """Why `what` (merging, a PiSSA init) is refused on a weight shared with `others`, and how to untie."""
    others = ", ".join(others)
    return RuntimeError(
        f"{what} would change the weight of {name}, and that weight is the same Parameter as {others} "
        f"(tied weights), so {others} would change too. An unmerged adapter is fine (it changes only "
        "this layer's output); to merge or use PiSSA, untie first: before apply_lora, give the layer "
        "its own copy, e.g. model.lm_head.weight = nn.Parameter(model.lm_head.weight.data.copy())"
    )


class AdapterBase(Module):
    """What every adapter shares: its weight change delta() is added on merge, taken out on unmerge."""

    def delta(self):
        raise NotImplementedError

    def merged_weight(self, w):
        """The base weight w with this adapter's delta() folded in."""
        return w + self.delta().astype(w.dtype)

    def unmerged_weight(self, w):
        """Undo merged_weight: the base weight as it was before the merge."""
        return w - self.delta().astype(w.dtype)


class Adapter(AdapterBase):
    """One adapter: lora_A (r, in), lora_B (out, r), its scaling and dropout (+ DoRA's magnitude)."""

    def __init__(self, in_features: int, out_features: int, config: LoRAConfig, dtype=np.float32):
        super().__init__()
        self.config = config
        self.r, self.scaling, self.dropout = config.r, config.scaling, config.dropout
        self.lora_A = Parameter(np.zeros((config.r, in_features), dtype))
        self.lora_B = Parameter(np.zeros((out_features, config.r), dtype))
        self.pissa_offset = None  # the (scaled) B0 @ A0 taken out of W by a PiSSA init
        self.dora = bool(getattr(config, "dora", False))
        self.dora_exact = False  # DoRA's gradient: False = PEFT's (norm detached), True = exact
        self._dora_factor = None  # m / ||W + s B A||_row of a merged DoRA adapter, for unmerge
        if self.dora:  # set to ||W + s B A||_row by the layer once A and B are initialised
            self.lora_magnitude_vector = Parameter(np.ones((out_features,), dtype))

    def delta(self):
        """scaling * B @ A: the (out, in) low-rank sum this adapter adds to the weight."""
        return F.lora_delta(self.lora_A.data, self.lora_B.data, self.scaling)

    def file_tensors(self) -> dict:
        """{key suffix: Parameter} as PEFT names them in adapter files."""
        out = {"lora_A.weight": self.lora_A, "lora_B.weight": self.lora_B}
        if self.dora:
            out["lora_magnitude_vector"] = self.lora_magnitude_vector
        return out

    def merged_weight(self, w):
        """The base weight w (out, in) with this adapter folded in (DoRA: m * (W + sBA) / norm)."""
        v = super().merged_weight(w)
        if not self.dora:
            return v
        self._dora_factor = dora_factor(self.lora_magnitude_vector.data, v)  # (out,)
        return self._dora_factor[:, None] * v

    def unmerged_weight(self, w):
        """Undo merged_weight: the base weight as it was before the merge."""
        if not self.dora:
            return super().unmerged_weight(w)
        v = w / self._dora_factor[:, None]
        self._dora_factor = None
        return super().unmerged_weight(v)

    def extra_repr(self) -> str:
        dora = ", dora" + (" (exact grad)" if self.dora_exact else "") if self.dora else ""
        return f"r={self.r}, scaling={self.scaling:g}, dropout={self.dropout}{dora}"


class LoRALayer(Module):
    """What every adapted layer shares: a frozen `.base`, named `.adapters`, merge and unmerge.

    Subclasses (LoRALinear, LoRAEmbedding, VeRALinear) add their adapters and forward.
    """

    def _init_layer(self, base) -> None:
        self.base = base
        self.base_digest = digest(base.weight.data)  # the base weight as it was: fingerprints use it
        self.adapters = ModuleDict()
        self.active = None  # name of the adapter in use, or None
        self.merged = None  # name of the adapter folded into base.weight, or None
        self.disabled = False
        self.tied_to = ()  # other modules' names for base.weight (tied weights); set by apply_lora

    def _adapter(self):
        if self.active is None:
            raise AttributeError(f"this {type(self).__name__} has no active adapter (see lora.set_adapter)")
        return self.adapters[self.active]

    def delta(self):
        """The (out, in) change the active adapter makes to the base weight (s B A for LoRA)."""
        ad = self._adapter()
        if not getattr(ad, "dora", False):
            return ad.delta()
        w = self.base.weight.data
        if self.merged is not None:  # the weight as it was before the merge, without touching the cache
            w = w / ad._dora_factor[:, None] - ad.delta().astype(w.dtype)
        from .dora import dora_factor

        v = w + ad.delta().astype(w.dtype)
        return dora_factor(ad.lora_magnitude_vector.data, v)[:, None] * v - w

    def _check_new_adapter(self, name: str) -> None:
        """What every layer checks before adding adapter `name` (the one copy of these checks)."""
        check_adapter_name(name)
        if name in self.adapters:
            raise ValueError(f"adapter {name!r} already exists in this layer")
        if self.merged is not None:
            raise RuntimeError(f"cannot add adapter {name!r} while {self.merged!r} is merged; unmerge first")

    def _check_trainable_while_merged(self, ad) -> None:
        if self.training and is_grad_enabled() and any(p.requires_grad for p in ad.parameters()):
            raise RuntimeError(
                f"adapter {self.merged!r} is merged into the base weight, so training it now would "
                "count its update twice: call lora.unmerge_lora(model) before training "
                "(or use model.eval() / tl.no_grad() for inference)"
            )

    def delete_adapter(self, name: str) -> None:
        """Remove adapter `name` (a PiSSA adapter gives its part of W back)."""
        if self.merged == name:
            raise RuntimeError(f"adapter {name!r} is merged into the base weight; unmerge it before deleting")
        ad = self.adapters[name]
        if getattr(ad, "pissa_offset", None) is not None:
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

    def merge(self) -> None:
        """Fold the active adapter into base.weight (a second call does nothing)."""
        if self.merged is not None or self.active is None:
            return
        self._refuse_if_tied("merging")
        w = self.base.weight
        w.data = self._adapter().merged_weight(w.data)
        self.merged = self.active

    def unmerge(self) -> None:
        """Take the merged adapter back out of base.weight (does nothing if none is merged)."""
        if self.merged is None:
            return
        w = self.base.weight
        w.data = self.adapters[self.merged].unmerged_weight(w.data)
        self.merged = None

    def _refuse_if_tied(self, what: str) -> None:
        """The tied-weight rule: nothing may write into a weight that another module also uses."""
        if self.tied_to:
            raise tied_weight_error(what, "this layer", self.tied_to)

    def extra_repr(self) -> str:
        state = f"active={self.active!r}" + (f", merged={self.merged!r}" if self.merged else "")
        return state + (", disabled" if self.disabled else "")


class LoRALinear(LoRALayer):
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
        self._init_layer(base)
        if config is None:  # LoRAConfig checks the values; the layer keeps only the per-adapter part
            config = LoRAConfig(r=r, alpha=alpha, dropout=dropout, init=init, rslora=rslora)
        self.add_adapter(adapter_name, adapter_settings(config))
        self.active = adapter_name
        base.requires_grad_(False)  # frozen only once the adapter exists (a failure leaves it as it was)

    # ---- the active adapter, as the contract names it ---------------------------------------

    in_features = property(lambda self: self.base.in_features)
    out_features = property(lambda self: self.base.out_features)

    lora_A = property(lambda self: self._adapter().lora_A, doc="A (r, in) of the active adapter.")
    lora_B = property(lambda self: self._adapter().lora_B, doc="B (out, r) of the active adapter.")
    scaling = property(lambda self: self._adapter().scaling, doc="alpha / r of the active adapter.")
    r = property(lambda self: self._adapter().r, doc="Rank of the active adapter.")

    # ---- adapters ---------------------------------------------------------------------------

    def add_adapter(self, name: str, config: LoRAConfig) -> Adapter:
        """Create adapter `name`, initialised as config.init says (B = 0 unless PiSSA)."""
        self._check_new_adapter(name)
        w = self.base.weight
        ad = Adapter(self.in_features, self.out_features, config, dtype=w.dtype)
        n_in, r = self.in_features, config.r
        if config.init == "kaiming":  # PyTorch/PEFT: kaiming_uniform(a=sqrt(5)) = U(+-1/sqrt(in))
            a = uniform((r, n_in), 1.0 / math.sqrt(n_in), w.dtype)
            ad.lora_A.data = backend.asarray(a, backend=w.backend)
        elif config.init == "gaussian":  # PEFT's "gaussian": A ~ N(0, (1/r)^2)
            ad.lora_A.data = backend.asarray(normal((r, n_in), 1.0 / r, w.dtype), backend=w.backend)
        else:  # "pissa": A, B from the top-r singular triplets of W; W keeps only the rest
            self._refuse_if_tied("a PiSSA init")
            if r > min(w.shape):
                raise ValueError(f"pissa init: r={r} is larger than min{w.shape} of the weight")
            b0, a0 = lora_from_delta(w.data.astype(np.float64), r)  # b0 @ a0 = W's best rank-r part
            root = math.sqrt(ad.scaling)
            ad.lora_A.data = (a0 / root).astype(w.dtype)
            ad.lora_B.data = (b0 / root).astype(w.dtype)
            ad.pissa_offset = ad.delta()
            w.data = w.data - ad.pissa_offset  # residual: output unchanged at step 0
        if ad.dora:  # PEFT: m starts at ||W + s B A||_row, so the output is unchanged at step 0
            from .dora import row_norm

            ad.lora_magnitude_vector.data = row_norm(w.data + ad.delta().astype(w.dtype)).astype(w.dtype)
        ad.to(w.backend)  # the adapter lives where its base does, whatever the active backend
        self.adapters[name] = ad
        return ad

    # ---- forward ---------------------------------------------------------------------------

    def forward(self, x):
        if self.active is None or self.disabled:
            return self.base(x)  # (..., out), the frozen path alone
        ad = self.adapters[self.active]
        if self.merged is not None:
            self._check_trainable_while_merged(ad)
            return self.base(x)
        xd = (
            F.dropout(x, ad.dropout, self.training) if ad.dropout and self.training else None
        )  # adapter input only
        b = self.base
        if ad.dora:
            return dora_linear(
                x,
                b.weight,
                b.bias,
                ad.lora_A,
                ad.lora_B,
                ad.lora_magnitude_vector,
                ad.scaling,
                x_adapter=xd,
                exact=ad.dora_exact,
            )  # (..., out)
        return F.lora_linear(
            x, b.weight, b.bias, ad.lora_A, ad.lora_B, ad.scaling, x_adapter=xd
        )  # (..., out)
