"""Timed training steps for `tinylora bench` and benchmarks/: tinylora, its floor, and peers.

The floor is the same MLP step written by hand in the backend's array module (forward,
backward, SGD update; no autograd), so tinylora / floor is the price of the autograd itself.
PyTorch (CPU or CUDA), dezero and mygrad are optional peers, each timed in a process of its own.
"""

from __future__ import annotations

import importlib
import json
import os
import statistics
import subprocess
import sys
import time

import numpy as np

from . import backend
from . import functional as F
from .tensor import Tensor

MLP_SIZES = (784, 512, 512, 10)
MLP_BATCH = 256
LR = 0.01


def time_steps(step, steps: int = 20, warmup: int = 3, sync=None) -> dict:
    """Median and spread of `steps` calls of step() after `warmup` calls, in milliseconds."""
    if steps < 1 or warmup < 0:
        raise ValueError(f"time_steps: need steps >= 1 and warmup >= 0, got steps={steps}, warmup={warmup}")
    sync = sync or backend.synchronize
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
    xp = backend.xp()
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


def torch_module():
    """PyTorch if importable (never a dependency), else None."""
    try:
        return importlib.import_module("torch")
    except Exception:  # not installed or broken: benchmarks simply leave it out
        return None


def torch_device() -> str:
    return "cuda" if backend.get_backend() == "cupy" else "cpu"


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

    step.params = lambda: [p.detach().cpu().numpy() for p in params]
    return step


def _dezero():
    """dezero and dezero.functions (0.0.13 still uses np.int, which NumPy 1.24 removed)."""
    if not hasattr(np, "int"):
        np.int = int  # noqa: NPY001
    return importlib.import_module("dezero"), importlib.import_module("dezero.functions")


def mlp_dezero_step(problem: dict):
    """The same MLP step in dezero (weights stored (in, out) as dezero expects)."""
    dz, DF = _dezero()
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


def _op_chain(leaf, tanh, clear, n_ops: int, size: int):
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


def _clear_grads(*tensors):
    for t in tensors:
        t.grad = None


def op_chain_tinylora(n_ops: int = 1000, size: int = 8):
    """Forward and backward through a chain of n_ops small elementwise ops."""
    leaf = lambda a: Tensor(a, requires_grad=True)
    return _op_chain(leaf, lambda t: t.tanh(), _clear_grads, n_ops, size)


def op_chain_torch(n_ops: int = 1000, size: int = 8):
    """The same op chain in PyTorch eager."""
    torch, dev = torch_module(), torch_device()
    leaf = lambda a: torch.tensor(a, device=dev, requires_grad=True)
    return _op_chain(leaf, torch.tanh, _clear_grads, n_ops, size)


def op_chain_dezero(n_ops: int = 1000, size: int = 8):
    """The same op chain in dezero."""
    dz, DF = _dezero()
    clear = lambda *ts: [t.cleargrad() for t in ts]
    return _op_chain(dz.Variable, DF.tanh, clear, n_ops, size)


def op_chain_mygrad(n_ops: int = 1000, size: int = 8):
    """The same op chain in mygrad (which replaces gradients on each backward by itself)."""
    mg = importlib.import_module("mygrad")
    return _op_chain(mg.tensor, mg.tanh, lambda *ts: None, n_ops, size)


OP_CHAINS = {
    "tinylora": op_chain_tinylora,
    "pytorch": op_chain_torch,
    "dezero": op_chain_dezero,
    "mygrad": op_chain_mygrad,
}


# ---- GPT -------------------------------------------------------------------------------------

GPT_SHAPE = dict(vocab_size=65, block_size=64, n_layer=4, n_head=4, n_embd=128)
GPT_BATCH = 32


def gpt_problem(n_embd: int = 128, batch: int = GPT_BATCH, seed: int = 0, **overrides) -> dict:
    """A GPT config (nanoGPT-style, tied head), its initial weights and one batch of ids."""
    from .models import GPT, GPTConfig
    from .tensor import manual_seed

    shape = dict(GPT_SHAPE, n_embd=n_embd, **overrides)
    manual_seed(seed)
    with backend.use_backend("numpy"):
        model = GPT(GPTConfig(**shape))
    r = np.random.default_rng(seed)
    ids = r.integers(0, shape["vocab_size"], (batch, shape["block_size"] + 1))
    state = {k: backend.to_numpy(v).copy() for k, v in model.state_dict().items()}
    return {"config": shape, "state": state, "x": ids[:, :-1], "y": ids[:, 1:]}


def gpt_tinylora_step(problem: dict, lora_r: int | None = None, lr: float = 1e-3, floor: bool = False):
    """One AdamW training step of the GPT (full fine-tuning, or LoRA r on q_proj, v_proj).

    floor=True trains only the biases of q_proj and v_proj: the same backward as LoRA's with
    adapters that cost nothing, so the least a LoRA step on q and v could take.
    """
    from .models import GPT, GPTConfig
    from .optim import AdamW

    model = GPT(GPTConfig(**problem["config"]))
    model.load_state_dict(problem["state"])
    if floor:
        for name, p in model.named_parameters():
            p.requires_grad_(name.endswith(("q_proj.bias", "v_proj.bias")))
    elif lora_r:
        from . import lora

        lora.apply_lora(
            model, lora.LoRAConfig(r=lora_r, alpha=2 * lora_r, target_modules=("q_proj", "v_proj"))
        )
        lora.mark_only_lora_trainable(model)
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


# ---- the `tinylora bench` command ----------------------------------------------------------------


def _memory(step) -> dict:
    """Optimizer state bytes and the peak bytes traced during one more step (NumPy only)."""
    import tracemalloc

    opt = getattr(step, "optimizer", None)
    out = {"optimizer_state_bytes": opt.state_bytes() if opt is not None else 0, "peak_step_bytes": None}
    if backend.get_backend() == "numpy":
        tracemalloc.start()
        try:
            tracemalloc.reset_peak()
            base = tracemalloc.get_traced_memory()[0]
            step()
            out["peak_step_bytes"] = tracemalloc.get_traced_memory()[1] - base
        finally:
            tracemalloc.stop()
    return out


def make_step(spec: dict):
    """The training step a benchmark spec names: model mlp|gpt|ops, impl, mode full|lora|floor, width, r."""
    model, impl = spec["model"], spec["impl"]
    if model == "ops":
        return OP_CHAINS[impl](spec.get("n_ops", 1000))
    if model == "mlp":
        problem = mlp_problem()
        makers = {"tinylora": mlp_tinylora_step, "floor": mlp_floor_step, "pytorch": mlp_torch_step, **PEERS}
        return makers[impl](problem)
    problem = gpt_problem(n_embd=spec["width"])
    if spec["mode"] == "floor":  # tinylora only: see gpt_tinylora_step
        return gpt_tinylora_step(problem, floor=True)
    r = spec.get("r") if spec["mode"] == "lora" else None
    return (gpt_torch_step if impl == "pytorch" else gpt_tinylora_step)(problem, r)


def measure(spec: dict) -> dict:
    """Time one spec in this process: median and spread of `steps` steps, plus memory for tinylora."""
    step = make_step(spec)
    torch = torch_module() if spec["impl"] == "pytorch" else None
    if torch is not None and spec["backend"] == "numpy":
        torch.set_num_threads(backend.blas_info()["threads"] or 1)
    sync = torch_sync if torch is not None else None
    row = dict(spec, **time_steps(step, spec["steps"], spec["warmup"], sync=sync))
    row["trainable_params"] = getattr(step, "trainable", None)
    if spec["impl"] == "tinylora" and spec["model"] != "ops":
        row.update(_memory(step))
    return row


_CHILD = (
    "import json, sys; from tinylora import bench; print(json.dumps(bench.measure(json.loads(sys.argv[1]))))"
)


def measure_isolated(spec: dict) -> dict:
    """measure(spec) in a fresh process that holds one library only, on spec["backend"].

    A user runs one library at a time; in one shared process PyTorch's idle OpenMP workers
    keep spinning after its ops and steal a core from the next library's BLAS threads.
    """
    env = dict(os.environ, TINYLORA_BACKEND=spec["backend"])
    out = subprocess.run(
        [sys.executable, "-c", _CHILD, json.dumps(spec)], capture_output=True, text=True, env=env
    )
    if out.returncode != 0:
        raise RuntimeError(f"benchmark {spec['impl']} {spec['model']} failed: {out.stderr.strip()[-800:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def check_widths(widths) -> None:
    """Refuse GPT widths that the benchmark's heads cannot split evenly."""
    heads = GPT_SHAPE["n_head"]
    if any(w % heads for w in widths):
        raise ValueError(
            f"GPT widths must be multiples of n_head={heads} (e.g. 128,256,512), got {','.join(map(str, widths))}"
        )


def run_bench(
    backends=("numpy",),
    widths=(128,),
    steps: int = 20,
    warmup: int = 3,
    compare_torch: bool = False,
    peers: bool = False,
    lora_r: int = 8,
    rounds: int = 1,
    echo=print,
) -> dict:
    """Time MLP and GPT training steps (full and LoRA) on each backend; optionally PyTorch and peers.

    Every row is measured in its own process (see measure_isolated). With rounds > 1 all rows
    are measured again in each round, so a busy spell of a shared machine hits every row alike:
    a row reports the median of its rounds, a ratio the median of its within-round ratios.
    """
    check_widths(widths)
    if rounds < 1:
        raise ValueError(f"run_bench: rounds must be >= 1, got {rounds}")
    torch = torch_module() if compare_torch else None
    if compare_torch and torch is None:
        echo("(--compare-torch: PyTorch is not installed here; pip install torch to compare)")
    specs = []
    for name in backends:
        base = {"backend": name, "steps": steps, "warmup": warmup}
        impls = ["tinylora"] + (["floor"] if name == "numpy" else []) + (["pytorch"] if torch else [])
        impls += list(PEERS) if peers and name == "numpy" else []
        specs += [dict(base, model="mlp", mode="full", width=MLP_SIZES[1], impl=i) for i in impls]
        for width in widths:
            for mode in ("full", "lora"):
                for impl in ["tinylora"] + (["pytorch"] if torch else []):
                    specs.append(dict(base, model="gpt", mode=mode, width=width, impl=impl, r=lora_r))
    per_round = []
    for n in range(rounds):
        results = []
        for spec in list(specs):
            try:
                row = measure_isolated(spec)
            except RuntimeError as e:
                if spec["impl"] not in PEERS:
                    raise
                echo(f"  ({spec['impl']} skipped: {e})")  # optional peers: report and go on
                specs.remove(spec)
                continue
            results.append(row)
            echo(
                f"  {f'round {n + 1}/{rounds}  ' if rounds > 1 else ''}{row['model']:<4} {row['mode']:<5} "
                f"w={row['width']:<4} {row['impl']:<9} {row['backend']:<6} {row['median_ms']:9.2f} ms "
                f"(p10 {row['p10_ms']:.2f}, p90 {row['p90_ms']:.2f})"
            )
        per_round.append(results)
    return {
        "machine": machine_info(torch),
        "config": {
            "steps": steps,
            "warmup": warmup,
            "rounds": rounds,
            "lora_r": lora_r,
            "mlp_sizes": list(MLP_SIZES),
            "mlp_batch": MLP_BATCH,
            "gpt": GPT_SHAPE,
            "gpt_batch": GPT_BATCH,
            "isolated": True,
        },
        "results": _median_rows(per_round),
        "ratios": _median_ratios([ratios(results) for results in per_round]),
    }


def _row_key(row: dict) -> tuple:
    return row["model"], row["mode"], row["backend"], row["width"], row["impl"]


def _median_rows(per_round: list) -> list:
    """One row per configuration: the round with the median time, plus every round's median."""
    out = []
    for first in per_round[0]:
        runs = [r for rs in per_round for r in rs if _row_key(r) == _row_key(first)]  # in round order
        row = dict(sorted(runs, key=lambda r: r["median_ms"])[(len(runs) - 1) // 2])
        row["rounds_median_ms"] = [r["median_ms"] for r in runs]
        row["min_ms"] = min(r["min_ms"] for r in runs)
        out.append(row)
    return out


def _median_ratios(per_round: list) -> list:
    """Each ratio as the median of its values in the rounds (each measured within one round)."""
    key = lambda r: (r["what"], r["model"], r["mode"], r["backend"], r["width"])
    out = []
    for first in per_round[0]:
        values = [r["ratio"] for rs in per_round for r in rs if key(r) == key(first)]
        out.append(dict(first, ratio=statistics.median(values), rounds=values))
    return out


def ratios(results: list) -> list:
    """tinylora / pytorch, tinylora / floor and LoRA / full, for rows measured in the same run."""
    key = lambda r: (r["model"], r["mode"], r["backend"], r["width"])
    by = {(key(r), r["impl"]): r["median_ms"] for r in results}
    out = []
    for (k, impl), ms in by.items():
        if impl != "tinylora":
            continue
        for other in ("pytorch", "floor", "dezero", "mygrad"):
            if (k, other) in by:
                out.append(
                    {
                        "what": f"tinylora / {other}",
                        "model": k[0],
                        "mode": k[1],
                        "backend": k[2],
                        "width": k[3],
                        "ratio": ms / by[(k, other)],
                    }
                )
        if k[1] == "lora":
            full = (("gpt", "full", k[2], k[3]), impl)
            if full in by:
                out.append(
                    {
                        "what": "LoRA / full (tinylora)",
                        "model": k[0],
                        "mode": "lora",
                        "backend": k[2],
                        "width": k[3],
                        "ratio": ms / by[full],
                    }
                )
                if ((k, "pytorch") in by) and (((full[0]), "pytorch") in by):
                    out.append(
                        {
                            "what": "LoRA / full (pytorch)",
                            "model": k[0],
                            "mode": "lora",
                            "backend": k[2],
                            "width": k[3],
                            "ratio": by[(k, "pytorch")] / by[(full[0], "pytorch")],
                        }
                    )
    return out


def machine_info(torch=None) -> dict:
    """What the numbers were measured on."""
    import platform

    blas = backend.blas_info()
    info = {
        "python": platform.python_version(),
        "numpy": np.__version__,
        "blas": blas["library"],
        "blas_threads": blas["threads"],
        "processor": platform.processor() or platform.machine(),
        "cpu_count": __import__("os").cpu_count(),
        "cupy": backend.versions()["cupy"],
    }
    if torch is not None:
        info["torch"] = torch.__version__
    return info
