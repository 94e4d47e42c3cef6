"""The steps tinylora is timed on, and the hand-written step it is measured against.

The hand-written MLP step is the same step written in plain array code (forward, backward,
SGD update; no autograd), so tinylora / hand-written is the price of the autograd itself.
The GPT's bias-only step trains only q_proj's and v_proj's biases: LoRA's backward with
adapters that cost nothing, the least a LoRA step on q and v could take.
"""

from __future__ import annotations

import numpy as np

from .. import backend, lora
from .. import functional as F
from ..factories import manual_seed
from ..models import GPT, GPTConfig
from ..optim import AdamW
from ..tensor import Tensor, no_grad

MLP_SIZES = (784, 512, 512, 10)
MLP_BATCH = 256
LR = 0.01
GPT_SHAPE = dict(vocab_size=65, block_size=64, n_layer=4, n_head=4, n_embd=128)
GPT_BATCH = 32
GPT_MODES = ("full", "lora", "bias-only")
# the LoRA family (tinylora only, `tinylora bench --family`): DoRA and VeRA training steps, and
# forward passes (no grad, eval) of LoRA and DoRA with the adapter kept apart or merged
FAMILY_MODES = ("dora", "vera", "lora-infer", "lora-merged-infer", "dora-infer", "dora-merged-infer")
VERA_R = 64  # VeRA's rank in the family rows: its A and B are shared and frozen, so r costs little


def mlp_problem(sizes=MLP_SIZES, batch=MLP_BATCH, seed=0) -> dict:
    """Float32 data and He-initialised weights (out, in) shared by every MLP implementation."""
    r = np.random.default_rng(seed)
    x = r.standard_normal((batch, sizes[0])).astype(np.float32)
    y = r.integers(0, sizes[-1], batch)
    ws = [
        (r.standard_normal((o, i)) * np.sqrt(2.0 / i)).astype(np.float32)
        for i, o in zip(sizes[:-1], sizes[1:])
    ]
    bs = [np.zeros(o, np.float32) for o in sizes[1:]]
    return {"x": x, "y": y, "weights": ws, "biases": bs}


def mlp_handwritten_step(problem: dict):
    """The hand-written MLP step: forward, backward and SGD in plain array code (active backend)."""
    xp = backend.xp()
    x, y = xp.asarray(problem["x"]), xp.asarray(problem["y"])
    ws = [xp.asarray(w).copy() for w in problem["weights"]]
    bs = [xp.asarray(b).copy() for b in problem["biases"]]
    rows = xp.arange(len(problem["y"]))

    def step():
        acts, pre = [x], []
        for i, (w, b) in enumerate(zip(ws, bs)):
            h = acts[-1] @ w.T  # (batch, out)
            h += b
            pre.append(h)
            acts.append(xp.maximum(h, 0) if i < len(ws) - 1 else h)
        z = acts[-1]  # (batch, classes): softmax, then minus the one-hot targets
        z -= z.max(axis=1, keepdims=True)
        xp.exp(z, out=z)
        z /= z.sum(axis=1, keepdims=True)
        z[rows, y] -= 1
        g = z
        g /= len(rows)
        for i in reversed(range(len(ws))):
            gw, gb = g.T @ acts[i], g.sum(axis=0)  # (out, in), (out,)
            if i:
                g = g @ ws[i]
                g *= pre[i - 1] > 0
            ws[i] -= LR * gw
            bs[i] -= LR * gb

    step.params = lambda: [backend.to_numpy(a) for a in ws + bs]  # weights (out, in), then biases
    return step


def mlp_tinylora_step(problem: dict):
    """The MLP step on tinylora's Tensor API with plain SGD."""
    x = Tensor(problem["x"])
    y = backend.xp().asarray(problem["y"])
    params = [Tensor(w.copy(), requires_grad=True) for w in problem["weights"]]
    params += [Tensor(b.copy(), requires_grad=True) for b in problem["biases"]]
    n = len(problem["weights"])

    def step():
        h = x
        for i in range(n):
            h = F.linear(h, params[i], params[n + i])
            if i < n - 1:
                h = h.relu()
        loss = F.cross_entropy(h, y)
        for p in params:
            p.grad = None
        loss.backward()
        for p in params:
            p.data -= LR * p.grad

    step.trainable, step.optimizer = sum(p.size for p in params), None
    step.params = lambda: [backend.to_numpy(p.data) for p in params]
    return step


def op_chain(leaf, tanh, clear, n_ops: int, size: int):
    """Forward and backward through n_ops small elementwise ops, in any autograd library."""
    r = np.random.default_rng(0)
    x0 = leaf(r.standard_normal((size, size)).astype(np.float32))
    w = leaf(r.uniform(0.9, 1.1, (size, size)).astype(np.float32))
    b = leaf(r.standard_normal((size, size)).astype(np.float32) * 0.01)

    def step():
        x = x0
        for _ in range(n_ops // 4):
            x = tanh((x * w) + b) - b
        clear(x0, w, b)
        x.sum().backward()

    step.leaves = (x0, w, b)
    return step


def clear_grads(*tensors):
    """Forget the gradients of tensors whose .grad can be set to None."""
    for t in tensors:
        t.grad = None


def op_chain_tinylora(n_ops: int = 1000, size: int = 8):
    """Forward and backward through a chain of n_ops small elementwise ops."""
    leaf = lambda a: Tensor(a, requires_grad=True)
    return op_chain(leaf, lambda t: t.tanh(), clear_grads, n_ops, size)


def gpt_problem(n_embd: int = 128, batch: int = GPT_BATCH, seed: int = 0, **overrides) -> dict:
    """A GPT config (nanoGPT-style, tied head), its initial weights and one batch of ids."""
    shape = dict(GPT_SHAPE, n_embd=n_embd, **overrides)
    manual_seed(seed)
    with backend.use_backend("numpy"):
        model = GPT(GPTConfig(**shape))
    r = np.random.default_rng(seed)
    ids = r.integers(0, shape["vocab_size"], (batch, shape["block_size"] + 1))
    state = {k: backend.to_numpy(v).copy() for k, v in model.state_dict().items()}
    return {"config": shape, "state": state, "x": ids[:, :-1], "y": ids[:, 1:]}


def gpt_tinylora_step(problem: dict, lora_r: int | None = None, lr: float = 1e-3, bias_only: bool = False):
    """One AdamW training step of the GPT: full fine-tuning, LoRA r on q_proj and v_proj, or bias-only.

    bias_only=True trains only the biases of q_proj and v_proj (see the module docstring).
    """
    model = GPT(GPTConfig(**problem["config"]))
    model.load_state_dict(problem["state"])
    if bias_only:
        for name, p in model.named_parameters():
            p.requires_grad_(name.endswith(("q_proj.bias", "v_proj.bias")))
    elif lora_r:
        lora.apply_lora(
            model, lora.LoRAConfig(r=lora_r, alpha=2 * lora_r, target_modules=("q_proj", "v_proj"))
        )
        lora.mark_only_lora_trainable(model)
    return _adam_step(model, problem, lr)


def _adam_step(model, problem: dict, lr: float):
    """One AdamW step of `model` on the problem's batch, as a closure (what the timer calls)."""
    opt = AdamW(model.parameters(), lr=lr)
    xp = backend.xp()
    x, y = xp.asarray(problem["x"]), xp.asarray(problem["y"])

    def step():
        _, loss = model(x, y)
        opt.zero_grad()
        loss.backward()
        opt.step()

    step.optimizer = opt
    step.trainable = sum(p.size for p in model.parameters() if p.requires_grad)
    return step


def gpt_family_step(problem: dict, mode: str, lora_r: int = 8, lr: float = 1e-3):
    """A LoRA-family step on q_proj and v_proj: DoRA or VeRA training, or a LoRA/DoRA forward pass.

    "*-infer" modes time model(x) under no_grad in eval mode; "*-merged-infer" merge first,
    so the forward runs at the base's own cost.
    """
    if mode not in FAMILY_MODES:
        raise ValueError(f"gpt_family_step: mode must be one of {', '.join(FAMILY_MODES)}, got {mode!r}")
    model = GPT(GPTConfig(**problem["config"]))
    model.load_state_dict(problem["state"])
    targets = ("q_proj", "v_proj")
    if mode == "vera":
        lora.apply_vera(model, lora.VeRAConfig(r=VERA_R, target_modules=targets))
        return _adam_step(model, problem, lr)
    config = lora.LoRAConfig(r=lora_r, alpha=2 * lora_r, target_modules=targets, dora=mode.startswith("dora"))
    manual_seed(0)  # the same adapter in every row (merged and unmerged time the same model)
    lora.apply_lora(model, config)
    if mode == "dora":
        return _adam_step(model, problem, lr)
    rng = np.random.default_rng(1)
    for _, layer in lora.lora_layers(model):  # a trained-looking adapter: B != 0
        ad = layer.adapters["default"]
        ad.lora_B.data = backend.asarray(rng.normal(0, 0.02, ad.lora_B.shape).astype(ad.lora_B.dtype))
    model.eval()
    if "merged" in mode:
        lora.merge_lora(model)
    x = backend.xp().asarray(problem["x"])

    def step():
        with no_grad():
            model(x)

    step.optimizer, step.model = None, model
    step.trainable = sum(p.size for p in model.parameters() if p.requires_grad)
    return step
