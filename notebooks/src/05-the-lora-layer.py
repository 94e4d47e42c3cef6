# %% [markdown]
# # 05 · The LoRA layer
#
# LoRA on the shipped digits MLP: an MLP trained on upright 8×8 digits, adapted to the same
# digits rotated by 90 degrees. We look at the shapes of A and B, check that B = 0 leaves the
# output exactly unchanged and that A gets no gradient at step 0, see what alpha/r (and
# rsLoRA's alpha/√r) do, then train full fine-tuning and LoRA at r = 1, 2, 4, 8, 16 from the
# same frozen base, prove the base never changed, merge an adapter into the weights, and
# compare file sizes. The prose is in [chapter 05](../chapters/05-the-lora-layer.md).

# %%
import os
FAST = os.environ.get("TINYLORA_FAST") == "1"
print("TINYLORA_FAST =", int(FAST), "(smoke test)" if FAST else "(full run)")

# %%
# no output: imports and seeds
import hashlib
import tempfile
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np

import inspect

from threadpoolctl import threadpool_limits

import tinylora as tl
import tinylora.functional as F
import tinylora.reference as R
from tinylora import lora, optim
from tinylora.bases import load_base
from tinylora.data import load_digits
from tinylora.evaluate import accuracy_per_example, digits_heldout, paired_diff
from tinylora.io import save_weights
from tinylora.train import evaluate_classifier, train

threadpool_limits(1)  # one BLAS thread: these matmuls are tiny, and extra threads only contend
np.set_printoptions(precision=4, suppress=True)
tl.manual_seed(0)
rng = np.random.default_rng(0)
TARGETS = ("fc1", "fc2", "fc3")

# %% [markdown]
# ## 1. The base and the shifted task
#
# `load_base("digits")` loads an `MLP([64, 128, 128, 10])` that was trained on upright digits
# (with dropout 0.3 after each hidden layer) and checks its file against the sha256 on its card.
# The new task is the same digits turned by 90 degrees: the base has never seen them.

# %%
base = load_base("digits")
card = base.card
upright = load_digits()
rotated = load_digits(rotate=True)
x_test, y_test = digits_heldout(rotate=True)  # the course's fixed test split, rotated
assert np.array_equal(x_test, rotated.x_test) and np.array_equal(y_test, rotated.y_test)
print("base:", base.model)
print("card: parameters", card["parameters"], "| dropout", card["config"]["dropout"],
      "| trained", card["recipe"]["steps"], "steps with AdamW lr", card["recipe"]["lr"])
print(f"card metrics:  upright test accuracy {card['metrics']['test']['accuracy']:.2%}, "
      f"rotated test accuracy {card['metrics']['rotated_test']['accuracy']:.2%}")
m_up = evaluate_classifier(base.model, upright.x_test, upright.y_test)
m_rot = evaluate_classifier(base.model, rotated.x_test, rotated.y_test)
print(f"measured here: upright test accuracy {m_up['accuracy']:.2%} (loss {m_up['loss']:.4f}), "
      f"rotated test accuracy {m_rot['accuracy']:.2%} (loss {m_rot['loss']:.4f})")
print("rotated task:", len(rotated.y_train), "training images,", len(rotated.y_test), "test images")

fig, axes = plt.subplots(2, 6, figsize=(9, 3.3))
for j in range(6):
    axes[0, j].imshow(upright.x_test[j].reshape(8, 8), cmap="gray_r")
    axes[1, j].imshow(rotated.x_test[j].reshape(8, 8), cmap="gray_r")
    axes[0, j].set_title(f"label {upright.y_test[j]}", fontsize=9)
    for i in range(2):
        axes[i, j].set_xticks([]); axes[i, j].set_yticks([])
axes[0, 0].set_ylabel("upright"); axes[1, 0].set_ylabel("rotated")
fig.suptitle("The base task (top) and the shifted task (bottom)")
plt.tight_layout(); plt.show()

# %% [markdown]
# ## 2. A and B: the shapes
#
# `apply_lora` replaces each targeted `nn.Linear` (weight W of shape (out, in)) with a
# `LoRALinear` that keeps W frozen and adds A (r, in) and B (out, r):
# y = W x + b + (α/r) · B A x. Here r = 4, α = 16, on all three layers.

# %%
model = load_base("digits").model
tl.manual_seed(0)
lora.apply_lora(model, lora.LoRAConfig(r=4, alpha=16, target_modules=TARGETS))
for name, layer in lora.lora_layers(model):
    n_in, n_out = layer.in_features, layer.out_features
    print(f"{name}: W {layer.base.weight.shape}  A {layer.lora_A.shape}  B {layer.lora_B.shape}  "
          f"r(in + out) = 4 * ({n_in} + {n_out}) = {4 * (n_in + n_out)}  scaling = {layer.scaling}")
print()
print(lora.parameter_report(model))
counts = lora.count_parameters(model)
print(f"\ntrainable: {counts['trainable']} of {counts['total']} parameters "
      f"({100 * counts['trainable'] / card['parameters']:.2f}% of the base's {card['parameters']})")

# %% [markdown]
# ## 3. The LoRA layer in ten lines
#
# `tinylora.reference.lora_linear` is the textbook version, built from Tensor primitives only;
# the engine differentiates it line by line. Read it first:

# %%
print(inspect.getsource(R.lora_linear))
print(inspect.getsource(R.linear))

# %% [markdown]
# `tl.gradcheck` compares its gradients (for x, A and B; W and b are frozen) with central
# differences in float64. Then the fused `F.lora_linear`, whose forward and backward are written
# by hand, must give the same values and gradients: on 5 rows it multiplies by A and B
# separately; on 200 rows (more than in·out/(in + out) = 8.9 for this 16 → 12 layer) it folds
# s B A into a copy of W first, which saves multiplications. Either way W gets no gradient.

# %%
g = np.random.default_rng(0)
n_in, n_out, r_ = 16, 12, 3
W_, b_ = g.standard_normal((n_out, n_in)), g.standard_normal(n_out)
A_, B_ = g.standard_normal((r_, n_in)) * 0.3, g.standard_normal((n_out, r_)) * 0.3
for rows in (5, 200):
    x_ = g.standard_normal((rows, n_in))
    ins = [tl.Tensor(v, requires_grad=True) for v in (x_, A_, B_)]
    if rows == 5:
        print("gradcheck of R.lora_linear (x, A, B; float64):",
              tl.gradcheck(lambda x, a, b: R.lora_linear(x, W_, b_, a, b, 0.5), ins))
    outs, grads = {}, {}
    for name, fn in (("reference", R.lora_linear), ("fused", F.lora_linear)):
        ts = [tl.Tensor(v, requires_grad=True) for v in (x_, A_, B_)]
        w_t = tl.Tensor(W_)  # frozen
        y_ = fn(ts[0], w_t, tl.Tensor(b_), ts[1], ts[2], 0.5)
        (y_ * tl.Tensor(np.cos(np.arange(y_.size)).reshape(y_.shape))).sum().backward()
        outs[name], grads[name] = y_.data, [t.grad for t in ts]
        assert w_t.grad is None
    print(f"{rows:3d} rows: max |fused - reference| output {np.abs(outs['fused'] - outs['reference']).max():.1e}, "
          f"gradients of x, A, B {', '.join(f'{np.abs(a - b).max():.1e}' for a, b in zip(grads['fused'], grads['reference']))}"
          f"; W.grad stays None")

# %% [markdown]
# ## 4. B = 0: the adapted model starts exactly where the base was
#
# A is drawn at random (uniform in ±1/√in, as PEFT does) and B is all zeros, so B A x = 0 and
# the adapter adds exactly nothing. Dropout is off in eval mode, so both outputs are
# deterministic and we can compare them bit for bit.

# %%
fresh = load_base("digits").model
model.eval()
logits_base = fresh(rotated.x_test).data
logits_lora = model(rotated.x_test).data
fc1 = model.fc1
print(f"fc1.lora_A: {np.count_nonzero(fc1.lora_A.data)} of {fc1.lora_A.size} entries nonzero, "
      f"max |A| {np.abs(fc1.lora_A.data).max():.4f} (bound 1/sqrt(64) = 0.125)")
print(f"fc1.lora_B: {np.count_nonzero(fc1.lora_B.data)} of {fc1.lora_B.size} entries nonzero")
print("np.array_equal(base logits, LoRA logits):", np.array_equal(logits_base, logits_lora))
print(f"max |base - LoRA| over the rotated test set: {np.abs(logits_base - logits_lora).max()}")

# %% [markdown]
# What if B started random too? Then the "adapted" model would be a changed base before any
# training. We fill every B the way A was filled (uniform in ±1/√fan-in; B's fan-in is r = 4,
# so ±0.5), measure the base task, and put the zeros back.

# %%
for _, layer in lora.lora_layers(model):
    layer.lora_B.data = rng.uniform(-0.5, 0.5, layer.lora_B.shape).astype(np.float32)
damaged = evaluate_classifier(model, upright.x_test, upright.y_test)
for _, layer in lora.lora_layers(model):
    layer.lora_B.data = np.zeros(layer.lora_B.shape, np.float32)
restored = evaluate_classifier(model, upright.x_test, upright.y_test)
print(f"upright test accuracy with random B (U(-0.5, 0.5)): {damaged['accuracy']:.2%}")
print(f"upright test accuracy with B = 0 again:            {restored['accuracy']:.2%}")

# %% [markdown]
# ## 5. At step 0, A gets no gradient and B does
#
# For one layer with h = A x, y = W x + s B h:
# ∂L/∂B = s (∂L/∂y) hᵀ, nonzero; ∂L/∂A = s Bᵀ (∂L/∂y) xᵀ, which is exactly zero while B = 0.
# The frozen W gets no gradient at all (`grad` stays `None`: it is never computed). After the
# first optimizer step B is no longer zero, and from step 2 on A learns too.
# This runs in train mode, so the base's dropout (p = 0.3) is active, as in training.

# %%
model.train()
opt = optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.0)
xb, yb = rotated.x_train[:64], rotated.y_train[:64]
for step in (1, 2):
    opt.zero_grad()
    F.cross_entropy(model(xb), yb).backward()
    print(f"step {step}:")
    for name, layer in lora.lora_layers(model):
        gA, gB = layer.lora_A.grad, layer.lora_B.grad
        print(f"  {name}: |grad A| max {np.abs(gA).max():.3e}  all exactly zero: {bool(np.all(gA == 0))}  "
              f"| ||grad B|| {np.linalg.norm(gB):.4f}  | W.grad: {layer.base.weight.grad}")
    opt.step()

# %% [markdown]
# ## 6. alpha / r and the learning rate
#
# The adapter adds s · B A x with s = α/r. Why divide by r? Hu et al. (2021) keep α fixed when
# they change r, "to reduce the need to retune hyperparameters when we vary r". The reason is
# in the first steps of training. B starts at zero and Adam moves every entry by about the
# learning rate (its first step is exactly lr · sign(gradient)), so after one step every entry
# of B has size lr. The product B A sums r rank-one pieces, and the piece that follows the
# gradient adds up coherently over the r rows of A: the useful part of the update s B A grows
# like s · r · lr. With α fixed, s · r = α, and the same learning rate makes the same early
# update at every rank. What does not add up coherently (A's random directions) grows only
# like s · √r · lr; rsLoRA's s = α/√r keeps that part constant instead.
#
# Three scalings, chosen to agree at r = 8 (s = 2 there): α fixed at 16 (Hu et al.), α = 2r
# (s = 2 at every rank, what this notebook used before), and rsLoRA with α = 2√8.
#
# **The first step, measured.** One AdamW step at lr 0.001 on a batch of 256 rotated images (eval
# mode, so no dropout), then for fc2 (128 × 128): the part of s B A along the negative gradient
# that full fine-tuning would follow, ⟨s B A, −G⟩ / ‖G‖, and its whole size ‖s B A‖_F, both divided
# by the learning rate; the mean of 3 random draws of A.

# %%
SCHEMES = {  # name -> (alpha for rank r, rslora); all three give s = 2 at r = 8
    "alpha fixed (16)": (lambda r: 16.0, False),
    "alpha = 2r": (lambda r: 2.0 * r, False),
    "rsLoRA (alpha = 2 sqrt 8)": (lambda r: 2.0 * np.sqrt(8), True),
}


def lora_config(scheme, r):
    alpha, rs = SCHEMES[scheme]
    return lora.LoRAConfig(r=r, alpha=float(alpha(r)), rslora=rs, target_modules=TARGETS)


i256 = np.random.default_rng(0).integers(0, len(rotated.y_train), 256)
x256, y256 = rotated.x_train[i256], rotated.y_train[i256]
gmodel = load_base("digits").model.requires_grad_(True).eval()
F.cross_entropy(gmodel(x256), y256).backward()
G2 = tl.to_numpy(gmodel.fc2.weight.grad).astype(np.float64)  # the full fine-tuning gradient of fc2
LR_PROBE = 1e-3
FIRST_RANKS = [1, 4, 16, 64]
first = {}
for scheme in SCHEMES:
    for r in FIRST_RANKS:
        along, size = [], []
        for seed in range(3):
            m = load_base("digits").model.eval()
            tl.manual_seed(seed)
            lora.apply_lora(m, lora_config(scheme, r))
            opt = optim.AdamW(m.parameters(), lr=LR_PROBE, weight_decay=0.0)
            F.cross_entropy(m(x256), y256).backward()
            opt.step()
            d = tl.to_numpy(m.fc2.delta()).astype(np.float64)  # s B A after one step
            along.append(-(d * G2).sum() / np.linalg.norm(G2) / LR_PROBE)
            size.append(np.linalg.norm(d) / LR_PROBE)
        first[scheme, r] = (m.fc2.scaling, np.mean(along), np.mean(size))
print(f"{'scaling':26s} {'r':>3s} {'s':>7s} {'along -G / lr':>13s} {'||s B A|| / lr':>15s}")
for (scheme, r), (s_, a_, n_) in first.items():
    print(f"{scheme:26s} {r:3d} {s_:7.3f} {a_:13.2f} {n_:15.2f}")

fig, ax = plt.subplots(figsize=(6.5, 4))
for scheme, color in zip(SCHEMES, ("tab:blue", "tab:orange", "tab:green")):
    ax.plot(FIRST_RANKS, [first[scheme, r][1] for r in FIRST_RANKS], "o-", color=color, label=f"{scheme}: along -G")
    ax.plot(FIRST_RANKS, [first[scheme, r][2] for r in FIRST_RANKS], "s--", color=color, alpha=0.6,
            label=f"{scheme}: whole ||s B A||")
ax.set_xscale("log", base=2); ax.set_yscale("log"); ax.set_xlabel("rank r")
ax.set_ylabel("size of the first update / lr (fc2)"); ax.grid(alpha=0.3, which="both"); ax.legend(fontsize=7)
ax.set_title("One Adam step from B = 0: how the update grows with r")
plt.tight_layout(); plt.show()

# %% [markdown]
# **The learning rate × rank grid.** Does the first step predict where the best learning rate
# lies after a whole run? For each scaling, ranks 1 to 32 and learning rates 0.001 to 0.03, we
# train 1000 steps (same batches, AdamW without weight decay, the base's dropout active) and
# score the rotated test loss; each cell is the mean of 2 seeds (seed = A's draw and the batch
# order). Full fine-tuning gets its own small grid. All runs score on the same fixed test split.

# %%
steps = 20 if FAST else 1000
eval_every = 5 if FAST else 25
GRID_RANKS = [1, 8] if FAST else [1, 2, 4, 8, 16, 32]
GRID_LRS = [1e-3, 1e-2] if FAST else [1e-3, 3e-3, 1e-2, 3e-2]
FULL_LRS = [1e-3, 3e-3] if FAST else [1e-3, 3e-3, 1e-2]
GRID_SEEDS = [0] if FAST else [0, 1]
print("steps:", steps, " batch: 64  seeds per cell:", len(GRID_SEEDS))


def weights_sha256(params) -> str:
    h = hashlib.sha256()
    for p in params:
        h.update(np.ascontiguousarray(p.data).tobytes())
    return h.hexdigest()


def batches(seed=0, batch_size=64):
    r = np.random.default_rng(seed)
    def next_batch():
        i = r.integers(0, len(rotated.y_train), batch_size)
        return rotated.x_train[i], rotated.y_train[i]
    return next_batch


def rotated_eval(m):
    return evaluate_classifier(m, x_test, y_test)


def run(config=None, lr=1e-3, seed=0, history=False):
    """Full fine-tuning (config=None) or LoRA with `config`, from a fresh base; seed = A's draw and batches."""
    model = load_base("digits").model
    base_params = list(model.parameters())  # the base's own weights (LoRA keeps these objects)
    before_hash = weights_sha256(base_params)
    before = rotated_eval(model)
    tl.manual_seed(seed)
    if config is None:
        model.requires_grad_(True)  # load_base returns it frozen or not: make sure all train
    else:
        lora.apply_lora(model, config)
    counts = lora.count_parameters(model)
    opt = optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    try:
        hist = train(model, opt, batches(seed), steps, eval_fn=rotated_eval,
                     eval_every=eval_every if history else steps, seed=seed, progress=False)
    except FloatingPointError:  # diverged: score it as no better than guessing
        return dict(loss=float("inf"), acc=0.0, correct=np.zeros(len(y_test), bool))
    model.eval()
    f = hist.final
    return dict(model=model, history=hist, before=before, trainable=counts["trainable"],
                state_bytes=opt.state_bytes(), lr=lr, r=None if config is None else config.r,
                loss=f["eval_loss"], acc=f["eval_accuracy"], correct=accuracy_per_example(model, x_test, y_test),
                hash_before=before_hash, hash_after=weights_sha256(base_params))


grid = {}
for scheme in SCHEMES:
    for r in GRID_RANKS:
        for lr in GRID_LRS:
            if r == 8 and scheme != next(iter(SCHEMES)):  # every scaling gives s = 2 at r = 8: the same runs
                grid[scheme, r, lr] = grid[next(iter(SCHEMES)), r, lr]
                continue
            outs = [run(lora_config(scheme, r), lr, seed) for seed in GRID_SEEDS]
            grid[scheme, r, lr] = (np.mean([o["loss"] for o in outs]), np.mean([o["acc"] for o in outs]))
for lr in FULL_LRS:
    outs = [run(None, lr, seed) for seed in GRID_SEEDS]
    grid["full", None, lr] = (np.mean([o["loss"] for o in outs]), np.mean([o["acc"] for o in outs]))

best_lr = {}
for scheme in SCHEMES:
    print(f"\n{scheme}: rotated test loss after {steps} steps (mean of {len(GRID_SEEDS)} seeds); * = best lr for that rank")
    print(f"{'r':>4s} " + " ".join(f"{'lr ' + format(lr, 'g'):>11s}" for lr in GRID_LRS) + "   best lr")
    for r in GRID_RANKS:
        losses = [grid[scheme, r, lr][0] for lr in GRID_LRS]
        best_lr[scheme, r] = GRID_LRS[int(np.argmin(losses))]
        print(f"{r:4d} " + " ".join(f"{v:10.3f}{'*' if lr == best_lr[scheme, r] else ' '}" for v, lr in zip(losses, GRID_LRS))
              + f"   {best_lr[scheme, r]:g}")
LR_FULL = min(FULL_LRS, key=lambda lr: grid["full", None, lr][0])
LR_LORA = best_lr[next(iter(SCHEMES)), 8]  # tuned once, at r = 8
print("\nfull fine-tuning: " + ", ".join(f"lr {lr:g} -> loss {grid['full', None, lr][0]:.3f} (accuracy {grid['full', None, lr][1]:.2%})"
                                       for lr in FULL_LRS) + f"; best lr {LR_FULL:g}")
print(f"learning rates used below: full fine-tuning {LR_FULL:g}, LoRA {LR_LORA:g} (best at r = 8) with alpha fixed at 16")
print(f"LoRA r=8 at lr {GRID_LRS[0]:g}: loss {grid[next(iter(SCHEMES)), 8, GRID_LRS[0]][0]:.3f}, accuracy "
      f"{grid[next(iter(SCHEMES)), 8, GRID_LRS[0]][1]:.2%}; at lr {LR_LORA:g}: loss {grid[next(iter(SCHEMES)), 8, LR_LORA][0]:.3f}, "
      f"accuracy {grid[next(iter(SCHEMES)), 8, LR_LORA][1]:.2%}")

# %%
fig, axes = plt.subplots(1, 3, figsize=(14, 4), sharey=True)
for ax, scheme in zip(axes, SCHEMES):
    for r in GRID_RANKS:
        ax.plot(GRID_LRS, [min(grid[scheme, r, lr][0], 3.0) for lr in GRID_LRS], "o-", label=f"r = {r}")
    ax.set_xscale("log"); ax.set_yscale("log"); ax.set_xlabel("learning rate"); ax.set_title(scheme)
    ax.grid(alpha=0.3, which="both")
axes[0].set_ylabel(f"rotated test loss after {steps} steps"); axes[0].legend(fontsize=8)
fig.suptitle("Learning rate x rank: where is the best learning rate at each rank?")
plt.tight_layout(); plt.show()

# %% [markdown]
# ## 7. Full fine-tuning vs LoRA at r = 1 ... 32
#
# The rank sweep now holds α fixed at 16 and uses one learning rate for every rank, the one
# the grid found best at r = 8, so a change of rank changes the rank and not the size of the
# early steps (section 6). Full fine-tuning uses its own best rate from its grid. Every run
# starts from a fresh `load_base("digits")` with the same batches (64 rotated images a step)
# and AdamW without weight decay; the base's dropout (0.3 after each hidden layer) is active
# while training for every method, and evaluation runs in eval mode. Each method is trained
# with 3 seeds; the per-image correctness, averaged over the seeds, is compared with full
# fine-tuning's on the same 450 test images (paired ±2 standard errors). The seed-0 runs keep
# their curves, hashes and files for the sections below.

# %%
SWEEP_RANKS = [1, 8] if FAST else [1, 2, 4, 8, 16, 32]
SWEEP_SEEDS = [0] if FAST else [0, 1, 2]
results, correct = {}, {}
for name, config, lr in [("full fine-tuning", None, LR_FULL)] + [
        (f"LoRA r={r}", lora.LoRAConfig(r=r, alpha=16, target_modules=TARGETS), LR_LORA) for r in SWEEP_RANKS]:
    outs = [run(config, lr, seed, history=(seed == 0)) for seed in SWEEP_SEEDS]
    results[name] = outs[0]
    results[name]["acc_seeds"] = float(np.mean([o["acc"] for o in outs]))
    correct[name] = np.mean([o["correct"] for o in outs], axis=0)  # (450,) share of seeds right
for name, res in results.items():
    d, se = paired_diff(correct[name], correct["full fine-tuning"])
    res["vs_full"] = (d, se)
    print(f"{name:17s} trainable {res['trainable']:6d}  rotated test accuracy {res['before']['accuracy']:.2%} -> "
          f"{res['acc']:.2%} (seed 0), {res['acc_seeds']:.2%} (mean of {len(SWEEP_SEEDS)} seeds)  "
          f"minus full fine-tuning {100 * d:+.2f} ± {100 * se:.2f} points  test loss {res['loss']:.4f}")
print(f"one test image is {1 / len(y_test):.2%} of the accuracy")

# %%
fig, axes = plt.subplots(1, 2, figsize=(12, 4.3))
for name, res in results.items():
    h = res["history"]
    steps_ = [0] + h.column("step")
    style = dict(color="black", lw=2.2) if res["r"] is None else dict(lw=1.4)
    axes[0].plot(steps_, [res["before"]["loss"]] + h.column("eval_loss"), label=name, **style)
    axes[1].plot(steps_, [res["before"]["accuracy"]] + h.column("eval_accuracy"), label=name, **style)
axes[0].set_yscale("log"); axes[0].set_ylabel("rotated test loss (log scale)")
axes[0].set_title("Rotated digits: test loss")
axes[1].set_ylabel("rotated test accuracy"); axes[1].set_ylim(0, 1)
axes[1].set_title("Rotated digits: test accuracy")
for ax in axes:
    ax.set_xlabel("step"); ax.grid(alpha=0.3); ax.legend(fontsize=8)
fig.suptitle(f"Full fine-tuning (lr {LR_FULL:g}) vs LoRA on fc1, fc2, fc3 (alpha = 16, lr {LR_LORA:g}), same seed and steps")
plt.tight_layout(); plt.show()

# %%
fig, ax = plt.subplots(figsize=(6, 4))
lora_names = [n for n, res in results.items() if res["r"] is not None]
xs = [results[n]["trainable"] for n in lora_names]
ys = [results[n]["history"].final["eval_accuracy"] for n in lora_names]
ax.plot(xs, ys, "o-", label="LoRA (fc1, fc2, fc3)")
for n, xv, yv in zip(lora_names, xs, ys):
    ax.annotate(n.split()[-1], (xv, yv), textcoords="offset points", xytext=(-8, 8), fontsize=8)
full = results["full fine-tuning"]
ax.plot(full["trainable"], full["history"].final["eval_accuracy"], "s", color="black", label="full fine-tuning")
ax.set_xscale("log"); ax.set_xlabel("trainable parameters (log scale)"); ax.set_ylabel("final rotated test accuracy")
ax.set_title("Trainable parameters vs accuracy on rotated digits"); ax.grid(alpha=0.3, which="both"); ax.legend()
plt.tight_layout(); plt.show()

# %% [markdown]
# ## 8. Proof that the base stayed frozen
#
# The sha256 of the base's weights (W and b of fc1, fc2, fc3) before and after each run. LoRA
# runs leave every byte as it was; full fine-tuning changes them, as it should.

# %%
for name, res in results.items():
    same = res["hash_before"] == res["hash_after"]
    print(f"{name:19s} before {res['hash_before'][:16]}  after {res['hash_after'][:16]}  unchanged: {same}")

# %% [markdown]
# ## 9. Merging: one weight matrix again
#
# After training, W' = W + (α/r) B A can be computed once and stored in the base weight: the
# layer is then a plain matmul again, with no extra cost at inference. The merged model must give
# the same outputs as the unmerged one. For a batch with many rows `F.lora_linear` itself works
# with the folded weight W + (α/r) B A, summed exactly as `merge_lora` sums it, so the two can
# agree bit for bit; for a few rows it multiplies by A and B separately, a different order of
# sums, and they agree up to float32 rounding. Unmerging subtracts the same product back out.

# %%
m8 = results["LoRA r=8"]["model"]
m8.eval()
w_before = m8.fc2.base.weight.data.copy()
out_unmerged = m8(rotated.x_test).data.copy()
few_unmerged = m8(rotated.x_test[:8]).data.copy()  # 8 rows: every layer takes the unfolded path
lora.merge_lora(m8)
out_merged = m8(rotated.x_test).data.copy()
few_merged = m8(rotated.x_test[:8]).data.copy()
print("fc2 merged:", m8.fc2.merged)
print(f"{len(rotated.y_test)} images: max |merged - unmerged| logits: {np.abs(out_merged - out_unmerged).max():.2e}   "
      f"(largest |logit|: {np.abs(out_unmerged).max():.1f})")
print("  np.array_equal(merged, unmerged):", np.array_equal(out_merged, out_unmerged),
      "| np.allclose(rtol=1e-5, atol=1e-5):", np.allclose(out_merged, out_unmerged, rtol=1e-5, atol=1e-5))
print(f"8 images: max |merged - unmerged| logits: {np.abs(few_merged - few_unmerged).max():.2e}   "
      f"np.array_equal: {np.array_equal(few_merged, few_unmerged)}")
print("same predicted class for all", len(rotated.y_test), "test images:",
      bool(np.all(out_merged.argmax(-1) == out_unmerged.argmax(-1))))
delta_rank = np.linalg.matrix_rank(m8.fc2.base.weight.data.astype(np.float64) - w_before.astype(np.float64), tol=1e-4)
print("rank of the change merging made to fc2's weight:", delta_rank, "(r = 8)")
lora.unmerge_lora(m8)
print(f"after unmerge: max |W - W_before| = {np.abs(m8.fc2.base.weight.data - w_before).max():.2e}, "
      f"bit-identical: {np.array_equal(m8.fc2.base.weight.data, w_before)}")

# %% [markdown]
# ## 10. What each method has to store
#
# Full fine-tuning produces a whole new copy of the weights. A LoRA run produces an adapter
# file (`adapter_model.safetensors`, PEFT's layout) holding only A and B; the base file is
# shared by every adapter.

# %%
files = {}
with tempfile.TemporaryDirectory() as tmp:
    tmp = Path(tmp)
    files["full fine-tuning"] = save_weights(results["full fine-tuning"]["model"].state_dict(),
                                             tmp / "full.safetensors").stat().st_size
    for name, res in results.items():
        if res["r"] is not None:
            info = lora.save_adapter(res["model"], tmp / name.replace(" ", "_").replace("=", ""))
            files[name] = info["weights_bytes"]
    merged_copy = load_base("digits").model
    files_base = save_weights(merged_copy.state_dict(), tmp / "base.safetensors").stat().st_size
print(f"base weights file: {files_base} bytes")
for name, size in files.items():
    print(f"{name:17s} file {size:7d} bytes  ({100 * size / files['full fine-tuning']:.1f}% of a full copy)")

# %% [markdown]
# ## 11. Summary
#
# The headline numbers of this chapter: the rotated-digits task, from the same base, batches and
# number of steps. "Test loss" and "rotated test acc" are the seed-0 run's, on the 450 rotated
# test images; "acc, 3 seeds" is the mean over seeds, and the last column is the paired
# difference from full fine-tuning in accuracy points (±2 standard errors over the test images).

# %%
print(f"Rotated digits, {steps} steps, batch 64, AdamW; base accuracy on rotated test before training "
      f"{results['full fine-tuning']['before']['accuracy']:.2%}; LoRA alpha = 16")
header = (f"| {'method':17s} | {'lr':>6s} | {'trainable params':>16s} | {'% of base':>9s} | {'rotated test acc':>16s} "
          f"| {'acc, 3 seeds':>12s} | {'vs full FT, points':>18s} | {'test loss':>9s} | {'file bytes':>10s} | {'optimizer state bytes':>21s} |")
print(header)
print("|" + "|".join("-" * (len(c)) for c in header.split("|")[1:-1]) + "|")
before = results["full fine-tuning"]["before"]
print(f"| {'base, no training':17s} | {'-':>6s} | {0:16d} | {0:8.2f}% | {before['accuracy']:16.2%} | {'-':>12s} | {'-':>18s} | {before['loss']:9.4f} "
      f"| {files_base:10d} | {0:21d} |")
for name, res in results.items():
    d, se = res["vs_full"]
    vs = "-" if res["r"] is None else f"{100 * d:+.2f} ± {100 * se:.2f}"
    print(f"| {name:17s} | {res['lr']:6g} | {res['trainable']:16d} | {100 * res['trainable'] / card['parameters']:8.2f}% "
          f"| {res['acc']:16.2%} | {res['acc_seeds']:12.2%} | {vs:>18s} | {res['loss']:9.4f} | {files[name]:10d} | {res['state_bytes']:21d} |")

# %% [markdown]
# ## 12. Try it
#
# 1. Rerun one column of the grid with rsLoRA at a larger rank (r = 64 or 128): does its best
#    learning rate keep falling, or settle?
# 2. Put the adapter on fc1 only (`target_modules=("fc1",)`): how much of the rotation can the
#    first layer alone undo, compared with all three layers at the same number of parameters?
# 3. Start B random and A at zero instead (swap the roles): does training still start at the base,
#    and which factor gets the first gradient?

# %%
# Try it 1: one rsLoRA column at a larger rank (about 10 seconds per learning rate)
for lr in GRID_LRS:
    print(f"rsLoRA r=64, lr {lr:g}: rotated test loss {run(lora_config('rsLoRA (alpha = 2 sqrt 8)', 64), lr, 0)['loss']:.3f}")

# %%
# Try it 2: fc1 alone at r = 12 (2,304 parameters) against all three layers at r = 4 (2,344), 3 seeds
fc1_only = [run(lora.LoRAConfig(r=12, alpha=16, target_modules=("fc1",)), LR_LORA, seed) for seed in SWEEP_SEEDS]
three = [run(lora.LoRAConfig(r=4, alpha=16, target_modules=TARGETS), LR_LORA, seed) for seed in SWEEP_SEEDS]
d, se = paired_diff(np.mean([o["correct"] for o in fc1_only], axis=0), np.mean([o["correct"] for o in three], axis=0))
print(f"fc1 only, r=12 ({fc1_only[0]['trainable']:,} parameters): {np.mean([o['acc'] for o in fc1_only]):.2%}; "
      f"fc1, fc2, fc3 at r=4 ({three[0]['trainable']:,}): {np.mean([o['acc'] for o in three]):.2%}; "
      f"difference {100 * d:+.2f} ± {100 * se:.2f} points (seeds: {len(SWEEP_SEEDS)}, paired over {len(y_test)} images)")

# %%
# Try it 3: A = 0 and B random; is the output still the base's, and which factor gets a gradient?
swapped = load_base("digits").model
tl.manual_seed(0)
lora.apply_lora(swapped, lora.LoRAConfig(r=4, alpha=16, target_modules=TARGETS))
base_logits = load_base("digits").model.eval()(x_test).data
for _, layer in lora.lora_layers(swapped):
    layer.lora_B.data = np.random.default_rng(0).normal(0, 0.1, layer.lora_B.data.shape).astype(np.float32)
    layer.lora_A.data = np.zeros_like(layer.lora_A.data)
swapped.eval()
print("same output as the base:", np.array_equal(swapped(x_test).data, base_logits))
swapped.train()
F.cross_entropy(swapped(xb), yb).backward()
for name, layer in lora.lora_layers(swapped):
    print(f"  {name}: ||grad A|| {np.linalg.norm(layer.lora_A.grad):.4f} | ||grad B|| {np.linalg.norm(layer.lora_B.grad):.4f}")

