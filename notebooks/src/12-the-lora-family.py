# %% [markdown]
# # 12 · The LoRA family
#
# LoRA's variants each change one thing: how the update is parameterised (DoRA, VeRA), how it is
# scaled (rsLoRA), how it is trained (LoRA+), or where it starts (PiSSA, gaussian). BitFit, which
# trains only the biases, is the floor they should all beat. First a few lines of code per
# variant, checking what it changes; then all of them, and full fine-tuning, on the same two
# tasks under one protocol. The prose is in [chapter 12](../chapters/12-the-lora-family.md).

# %%
import os
FAST = os.environ.get("TINYLORA_FAST") == "1"
print("TINYLORA_FAST =", int(FAST), "(smoke test)" if FAST else "(full run)")

# %%
# no output: imports and seeds
import time

import matplotlib.pyplot as plt
import numpy as np
from threadpoolctl import threadpool_limits

import tinylora as tl
from tinylora import lora, nn, optim
from tinylora.bases import load_base
from tinylora.data import WindowSampler, load_shakespeare
from tinylora.evaluate import accuracy_per_example, digits_heldout, heldout_set, paired_diff, window_losses
from tinylora.train import train

np.set_printoptions(precision=4, suppress=True)
tl.manual_seed(0)
threadpool_limits(1)  # one BLAS thread: on a shared 2-core machine the step times are steadier

# %% [markdown]
# ## 1. What each variant changes
#
# **DoRA** (Liu et al. 2024) splits the adapted weight V = W + s·B·A into a direction and a
# length per output row: y = m ⊙ (V x) / ‖V‖_row. The magnitude m (one number per output)
# trains beside A and B and starts at ‖W‖_row, so a new DoRA adapter changes nothing.

# %%
base_linear = nn.Linear(6, 3, dtype=np.float64)
w = base_linear.weight.data.copy()
x = np.random.default_rng(0).normal(size=(4, 6))
layer = lora.LoRALinear(base_linear, config=lora.LoRAConfig(r=2, alpha=4, dora=True, target_modules=("x",)))
ad = layer.adapters["default"]
print("lora_magnitude_vector:", ad.lora_magnitude_vector.numpy(), " row norms of W:", np.linalg.norm(w, axis=1))
print("output unchanged at the start:", np.allclose(layer(x).numpy(), x @ w.T + base_linear.bias.data))
ad.lora_B.data = np.random.default_rng(1).normal(size=(3, 2))  # as if trained
V = w + ad.scaling * ad.lora_B.data @ ad.lora_A.data
formula = (x @ V.T) * (ad.lora_magnitude_vector.data / np.linalg.norm(V, axis=1)) + base_linear.bias.data
print("forward = m * (V x) / ||V||_row + b:", np.allclose(layer(x).numpy(), formula))

# %% [markdown]
# DoRA's paper (section 4.3) suggests treating ‖V‖_row as a constant in the backward pass: it
# saves memory, and PEFT does it by default, so tinylora does too (`dora_exact = False`). The
# gradient is then not the gradient of the function the forward computes, and a finite-difference
# check says so; with `dora_exact = True` the norm is differentiated and the check passes.

# %%
up = tl.Tensor(np.random.default_rng(2).normal(size=(4, 3)))
leaves = [tl.Tensor(p.data.copy(), requires_grad=True) for p in (ad.lora_A, ad.lora_B, ad.lora_magnitude_vector)]
for exact in (True, False):
    def loss(A, Bm, m, exact=exact):
        y = lora.dora_linear(x, base_linear.weight, base_linear.bias, A, Bm, m, ad.scaling, exact=exact)
        return (y * up).sum()
    try:
        tl.gradcheck(loss, leaves)
        print(f"exact={exact}: gradcheck passes")
    except AssertionError as e:
        print(f"exact={exact}: gradcheck fails, as it should: {str(e).splitlines()[0][:90]}")

# %% [markdown]
# **rsLoRA** (Kalajdzievski 2023) scales by alpha/√r instead of alpha/r, so that the update does
# not shrink as the rank grows. At one fixed rank it is LoRA with a different alpha.
#
# **PiSSA** (Meng et al. 2024) starts A and B at the top r singular directions of W and leaves W
# with the rest; **gaussian** starts A ~ N(0, 1/r²) instead of LoRA's uniform (B = 0 either way).

# %%
for init in ("kaiming", "gaussian", "pissa"):
    lin = nn.Linear(32, 16, dtype=np.float64)
    w0 = lin.weight.data.copy()
    lay = lora.LoRALinear(lin, config=lora.LoRAConfig(r=4, alpha=8, init=init, target_modules=("x",)))
    print(f"{init:8s}: |A| mean {np.abs(lay.lora_A.data).mean():.3f}, |B| mean {np.abs(lay.lora_B.data).mean():.3f}, "
          f"W changed by {np.linalg.norm(lin.weight.data - w0):.3f}, W + sBA = W0: "
          f"{np.allclose(lin.weight.data + lay.delta(), w0)}")
print("scaling at r = 16, alpha = 32: LoRA", lora.LoRAConfig(r=16, alpha=32).scaling,
      " rsLoRA", lora.LoRAConfig(r=16, alpha=32, rslora=True).scaling)

# %% [markdown]
# **LoRA+** (Hayou et al. 2024) gives B a learning rate `loraplus_lr_ratio` times A's, through the
# optimizer's parameter groups; PEFT's `create_loraplus_optimizer` groups parameters this way:

# %%
probe = load_base("digits").model
lora.apply_lora(probe, lora.LoRAConfig(r=4, alpha=8, target_modules=("fc1", "fc2", "fc3")))
opt = lora.create_loraplus_optimizer(probe, optim.AdamW, lr=1e-3, loraplus_lr_ratio=16, weight_decay=0.0)
names = {id(p): n for n, p in probe.named_parameters()}
for g in opt.param_groups:
    print(f"lr {g['lr']:<7g}", sorted({names[id(p)].rsplit('.', 1)[-1] for p in g["params"]}))

# %% [markdown]
# **VeRA** (Kopiczko et al. 2024) freezes one random pair A (r × in), B (out × r), shared by every
# adapted layer, and trains two vectors per layer: d (r) and b (out). The update is
# diag(b)·B·diag(d)·A. The pair comes from a seed, so a VeRA file holds only the vectors.

# %%
probe = load_base("digits").model
lora.apply_vera(probe, lora.VeRAConfig(r=32, target_modules=("fc1", "fc2", "fc3")))
ads = [layer.adapters["default"] for _, layer in lora.lora_layers(probe)]
print("one shared pair:", all(a.vera_A is ads[0].vera_A for a in ads), " A", ads[0].vera_A.shape, " B", ads[0].vera_B.shape)
print(lora.parameter_report(probe))

# %% [markdown]
# **BitFit** (Ben Zaken et al. 2022) trains only the biases: no new parameters at all.
#
# ## 2. The protocol
#
# Two tasks, each from its shipped base: the digits MLP on digits rotated by 90 degrees, and the
# Shakespeare GPT (which never saw a comedy) on the comedies. For every method: a fresh base, the
# same batches and steps, AdamW without weight decay. Adapters go on every Linear layer (fc1-fc3;
# q, k, v, o, up and down projections), LoRA-type at r = 4 with alpha = 8, VeRA at r = 32
# (digits) and 64 (Shakespeare), since its A and B are random and cost nothing to train.
#
# Each method gets its own learning rate from a small sweep (three rates for digits, two for
# Shakespeare, a factor 3 apart). The rate is chosen on the training loss (mean of the last
# quarter of the steps), never on the held-out data we report.
#
# Held-out sets, the course's shared ones from `tinylora.evaluate`, the same for every method: the
# digits test split (rotated, and upright for what is forgotten), and fixed windows of 64
# characters at evenly spaced starts over the held-out text (the last 10% of every play) of the
# comedies, and of the histories and tragedies the base was trained on. Differences are paired
# on the same examples (`paired_diff`): mean ± 2 standard errors.

# %%
DIGIT_STEPS = 20 if FAST else 300
GPT_STEPS = 2 if FAST else 100
SEEDS = (0,) if FAST else (0, 1, 2)
BLOCK, BATCH = 64, 16
N_WINDOWS = 64 if FAST else 512  # the course's fixed held-out windows of each genre (tinylora.evaluate)
R, ALPHA = 4, 8
METHODS = ["full", "BitFit", "LoRA", "rsLoRA", "LoRA+", "DoRA", "VeRA", "PiSSA", "gaussian"]
DIGIT_LRS = {"full": (1e-3, 3e-3, 1e-2), "BitFit": (1e-2, 3e-2, 1e-1), "rsLoRA": (1e-3, 3e-3, 1e-2),
             "LoRA+": (1e-3, 3e-3, 1e-2), "VeRA": (3e-2, 1e-1, 3e-1), "PiSSA": (3e-3, 1e-2, 3e-2)}
GPT_LRS = {"full": (3e-4, 1e-3), "BitFit": (1e-2, 3e-2), "LoRA+": (1e-4, 3e-4), "VeRA": (1e-2, 3e-2),
           "PiSSA": (1e-3, 3e-3), "gaussian": (3e-4, 1e-3)}
if FAST:
    DIGIT_LRS, GPT_LRS = ({m: (v[0],) for m, v in d.items()} for d in (DIGIT_LRS, GPT_LRS))
digit_lrs = lambda m: DIGIT_LRS.get(m, (3e-3, 1e-2, 3e-2)[: 1 if FAST else 3])
gpt_lrs = lambda m: GPT_LRS.get(m, (3e-3, 1e-2)[: 1 if FAST else 2])
print(f"digits: {DIGIT_STEPS} steps of 64 images, seeds {SEEDS}; Shakespeare: {GPT_STEPS} steps of {BATCH} windows "
      f"of {BLOCK} characters, seed 0; held-out windows: {N_WINDOWS} of each of comedies, histories, "
      f"tragedies; BLAS threads: 1")


def prepare(model, method, targets, vera_r):
    """Make `model` train as `method`; returns the optimizer factory lr -> optimizer."""
    cfg = dict(r=R, alpha=ALPHA, target_modules=targets)
    if method == "full":
        model.requires_grad_(True)
    elif method == "BitFit":
        model.requires_grad_(False)
        for n, p in model.named_parameters():
            p.requires_grad_(n.endswith("bias"))
    elif method == "VeRA":
        lora.apply_vera(model, lora.VeRAConfig(r=vera_r, target_modules=targets))
    else:
        extra = {"rsLoRA": dict(rslora=True), "DoRA": dict(dora=True), "PiSSA": dict(init="pissa"),
                 "gaussian": dict(init="gaussian")}.get(method, {})
        lora.apply_lora(model, lora.LoRAConfig(**cfg, **extra))
    if method == "LoRA+":
        return lambda lr: lora.create_loraplus_optimizer(model, optim.AdamW, lr, loraplus_lr_ratio=16, weight_decay=0.0)
    return lambda lr: optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)


def rates(runs):
    return ", ".join(f"{r['lr']:g}" for r in runs)


def pick(runs):
    """The run with the lowest training loss over the last quarter of its steps."""
    tail = lambda r: np.mean([v for _, v in r["history"].train_losses][-max(1, len(r["history"].train_losses) // 4):])
    return min(runs, key=tail)


# %% [markdown]
# ## 3. Rotated digits
#
# The digits base scores about 98% upright and about 10% on rotated digits. Three seeds per
# method (seed = the adapter's initialisation, the dropout masks and the batch order).

# %%
from tinylora.data import load_digits

rotated = load_digits(rotate=True)  # training images; the test split below is the shared one
ROT, UP = digits_heldout(rotate=True), digits_heldout()


def digit_batches(seed):
    rng = np.random.default_rng(seed)
    def next_batch():
        i = rng.integers(0, len(rotated.y_train), 64)
        return rotated.x_train[i], rotated.y_train[i]
    return next_batch


def per_example(model, xy):
    """Cross-entropy and correctness of every test example (eval mode, no grad)."""
    x, y = xy
    model.eval()
    with tl.no_grad():
        logits = model(x).numpy().astype(np.float64)
    lse = np.log(np.exp(logits - logits.max(1, keepdims=True)).sum(1)) + logits.max(1)
    return lse - logits[np.arange(len(y)), y], accuracy_per_example(model, x, y)


def digit_run(method, lr, seed):
    model = load_base("digits").model
    tl.manual_seed(seed)
    make_opt = prepare(model, method, ("fc1", "fc2", "fc3"), vera_r=32)
    trainable = lora.count_parameters(model)["trainable"]
    t0 = time.perf_counter()
    hist = train(model, make_opt(lr), digit_batches(seed), DIGIT_STEPS, eval_every=DIGIT_STEPS, seed=seed, progress=False)
    seconds = time.perf_counter() - t0
    loss, correct = per_example(model, ROT)
    up_loss, up_correct = per_example(model, UP)
    return dict(method=method, lr=lr, seed=seed, history=hist, trainable=trainable, loss=loss, correct=correct,
                up_loss=up_loss, up_correct=up_correct, ms=1000 * seconds / DIGIT_STEPS)


t0 = time.perf_counter()
digits = {}
for m in METHODS:
    sweep = [digit_run(m, lr, 0) for lr in digit_lrs(m)]
    best = pick(sweep)
    digits[m] = [best] + [digit_run(m, best["lr"], s) for s in SEEDS[1:]]
    print(f"{m:8s} lr sweep {rates(sweep)} -> {best['lr']:g}; "
          f"trainable {best['trainable']:6,d}")
print(f"digits: {time.perf_counter() - t0:.0f} s")

# %%
base_digits = load_base("digits").model
_, base_up = per_example(base_digits, UP)
_, base_rot = per_example(base_digits, ROT)
print(f"base: rotated accuracy {base_rot.mean():.2%}, upright accuracy {base_up.mean():.2%}")
mean_over_seeds = lambda m, k: np.mean([r[k] for r in digits[m]], axis=0)
print(f"{'method':8s} {'params':>6s}  {'rotated acc':>11s}  {'vs LoRA (+-2SE)':>17s}  {'rot. loss vs LoRA':>18s}  "
      f"{'upright acc':>11s}  {'vs LoRA':>17s}")
digit_rows = {}
for m in METHODS:
    acc, up = mean_over_seeds(m, "correct"), mean_over_seeds(m, "up_correct")
    d_acc = paired_diff(acc, mean_over_seeds("LoRA", "correct"))
    d_loss = paired_diff(mean_over_seeds(m, "loss"), mean_over_seeds("LoRA", "loss"))
    d_up = paired_diff(up, mean_over_seeds("LoRA", "up_correct"))
    digit_rows[m] = dict(acc=acc.mean(), up=up.mean(), d_acc=d_acc, d_up=d_up)
    print(f"{m:8s} {digits[m][0]['trainable']:6,d}  {acc.mean():11.2%}  {d_acc[0]:+8.2%} ± {d_acc[1]:5.2%}  "
          f"{d_loss[0]:+9.3f} ± {d_loss[1]:.3f}  {up.mean():11.2%}  {d_up[0]:+8.2%} ± {d_up[1]:5.2%}")

# %% [markdown]
# ## 4. Shakespeare comedies
#
# One seed here (a run costs seconds, not milliseconds); the paired errors are over the held-out
# windows, so they say how sure we are about *this* run's difference, not about another seed's.

# %%
base = load_base("shakespeare")
tok = base.tokenizer
comedies = load_shakespeare(("comedies",), tokenizer=tok)
HELD = {g: heldout_set(g, BLOCK, N_WINDOWS) for g in ("comedies", "histories", "tragedies")}
print({g: x.shape for g, (x, _) in HELD.items()})


def scores(model):
    return {g: window_losses(model, *xy) for g, xy in HELD.items()}


ALL_LINEAR = ("q_proj", "k_proj", "v_proj", "o_proj", "up_proj", "down_proj")


def gpt_model(method, vera_r=64):
    model = load_base("shakespeare").model
    tl.manual_seed(0)
    return model, prepare(model, method, ALL_LINEAR, vera_r=vera_r)


def gpt_run(method, lr):
    model, make_opt = gpt_model(method)
    trainable = lora.count_parameters(model)["trainable"]
    sampler = WindowSampler(comedies.train, BLOCK, BATCH, seed=0)
    hist = train(model, make_opt(lr), sampler.sample, GPT_STEPS, eval_every=GPT_STEPS, seed=0, progress=False)
    return dict(method=method, lr=lr, history=hist, trainable=trainable, model=model)


base_scores = scores(base.model)
t0 = time.perf_counter()
gpt = {}
for m in METHODS:
    sweep = [gpt_run(m, lr) for lr in gpt_lrs(m)]
    gpt[m] = pick(sweep)
    gpt[m]["scores"] = scores(gpt[m]["model"])
    for r in sweep:
        r.pop("model")  # keep memory small
    print(f"{m:8s} lr sweep {rates(sweep)} -> {gpt[m]['lr']:g}; "
          f"trainable {gpt[m]['trainable']:7,d}")
print(f"Shakespeare: {time.perf_counter() - t0:.0f} s")

# %% [markdown]
# Step time, measured apart from the runs: for each method a fresh model, then three rounds in
# which every method takes 5 steps in turn (so a slow spell of the shared machine hits them all),
# and the median step.

# %%
# no output: the step times are printed with the table below
timing_models = {m: gpt_model(m) for m in METHODS}
timing_opts = {m: make(gpt[m]["lr"]) for m, (_, make) in timing_models.items()}
step_times = {m: [] for m in METHODS}
sampler = WindowSampler(comedies.train, BLOCK, BATCH, seed=1)
for _ in range(1 if FAST else 3):
    for m in METHODS:
        model, opt = timing_models[m][0], timing_opts[m]
        model.train()
        for _ in range(2 if FAST else 5):
            xb, yb = sampler.sample()
            t = time.perf_counter()
            _, loss = model(xb, yb)
            opt.zero_grad()
            loss.backward()
            opt.step()
            step_times[m].append(time.perf_counter() - t)
del timing_models, timing_opts

# %%
before = {g: s.mean() for g, s in base_scores.items()}
print(f"base: held-out loss comedies {before['comedies']:.4f}, histories {before['histories']:.4f}, "
      f"tragedies {before['tragedies']:.4f}")
print(f"{'method':8s} {'params':>7s} {'lr':>6s}  {'comedies':>8s}  {'vs LoRA (+-2SE)':>17s}  {'forgetting':>10s}  "
      f"{'vs LoRA (+-2SE)':>17s}  {'ms/step':>7s}")
gpt_rows = {}
own_genres = lambda s: np.concatenate([s["histories"], s["tragedies"]])
forget = lambda m: own_genres(gpt[m]["scores"]) - own_genres(base_scores)
for m in METHODS:
    s = gpt[m]["scores"]["comedies"]
    d = paired_diff(s, gpt["LoRA"]["scores"]["comedies"])
    f = forget(m)
    df = paired_diff(f, forget("LoRA"))
    ms = 1000 * np.median(step_times[m])
    gpt_rows[m] = dict(loss=s.mean(), d=d, forget=f.mean(), df=df, ms=ms)
    print(f"{m:8s} {gpt[m]['trainable']:7,d} {gpt[m]['lr']:6g}  {s.mean():8.4f}  {d[0]:+8.4f} ± {d[1]:.4f}  "
          f"{f.mean():+10.4f}  {df[0]:+8.4f} ± {df[1]:.4f}  {ms:7.1f}")

# %% [markdown]
# "forgetting" is the rise in held-out loss on the base's own genres (the histories' and the
# tragedies' windows together) after training on comedies.
#
# ## 5. Plots

# %%
colors = dict(zip(METHODS, plt.cm.tab10(np.linspace(0, 1, 10))))
fig, axes = plt.subplots(1, 2, figsize=(13, 4.5))
smooth = lambda v, k: np.convolve(v, np.ones(k) / k, mode="valid")
for m in METHODS:
    v = [l for _, l in digits[m][0]["history"].train_losses]
    axes[0].plot(smooth(v, min(20, len(v))), color=colors[m], label=m, lw=2 if m == "LoRA" else 1)
    v = [l for _, l in gpt[m]["history"].train_losses]
    axes[1].plot(smooth(v, min(10, len(v))), color=colors[m], label=m, lw=2 if m == "LoRA" else 1)
axes[0].set(title="Rotated digits: training loss (seed 0, moving mean of 20)", xlabel="step", yscale="log")
axes[1].set(title="Comedies: training loss (moving mean of 10)", xlabel="step")
axes[1].legend(ncol=2, fontsize=8)
plt.tight_layout()
plt.show()

# %%
fig, axes = plt.subplots(1, 2, figsize=(13, 4.8))
for m in METHODS:
    r = digit_rows[m]
    axes[0].scatter(r["acc"] - base_rot.mean(), base_up.mean() - r["up"], color=colors[m], s=50)
    axes[0].annotate(m, (r["acc"] - base_rot.mean(), base_up.mean() - r["up"]), fontsize=8, xytext=(4, 3),
                     textcoords="offset points")
    r = gpt_rows[m]
    axes[1].scatter(before["comedies"] - r["loss"], r["forget"], color=colors[m], s=50)
    axes[1].annotate(m, (before["comedies"] - r["loss"], r["forget"]), fontsize=8, xytext=(4, 3),
                     textcoords="offset points")
axes[0].set(title="Digits: gain on rotated vs accuracy lost upright", xlabel="rotated accuracy gained",
            ylabel="upright accuracy lost")
axes[1].set(title="Shakespeare: gain on comedies vs forgetting", xlabel="comedy loss drop (nats/char)",
            ylabel="own-genre loss rise (nats/char)")
plt.tight_layout()
plt.show()

# %% [markdown]
# ## 6. Summary
#
# The verdicts the numbers above support, against LoRA (the same adapters at the same rank,
# each method at its own learning rate): "better" or "worse" only where the paired difference is
# more than 2 standard errors from zero.

# %%
def verdict(d, lower_is_better=True):
    mean, two_se = d
    if abs(mean) <= two_se:
        return "same as LoRA"
    return "better" if (mean < 0) == lower_is_better else "worse"


for m in METHODS:
    if m == "LoRA":
        continue
    print(f"{m:8s} digits (rotated accuracy): {verdict(digit_rows[m]['d_acc'], lower_is_better=False):13s} "
          f"comedies (loss): {verdict(gpt_rows[m]['d']):13s} forgetting (loss on own genres): {verdict(gpt_rows[m]['df'])}")
print("fewest trainable parameters (Shakespeare):", min(METHODS, key=lambda m: gpt[m]["trainable"]),
      "  fastest step:", min(METHODS, key=lambda m: gpt_rows[m]["ms"]), "  slowest step:",
      max(METHODS, key=lambda m: gpt_rows[m]["ms"]))

# %% [markdown]
# - Every variant is a few lines on top of LoRA, and each one's forward and gradient can be
#   checked against a NumPy formula and finite differences (DoRA's default gradient, on purpose,
#   fails that check).
# - Chapter 12 reads the tables and the verdicts above row by row.
#
# ## 7. Try it
#
# 1. rsLoRA matters when the rank grows: rerun LoRA and rsLoRA on the digits at r = 32 (same alpha).
# 2. Train DoRA with the exact gradient (`dora_exact = True` on every adapter) and compare.
# 3. Give VeRA a larger r on the comedies (r = 256, as in the paper): still only d and b train.

# %%
# try it 1: rsLoRA vs LoRA at a large rank (change R and rerun)
R, ALPHA = (4, 8) if FAST else (32, 8)
for m in ("LoRA", "rsLoRA"):
    r = digit_run(m, 1e-2, 0)
    print(f"{m:7s} r={R}: rotated accuracy {r['correct'].mean():.2%}")
R, ALPHA = 4, 8

# %%
# try it 2: DoRA with the exact gradient of its norm
model, make_opt = gpt_model("DoRA")
for _, layer in lora.lora_layers(model):
    layer.adapters["default"].dora_exact = True
sampler = WindowSampler(comedies.train, BLOCK, BATCH, seed=0)
hist = train(model, make_opt(gpt["DoRA"]["lr"]), sampler.sample, GPT_STEPS, eval_every=GPT_STEPS, seed=0, progress=False)
print(f"DoRA exact gradient: held-out comedy loss {window_losses(model, *HELD['comedies']).mean():.4f} "
      f"(detached, as above: {gpt_rows['DoRA']['loss']:.4f})")

# %%
# try it 3: VeRA at r = 256 on the comedies, at VeRA's tuned rate: the adapter grows by r per layer
model, make_opt = gpt_model("VeRA", vera_r=256)
sampler = WindowSampler(comedies.train, BLOCK, BATCH, seed=0)
t0 = time.perf_counter()
train(model, make_opt(gpt["VeRA"]["lr"]), sampler.sample, GPT_STEPS, eval_every=GPT_STEPS, seed=0, progress=False)
print(f"VeRA r=256: {lora.count_parameters(model)['trainable']:,} trainable (r=64: {gpt['VeRA']['trainable']:,}), "
      f"{(time.perf_counter() - t0) / GPT_STEPS * 1000:.0f} ms a step, held-out comedy loss "
      f"{window_losses(model, *HELD['comedies']).mean():.4f} (r=64: {gpt_rows['VeRA']['loss']:.4f})")

