"""Timed training steps for `tinylora bench` and benchmarks/: tinylora, its floor, and peers.

The floor is the same MLP step written by hand in the backend's array module (forward,
backward, SGD update; no autograd), so tinylora / floor is the price of the autograd itself.
PyTorch (CPU or CUDA), dezero and mygrad are optional peers, timed in the same process.
"""

from __future__ import annotations

import importlib
import statistics
import time

import numpy as np

from . import backend as B
from . import functional as F
from .tensor import Tensor

MLP_SIZES = (784, 512, 512, 10)
MLP_BATCH = 256
LR = 0.01


def time_steps(step, steps: int = 20, warmup: int = 3, sync=None) -> dict:
    """Median and spread of `steps` calls of step() after `warmup` calls, in milliseconds."""
    sync = sync or B.synchronize
    for _ in range(warmup):
        step()
    sync()
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        step()
        sync()
        times.append((time.perf_counter() - t0) * 1e3)
    times.sort()
    q = lambda f: times[min(len(times) - 1, int(f * len(times)))]
    return {
        "median_ms": statistics.median(times),
        "p10_ms": q(0.1),
        "p90_ms": q(0.9),
        "min_ms": times[0],
        "steps": steps,
    }


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


def mlp_floor_step(problem: dict):
    """The hand-written MLP step: forward, backward and SGD in plain array code."""
    xp = B.xp()
    x, y = xp.asarray(problem["x"]), xp.asarray(problem["y"])
    ws = [xp.asarray(w).copy() for w in problem["weights"]]
    bs = [xp.asarray(b).copy() for b in problem["biases"]]
    rows = xp.arange(len(problem["y"]))

    def step():
        acts, pre = [x], []
        for i, (w, b) in enumerate(zip(ws, bs)):
            h = acts[-1] @ w.T
            h += b
            pre.append(h)
            acts.append(xp.maximum(h, 0) if i < len(ws) - 1 else h)
        z = acts[-1]
        z -= z.max(axis=1, keepdims=True)
        xp.exp(z, out=z)
        z /= z.sum(axis=1, keepdims=True)
        z[rows, y] -= 1
        g = z
        g /= len(rows)
        for i in reversed(range(len(ws))):
            gw, gb = g.T @ acts[i], g.sum(axis=0)
            if i:
                g = g @ ws[i]
                g *= pre[i - 1] > 0
            ws[i] -= LR * gw
            bs[i] -= LR * gb

    return step


def mlp_tinylora_step(problem: dict):
    """The MLP step on tinylora's Tensor API with plain SGD."""
    x = Tensor(problem["x"])
    y = B.xp().asarray(problem["y"])
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

    return step


def torch_module():
    """PyTorch if importable (never a dependency), else None."""
    try:
        return importlib.import_module("torch")
    except Exception:  # not installed or broken: benchmarks simply leave it out
        return None


def torch_device() -> str:
    return "cuda" if B.get_backend() == "cupy" else "cpu"


def torch_sync():
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

    return step


def mlp_dezero_step(problem: dict):
    """The same MLP step in dezero (weights stored (in, out) as dezero expects)."""
    if not hasattr(np, "int"):
        np.int = int  # noqa: NPY001  dezero 0.0.13 still uses np.int, which NumPy 1.24 removed
    dz = importlib.import_module("dezero")
    DF = importlib.import_module("dezero.functions")
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

    return step


PEERS = {"dezero": mlp_dezero_step, "mygrad": mlp_mygrad_step}


def op_chain_tinylora(n_ops: int = 1000, size: int = 8):
    """Forward and backward through a chain of n_ops small elementwise ops."""
    r = np.random.default_rng(0)
    x0 = Tensor(r.standard_normal((size, size)).astype(np.float32), requires_grad=True)
    w = Tensor(r.uniform(0.9, 1.1, (size, size)).astype(np.float32), requires_grad=True)
    b = Tensor(r.standard_normal((size, size)).astype(np.float32) * 0.01, requires_grad=True)

    def step():
        x = x0
        for _ in range(n_ops // 4):
            x = ((x * w) + b).tanh() - b
        x0.grad = w.grad = b.grad = None
        x.sum().backward()

    return step


def op_chain_torch(n_ops: int = 1000, size: int = 8):
    """The same op chain in PyTorch eager."""
    torch = torch_module()
    dev = torch_device()
    r = np.random.default_rng(0)
    x0 = torch.tensor(r.standard_normal((size, size)).astype(np.float32), device=dev, requires_grad=True)
    w = torch.tensor(r.uniform(0.9, 1.1, (size, size)).astype(np.float32), device=dev, requires_grad=True)
    b = torch.tensor(
        r.standard_normal((size, size)).astype(np.float32) * 0.01, device=dev, requires_grad=True
    )

    def step():
        x = x0
        for _ in range(n_ops // 4):
            x = ((x * w) + b).tanh() - b
        x0.grad = w.grad = b.grad = None
        x.sum().backward()

    return step
