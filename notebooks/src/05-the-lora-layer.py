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

import tinylora as tl
import tinylora.functional as F
from tinylora import lora, optim
from tinylora.bases import load_base
from tinylora.data import load_digits
from tinylora.io import save_weights
from tinylora.train import evaluate_classifier, train

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
# y = W x + b + (α/r) · B A x. Here r = 4, α = 8, on all three layers.

# %%
model = load_base("digits").model
tl.manual_seed(0)
lora.apply_lora(model, lora.LoRAConfig(r=4, alpha=8, target_modules=TARGETS))
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
# ## 3. B = 0: the adapted model starts exactly where the base was
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
# ## 4. At step 0, A gets no gradient and B does
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
# ## 5. alpha / r, and rsLoRA's alpha / √r
#
# The adapter's output is multiplied by s = α/r. With A's entries of a fixed size and B's
# entries of size b, B A x is a sum of r terms, so its size grows like √r·b; dividing by r makes
# the product shrink like 1/√r as r grows, at a fixed α. rsLoRA divides by √r instead, which
# keeps it the same size at every rank. We measure the standard deviation of s · B A x for a
# random B (entries U(-0.5, 0.5)) on the digits, with α = 16.

# %%
ranks = [1, 2, 4, 8, 16]
print(f"{'r':>3s} {'alpha/r':>8s} {'alpha/sqrt(r)':>14s} {'std, alpha/r':>13s} {'std, rsLoRA':>12s}")
for r in ranks:
    stds = {}
    for rs in (False, True):
        tl.manual_seed(0)
        layer = lora.LoRALinear(load_base("digits").model.fc1, r=r, alpha=16, rslora=rs)
        layer.lora_B.data = np.random.default_rng(1).uniform(-0.5, 0.5, layer.lora_B.shape).astype(np.float32)
        with tl.no_grad():
            delta = layer(upright.x_test).data - layer.base(upright.x_test).data  # s * B A x
        stds[rs] = delta.std()
    print(f"{r:3d} {16 / r:8.3f} {16 / np.sqrt(r):14.3f} {stds[False]:13.4f} {stds[True]:12.4f}")

# %% [markdown]
# In the sweep below we set **α = 2r**, so s = 2 at every rank (the choice of `tinylora demo`).

# %% [markdown]
# ## 6. Full fine-tuning vs LoRA at r = 1, 2, 4, 8, 16
#
# Every run starts from a fresh `load_base("digits")`, uses the same seed, the same batches
# (64 rotated images a step), the same number of steps and AdamW without weight decay.
# Full fine-tuning trains all 26,122 weights at lr 1e-3; LoRA trains A and B on fc1, fc2, fc3
# (biases stay frozen) at lr 1e-2. The model is in train mode while it trains, so the base's
# dropout (0.3 after each hidden layer) is active for every method; evaluation runs in eval mode.
# Before and after each run we hash the base's weights with sha256.

# %%
steps = 20 if FAST else 1000
eval_every = 5 if FAST else 25
LR_FULL, LR_LORA = 1e-3, 1e-2
print("steps:", steps, " batch: 64  eval every:", eval_every, " lr full:", LR_FULL, " lr LoRA:", LR_LORA)


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
    return evaluate_classifier(m, rotated.x_test, rotated.y_test)


def run(r=None, lr=None):
    """Full fine-tuning (r=None) or LoRA of rank r with alpha = 2r, from a fresh base."""
    model = load_base("digits").model
    base_params = list(model.parameters())  # the base's own weights (LoRA keeps these objects)
    before_hash = weights_sha256(base_params)
    before = rotated_eval(model)
    tl.manual_seed(0)
    if r is None:
        model.requires_grad_(True)  # load_base returns it frozen or not: make sure all train
    else:
        lora.apply_lora(model, lora.LoRAConfig(r=r, alpha=2 * r, target_modules=TARGETS))
    counts = lora.count_parameters(model)
    opt = optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    hist = train(model, opt, batches(0), steps, eval_fn=rotated_eval, eval_every=eval_every, seed=0,
                 progress=False)
    model.eval()
    return dict(model=model, history=hist, before=before, trainable=counts["trainable"],
                state_bytes=opt.state_bytes(), lr=lr, r=r,
                hash_before=before_hash, hash_after=weights_sha256(base_params))


results = {"full fine-tuning": run(None, LR_FULL)}
for r in ranks:
    results[f"LoRA r={r}"] = run(r, LR_LORA)
for name, res in results.items():
    f = res["history"].final
    res["acc_last5"] = float(np.mean(res["history"].column("eval_accuracy")[-5:]))
    print(f"{name:17s} trainable {res['trainable']:6d}  rotated test accuracy {res['before']['accuracy']:.2%} -> "
          f"{f['eval_accuracy']:.2%} (mean of the last 5 evaluations {res['acc_last5']:.2%})  "
          f"test loss {res['before']['loss']:.3f} -> {f['eval_loss']:.4f}  ({f['seconds']:.1f} s)")
print(f"one test image is {1 / len(rotated.y_test):.2%} of the accuracy")

# %% [markdown]
# Why a larger learning rate for LoRA? The same r = 8 adapter trained at full fine-tuning's
# learning rate, everything else equal:

# %%
slow = run(8, LR_FULL)
print(f"LoRA r=8 at lr {LR_FULL}: rotated test accuracy {slow['history'].final['eval_accuracy']:.2%} "
      f"(at lr {LR_LORA}: {results['LoRA r=8']['history'].final['eval_accuracy']:.2%})")

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
fig.suptitle(f"Full fine-tuning (lr {LR_FULL}) vs LoRA on fc1, fc2, fc3 (alpha = 2r, lr {LR_LORA}), same seed and steps")
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
# ## 7. Proof that the base stayed frozen
#
# The sha256 of the base's weights (W and b of fc1, fc2, fc3) before and after each run. LoRA
# runs leave every byte as it was; full fine-tuning changes them, as it should.

# %%
for name, res in list(results.items()) + [("LoRA r=8 (lr 1e-3)", slow)]:
    same = res["hash_before"] == res["hash_after"]
    print(f"{name:19s} before {res['hash_before'][:16]}  after {res['hash_after'][:16]}  unchanged: {same}")

# %% [markdown]
# ## 8. Merging: one weight matrix again
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
# ## 9. What each method has to store
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
# ## 10. Summary
#
# The headline numbers of this chapter: the rotated-digits task, from the same base, seed and
# number of steps. "Test loss" is the cross-entropy on the 450 rotated test images at the end.

# %%
print(f"Rotated digits, {steps} steps, batch 64, AdamW; base accuracy on rotated test before training "
      f"{results['full fine-tuning']['before']['accuracy']:.2%}")
header = (f"| {'method':17s} | {'lr':>6s} | {'trainable params':>16s} | {'% of base':>9s} | {'rotated test acc':>16s} "
          f"| {'acc, last 5 evals':>17s} | {'test loss':>9s} | {'file bytes':>10s} | {'optimizer state bytes':>21s} |")
print(header)
print("|" + "|".join("-" * (len(c)) for c in header.split("|")[1:-1]) + "|")
before = results["full fine-tuning"]["before"]
print(f"| {'base, no training':17s} | {'-':>6s} | {0:16d} | {0:8.2f}% | {before['accuracy']:16.2%} | {'-':>17s} | {before['loss']:9.4f} "
      f"| {files_base:10d} | {0:21d} |")
for name, res in results.items():
    f = res["history"].final
    print(f"| {name:17s} | {res['lr']:6g} | {res['trainable']:16d} | {100 * res['trainable'] / card['parameters']:8.2f}% "
          f"| {f['eval_accuracy']:16.2%} | {res['acc_last5']:17.2%} | {f['eval_loss']:9.4f} | {files[name]:10d} | {res['state_bytes']:21d} |")
