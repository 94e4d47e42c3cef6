"""Module and Parameter: the containers that hold weights and find them by dotted name."""

from __future__ import annotations

from collections import OrderedDict
from typing import NamedTuple

import numpy as np

from .. import backend
from ..tensor import Tensor


class Parameter(Tensor):
    """A Tensor that a Module registers as one of its weights (requires_grad=True by default)."""

    __slots__ = ()

    def __init__(self, data, requires_grad: bool = True, dtype=None):
        super().__init__(data, requires_grad=requires_grad, dtype=dtype)

    def __repr__(self) -> str:
        return "Parameter" + super().__repr__()[len("Tensor") :]


class StateDictError(ValueError):
    """load_state_dict found missing, unexpected or mis-shaped keys (and changed nothing)."""


class IncompatibleKeys(NamedTuple):
    missing_keys: list
    unexpected_keys: list


class Module:
    """Base class: Parameters and sub-Modules set as attributes are registered in order."""

    def __init__(self):
        object.__setattr__(self, "_param_names", [])
        object.__setattr__(self, "_module_names", [])
        object.__setattr__(self, "training", True)

    def __setattr__(self, name: str, value) -> None:
        if "_param_names" not in self.__dict__:
            raise AttributeError(f"{type(self).__name__}.__init__ must call super().__init__() first")
        params, mods = self._param_names, self._module_names
        if name in params and not isinstance(value, Parameter):
            if value is not None:
                raise TypeError(
                    f"cannot assign {type(value).__name__} to parameter {name!r} (need a Parameter or None)"
                )
        elif isinstance(value, Parameter) and name not in params:
            if name in mods:
                mods.remove(name)
            params.append(name)
        elif name in mods and not isinstance(value, Module) and value is not None:
            raise TypeError(
                f"cannot assign {type(value).__name__} to sub-module {name!r} (need a Module or None)"
            )
        elif isinstance(value, Module) and name not in mods:
            if name in params:
                params.remove(name)
            mods.append(name)
        object.__setattr__(self, name, value)

    def __delattr__(self, name: str) -> None:
        for names in (self._param_names, self._module_names):
            if name in names:
                names.remove(name)
        object.__delattr__(self, name)

    def forward(self, *args, **kwargs):
        raise NotImplementedError(f"{type(self).__name__} has no forward()")

    def __call__(self, *args, **kwargs):
        return self.forward(*args, **kwargs)

    # ---- walking the tree -------------------------------------------------------------------

    def named_children(self):
        """(name, module) for each direct sub-module, in registration order."""
        for name in self._module_names:
            mod = self.__dict__[name]
            if mod is not None:
                yield name, mod

    def children(self):
        return (m for _, m in self.named_children())

    def named_modules(self, prefix: str = ""):
        """(dotted name, module) for this module ("") and every module below it, each once."""
        seen = set()
        stack = [(prefix, self)]
        while stack:
            name, mod = stack.pop()
            if id(mod) in seen:
                continue
            seen.add(id(mod))
            yield name, mod
            kids = [(f"{name}.{n}" if name else n, m) for n, m in mod.named_children()]
            stack.extend(reversed(kids))

    def modules(self):
        return (m for _, m in self.named_modules())

    def named_parameters(self, prefix: str = ""):
        """(dotted name, Parameter) for every parameter, each once (tied weights keep their first name)."""
        seen = set()
        for mod_name, mod in self.named_modules(prefix):
            for n in mod._param_names:
                p = mod.__dict__[n]
                if p is None or id(p) in seen:
                    continue
                seen.add(id(p))
                yield (f"{mod_name}.{n}" if mod_name else n), p

    def parameters(self):
        return [p for _, p in self.named_parameters()]

    def get_submodule(self, name: str) -> Module:
        """The module at a dotted path such as 'blocks.0.attn.q_proj' ('' is self)."""
        mod = self
        for part in filter(None, name.split(".")):
            child = mod.__dict__.get(part) if part in mod._module_names else None
            if child is None:
                raise AttributeError(f"{type(mod).__name__} has no sub-module {part!r} (looking up {name!r})")
            mod = child
        return mod

    def set_submodule(self, name: str, module: Module) -> None:
        """Replace the module at a dotted path."""
        parent_name, _, leaf = name.rpartition(".")
        parent = self.get_submodule(parent_name)
        if leaf not in parent._module_names:
            raise AttributeError(f"{type(parent).__name__} has no sub-module {leaf!r} (setting {name!r})")
        setattr(parent, leaf, module)

    def apply(self, fn) -> Module:
        """Call fn on every module (children first), then return self."""
        for m in reversed(list(self.modules())):
            fn(m)
        return self

    # ---- modes and gradients -------------------------------------------------------------

    def train(self, mode: bool = True) -> Module:
        """Training mode (dropout active) for this module and all below it."""
        for m in self.modules():
            object.__setattr__(m, "training", bool(mode))
        return self

    def eval(self) -> Module:
        """Evaluation mode (dropout off)."""
        return self.train(False)

    def zero_grad(self) -> None:
        """Drop every parameter's gradient."""
        for p in self.parameters():
            p.grad = None

    def requires_grad_(self, flag: bool = True) -> Module:
        """Freeze (False) or unfreeze (True) every parameter."""
        for p in self.parameters():
            p.requires_grad_(flag)
        return self

    # ---- moving and casting -----------------------------------------------------------------

    def to(self, name: str) -> Module:
        """Move every parameter to a backend ("numpy" or "cupy") in place."""
        for p in self.parameters():
            p.data = backend.asarray(p.data, backend=name)
            p.grad = None if p.grad is None else backend.asarray(p.grad, backend=name)
        return self

    def astype(self, dtype) -> Module:
        """Cast every floating-point parameter to dtype in place (e.g. numpy.float64 for gradcheck)."""
        for p in self.parameters():
            if p.data.dtype.kind == "f":
                p.data = p.data.astype(dtype)
                p.grad = None
        return self

    # ---- state dicts -----------------------------------------------------------------------

    def state_dict(self) -> OrderedDict:
        """{dotted name: array} of every parameter (the arrays themselves, not copies)."""
        return OrderedDict((n, p.data) for n, p in self.named_parameters())

    def load_state_dict(self, state_dict, strict: bool = True, assign: bool = False) -> IncompatibleKeys:
        """Copy arrays (or Tensors) into the parameters, all or nothing.

        Any missing (strict), unexpected (strict) or mis-shaped key raises one StateDictError
        that lists them all, and then no parameter has changed. assign=True uses the given
        arrays themselves where dtype and backend already match (no copy: for big loads).
        """
        own = dict(self.named_parameters())
        given = {k: (v.data if isinstance(v, Tensor) else v) for k, v in state_dict.items()}
        missing = [k for k in own if k not in given]
        unexpected = [k for k in given if k not in own]
        problems = []
        if strict:
            problems += [f"missing key {k!r} (expected shape {own[k].shape})" for k in missing]
            problems += [
                f"unexpected key {k!r} (given shape {tuple(np.shape(given[k]))})" for k in unexpected
            ]
        converted = {}
        for k, p in own.items():
            if k not in given:
                continue
            shape = tuple(np.shape(given[k])) if not hasattr(given[k], "shape") else tuple(given[k].shape)
            if shape != p.shape:
                problems.append(f"{k!r}: expected shape {p.shape}, given {shape}")
                continue
            try:
                converted[k] = backend.asarray(given[k], backend=p.backend).astype(p.dtype, copy=not assign)
            except (TypeError, ValueError) as e:
                problems.append(f"{k!r}: cannot convert to {p.dtype}: {e}")
        if problems:
            raise StateDictError(
                f"load_state_dict into {type(self).__name__}: {len(problems)} problem(s), nothing was loaded:\n  "
                + "\n  ".join(problems)
            )
        for k, arr in converted.items():
            own[k].data = arr
            own[k].grad = None
        return IncompatibleKeys(missing, unexpected)

    def save(self, path, metadata: dict | None = None):
        """Save the state dict as a safetensors file (atomically)."""
        from ..io import save_weights

        return save_weights(self.state_dict(), path, metadata)

    def load(self, path, strict: bool = True) -> IncompatibleKeys:
        """Load a safetensors file written by save() (all or nothing)."""
        from ..io import load_weights

        return self.load_state_dict(load_weights(path), strict=strict)

    # ---- printing --------------------------------------------------------------------------

    def extra_repr(self) -> str:
        return ""

    def __repr__(self) -> str:
        lines = [f"({n}): " + repr(m).replace("\n", "\n  ") for n, m in self.named_children()]
        head = f"{type(self).__name__}({self.extra_repr()}"
        if not lines:
            return head + ")"
        return head + "\n  " + "\n  ".join(lines) + "\n)"


class Sequential(Module):
    """Modules applied one after another."""

    def __init__(self, *modules: Module):
        super().__init__()
        for i, m in enumerate(modules):
            setattr(self, str(i), m)

    def __getitem__(self, i: int) -> Module:
        return list(self.children())[i]

    def __len__(self) -> int:
        return len(self._module_names)

    def __iter__(self):
        return iter(list(self.children()))

    def forward(self, x):
        for m in self.children():
            x = m(x)
        return x


class ModuleList(Module):
    """A list of modules, registered as '0', '1', ... so their names read blocks.0.attn, ..."""

    def __init__(self, modules=()):
        super().__init__()
        for m in modules:
            self.append(m)

    def append(self, module: Module) -> ModuleList:
        if not isinstance(module, Module):
            raise TypeError(f"ModuleList holds Modules, got {type(module).__name__}")
        setattr(self, str(len(self._module_names)), module)
        return self

    def __getitem__(self, i: int) -> Module:
        return self.__dict__[self._module_names[i]]

    def __len__(self) -> int:
        return len(self._module_names)

    def __iter__(self):
        return (self.__dict__[n] for n in self._module_names)


class ModuleDict(Module):
    """Modules stored by name (names must be valid, dot-free identifiers)."""

    def __init__(self, modules: dict | None = None):
        super().__init__()
        for name, m in (modules or {}).items():
            self[name] = m

    def __setitem__(self, name: str, module: Module) -> None:
        if not isinstance(name, str) or not name.isidentifier():
            raise ValueError(f"ModuleDict: names must be identifiers without dots, got {name!r}")
        if not isinstance(module, Module):
            raise TypeError(f"ModuleDict holds Modules, got {type(module).__name__}")
        setattr(self, name, module)

    def __getitem__(self, name: str) -> Module:
        if name not in self._module_names:
            raise KeyError(f"no module named {name!r} (have: {', '.join(self._module_names) or 'none'})")
        return self.__dict__[name]

    def __delitem__(self, name: str) -> None:
        self[name]  # raises a clear KeyError when absent
        delattr(self, name)

    def __contains__(self, name) -> bool:
        return name in self._module_names

    def __len__(self) -> int:
        return len(self._module_names)

    def __iter__(self):
        return iter(list(self._module_names))

    def keys(self):
        return list(self._module_names)

    def items(self):
        return [(n, self.__dict__[n]) for n in self._module_names]
