# %% [markdown]
# # 10 · Backends and timing
#
# The same training step on NumPy and (when a GPU is present) CuPy; how the cost of a step
# grows with the width of the model for full fine-tuning and for LoRA; and where the time of a
# step goes. Chapter: [10-backends-and-timing.md](../chapters/10-backends-and-timing.md).
#
# Timings depend on the machine: this notebook's outputs were measured on a 2-core CPU. Cells
# that need a GPU print a message and skip when there is none.

# %%
import os

FAST = os.environ.get("TINYLORA_FAST") == "1"
print("TINYLORA_FAST =", int(FAST), "(smoke test)" if FAST else "(full run)")

# %%
import cProfile
import pstats
import subprocess
import sys

import matplotlib.pyplot as plt
import numpy as np

import tinylora as tl
from tinylora import bench

tl.manual_seed(0)
STEPS = 3 if FAST else 15
WIDTHS = [32, 64] if FAST else [64, 128, 256, 384]
print("backends available here:", tl.available_backends())
print("BLAS:", tl.backend.blas_info())
print("numpy", np.__version__, "| cupy", tl.backend.versions()["cupy"] or "not installed")

# %% [markdown]
# ## One step, two backends
#
# A backend is only the array module underneath: `tl.use_backend("cupy")` makes new tensors
# CuPy arrays, and every op in `tinylora/functional.py` runs unchanged on them (the code asks
# the array for its module). The benchmark GPT is built from the same weights on each backend.

# %%
problem = bench.gpt_problem()
timings = {}
for name in ("numpy", "cupy"):
    if name not in tl.available_backends():
        print(f"{name}: not available on this machine (no CUDA GPU / CuPy) -- skipped")
        continue
    with tl.use_backend(name):
        for mode, r in (("full", None), ("lora", 8)):
            step = bench.gpt_tinylora_step(problem, r)
            timings[(name, mode)] = bench.time_steps(step, STEPS, warmup=2)["median_ms"]
            print(f"{name:<6} {mode:<5} step: {timings[(name, mode)]:8.1f} ms  ({tl.backend.device_name()})")
if ("cupy", "full") in timings:
    print("speed-up of CuPy over NumPy, full step:", round(timings[("numpy", "full")] / timings[("cupy", "full")], 1))

# %% [markdown]
# ## How the cost grows with width
#
# Widen the GPT (n_embd) and time a full fine-tuning step and a LoRA step (r = 8 on q_proj and
# v_proj). Full fine-tuning computes every weight gradient and updates every weight; LoRA
# computes the frozen weights' input gradients only, and updates two small matrices per layer.

# %%
rows = []
for width in WIDTHS:
    p = bench.gpt_problem(n_embd=width)
    full = bench.gpt_tinylora_step(p)
    lora = bench.gpt_tinylora_step(p, 8)
    t_full = bench.time_steps(full, STEPS, warmup=2)["median_ms"]
    t_lora = bench.time_steps(lora, STEPS, warmup=2)["median_ms"]
    rows.append((width, full.trainable, lora.trainable, t_full, t_lora))
print(f"{'width':>6} {'full params':>12} {'LoRA params':>12} {'full ms':>9} {'LoRA ms':>9} {'LoRA/full':>9}")
for w, pf, pl, tf, tl_ in rows:
    print(f"{w:>6} {pf:>12,} {pl:>12,} {tf:>9.1f} {tl_:>9.1f} {tl_ / tf:>9.2f}")

# %%
w = [r[0] for r in rows]
fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 3.8))
ax1.plot(w, [r[3] for r in rows], "o-", label="full fine-tuning")
ax1.plot(w, [r[4] for r in rows], "o-", label="LoRA r=8 (q, v)")
ax1.set_xlabel("width n_embd")
ax1.set_ylabel("median step time (ms)")
ax1.set_title("GPT training step on this CPU")
ax1.legend()
ax1.grid(alpha=0.3)
ax2.plot(w, [r[4] / r[3] for r in rows], "o-", color="C2")
ax2.set_xlabel("width n_embd")
ax2.set_ylabel("LoRA step / full step")
ax2.set_title("what LoRA saves per step")
ax2.set_ylim(0, 1)
ax2.grid(alpha=0.3)
fig.tight_layout()
plt.show()

# %% [markdown]
# ## Where the time goes
#
# Profile a few steps of the benchmark GPT (width 128), full fine-tuning and LoRA, and group
# the time by what the code is doing: the matrix products of the layers, attention, the
# elementwise layers (GELU, LayerNorm, cross-entropy), the optimizer, and the bookkeeping of
# the autograd engine itself. The two columns show what LoRA saves and what it cannot.

# %%
from pathlib import Path

LABELS = {
    "linear": "linear layers (matmuls)", "lora_linear": "linear layers (matmuls)",
    "scaled_dot_product_attention": "attention", "gelu": "GELU", "layer_norm": "LayerNorm",
    "cross_entropy": "cross-entropy", "embedding": "embedding", "_update": "optimizer (AdamW)",
}
REST = "autograd engine, Python and the rest"


def owner(file, line):
    """The top-level function a line belongs to: a backward closure lives inside its op."""
    for text in reversed(Path(file).read_text().splitlines()[:line]):
        if text.startswith("def "):
            return text[4:].split("(")[0]
    return "?"


def breakdown(step):
    """Milliseconds per step spent in each group of LABELS, measured with cProfile."""
    step()
    prof = cProfile.Profile()
    prof.runcall(lambda: [step() for _ in range(STEPS)])
    stats = pstats.Stats(prof).stats
    total = sum(entry[2] for entry in stats.values())  # all the time the profiler saw
    own = {label: 0.0 for label in LABELS.values()}
    for (file, line, func), (_, _, _, cumtime, _) in stats.items():
        name = owner(file, line) if file.endswith("functional.py") else func
        if name in LABELS and (func == name or func == "backward"):  # an op's forward or its backward
            own[LABELS[name]] += cumtime
    own[REST] = total - sum(own.values())
    return {label: 1000 * t / STEPS for label, t in own.items()}


parts = {mode: breakdown(bench.gpt_tinylora_step(problem, r)) for mode, r in (("full", None), ("lora", 8))}
print(f"{'ms per step':<38} {'full':>7} {'LoRA':>7} {'saved':>7}")
for label in sorted(parts["full"], key=lambda k: -parts["full"][k]):
    f, l = parts["full"][label], parts["lora"][label]
    print(f"{label:<38} {f:7.1f} {l:7.1f} {f - l:7.1f}")
tf, tl_ = sum(parts["full"].values()), sum(parts["lora"].values())
print(f"{'total':<38} {tf:7.1f} {tl_:7.1f} {tf - tl_:7.1f}   LoRA/full = {tl_ / tf:.2f}")
shared = sum(v for k, v in parts["full"].items() if k != LABELS["linear"])
print(f"share of the full step outside the linear layers: {100 * shared / tf:.0f} %")

# %%
labels = sorted(parts["full"], key=lambda k: parts["full"][k])
y = np.arange(len(labels))
fig, ax = plt.subplots(figsize=(8, 3.8))
ax.barh(y + 0.2, [parts["full"][k] for k in labels], height=0.4, label="full fine-tuning")
ax.barh(y - 0.2, [parts["lora"][k] for k in labels], height=0.4, label="LoRA r=8 (q, v)")
ax.set_yticks(y, labels)
ax.set_xlabel("ms per step (cProfile)")
ax.set_title("where the time of a GPT step goes (NumPy, width 128, this CPU)")
ax.legend()
fig.tight_layout()
plt.show()

# %% [markdown]
# ## How low can LoRA go?
#
# A third step, the *floor*, trains only the biases of q_proj and v_proj. Its backward pass is
# the one LoRA needs (all the way down to the first block's queries and values), but its
# "adapters" cost nothing: no products with A and B, almost no optimizer work. The three steps
# take turns for three rounds; each time is the median of the steps of a round.

# %%
variants = {
    "full": bench.gpt_tinylora_step(problem),
    "LoRA r=8": bench.gpt_tinylora_step(problem, 8),
    "floor": bench.gpt_tinylora_step(problem, bias_only=True),
}
times = {k: [] for k in variants}
for _ in range(3):
    for k, step in variants.items():
        times[k].append(bench.time_steps(step, STEPS, warmup=2)["median_ms"])
for k, ts in times.items():
    print(f"{k:<9} {np.median(ts):7.1f} ms per step   (rounds: {', '.join(f'{t:.1f}' for t in ts)})")
within = {k: float(np.median(np.array(times[k]) / np.array(times["full"]))) for k in ("LoRA r=8", "floor")}
print(f"LoRA / full = {within['LoRA r=8']:.2f}, floor / full = {within['floor']:.2f} (medians of the rounds' ratios)")
print(f"LoRA's own work (adapter products, folding, AdamW on A and B): "
      f"{np.median(times['LoRA r=8']) - np.median(times['floor']):.1f} ms per step")

# %% [markdown]
# ## The memory LoRA does not save: activations
#
# Between the forward pass and the backward pass, the graph keeps what the backward will need:
# each op's inputs or outputs (the input of every linear layer, attention's probabilities,
# GELU's and LayerNorm's inputs, ...). We measure it with `tracemalloc` (NumPy reports its
# array allocations to it): the memory still held after the forward pass of a training step,
# with the graph alive and before `backward`, for full fine-tuning and for LoRA r = 8 on q_proj
# and v_proj, at three batch sizes of the width-128 benchmark GPT. The same forward under
# `no_grad`, which keeps no graph, is the control. Weights, gradients and AdamW state (after
# two warm-up steps) are counted beside it.

# %%
import gc
import tracemalloc

from tinylora import lora as tl_lora
from tinylora.models import GPT, GPTConfig
from tinylora.optim import AdamW


def memory_of_a_step(problem, mode):
    """Bytes held after the forward (graph alive) and after a no_grad forward; weights, grads, AdamW state."""
    m = GPT(GPTConfig(**problem["config"]))
    m.load_state_dict(problem["state"])
    if mode == "lora":
        tl_lora.apply_lora(m, tl_lora.LoRAConfig(r=8, alpha=16, target_modules=("q_proj", "v_proj")))
    m.train()
    x, y = problem["x"], problem["y"]
    opt_m = AdamW(m.parameters(), lr=1e-3)
    for _ in range(2):  # warm up: gradients and optimizer state exist, as in the middle of training
        _, loss = m(x, y)
        opt_m.zero_grad()
        loss.backward()
        opt_m.step()
    grads = sum(p.grad.nbytes for p in m.parameters() if p.grad is not None)
    opt_m.zero_grad()
    del loss
    held = {}
    for graph in (True, False):
        gc.collect()
        tracemalloc.start()
        before = tracemalloc.get_traced_memory()[0]
        if graph:
            _, loss = m(x, y)  # the graph (and all it keeps for backward) is alive while `loss` is
        else:
            with tl.no_grad():
                _, loss = m(x, y)
        held[graph] = tracemalloc.get_traced_memory()[0] - before
        tracemalloc.stop()
        del loss
    return dict(graph=held[True], no_grad=held[False], weights=sum(p.data.nbytes for p in m.parameters()),
                grads=grads, adamw=opt_m.state_bytes())


BATCHES = (2, 4) if FAST else (8, 16, 32)
act = {(b, mode): memory_of_a_step(bench.gpt_problem(batch=b), mode) for b in BATCHES for mode in ("full", "lora")}
MB = 1e6
print(f"{'batch':>5} {'mode':<5} {'kept for backward':>18} {'no_grad forward':>16} {'weights':>9} "
      f"{'gradients':>10} {'AdamW state':>12}   (MB)")
for (b, mode), a in act.items():
    print(f"{b:>5} {mode:<5} {a['graph'] / MB:>18.2f} {a['no_grad'] / MB:>16.2f} {a['weights'] / MB:>9.2f} "
          f"{a['grads'] / MB:>10.2f} {a['adamw'] / MB:>12.2f}")
for b in BATCHES:
    f, l = act[(b, "full")], act[(b, "lora")]
    print(f"batch {b}: LoRA / full, kept for backward {l['graph'] / f['graph']:.3f}; "
          f"weights + gradients + AdamW state {(l['weights'] + l['grads'] + l['adamw']) / (f['weights'] + f['grads'] + f['adamw']):.3f}")
b = BATCHES[-1]
print(f"batch {b}, full fine-tuning: activations kept for backward are "
      f"{act[(b, 'full')]['graph'] / (act[(b, 'full')]['weights'] + act[(b, 'full')]['grads'] + act[(b, 'full')]['adamw']):.1f} x "
      f"the weights, gradients and AdamW state together")

# %%
fig, ax = plt.subplots(figsize=(7, 3.8))
xb = np.arange(len(BATCHES))
for j, mode in enumerate(("full", "lora")):
    a = [act[(b, mode)] for b in BATCHES]
    ax.bar(xb + (j - 0.5) * 0.38, [v["graph"] / MB for v in a], 0.38, label=f"{mode}: activations kept for backward",
           color=f"C{j}")
    ax.bar(xb + (j - 0.5) * 0.38, [(v["weights"] + v["grads"] + v["adamw"]) / MB for v in a], 0.38,
           bottom=[v["graph"] / MB for v in a], color=f"C{j}", alpha=0.4,
           label=f"{mode}: weights + gradients + AdamW state")
ax.set_xticks(xb, [f"batch {b}" for b in BATCHES])
ax.set_ylabel("MB held during a training step")
ax.set_title("GPT width 128, blocks of 64: what a training step holds")
ax.legend(fontsize=8)
fig.tight_layout()
plt.show()

# %% [markdown]
# ## Memory that is given back too early
#
# A training step allocates and frees the same large arrays every time. By default glibc hands
# large freed blocks back to the operating system, so the next step has to fault the same
# memory in again. tinylora asks glibc to keep freed memory (`tl.backend.keep_freed_memory`,
# on by default); the cell below runs the same steps in two fresh processes, with and without
# that setting, and counts the page faults.

# %%
probe = """
import resource, time, tinylora as tl
from tinylora import bench
tl.keep_freed_memory()  # does nothing when TINYLORA_KEEP_FREED_MEMORY=0
step = bench.gpt_tinylora_step(bench.gpt_problem())
for _ in range(2): step()
f0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt; t0 = time.perf_counter()
for _ in range({n}): step()
dt = (time.perf_counter() - t0) / {n}
print(round((resource.getrusage(resource.RUSAGE_SELF).ru_minflt - f0) / {n}), round(1000 * dt, 1))
""".format(n=STEPS)
for keep in ("1", "0"):
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                         env=dict(os.environ, TINYLORA_KEEP_FREED_MEMORY=keep), check=True)
    faults, ms = out.stdout.split()
    print(f"keep freed memory = {keep}: {int(faults):>7,} page faults per step, {float(ms):7.1f} ms per step")

# %% [markdown]
# ## BLAS threads
#
# The matrix products run in the BLAS library under NumPy (OpenBLAS here), which splits each
# product over its threads. The same probe in fresh processes with one thread and with two:

# %%
for threads in ("1", "2"):
    env = dict(os.environ, OPENBLAS_NUM_THREADS=threads, OMP_NUM_THREADS=threads, MKL_NUM_THREADS=threads)
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, env=env, check=True)
    print(f"{threads} BLAS thread(s): {float(out.stdout.split()[1]):7.1f} ms per full step")

# %% [markdown]
# ## PyTorch as a yardstick (optional)
#
# If PyTorch happens to be installed, time the same model in PyTorch eager on the same weights.
# Each library runs in a fresh process of its own (`bench.measure_isolated`), as a user would
# run it: in one shared process PyTorch's idle worker threads keep spinning after its ops and
# slow down whatever runs next. The shared machine these outputs come from changes speed in
# spells of some seconds, so the cell alternates the libraries for three rounds and prints the
# ratio in each round, and the ratio of the best single steps (the machine at its quietest).
# tinylora never needs PyTorch.

# %%
torch = bench.torch_module()
if torch is None:
    print("PyTorch is not installed here: skipped")
else:
    spec = {"model": "gpt", "width": 128, "r": 8, "backend": "numpy", "steps": STEPS, "warmup": 2}
    for mode in ("full", "lora"):
        rounds = []  # alternate the two libraries, so a busy spell of the machine hits both alike
        for _ in range(1 if FAST else 3):
            ours, theirs = (bench.measure_isolated(dict(spec, mode=mode, impl=i)) for i in ("tinylora", "pytorch"))
            rounds.append((ours["median_ms"], theirs["median_ms"], ours["min_ms"], theirs["min_ms"]))
        r = np.array(rounds)
        ratios = r[:, 0] / r[:, 1]
        print(f"{mode:<4} step: tinylora {np.median(r[:, 0]):6.1f} ms, PyTorch {np.median(r[:, 1]):6.1f} ms, "
              f"ratio {np.median(ratios):.2f} (each round: {', '.join(f'{x:.2f}' for x in ratios)}); "
              f"best steps {r[:, 2].min():.1f} vs {r[:, 3].min():.1f} ms, ratio {r[:, 2].min() / r[:, 3].min():.2f}")

# %% [markdown]
# ## Try it
#
# Starting cells for the chapter's exercises; each runs as it is.
#
# **1. What activations scale with.** `memory_of_a_step` from the activation cell, for another
# block length or width: change `block` and `width`, and predict the ratio to the batch-8 row
# above before you run it.

# %%
block, width = 128, 128  # <- change these (the table above used block 64, width 128)
a_try = memory_of_a_step(bench.gpt_problem(batch=8 if not FAST else 2, n_embd=width, block_size=block), "lora")
print(f"LoRA, batch {8 if not FAST else 2}, block {block}, width {width}: {a_try['graph'] / MB:.1f} MB kept for "
      f"backward, {a_try['weights'] / MB:.1f} MB of weights")

# %% [markdown]
# **2. Does the rank cost time?** Time LoRA steps at a few ranks against the full step, taking
# turns as the floor cell does. Add ranks, or widen the model.

# %%
for r_try in (8, 64):  # <- add ranks
    t_l = bench.time_steps(bench.gpt_tinylora_step(problem, r_try), STEPS, warmup=2)["median_ms"]
    t_f = bench.time_steps(bench.gpt_tinylora_step(problem), STEPS, warmup=2)["median_ms"]
    print(f"r = {r_try:>3}: LoRA {t_l:.1f} ms, full {t_f:.1f} ms, LoRA / full {t_l / t_f:.2f}")
