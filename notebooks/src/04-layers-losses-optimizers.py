# %% [markdown]
# # 04 · Layers, losses, optimizers
#
# The pieces every training run is made of, measured one by one: a `Linear` layer against the
# formula, activations, a softmax and cross-entropy that do not overflow, LayerNorm, and then
# the digits MLP trained from scratch with SGD, SGD with momentum, Adam and AdamW. We end with
# what an optimizer's memory costs: Adam's two moments measured with `opt.state_bytes()` and
# with `tracemalloc`, and a computed table for a 7B-parameter model. The prose is in
# [chapter 04](../chapters/04-layers-losses-optimizers.md).

# %%
import os
FAST = os.environ.get("TINYLORA_FAST") == "1"
print("TINYLORA_FAST =", int(FAST), "(smoke test)" if FAST else "(full run)")

# %%
# no output: imports and seeds
import math
import tracemalloc

import matplotlib.pyplot as plt
import numpy as np

import tinylora as tl
import tinylora.functional as F
from tinylora import nn, optim
from tinylora.data import load_digits
from tinylora.models import MLP
from tinylora.train import evaluate_classifier, train

np.set_printoptions(precision=4, suppress=True)
tl.manual_seed(0)
rng = np.random.default_rng(0)

# %% [markdown]
# ## 1. `Linear`: y = x Wᵀ + b
#
# `nn.Linear(64, 128)` holds `weight` of shape (out, in) = (128, 64) and `bias` (128,), drawn
# from U(-1/√in, 1/√in) as PyTorch does. Its forward is one matmul and one add; we check it
# against plain NumPy.

# %%
layer = nn.Linear(64, 128)
print("weight shape:", layer.weight.shape, " bias shape:", layer.bias.shape)
print("parameters in Linear(64, 128):", layer.weight.size + layer.bias.size, "= 64 * 128 + 128")
print(f"init bound 1/sqrt(64) = {1 / math.sqrt(64):.4f}; largest |weight| drawn = {np.abs(layer.weight.data).max():.4f}")

x = rng.standard_normal((5, 64)).astype(np.float32)
y = layer(x)
by_hand = x @ layer.weight.data.T + layer.bias.data
print("output shape:", y.shape, f"  max |layer(x) - (x @ W.T + b)| = {np.abs(y.data - by_hand).max():.1e}")

# %% [markdown]
# The digits MLP `MLP([64, 128, 128, 10])` is three of these, `fc1`, `fc2`, `fc3`, with ReLU
# between them. Counting its parameters layer by layer:

# %%
tl.manual_seed(0)
mlp = MLP([64, 128, 128, 10])
for name, p in mlp.named_parameters():
    print(f"{name:12s} {str(p.shape):12s} {p.size:6d}")
for name in ("fc1", "fc2", "fc3"):
    lin = getattr(mlp, name)
    print(f"{name}: {lin.weight.size + lin.bias.size} parameters")
n_params = sum(p.size for p in mlp.parameters())
param_bytes = sum(p.data.nbytes for p in mlp.parameters())
print(f"total parameters: {n_params}  ({param_bytes} bytes in float32)")

# %% [markdown]
# ## 2. Activations
#
# Without a nonlinearity between them, stacked Linear layers collapse into one Linear layer.
# ReLU is what the digits MLP uses; GELU (tanh form) is what the transformer of chapter 06 uses.

# %%
z = np.linspace(-4, 4, 401).astype(np.float32)
fig, ax = plt.subplots(figsize=(6, 3.5))
for name, fn in [("relu", F.relu), ("gelu (tanh form)", F.gelu), ("silu", F.silu), ("tanh", F.tanh)]:
    ax.plot(z, fn(tl.Tensor(z)).data, label=name)
ax.set_xlabel("input"); ax.set_ylabel("output"); ax.set_title("Activation functions")
ax.grid(alpha=0.3); ax.legend()
plt.show()

# two Linear layers with nothing between them are one Linear layer: W2 (W1 x + b1) + b2
l1, l2 = nn.Linear(64, 128), nn.Linear(128, 10)
W = l2.weight.data @ l1.weight.data
b = l2.weight.data @ l1.bias.data + l2.bias.data
print(f"max |l2(l1(x)) - (x @ (W2 W1).T + b)| = {np.abs(l2(l1(x)).data - (x @ W.T + b)).max():.1e}")

# %% [markdown]
# ## 3. Softmax and cross-entropy, computed stably
#
# softmax(z)ᵢ = exp(zᵢ) / Σⱼ exp(zⱼ). Written literally it overflows as soon as a logit passes
# about 88 in float32. Subtracting the largest logit first changes nothing mathematically
# (the factor exp(-max) cancels) and keeps every exponent ≤ 0.

# %%
logits = np.array([[1000.0, 1001.0, 1002.0]], dtype=np.float32)
with np.errstate(over="ignore", invalid="ignore"):
    naive = np.exp(logits) / np.exp(logits).sum(axis=-1, keepdims=True)
print("naive softmax of [1000, 1001, 1002]:", naive)
print("F.softmax       of [1000, 1001, 1002]:", F.softmax(tl.Tensor(logits)).data)
print("F.softmax       of [   0,    1,    2]:", F.softmax(tl.Tensor(logits - 1000)).data, "(the same: only differences matter)")

# %% [markdown]
# Cross-entropy is −log softmax(z)[target] = logsumexp(z) − z[target], averaged over the batch.
# tinylora never forms log(softmax): it computes logsumexp on the shifted logits, so a confident
# wrong answer gives a large finite loss instead of `inf`. Its gradient with respect to the
# logits is (softmax − onehot(target)) / N, which we check against the backward pass.

# %%
target = np.array([0])
with np.errstate(divide="ignore", over="ignore", invalid="ignore"):
    naive_ce = -np.log(naive[0, 0])
z_t = tl.Tensor(logits, requires_grad=True)
ce = F.cross_entropy(z_t, target)
print(f"naive -log(softmax)[0] = {naive_ce}   F.cross_entropy = {ce.item():.4f} (= 1002 - 1000 + log(1 + e^-1 + e^-2))")
print(f"by hand: {2 + np.log(1 + np.exp(-1) + np.exp(-2)):.4f}")

# the gradient on a batch of 8 rows, 10 classes
zb = rng.standard_normal((8, 10)).astype(np.float32)
yb = rng.integers(0, 10, 8)
zt = tl.Tensor(zb, requires_grad=True)
F.cross_entropy(zt, yb).backward()
p = np.exp(zb - zb.max(1, keepdims=True)); p /= p.sum(1, keepdims=True)
formula = (p - np.eye(10)[yb]) / 8
print(f"max |backward - (softmax - onehot)/N| = {np.abs(zt.grad - formula).max():.1e}")

# an untrained classifier is close to uniform: its loss starts near log(10)
digits = load_digits()
print(f"untrained MLP loss on the digits test set: {evaluate_classifier(mlp, digits.x_test, digits.y_test)['loss']:.4f}"
      f"   log(10) = {math.log(10):.4f}")

# %% [markdown]
# ## 4. LayerNorm, briefly
#
# LayerNorm rescales each row to mean 0 and variance 1, then applies a learned scale and shift
# (starting at 1 and 0): y = (x − mean) / √(var + ε) · w + b. The transformer puts one before
# each block; the MLP does not need it.

# %%
ln = nn.LayerNorm(128)
h = (5 + 3 * rng.standard_normal((4, 128))).astype(np.float32)  # rows with mean ~5, std ~3
out = ln(h).data
manual = (h - h.mean(-1, keepdims=True)) / np.sqrt(h.var(-1, keepdims=True) + 1e-5)
print("row means before:", h.mean(-1), " after:", out.mean(-1))
print("row stds  before:", h.std(-1), "  after:", out.std(-1))
print(f"max |LayerNorm - formula| = {np.abs(out - manual).max():.1e}")

# %% [markdown]
# ## 5. Training the digits MLP from scratch
#
# 1347 training and 450 test images of 8×8 digits. The same MLP, the same seed, the same
# batches (64 images a step), four optimizers:
#
# - **SGD**: p ← p − lr·g (lr 0.1)
# - **SGD + momentum 0.9**: a running sum of gradients, buf ← 0.9·buf + g, p ← p − lr·buf (lr 0.01)
# - **Adam**: per-parameter running means of g and g², p ← p − lr·m̂ / (√v̂ + ε) (lr 0.001)
# - **AdamW**: Adam plus decoupled weight decay 0.01 on the matrices (lr 0.001)

# %%
steps = 20 if FAST else 1000
eval_every = 5 if FAST else 25
print("training images:", len(digits.y_train), " test images:", len(digits.y_test), " steps:", steps)

OPTIMIZERS = {
    "SGD": lambda ps: optim.SGD(ps, lr=0.1),
    "SGD + momentum": lambda ps: optim.SGD(ps, lr=0.01, momentum=0.9),
    "Adam": lambda ps: optim.Adam(ps, lr=1e-3),
    "AdamW": lambda ps: optim.AdamW(ps, lr=1e-3, weight_decay=0.01),
}


def batches(seed=0, batch_size=64):
    r = np.random.default_rng(seed)
    def next_batch():
        i = r.integers(0, len(digits.y_train), batch_size)
        return digits.x_train[i], digits.y_train[i]
    return next_batch


runs = {}
for name, make in OPTIMIZERS.items():
    tl.manual_seed(0)
    model = MLP([64, 128, 128, 10])
    opt = make(model.parameters())
    hist = train(model, opt, batches(0), steps, eval_every=eval_every, seed=0, progress=False,
                 eval_fn=lambda m: evaluate_classifier(m, digits.x_test, digits.y_test))
    runs[name] = dict(history=hist, state_bytes=opt.state_bytes())
    f = hist.final
    print(f"{name:15s} test accuracy {f['eval_accuracy']:.2%}  test loss {f['eval_loss']:.4f}  "
          f"train loss (last {eval_every} steps) {f['train_loss']:.4f}  ({f['seconds']:.1f} s)")

# %%
def smooth(values, k=20):
    k = max(1, min(k, len(values)))
    return np.convolve(values, np.ones(k) / k, mode="valid")


STYLE = {"SGD": "-", "SGD + momentum": "--", "Adam": "-", "AdamW": "--"}  # dashed: the twin of the line before
fig, axes = plt.subplots(1, 2, figsize=(11, 4))
for name, run in runs.items():
    h = run["history"]
    train_loss = [v for _, v in h.train_losses]
    axes[0].plot(np.arange(len(smooth(train_loss))) + 1, smooth(train_loss), STYLE[name], label=name)
    axes[1].plot(h.column("step"), h.column("eval_accuracy"), STYLE[name], label=name)
axes[0].set_yscale("log"); axes[0].set_xlabel("step"); axes[0].set_ylabel("train loss (mean of 20 steps)")
axes[0].set_title("Digits MLP from scratch: training loss")
axes[1].set_xlabel("step"); axes[1].set_ylabel("test accuracy"); axes[1].set_ylim(0, 1)
axes[1].set_title("Digits MLP from scratch: test accuracy")
for ax in axes:
    ax.grid(alpha=0.3); ax.legend()
plt.tight_layout(); plt.show()

# accuracy after the first few evaluations: who gets there first?
check_step = eval_every * 4
print(f"test accuracy at step {check_step}:")
for name, run in runs.items():
    h = run["history"]
    row = next(r for r in h.rows if r["step"] == check_step)
    print(f"  {name:15s} {row['eval_accuracy']:.2%}")

# %% [markdown]
# ## 6. What the optimizer's state costs
#
# SGD needs nothing but the gradient. Momentum keeps one buffer per parameter; Adam keeps two
# (m and v). `opt.state_bytes()` adds up the arrays the optimizer holds. To measure it another
# way, `tracemalloc` (NumPy reports its array allocations to it) records how much memory is
# still allocated after the **first** `step()`, the one that creates the state. The gradients
# already exist before that step, so the growth is the state and nothing else (plus a few
# hundred bytes of Python dicts).

# %%
def first_step_growth(make, sizes):
    tl.manual_seed(0)
    model = MLP(sizes)
    opt = make(model.parameters())
    xb = rng.random((64, sizes[0]), dtype=np.float32)
    yb = rng.integers(0, sizes[-1], 64)
    opt.zero_grad()
    F.cross_entropy(model(xb), yb).backward()  # gradients exist before the step
    p_bytes = sum(p.data.nbytes for p in model.parameters())
    g_bytes = sum(p.grad.nbytes for p in model.parameters())
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    opt.step()
    after = tracemalloc.get_traced_memory()[0]
    tracemalloc.stop()
    return dict(params=p_bytes, grads=g_bytes, state=opt.state_bytes(), traced=after - before)


memory = {}
for sizes in ([64, 128, 128, 10], [784, 1024, 1024, 10]):
    n = sum(a * b + b for a, b in zip(sizes[:-1], sizes[1:]))
    print(f"MLP{sizes}: {n:,} parameters")
    print(f"  {'optimizer':15s} {'param bytes':>12s} {'state_bytes()':>14s} {'traced growth':>14s} {'state/params':>13s}")
    for name, make in OPTIMIZERS.items():
        m = first_step_growth(make, sizes)
        memory[(tuple(sizes), name)] = m
        print(f"  {name:15s} {m['params']:12,d} {m['state']:14,d} {m['traced']:14,d} {m['state'] / m['params']:13.2f}")
    print(f"  gradient bytes: {m['grads']:,} (the same as the parameters, for every optimizer)")

# %% [markdown]
# The ratios are exactly 0, 1 and 2. The traced growth is the state plus a little bookkeeping
# (Python dicts and step counters, and whatever else the process allocates meanwhile, so it varies
# by a few hundred bytes from run to run): a visible fraction on the small MLP, nothing on the large one.

# %%
small = memory[((64, 128, 128, 10), "Adam")]
large = memory[((784, 1024, 1024, 10), "Adam")]
print(f"Adam, digits MLP: tracemalloc growth / parameter bytes = {small['traced'] / small['params']:.3f}"
      f" (bookkeeping beyond the state: {small['traced'] - small['state']:,} bytes)")
print(f"Adam, 784-1024-1024-10 MLP: tracemalloc growth / parameter bytes = {large['traced'] / large['params']:.3f}"
      f" (bookkeeping beyond the state: {large['traced'] - large['state']:,} bytes)")

# %% [markdown]
# ## 7. Extrapolating to a 7B-parameter model (computed, not measured)
#
# The ratios above do not depend on the model, so we can compute what full fine-tuning of a
# 7-billion-parameter model in float32 would hold in memory: weights, one gradient per weight,
# and the optimizer's state. (Activations come on top and depend on batch and sequence length.)

# %%
N = 7e9
bytes_fp32 = 4
GB = 1e9
state_per_param = {"SGD": 0, "SGD + momentum": 1, "Adam / AdamW": 2}
print("COMPUTED for 7e9 parameters in float32 (GB = 1e9 bytes):")
print(f"  {'optimizer':15s} {'weights':>9s} {'gradients':>10s} {'opt. state':>11s} {'total':>8s}")
for name, k in state_per_param.items():
    w = g = N * bytes_fp32 / GB
    s = k * N * bytes_fp32 / GB
    print(f"  {name:15s} {w:9.0f} {g:10.0f} {s:11.0f} {w + g + s:8.0f}")
print(f"  Adam's state alone: {2 * N * bytes_fp32 / GB:.0f} GB, twice the weights;"
      f" the Adam total, {(1 + 1 + 2) * N * bytes_fp32 / GB:.0f} GB, does not fit on one 80 GB accelerator.")

# %% [markdown]
# ## Try it
#
# Starting cells for the chapter's exercises. Each runs as it is; change the marked line.
#
# **1. Adam's learning rate.** Train the digits MLP with Adam at a few learning rates for the
# same short run: where is Adam fast, and where does it become unstable?

# %%
try_steps = 10 if FAST else 200
for lr in (1e-4, 1e-3, 1e-2):  # <- try 3e-2 or 1e-1
    tl.manual_seed(0)
    m_try = MLP([64, 128, 128, 10])
    train(m_try, optim.Adam(m_try.parameters(), lr=lr), batches(0), try_steps, seed=0, progress=False)
    acc = evaluate_classifier(m_try, digits.x_test, digits.y_test)["accuracy"]
    print(f"Adam lr {lr:g}: test accuracy after {try_steps} steps {acc:.2%}")

# %% [markdown]
# **2. What Adam's state costs on your own model.** `first_step_growth` from section 6 on any
# layer sizes: predict `state_bytes()` before you run it.

# %%
sizes_try = [64, 256, 10]  # <- your sizes
m = first_step_growth(OPTIMIZERS["Adam"], sizes_try)
print(f"MLP{sizes_try}: parameters {m['params']:,} bytes, Adam state {m['state']:,} bytes "
      f"({m['state'] / m['params']:.2f} x), traced growth {m['traced']:,} bytes")
