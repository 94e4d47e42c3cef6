"""A stateful property test of the adapter lifecycle against an independent NumPy model.

Hypothesis runs random sequences of add, set, delete, merge, unmerge, disable, a training
step, save and load (also of corrupted copies) and invalid calls on a small MLP with LoRA.
After every step the model's output must equal what NumPy computes from the base weights
plus s B A of the active adapter; an invalid call must raise and change nothing.
"""

import json
import shutil
import tempfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

import tinylora as tl
from tinylora import lora, models, optim

LAYERS = ("fc1", "fc2")
NAMES = st.sampled_from(["a", "b", "c"])
TARGETS = st.sampled_from([("fc1",), ("fc2",), ("fc1", "fc2")])
X = np.random.default_rng(0).standard_normal((5, 4))
R = np.random.default_rng(1).standard_normal((5, 3))  # the loss is sum(output * R)
LR = 0.1


def relu_grad(h):
    return (h > 0).astype(h.dtype)


class AdapterLifecycle(RuleBasedStateMachine):
    def __init__(self):
        super().__init__()
        tl.manual_seed(0)
        self.model = models.MLP([4, 6, 3])
        for p in self.model.parameters():
            p.data = p.data.astype(np.float64)
        self.model.requires_grad_(False)
        self.base = {
            n: (getattr(self.model, n).weight.data.copy(), getattr(self.model, n).bias.data.copy())
            for n in LAYERS
        }
        self.adapters = {}  # name -> dict(config=(r, alpha, targets, init), A={layer: A}, B={layer: B})
        self.active = None
        self.merged = False
        self.saved = {}  # slot -> (adapter name, its reference entry)
        self.folder = Path(tempfile.mkdtemp(prefix="tinylora-lifecycle-"))

    def teardown(self):
        shutil.rmtree(self.folder, ignore_errors=True)

    # ---- the independent model ----------------------------------------------------------------

    def weight(self, layer, disabled=False):
        w, b = self.base[layer]
        ad = self.adapters.get(self.active)
        if ad is not None and not disabled and layer in ad["A"]:
            r, alpha = ad["config"][:2]
            w = w + (alpha / r) * ad["B"][layer] @ ad["A"][layer]
        return w, b

    def expected(self, disabled=False):
        (w1, b1), (w2, b2) = self.weight("fc1", disabled), self.weight("fc2", disabled)
        return np.maximum(X @ w1.T + b1, 0) @ w2.T + b2

    def expected_step(self):
        """The active adapter's A and B after one SGD step on sum(output * R), by hand."""
        ad = self.adapters[self.active]
        r, alpha = ad["config"][:2]
        s = alpha / r
        (w1, b1), (w2, _) = self.weight("fc1"), self.weight("fc2")
        pre = X @ w1.T + b1
        h = np.maximum(pre, 0)
        inputs, upstream = {"fc2": h}, {"fc2": R}
        upstream["fc1"] = (R @ w2) * relu_grad(pre)
        inputs["fc1"] = X
        new_a, new_b = {}, {}
        for layer in ad["A"]:
            a, b, x, g = ad["A"][layer], ad["B"][layer], inputs[layer], upstream[layer]
            grad_b = s * g.T @ (x @ a.T)  # (out, r)
            grad_a = s * (g @ b).T @ x  # (r, in)
            new_a[layer], new_b[layer] = a - LR * grad_a, b - LR * grad_b
        return new_a, new_b

    def order(self):
        """Adapter names as the model lists them: layer by layer, each in the order added."""
        names = []
        for layer in LAYERS:
            names += [n for n, ad in self.adapters.items() if layer in ad["A"] and n not in names]
        return names

    def read(self, name):
        """A and B of adapter `name` as the model holds them now."""
        out = {"A": {}, "B": {}}
        for path, layer in lora.lora_layers(self.model):
            if name in layer.adapters:
                out["A"][path] = layer.adapters[name].lora_A.data.copy()
                out["B"][path] = layer.adapters[name].lora_B.data.copy()
        return out

    def snapshot(self):
        """Everything an invalid call must leave as it was."""
        layers = {
            p: (list(layer.adapters), layer.active, layer.merged, layer.disabled)
            for p, layer in lora.lora_layers(self.model)
        }
        grads = sorted(n for n, p in self.model.named_parameters() if p.requires_grad)
        params = {n: p.data.copy() for n, p in self.model.named_parameters()}
        return layers, grads, params

    def refused(self, call, errors=(ValueError, KeyError, RuntimeError, FileNotFoundError)):
        before = self.snapshot()
        with pytest.raises(errors):
            call()
        after = self.snapshot()
        assert after[:2] == before[:2]
        assert after[2].keys() == before[2].keys()
        for k, v in before[2].items():
            np.testing.assert_array_equal(after[2][k], v)

    # ---- rules ----------------------------------------------------------------------------------

    @rule(
        name=NAMES,
        r=st.integers(1, 3),
        alpha=st.sampled_from([1.0, 2.0, 8.0]),
        modules=TARGETS,
        init=st.sampled_from(["kaiming", "gaussian"]),
    )
    def add(self, name, r, alpha, modules, init):
        targets = modules
        cfg = lora.LoRAConfig(r=r, alpha=alpha, target_modules=targets, init=init)
        if name in self.adapters or self.merged:
            self.refused(lambda: lora.add_adapter(self.model, name, cfg))
            return
        lora.add_adapter(self.model, name, cfg)
        self.adapters[name] = dict(config=(r, alpha, targets, init), **self.read(name))
        assert set(self.adapters[name]["A"]) == set(targets)
        assert all(not b.any() for b in self.adapters[name]["B"].values())  # B starts at zero
        if self.active is None:
            self.active = name

    @rule(name=st.sampled_from(["", "1x", "a-b", 3]))
    def add_with_a_bad_name(self, name):
        self.refused(
            lambda: lora.add_adapter(self.model, name, lora.LoRAConfig(r=1, target_modules=("fc1",)))
        )

    @rule(name=st.one_of(NAMES, st.just("zz")))
    def set_adapter(self, name):
        if name not in self.adapters or (self.merged and name != self.active):
            self.refused(lambda: lora.set_adapter(self.model, name))
            return
        lora.set_adapter(self.model, name)
        self.active = name

    @rule(name=st.one_of(NAMES, st.just("zz")))
    def delete(self, name):
        if name not in self.adapters or (self.merged and name == self.active):
            self.refused(lambda: lora.delete_adapter(self.model, name))
            return
        lora.delete_adapter(self.model, name)
        del self.adapters[name]
        if self.active == name:
            remaining = self.order()
            self.active = remaining[0] if remaining else None

    @rule()
    def merge(self):
        lora.merge_lora(self.model)
        self.merged = self.active is not None

    @rule()
    def unmerge(self):
        lora.unmerge_lora(self.model)
        self.merged = False

    @rule()
    def disable(self):
        if self.merged:
            self.refused(lambda: lora.disable_adapters(self.model).__enter__())
            return
        with lora.disable_adapters(self.model), tl.no_grad():
            np.testing.assert_allclose(
                self.model(X).numpy(), self.expected(disabled=True), rtol=1e-9, atol=1e-9
            )

    @rule()
    def train_step(self):
        if self.active is None:  # nothing requires grad: the optimizer says so
            self.refused(lambda: optim.SGD(self.model.parameters(), lr=LR))
            return
        opt = optim.SGD(self.model.parameters(), lr=LR)
        step = lambda: (self.model(X) * R).sum().backward()
        if self.merged:  # training a merged adapter would count it twice
            self.refused(step)
            return
        new_a, new_b = self.expected_step()
        opt.zero_grad()
        step()
        opt.step()
        got = self.read(self.active)
        for layer in new_a:
            np.testing.assert_allclose(got["A"][layer], new_a[layer], rtol=1e-9, atol=1e-9)
            np.testing.assert_allclose(got["B"][layer], new_b[layer], rtol=1e-9, atol=1e-9)
        self.adapters[self.active].update(got)

    @rule(slot=st.integers(0, 1))
    def save(self, slot):
        if self.active is None or self.merged:
            self.refused(lambda: lora.save_adapter(self.model, self.folder / str(slot)))
            return
        lora.save_adapter(self.model, self.folder / str(slot))
        ad = self.adapters[self.active]
        self.saved[slot] = (self.active, dict(config=ad["config"], A=dict(ad["A"]), B=dict(ad["B"])))

    @rule(slot=st.integers(0, 1), name=st.one_of(st.none(), NAMES))
    def load(self, slot, name):
        folder = self.folder / str(slot)
        if slot not in self.saved or self.merged:
            self.refused(lambda: lora.load_adapter(self.model, folder, name=name))
            return
        saved_name, entry = self.saved[slot]
        name = name or saved_name
        if name in self.adapters and self.adapters[name]["config"] != entry["config"]:
            self.refused(lambda: lora.load_adapter(self.model, folder, name=name))
            return
        lora.load_adapter(self.model, folder, name=name)
        if name not in self.adapters:
            self.adapters[name] = dict(config=entry["config"])
        self.adapters[name].update(A=dict(entry["A"]), B=dict(entry["B"]))
        self.active = name

    @precondition(lambda self: self.saved)
    @rule(data=st.data(), how=st.sampled_from(["truncate", "flip", "other_r", "no_config", "bad_json"]))
    def load_a_corrupted_copy(self, data, how):
        slot = data.draw(st.sampled_from(sorted(self.saved)))
        copy = self.folder / f"corrupt-{how}"
        shutil.rmtree(copy, ignore_errors=True)
        shutil.copytree(self.folder / str(slot), copy)
        weights, config = copy / "adapter_model.safetensors", copy / "adapter_config.json"
        if how == "truncate":
            weights.write_bytes(weights.read_bytes()[:-7])
        elif how == "flip":
            raw = bytearray(weights.read_bytes())
            raw[-5] ^= 0xFF
            weights.write_bytes(bytes(raw))
        elif how == "other_r":
            meta = json.loads(config.read_text())
            meta["r"] += 1
            config.write_text(json.dumps(meta))
        elif how == "no_config":
            config.unlink()
        else:
            config.write_text(config.read_text()[:20])
        self.refused(lambda: lora.load_adapter(self.model, copy, name="c"))

    # ---- after every step -------------------------------------------------------------------------

    @invariant()
    def output_is_base_plus_s_b_a_of_the_active_adapter(self):
        with tl.no_grad():
            np.testing.assert_allclose(self.model(X).numpy(), self.expected(), rtol=1e-9, atol=1e-9)

    @invariant()
    def bookkeeping_matches(self):
        assert lora.active_adapter(self.model) == self.active
        assert lora.adapter_names(self.model) == self.order()
        trainable = {id(p) for p in self.model.parameters() if p.requires_grad}
        expected = {
            id(p)
            for _, layer in lora.lora_layers(self.model)
            if self.active in layer.adapters
            for p in (layer.adapters[self.active].lora_A, layer.adapters[self.active].lora_B)
        }
        assert trainable == expected  # only the active adapter trains
        assert all(
            bool(layer.merged) == (self.merged and layer.active is not None)
            for _, layer in lora.lora_layers(self.model)
        )


AdapterLifecycle.TestCase.settings = settings(
    max_examples=25, stateful_step_count=20, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
TestAdapterLifecycle = AdapterLifecycle.TestCase
