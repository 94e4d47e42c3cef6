"""Peer implementations of the benchmark steps: PyTorch eager (CPU or CUDA), dezero, mygrad.

None of them is a dependency: each is imported only when its step is built, and the
benchmarks leave out whatever is not installed.
"""

from __future__ import annotations

import importlib

import numpy as np

from .. import backend
from .steps import LR, clear_grads, op_chain


def torch_module():
    """PyTorch if importable (never a dependency), else None."""
    try:
        return importlib.import_module("torch")
    except Exception:  # not installed or broken: benchmarks simply leave it out
        return None


def torch_device() -> str:
    """Where PyTorch runs beside tinylora: CUDA when tinylora's backend is cupy, else the CPU."""
    return "cuda" if backend.get_backend() == "cupy" else "cpu"


def torch_sync():
    """Wait for PyTorch's queued CUDA work (nothing to wait for on the CPU)."""
    torch = torch_module()
    if torch is not None and torch_device() == "cuda":
        torch.cuda.synchronize()


def mlp_torch_step(problem: dict):
    """The same MLP step in PyTorch eager (CPU, or CUDA when the backend is cupy)."""
    torch = torch_module()
    dev = torch_device()
    x = torch.tensor(problem["x"], device=dev)
    y = torch.tensor(problem["y"], device=dev)
    params = [torch.tensor(w, device=dev, requires_grad=True) for w in problem["weights"]]
    params += [torch.tensor(b, device=dev, requires_grad=True) for b in problem["biases"]]
    n = len(problem["weights"])

    def step():
        h = x
        for i in range(n):
            h = torch.nn.functional.linear(h, params[i], params[n + i])
            if i < n - 1:
                h = h.relu()
        loss = torch.nn.functional.cross_entropy(h, y)
        for p in params:
            p.grad = None
        loss.backward()
        with torch.no_grad():
            for p in params:
                p.sub_(LR * p.grad)

    step.params = lambda: [p.detach().cpu().numpy() for p in params]
    return step


def dezero_modules():
    """dezero and dezero.functions (0.0.13 still uses np.int, which NumPy 1.24 removed)."""
    if not hasattr(np, "int"):
        np.int = int  # noqa: NPY001
    return importlib.import_module("dezero"), importlib.import_module("dezero.functions")


def mlp_dezero_step(problem: dict):
    """The same MLP step in dezero (weights stored (in, out) as dezero expects)."""
    dz, DF = dezero_modules()
    ws = [dz.Variable(w.T.copy()) for w in problem["weights"]]
    bs = [dz.Variable(b.copy()) for b in problem["biases"]]
    x, y, n = problem["x"], problem["y"], len(ws)

    def step():
        h = x
        for i in range(n):
            h = DF.linear(h, ws[i], bs[i])
            if i < n - 1:
                h = DF.relu(h)
        loss = DF.softmax_cross_entropy(h, y)
        for p in ws + bs:
            p.cleargrad()
        loss.backward()
        for p in ws + bs:
            p.data -= LR * p.grad.data

    step.params = lambda: [p.data.T if p.ndim == 2 else p.data for p in ws + bs]
    return step


def mlp_mygrad_step(problem: dict):
    """The same MLP step in mygrad."""
    mg = importlib.import_module("mygrad")
    losses = importlib.import_module("mygrad.nnet.losses")
    acts = importlib.import_module("mygrad.nnet.activations")
    ws = [mg.tensor(w.T.copy()) for w in problem["weights"]]
    bs = [mg.tensor(b.copy()) for b in problem["biases"]]
    x, y, n = problem["x"], problem["y"], len(ws)

    def step():
        h = x
        for i in range(n):
            h = mg.matmul(h, ws[i]) + bs[i]
            if i < n - 1:
                h = acts.relu(h)
        loss = losses.softmax_crossentropy(h, y)
        loss.backward()
        for p in ws + bs:
            p.data -= LR * p.grad

    step.params = lambda: [p.data.T if p.ndim == 2 else p.data for p in ws + bs]
    return step


PEERS = {"dezero": mlp_dezero_step, "mygrad": mlp_mygrad_step}


def op_chain_torch(n_ops: int = 1000, size: int = 8):
    """The same op chain in PyTorch eager."""
    torch, dev = torch_module(), torch_device()
    leaf = lambda a: torch.tensor(a, device=dev, requires_grad=True)
    return op_chain(leaf, torch.tanh, clear_grads, n_ops, size)


def op_chain_dezero(n_ops: int = 1000, size: int = 8):
    """The same op chain in dezero."""
    dz, DF = dezero_modules()
    clear = lambda *ts: [t.cleargrad() for t in ts]
    return op_chain(dz.Variable, DF.tanh, clear, n_ops, size)


def op_chain_mygrad(n_ops: int = 1000, size: int = 8):
    """The same op chain in mygrad (which replaces gradients on each backward by itself)."""
    mg = importlib.import_module("mygrad")
    return op_chain(mg.tensor, mg.tanh, lambda *ts: None, n_ops, size)


def gpt_torch_step(problem: dict, lora_r: int | None = None, lr: float = 1e-3):
    """The same GPT step in PyTorch eager: same weights, GELU tanh form, SDPA, tied head, AdamW."""
    torch = torch_module()
    nnf = torch.nn.functional
    dev = torch_device()
    cfg = problem["config"]
    c, h = cfg["n_embd"], cfg["n_head"]
    w = {k: torch.tensor(v, device=dev) for k, v in problem["state"].items()}
    train = {}

    def linear(name, x):
        out = nnf.linear(x, w[name + ".weight"], w.get(name + ".bias"))
        if lora_r and name + ".lora_A" in train:
            out = out + (x @ train[name + ".lora_A"].T @ train[name + ".lora_B"].T) * 2.0
        return out

    if lora_r:
        g = torch.Generator().manual_seed(0)
        for i in range(cfg["n_layer"]):
            for proj in ("q_proj", "v_proj"):
                name = f"blocks.{i}.attn.{proj}"
                a = (torch.rand(lora_r, c, generator=g) * 2 - 1) / c**0.5
                train[name + ".lora_A"] = a.to(dev).requires_grad_()
                train[name + ".lora_B"] = torch.zeros(c, lora_r, device=dev, requires_grad=True)
        params = list(train.values())
    else:
        for v in w.values():
            v.requires_grad_()
        params = list(w.values())
    decay = [p for p in params if p.ndim >= 2]
    no_decay = [p for p in params if p.ndim < 2]
    opt = torch.optim.AdamW(
        [{"params": decay}, {"params": no_decay, "weight_decay": 0.0}], lr=lr, weight_decay=0.01
    )
    x = torch.tensor(problem["x"], device=dev)
    y = torch.tensor(problem["y"], device=dev)
    pos = torch.arange(x.shape[1], device=dev)

    def forward():
        b, t = x.shape
        hid = w["tok_emb.weight"][x] + w["pos_emb.weight"][pos]
        for i in range(cfg["n_layer"]):
            p = f"blocks.{i}."
            a = nnf.layer_norm(hid, (c,), w[p + "ln_1.weight"], w[p + "ln_1.bias"])
            q, k, v = (linear(p + f"attn.{n}_proj", a).view(b, t, h, c // h).transpose(1, 2) for n in "qkv")
            att = nnf.scaled_dot_product_attention(q, k, v, is_causal=True).transpose(1, 2).reshape(b, t, c)
            hid = hid + linear(p + "attn.o_proj", att)
            a = nnf.layer_norm(hid, (c,), w[p + "ln_2.weight"], w[p + "ln_2.bias"])
            hid = hid + linear(
                p + "mlp.down_proj", nnf.gelu(linear(p + "mlp.up_proj", a), approximate="tanh")
            )
        hid = nnf.layer_norm(hid, (c,), w["ln_f.weight"], w["ln_f.bias"])
        logits = hid @ w["tok_emb.weight"].T
        return nnf.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1))

    def step():
        loss = forward()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    step.forward = forward
    return step
