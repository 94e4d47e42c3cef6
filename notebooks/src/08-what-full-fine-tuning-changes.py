# %% [markdown]
# # 08 · What full fine-tuning changes
#
# We fine-tune the shipped Shakespeare base (trained on every genre except the comedies) on the
# comedies twice from the same starting point, with the same data, steps and seed: once fully
# (every weight moves) and once with LoRA on `q_proj` and `v_proj` at r = 1 ... 64. Then we
# look inside the full fine-tuning: the singular values of each weight change ΔW = W_after −
# W_before, how much of it the best rank-r approximation keeps, how good the model stays when
# the deltas are cut down to rank r (against a LoRA trained at that rank), and how
# much the subspaces that LoRA learns agree across ranks and seeds (Hu et al. 2021, section 7),
# always against a random baseline. Every loss is on the course's fixed held-out comedy windows
# (`tinylora.evaluate.heldout_set`), and comparisons carry paired ±2 standard errors. The prose is in
# [chapter 08](../chapters/08-what-full-fine-tuning-changes.md).

# %%
import os
FAST = os.environ.get("TINYLORA_FAST") == "1"
print("TINYLORA_FAST =", int(FAST), "(smoke test)" if FAST else "(full run)")

# %%
# no output: imports, seeds and the settings of every run
import time

import matplotlib.pyplot as plt
import numpy as np
from threadpoolctl import threadpool_limits

import tinylora as tl
from tinylora import lora, lowrank, optim
from tinylora.bases import load_base
from tinylora.data import WindowSampler, load_shakespeare
from tinylora.evaluate import heldout_set, paired_diff, window_losses
from tinylora.train import train

threadpool_limits(1)  # one BLAS thread: on a shared 2-core machine extra threads only contend

np.set_printoptions(precision=4, suppress=True, linewidth=110)
SEED = 0
tl.manual_seed(SEED)
rng = np.random.default_rng(SEED)

STEPS = 3 if FAST else 400             # optimizer steps of every fine-tuning run
BLOCK, BATCH = 64, 16                  # windows of 64 characters, 16 windows per step
WARMUP = 0 if FAST else 20             # linear warm-up, then cosine decay to 10% of the lr
LR_FULL = 3e-4                         # AdamW, every parameter trainable
LR_LORA = 5e-3                         # AdamW, only A and B trainable (tuned at r = 8)
ALPHA = 16                             # alpha fixed (Hu et al. 2021): scaling alpha/r, one lr for every r
WEIGHT_DECAY = 0.0                     # no decay: dW is then only what the gradients did
RANKS = [1, 8] if FAST else [1, 2, 4, 8, 16, 32, 64]
R_SMALL, R_BIG = 8, RANKS[-1]          # the ranks compared in the subspace section
TARGETS = ("q_proj", "v_proj")         # LoRA targets (and the deltas we truncate to match)
N_EVAL = 64 if FAST else 512          # the course's fixed held-out comedy windows
RANDOM_DRAWS = 5 if FAST else 200      # random matrices averaged for each baseline

# %% [markdown]
# ## 1. The base, the new task and the yardsticks
#
# `load_base("shakespeare")` is a 4-layer character GPT (width 128, 4 heads) trained on the
# histories, tragedies, problem plays, Roman plays and romances. The comedies are new to it.
# Every loss below is the mean over the course's fixed held-out set: 512 windows of 64 characters,
# evenly spaced over the comedies' held-out text (`heldout_set("comedies")`, the same windows in
# every chapter), scored window by window (`window_losses`) so that two models can be compared
# on the same windows with a paired standard error.

# %%
base = load_base("shakespeare")
tok = base.tokenizer
card = base.card
comedies = load_shakespeare(("comedies",), tokenizer=tok)
print(comedies)
print("base:", card["config"], "|", card["parameters"], "parameters")
print(f"base card: val loss on its own genres {card['metrics']['val_loss']:.4f}, "
      f"comedies loss {card['metrics']['comedies_loss']:.4f}")


x_eval, y_eval = heldout_set("comedies", block_size=BLOCK, n=N_EVAL)
per_window = {}  # label -> the losses of the N_EVAL windows


def comedy_loss(model, label=None):
    """Mean next-character cross-entropy on the fixed held-out comedy windows (kept under `label`)."""
    losses = window_losses(model, x_eval, y_eval)
    if label is not None:
        per_window[label] = losses
    return float(losses.mean())


def vs(a, b):
    """'mean ± 2 SE' of the paired per-window difference a - b."""
    d, se = paired_diff(per_window[a], per_window[b])
    return f"{d:+.4f} ± {se:.4f}"


LINEAR = [f"blocks.{i}.{part}" for i in range(card["config"]["n_layer"])
          for part in ("attn.q_proj", "attn.k_proj", "attn.v_proj", "attn.o_proj", "mlp.up_proj", "mlp.down_proj")]
ADAPTED = [n for n in LINEAR if n.endswith(TARGETS)]
W0 = {n: base.model.get_submodule(n).weight.data.astype(np.float64) for n in LINEAR}
base_loss = comedy_loss(base.model, "base")
print(f"base model, held-out comedy loss: {base_loss:.4f}")
print(f"{len(LINEAR)} linear projections, {len(ADAPTED)} of them adapted by LoRA: {', '.join(ADAPTED)}")

# %% [markdown]
# ## 2. Two ways to fine-tune, on the same data
#
# Both runs see exactly the same batches (a `WindowSampler` with the same seed), take the same
# number of AdamW steps with the same schedule and gradient clipping, and have no weight decay,
# so that a weight change is only what the gradients asked for. Full fine-tuning trains all
# parameters at lr 3e-4; LoRA freezes the base and trains A and B on q_proj and v_proj at
# lr 5e-3 with alpha fixed at 16 (scaling 16/r), as Hu et al. (2021) do: with B starting at zero,
# the part of the first updates that follows the gradient then has the same size at every rank,
# so one learning rate (tuned at r = 8) serves every rank (chapter 05 measures this).
#
# Each LoRA run draws its A from its own seed (`manual_seed(1000 * seed + r)`), so no two runs
# share a random start, not even a prefix of one: with one seed for all ranks, the first 8 rows
# of the r = 64 adapter's first A would be the r = 8 adapter's A. The batches are the same for
# every rank (sampler seed 0); the second r = 8 run also gets other batches (sampler seed 1).

# %%
def finetune(model, lr, seed=SEED, desc="train"):
    """AdamW + warm-up/cosine schedule + clipping on comedy windows; returns (seconds, history)."""
    opt = optim.AdamW(model.parameters(), lr=lr, weight_decay=WEIGHT_DECAY)
    schedule = optim.CosineSchedule(opt, STEPS, warmup_steps=WARMUP, min_ratio=0.1)
    sampler = WindowSampler(comedies.train, BLOCK, BATCH, seed=seed)
    t0 = time.perf_counter()
    history = train(model, opt, sampler.sample, STEPS, eval_every=STEPS, schedule=schedule,
                    clip_norm=1.0, seed=seed, progress=False, desc=desc)
    return time.perf_counter() - t0, history


full = load_base("shakespeare").model
seconds, hist = finetune(full, LR_FULL, desc="full")
full_loss = comedy_loss(full, "full")
n_full = sum(p.size for p in full.parameters())
print(f"full fine-tuning: {STEPS} steps in {seconds:.0f} s, {n_full:,} trainable parameters")
print(f"  held-out comedy loss: base {base_loss:.4f} -> full fine-tuning {full_loss:.4f} "
      f"(paired difference {vs('full', 'base')})")

dW = {n: full.get_submodule(n).weight.data.astype(np.float64) - W0[n] for n in LINEAR}

# %%
lora_runs = {}  # (r, seed) -> dict(loss, A, delta, seconds, trainable)


def train_lora(r, seed, init=None):
    model = load_base("shakespeare").model
    tl.manual_seed(1000 * seed + r if init is None else init)  # A's random init: its own stream for every run
    lora.apply_lora(model, lora.LoRAConfig(r=r, alpha=ALPHA, target_modules=TARGETS))
    trainable = lora.count_parameters(model)["trainable"]
    layers = dict(lora.lora_layers(model))
    A0 = {n: layers[n].lora_A.data.astype(np.float64) for n in ADAPTED}  # before training
    seconds, _ = finetune(model, LR_LORA, seed=seed, desc=f"lora r={r}")
    moved = np.mean([np.linalg.norm(layers[n].lora_A.data - A0[n]) / np.linalg.norm(A0[n]) for n in ADAPTED])
    return dict(loss=comedy_loss(model, f"lora r={r} seed {seed}" if init is None else None), seconds=seconds, trainable=trainable, moved=moved,
                A={n: layers[n].lora_A.data.astype(np.float64) for n in ADAPTED}, A0=A0,
                delta={n: layers[n].adapters[layers[n].active].delta().astype(np.float64) for n in ADAPTED})


print(f"{'run':>16} {'trainable':>10} {'seconds':>8} {'comedy loss':>12} {'|A - A0| / |A0|':>16}")
for r in RANKS:
    lora_runs[r, SEED] = run = train_lora(r, SEED)
    print(f"{f'LoRA r={r}':>16} {run['trainable']:>10,} {run['seconds']:>8.0f} {run['loss']:>12.4f} {run['moved']:>16.2f}")
lora_runs[R_SMALL, SEED + 1] = run = train_lora(R_SMALL, SEED + 1)
print(f"{f'LoRA r={R_SMALL} seed {SEED + 1}':>16} {run['trainable']:>10,} {run['seconds']:>8.0f} {run['loss']:>12.4f} "
      f"{run['moved']:>16.2f}")
print(f"{'full FT':>16} {n_full:>10,} {seconds:>8.0f} {full_loss:>12.4f}")
print("(|A - A0| / |A0|: how far training moved A from its random start, mean over the adapted matrices)")
print(f"two seeds at r = {R_SMALL}: seed {SEED + 1} minus seed {SEED}: "
      f"{vs(f'lora r={R_SMALL} seed {SEED + 1}', f'lora r={R_SMALL} seed {SEED}')} (paired, ±2 SE over {N_EVAL} windows)")

# %% [markdown]
# ## 3. The spectrum of each full fine-tuning change
#
# For every attention and MLP projection of every block, ΔW = W_after − W_before. Its SVD
# ΔW = Σ s_i u_i v_iᵀ says how many directions the change uses. To read the numbers we need a
# yardstick: a Gaussian random matrix of the same shape, which has no preferred direction at
# all. Columns: the size of the change relative to W, the effective rank (exp of the entropy of
# s / Σs; 128 would mean perfectly flat), and the energy Σ_{i≤r} s_i² / Σ s_i² kept at r = 1, 4,
# 8 and 16.

# %%
def gaussian(shape):
    return rng.standard_normal(shape)


shapes = sorted({dW[n].shape for n in LINEAR})
random_energy = {sh: np.mean([lowrank.energy_curve(gaussian(sh)) for _ in range(RANDOM_DRAWS)], axis=0)
                 for sh in shapes}
random_erank = {sh: np.mean([lowrank.effective_rank(gaussian(sh)) for _ in range(RANDOM_DRAWS)]) for sh in shapes}

print(f"{'matrix':>22} {'shape':>10} {'|dW|/|W|':>9} {'eff.rank':>9} "
      f"{'E(r=1)':>7} {'E(r=4)':>7} {'E(r=8)':>7} {'E(r=16)':>8}")
spectrum = {}
for n in LINEAR:
    d = dW[n]
    curve = lowrank.energy_curve(d)
    spectrum[n] = dict(rel=np.linalg.norm(d) / np.linalg.norm(W0[n]), erank=lowrank.effective_rank(d),
                       curve=curve, s=lowrank.singular_values(d))
    e = spectrum[n]
    print(f"{n:>22} {str(d.shape):>10} {e['rel']:>9.4f} {e['erank']:>9.1f} "
          f"{curve[0]:>7.1%} {curve[3]:>7.1%} {curve[7]:>7.1%} {curve[15]:>8.1%}")
for sh in shapes:
    c = random_energy[sh]
    print(f"{'random Gaussian':>22} {str(sh):>10} {'':>9} {random_erank[sh]:>9.1f} "
          f"{c[0]:>7.1%} {c[3]:>7.1%} {c[7]:>7.1%} {c[15]:>8.1%}")

# %% [markdown]
# The same table in groups: the mean over the four blocks for each kind of projection.

# %%
kinds = ["q_proj", "k_proj", "v_proj", "o_proj", "up_proj", "down_proj"]
print(f"{'projection':>10} {'eff.rank':>9} {'E(r=1)':>7} {'E(r=4)':>7} {'E(r=8)':>7} {'E(r=16)':>8} {'|dW|/|W|':>9}")
for kind in kinds:
    names = [n for n in LINEAR if n.endswith(kind)]
    er = np.mean([spectrum[n]["erank"] for n in names])
    c = np.mean([spectrum[n]["curve"][:16] for n in names], axis=0)
    rel = np.mean([spectrum[n]["rel"] for n in names])
    print(f"{kind:>10} {er:>9.1f} {c[0]:>7.1%} {c[3]:>7.1%} {c[7]:>7.1%} {c[15]:>8.1%} {rel:>9.4f}")
all_er = [spectrum[n]["erank"] for n in LINEAR]
all_e8 = [spectrum[n]["curve"][7] for n in LINEAR]
print(f"\nall {len(LINEAR)} deltas: effective rank from {min(all_er):.1f} to {max(all_er):.1f} "
      f"(random 128 x 128: {random_erank[(128, 128)]:.1f}); energy at r = 8 from {min(all_e8):.1%} "
      f"to {max(all_e8):.1%} (random 128 x 128: {random_energy[(128, 128)][7]:.1%})")

# %%
last = card["config"]["n_layer"] - 1
shown = [f"blocks.0.attn.q_proj", f"blocks.{last}.attn.v_proj", "blocks.1.mlp.up_proj", f"blocks.{last}.mlp.down_proj"]
fig, axes = plt.subplots(1, len(shown), figsize=(15, 3.4), sharey=True)
for ax, n in zip(axes, shown):
    s = spectrum[n]["s"]
    g = np.mean([lowrank.singular_values(gaussian(dW[n].shape)) for _ in range(RANDOM_DRAWS // 10 + 1)], axis=0)
    g *= np.linalg.norm(s) / np.linalg.norm(g)  # the same Frobenius norm as dW
    ax.semilogy(np.arange(1, len(s) + 1), s / s[0], label="full FT ΔW")
    ax.semilogy(np.arange(1, len(g) + 1), g / s[0], ls="--", color="gray", label="random, same norm")
    ax.set(title=n, xlabel="index i")
axes[0].set_ylabel("s_i / s_1 (log scale)")
axes[0].legend()
fig.suptitle("Singular values of full fine-tuning weight changes (comedies), with a random matrix of the same norm")
plt.tight_layout()
plt.show()

# %% [markdown]
# ## 4. Energy kept by the best rank-r approximation
#
# By Eckart-Young the truncated SVD keeps the largest possible fraction of ‖ΔW‖²_F at every
# rank, so these curves are the best any rank-r factorisation can do. Every one of the 24
# deltas, coloured by kind, and the random baselines (dashed).

# %%
colors = dict(zip(kinds, plt.cm.tab10.colors))
fig, ax = plt.subplots(figsize=(8, 4.6))
rs = np.arange(1, 65)
for n in LINEAR:
    kind = n.split(".")[-1]
    ax.plot(rs, spectrum[n]["curve"][:64], color=colors[kind], lw=1,
            label=kind if n.startswith("blocks.0.") else None)
for sh, ls in [((128, 128), "--"), ((128, 512), ":")]:
    ax.plot(rs, random_energy[sh][:64], color="black", ls=ls, lw=1.5,
            label=f"random {sh[0]} x {sh[1]} (or transposed)" if sh[0] != sh[1] else "random 128 x 128")
ax.set(title="Energy kept by the best rank-r approximation of each full FT ΔW",
       xlabel="rank r", ylabel="sum(s[:r]^2) / sum(s^2)", ylim=(0, 1.02), xlim=(1, 64))
ax.legend(fontsize=8, ncol=2)
plt.tight_layout()
plt.show()
for r in (1, 4, 8, 16, 32, 64):
    e = [spectrum[n]["curve"][r - 1] for n in LINEAR]
    print(f"r = {r:>2}: energy kept, mean over the {len(LINEAR)} deltas {np.mean(e):.1%} "
          f"(min {min(e):.1%}, max {max(e):.1%}); random 128 x 128 {random_energy[(128, 128)][r - 1]:.1%}")

# %% [markdown]
# ## 5. Cut full fine-tuning down to rank r, or train LoRA at rank r?
#
# Energy is about the matrix; what matters is the model. Three ways to use rank r:
#
# - **truncated full FT (q, v)**: start from the base and add `low_rank_approx(ΔW, r)` to the
#   weights of q_proj and v_proj only (the matrices LoRA adapts); everything else stays the base.
#   This is the best rank-r copy, in Frobenius norm, of what full fine-tuning did to those
#   matrices, the same as a LoRA whose B and A come from `lora_from_delta(ΔW, r)`.
# - **truncated full FT (all linear, rest kept)**: the fully fine-tuned model with all 24
#   projection deltas cut to rank r; embeddings, LayerNorms and biases keep their fine-tuned values.
# - **LoRA at r**: the LoRA runs of section 2, trained at rank r on q_proj and v_proj.
#
# And reference lines: the base; full fine-tuning (every parameter); the base with the
# *untruncated* q and v deltas of full fine-tuning, the most that copying full fine-tuning into
# those two kinds of matrix can give; and full fine-tuning with all 24 projection deltas removed
# (r = 0: only embeddings, LayerNorms and biases changed), where the third curve starts from.
# The last column is the share of full fine-tuning's gain, (base − loss) / (base − full FT).

# %%
def with_weights(model, weights):
    """Set the named projections' weights (float32 on the model) and return the model."""
    for n, w in weights.items():
        p = model.get_submodule(n).weight
        p.data = w.astype(p.data.dtype)
    return model


qv_only = with_weights(load_base("shakespeare").model, {n: W0[n] + dW[n] for n in ADAPTED})
qv_full_loss = comedy_loss(qv_only, "full qv")
B_, A_ = lowrank.lora_from_delta(dW[ADAPTED[0]], 4)
assert np.allclose(B_ @ A_, lowrank.low_rank_approx(dW[ADAPTED[0]], 4))  # the same rank-r matrix

no_linear_loss = comedy_loss(with_weights(full, {n: W0[n] for n in LINEAR}))
trunc_qv, trunc_all = {}, {}
for r in RANKS:
    m = with_weights(load_base("shakespeare").model,
                     {n: W0[n] + lowrank.low_rank_approx(dW[n], r) for n in ADAPTED})
    trunc_qv[r] = comedy_loss(m, f"qv cut {r}")
    m = with_weights(full, {n: W0[n] + lowrank.low_rank_approx(dW[n], r) for n in LINEAR})
    trunc_all[r] = comedy_loss(m, f"all cut {r}")
with_weights(full, {n: W0[n] + dW[n] for n in LINEAR})  # put full fine-tuning back

def gain(loss):
    return (base_loss - loss) / (base_loss - full_loss)


print(f"base: {base_loss:.4f} | full fine-tuning (all parameters): {full_loss:.4f}")
print(f"base + untruncated q,v deltas of full FT: {qv_full_loss:.4f} ({gain(qv_full_loss):.1%} of full FT's gain)")
print(f"full FT with every linear delta removed (r = 0): {no_linear_loss:.4f} ({gain(no_linear_loss):.1%} of the gain)")
print(f"{'r':>3} {'LoRA at r':>10} {'(gain)':>7} {'full FT q,v cut to r':>21} {'(gain)':>7} "
      f"{'full FT, all linear cut to r':>29} {'(gain)':>7} {'LoRA minus all-cut, ±2 SE':>26}")
for r in RANKS:
    a, b, c = lora_runs[r, SEED]["loss"], trunc_qv[r], trunc_all[r]
    print(f"{r:>3} {a:>10.4f} {gain(a):>7.1%} {b:>21.4f} {gain(b):>7.1%} {c:>29.4f} {gain(c):>7.1%} "
          f"{vs(f'lora r={r} seed {SEED}', f'all cut {r}'):>26}")
print(f"LoRA r={RANKS[0]} minus base + untruncated full FT q,v deltas: {vs(f'lora r={RANKS[0]} seed {SEED}', 'full qv')}")
print(f"full FT, all deltas cut to r={RANKS[-2]}, minus full FT: {vs(f'all cut {RANKS[-2]}', 'full')}")

# %%
fig, ax = plt.subplots(figsize=(11, 4.6))
ax.plot(RANKS, [lora_runs[r, SEED]["loss"] for r in RANKS], "o-", label="LoRA trained at rank r (q, v)")
ax.plot(RANKS, [trunc_qv[r] for r in RANKS], "s-", label="full FT's q, v deltas cut to rank r (rest = base)")
ax.plot(RANKS, [trunc_all[r] for r in RANKS], "^-", label="full FT, all 24 deltas cut to rank r (rest kept)")
ax.axhline(base_loss, color="gray", ls="--", label=f"base ({base_loss:.3f})")
ax.axhline(full_loss, color="black", ls="--", label=f"full fine-tuning ({full_loss:.3f})")
ax.axhline(qv_full_loss, color="tab:orange", ls=":", label=f"base + full FT's q, v deltas ({qv_full_loss:.3f})")
ax.axhline(no_linear_loss, color="tab:green", ls=":", label=f"full FT, all 24 deltas removed ({no_linear_loss:.3f})")
ax.set_xscale("log", base=2)
ax.set_xticks(RANKS, [str(r) for r in RANKS])
ax.set(title="Held-out comedy loss at rank r: truncated full fine-tuning vs LoRA", xlabel="rank r",
       ylabel="cross-entropy (nats per character)")
ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))
plt.tight_layout()
plt.show()

# %% [markdown]
# ## 6. Subspace similarity across ranks and seeds
#
# Hu et al. (2021, section 7) compare the subspaces that two adapters' A matrices span. With
# U_i the top-i right-singular vectors of A_1 (as columns) and U_j the top-j of A_2,
#
#     φ(A_1, A_2, i, j) = ‖U_iᵀ U_j‖²_F / min(i, j)   in [0, 1]
#
# (`lowrank.subspace_similarity`; `subspace_similarity_matrix` gives every i, j at once).
# φ = 1 when one subspace contains the other, 0 when they are orthogonal. For *random*
# subspaces of R^d the expected value is max(i, j) / d, so the baseline rises with j: two
# random subspaces of dimensions 1 and 64 in R^128 already overlap by 0.5 on average. The
# baseline below is measured: the same φ on Gaussian random matrices of the same shapes.
#
# **What to compare.** A itself still carries its random start: section 2 printed how far
# training moved it (‖A − A0‖ / ‖A0‖), and the random part is not small. Two runs' A matrices
# could look alike only because of what they started from, or unalike only because their random
# starts differ. So we compare what training *learned*, in two forms: the change of A, A − A0,
# and the input directions of the adapter's whole change s B A (its top right-singular vectors,
# which is what `lora_from_delta(delta, r)` puts in its A). For full fine-tuning the same input
# directions are the top right-singular vectors of its ΔW. The raw A is kept as a third column.

# %%
def random_phi(shape1, shape2):
    return np.mean([lowrank.subspace_similarity_matrix(gaussian(shape1), gaussian(shape2))
                    for _ in range(RANDOM_DRAWS)], axis=0)


def learned(run, form):
    """Per adapted matrix: the raw A, the change A - A0, or the top input directions of s B A."""
    if form == "A":
        return run["A"]
    if form == "A - A0":
        return {n: run["A"][n] - run["A0"][n] for n in ADAPTED}
    return {n: lowrank.lora_from_delta(run["delta"][n], run["A"][n].shape[0])[1] for n in ADAPTED}


FORMS = ("A", "A - A0", "row space of s B A")
small, big, other = lora_runs[R_SMALL, SEED], lora_runs[R_BIG, SEED], lora_runs[R_SMALL, SEED + 1]
d_in = small["A"][ADAPTED[0]].shape[1]
rand_rank = random_phi((R_SMALL, d_in), (R_BIG, d_in))
rand_seed = random_phi((R_SMALL, d_in), (R_SMALL, d_in))
formula = np.maximum(np.arange(1, R_SMALL + 1)[:, None], np.arange(1, R_BIG + 1)[None, :]) / d_in
print(f"random baseline, r={R_SMALL} vs r={R_BIG}: measured vs max(i, j)/{d_in}, largest gap "
      f"{np.abs(rand_rank - formula).max():.4f}")

layer = f"blocks.{last}.attn.v_proj"
rows_ = learned(small, "row space of s B A")
phi_rank = lowrank.subspace_similarity_matrix(rows_[layer], learned(big, "row space of s B A")[layer])
phi_seed = lowrank.subspace_similarity_matrix(rows_[layer], learned(other, "row space of s B A")[layer])
print(f"{layer}, row space of s B A: phi(r={R_SMALL}, r={R_BIG}, i, j), rows i = 1..{R_SMALL}, first 8 columns j:")
print(phi_rank[:, :8])
print(f"{layer}, row space of s B A: phi(r={R_SMALL} seed {SEED}, r={R_SMALL} seed {SEED + 1}, i, j):")
print(phi_seed)

# %%
fig, axes = plt.subplots(1, 4, figsize=(16, 4.2), layout="constrained",
                         gridspec_kw=dict(width_ratios=[3, 3, 1.3, 1.3]))
panels = [(phi_rank, f"r={R_SMALL} vs r={R_BIG}", f"j (top-j of r={R_BIG})"),
          (rand_rank, f"random {R_SMALL} x {d_in} vs {R_BIG} x {d_in}", "j"),
          (phi_seed, f"r={R_SMALL}: seed {SEED} vs {SEED + 1}", f"j (seed {SEED + 1})"),
          (rand_seed, "random vs random", "j")]
for ax, (mat, title, xlabel) in zip(axes, panels):
    im = ax.imshow(mat, vmin=0, vmax=1, cmap="viridis", aspect="auto",
                   extent=(0.5, mat.shape[1] + 0.5, mat.shape[0] + 0.5, 0.5))
    ax.set(title=title, xlabel=xlabel, ylabel=f"i (top-i of r={R_SMALL})")
    ax.set_yticks(range(1, mat.shape[0] + 1))
    if mat.shape[1] <= 8:
        ax.set_xticks(range(1, mat.shape[1] + 1))
fig.colorbar(im, ax=axes, shrink=0.85, label="phi(i, j)")
fig.suptitle(f"Subspace similarity of the input directions LoRA learned (row space of s B A), {layer}")
plt.show()

# %% [markdown]
# All 8 adapted matrices, mean φ(1, 1) (the single strongest direction) and φ(8, 8) (the whole
# r = 8 subspace against the top 8 of the other), for each of the three forms and three
# comparisons: r = 8 against r = 64 (independent starts, same batches), two r = 8 runs
# (independent starts and batches), and r = 8 against the top input directions of full
# fine-tuning's ΔW of the same matrix (the same for every form: full fine-tuning has no A).

# %%
k = min(8, R_SMALL)
top = {n: lowrank.lora_from_delta(dW[n], R_BIG)[1] for n in ADAPTED}  # full FT's input directions
phi = {}
for form in FORMS:
    a_small, a_big, a_seed = learned(small, form), learned(big, form), learned(other, form)
    for label, other_ in (("r8 vs r64", a_big), ("seed 0 vs 1", a_seed), ("r8 vs full FT", top)):
        for i in (1, k):
            phi[form, label, i] = np.mean([lowrank.subspace_similarity(a_small[n], other_[n], i, i) for n in ADAPTED])
print(f"{'form':>20} | {'r8 vs r64':^15} | {'seed 0 vs 1':^15} | {'r8 vs full FT':^15}")
print(f"{'':>20} | {'phi11':>7} {'phi88':>7} | {'phi11':>7} {'phi88':>7} | {'phi11':>7} {'phi88':>7}")
for form in FORMS:
    print(f"{form:>20} | " + " | ".join(f"{phi[form, lab, 1]:>7.3f} {phi[form, lab, k]:>7.3f}"
                                       for lab in ("r8 vs r64", "seed 0 vs 1", "r8 vs full FT")))
print(f"{'random (measured)':>20} | {rand_rank[0, 0]:>7.3f} {rand_rank[k - 1, k - 1]:>7.3f} | "
      f"{rand_seed[0, 0]:>7.3f} {rand_seed[k - 1, k - 1]:>7.3f} | {rand_seed[0, 0]:>7.3f} {rand_seed[k - 1, k - 1]:>7.3f}")
print(f"{'random (max(i,j)/d)':>20} | {1 / d_in:>7.4f} {k / d_in:>7.4f} | {1 / d_in:>7.4f} {k / d_in:>7.4f} "
      f"| {1 / d_in:>7.4f} {k / d_in:>7.4f}")
per_matrix = [lowrank.subspace_similarity(learned(small, FORMS[2])[n], learned(big, FORMS[2])[n], 1, 1) for n in ADAPTED]
print(f"row space of s B A, r8 vs r64, phi(1, 1) per matrix: "
      + ", ".join(f"{n.replace('blocks.', 'b').replace('attn.', '')} {v:.3f}" for n, v in zip(ADAPTED, per_matrix)))

# %% [markdown]
# ## 7. Amplification: does ΔW boost directions W already uses?
#
# Hu et al. (section 7.3) project W onto the top-r singular directions of ΔW: with U_r and V_r
# the top-r left and right singular vectors of ΔW, ‖U_rᵀ W V_r‖_F says how much of W lives in
# the directions that ΔW changes. They compare it with the same projection onto W's own top-r
# directions (as large as it can be) and onto random directions, and define the amplification
# factor ‖ΔW‖_F / ‖U_rᵀ W V_r‖_F (`lowrank.amplification`): large when ΔW is big in directions
# that W barely uses. Here at r = 8, for the full fine-tuning ΔW and the LoRA r = 8 delta.

# %%
def projection(W, D, k):
    """||U_k^T W V_k||_F with U_k, V_k the top-k singular vectors of D."""
    U, _, Vt = lowrank.svd(D)
    return np.linalg.norm(U[:, :k].T @ W @ Vt[:k].T)


k = min(8, R_SMALL)
print(f"r = {k}; projections ||U^T W V||_F of W onto the top-{k} directions of:")
print(f"{'matrix':>22} {'|W|':>6} {'W itself':>9} {'full dW':>8} {'LoRA':>7} {'random':>7} | "
      f"{'|full dW|':>9} {'amp full':>9} | {'|LoRA dW|':>9} {'amp LoRA':>9}")
amp = {"full": [], "lora": [], "proj_full": [], "proj_lora": [], "proj_rand": [], "proj_own": []}
for n in ADAPTED:
    W, d_full, d_lora = W0[n], dW[n], lora_runs[R_SMALL, SEED]["delta"][n]
    p_own, p_full, p_lora = projection(W, W, k), projection(W, d_full, k), projection(W, d_lora, k)
    p_rand = np.mean([projection(W, gaussian(W.shape), k) for _ in range(RANDOM_DRAWS // 10 + 1)])
    a_full, a_lora = lowrank.amplification(d_full, W, k), lowrank.amplification(d_lora, W, k)
    assert np.isclose(a_full, np.linalg.norm(d_full) / p_full)
    for key, v in zip(amp, (a_full, a_lora, p_full, p_lora, p_rand, p_own)):
        amp[key].append(v)
    print(f"{n:>22} {np.linalg.norm(W):>6.2f} {p_own:>9.3f} {p_full:>8.3f} {p_lora:>7.3f} {p_rand:>7.3f} | "
          f"{np.linalg.norm(d_full):>9.4f} {a_full:>9.3f} | {np.linalg.norm(d_lora):>9.4f} {a_lora:>9.3f}")
print(f"{'mean':>22} {'':>6} {np.mean(amp['proj_own']):>9.3f} {np.mean(amp['proj_full']):>8.3f} "
      f"{np.mean(amp['proj_lora']):>7.3f} {np.mean(amp['proj_rand']):>7.3f} | {'':>9} {np.mean(amp['full']):>9.3f} | "
      f"{'':>9} {np.mean(amp['lora']):>9.3f}")

# %% [markdown]
# ## 8. Rank against data
#
# Schulman et al. (2025, "LoRA Without Regret") find that LoRA trains like full fine-tuning as
# long as the data holds less than the adapter can store, and falls behind once it holds more,
# earlier at a lower rank. Here the amount of comedy text is the knob: the first 3,000, 25,000,
# 200,000 or all 781,308 characters of the comedies' training text, each fine-tuned with this
# chapter's recipe (400 steps of 16 windows, so from about 137 passes over the smallest set to
# half a pass over the whole). LoRA goes on every linear layer (chapter 07's best placement, and
# the paper's advice) at r = 1, 8 and 64 with alpha fixed at 16. All runs see batches from the
# same sampler seed.
#
# Two losses for every run: on the text it trained on (how much of the data it could store; 512
# windows evenly spaced over the training subset) and on the course's held-out comedy windows.
# With many passes over little text the two disagree (what fits the training text best
# overfits it), so each method gets its own learning rate per data size *for each loss*: from
# a four-point grid (LoRA 3e-4 to 1e-2, full fine-tuning 3e-5 to 1e-3), the rate with the lowest
# training-text loss for the "fit" columns and the rate with the lowest held-out loss for the
# "held-out" columns.

# %%
DATA_SIZES = [3_000, len(comedies.train)] if FAST else [3_000, 25_000, 200_000, len(comedies.train)]
DATA_RANKS = [1] if FAST else [1, 8, 64]
DATA_LRS = {"full": [3e-4] if FAST else [3e-5, 1e-4, 3e-4, 1e-3],
            "lora": [3e-3] if FAST else [3e-4, 1e-3, 3e-3, 1e-2]}
ALL_LINEAR = ("q_proj", "k_proj", "v_proj", "o_proj", "up_proj", "down_proj")
LOSSES = ("fit", "held-out")


def fit_windows(ids, n=N_EVAL):
    """n windows evenly spaced over ids (the training subset): x, y of shape (n, BLOCK)."""
    starts = np.linspace(0, len(ids) - BLOCK - 1, n).round().astype(np.int64)
    index = starts[:, None] + np.arange(BLOCK)
    return ids[index], ids[index + 1]


def data_run(method, size, lr):
    """Fine-tune on the first `size` training characters; returns (train-subset losses, held-out losses)."""
    ids = comedies.train[:size]
    model = load_base("shakespeare").model
    if method != "full":
        tl.manual_seed(2000 + method)  # each rank its own A init
        lora.apply_lora(model, lora.LoRAConfig(r=method, alpha=ALPHA, target_modules=ALL_LINEAR))
    opt = optim.AdamW(model.parameters(), lr=lr, weight_decay=WEIGHT_DECAY)
    schedule = optim.CosineSchedule(opt, STEPS, warmup_steps=WARMUP, min_ratio=0.1)
    sampler = WindowSampler(ids, BLOCK, BATCH, seed=SEED)
    train(model, opt, sampler.sample, STEPS, eval_every=STEPS, schedule=schedule, clip_norm=1.0,
          seed=SEED, progress=False)
    xf, yf = fit_windows(ids)
    return window_losses(model, xf, yf), window_losses(model, x_eval, y_eval)


t0 = time.perf_counter()
METHODS = ["full"] + DATA_RANKS
grid = {}  # (method, size, lr) -> (train-subset losses, held-out losses)
for size in DATA_SIZES:
    for method in METHODS:
        for lr in DATA_LRS["full" if method == "full" else "lora"]:
            grid[method, size, lr] = data_run(method, size, lr)
tuned = {}  # (method, size, which loss) -> the lr with the lowest mean of that loss
for method in METHODS:
    lrs = DATA_LRS["full" if method == "full" else "lora"]
    for size in DATA_SIZES:
        for which, _ in enumerate(LOSSES):
            tuned[method, size, which] = min(lrs, key=lambda lr: grid[method, size, lr][which].mean())
name_of = {m: "full FT" if m == "full" else f"LoRA r={m}" for m in METHODS}
n_params = {"full": n_full}
for r in DATA_RANKS:
    probe = load_base("shakespeare").model
    lora.apply_lora(probe, lora.LoRAConfig(r=r, alpha=ALPHA, target_modules=ALL_LINEAR))
    n_params[r] = lora.count_parameters(probe)["trainable"]
print(f"{len(grid)} runs of {STEPS} steps in {time.perf_counter() - t0:.0f} s; trainable parameters: "
      + ", ".join(f"{name_of[m]} {n_params[m]:,}" for m in METHODS))
for which, loss_name in enumerate(LOSSES):
    print(f"\n{loss_name} loss, each method at its best rate for it (lr, loss):")
    print(f"{'chars':>8} {'passes':>7} | " + " | ".join(f"{name_of[m]:>14}" for m in METHODS))
    for size in DATA_SIZES:
        cells = [f"{tuned[m, size, which]:>6.0e} {grid[m, size, tuned[m, size, which]][which].mean():>7.3f}" for m in METHODS]
        print(f"{size:>8,} {STEPS * BATCH * BLOCK / size:>7.1f} | " + " | ".join(cells))
    edge = [f"{name_of[m]} at {n:,} ({tuned[m, n, which]:.0e})" for m in METHODS for n in DATA_SIZES
            if tuned[m, n, which] in (DATA_LRS["full" if m == "full" else "lora"][0], DATA_LRS["full" if m == "full" else "lora"][-1])]
    print("best rate at an edge of its grid: " + (", ".join(edge) or "none"))
print(f"\n(fit: loss on 512 windows of the text it trained on; held-out: the course's comedy windows; "
      f"base held-out {base_loss:.4f})")

# %% [markdown]
# The gap to full fine-tuning, LoRA minus full FT with each at its best rate for that loss,
# paired over the same windows (±2 SE over windows; one training seed, so compare with the
# seed-to-seed difference of section 2):

# %%
print(f"{'chars':>8} | " + " | ".join(f"{name_of[r] + ' - full FT':^37}" for r in DATA_RANKS))
print(f"{'':>8} | " + " | ".join(f"{'fit':>17} {'held-out':>19}" for _ in DATA_RANKS))
gap = {}
for size in DATA_SIZES:
    cells = []
    for r in DATA_RANKS:
        for which, _ in enumerate(LOSSES):
            gap[r, size, which] = paired_diff(grid[r, size, tuned[r, size, which]][which],
                                              grid["full", size, tuned["full", size, which]][which])
        (df, sf), (dh, sh) = gap[r, size, 0], gap[r, size, 1]
        cells.append(f"{df:>+8.4f} ± {sf:.4f} {dh:>+9.4f} ± {sh:.4f}")
    print(f"{size:>8,} | " + " | ".join(cells))
print(f"seed-to-seed at r = {R_SMALL} (section 2, held-out): "
      f"{vs(f'lora r={R_SMALL} seed {SEED + 1}', f'lora r={R_SMALL} seed {SEED}')}")

fig, axes = plt.subplots(1, 2, figsize=(12, 4.2), sharex=True)
for m in METHODS:
    for ax, which in zip(axes, (0, 1)):
        ax.plot(DATA_SIZES, [grid[m, n, tuned[m, n, which]][which].mean() for n in DATA_SIZES], "o-", label=name_of[m])
axes[1].axhline(base_loss, color="gray", ls="--", label="base")
for ax, title in zip(axes, ("loss on the text it trained on", "held-out comedy loss")):
    ax.set_xscale("log")
    ax.set(title=title, xlabel="comedy characters in the training set", ylabel="nats per character")
axes[1].legend(fontsize=8)
fig.suptitle(f"Rank against data: {STEPS} steps, each method at its best learning rate for each loss and data size")
plt.tight_layout()
plt.show()

# %% [markdown]
# ## 9. Summary: the numbers the course quotes

# %%
qv_e = {r: np.mean([spectrum[n]["curve"][r - 1] for n in ADAPTED]) for r in (1, 4, 8, 16)}
all_e = {r: np.mean([spectrum[n]["curve"][r - 1] for n in LINEAR]) for r in (1, 4, 8, 16)}
print(f"chapter 08 summary ({STEPS} steps, windows of {BLOCK}, batch {BATCH}, seed {SEED})")
print(f"  held-out comedy loss: base {base_loss:.4f}, full fine-tuning {full_loss:.4f}, "
      f"base + full FT q,v deltas {qv_full_loss:.4f}, full FT minus all linear deltas {no_linear_loss:.4f}")
print("  energy kept by the best rank-r approximation of full FT deltas (mean):")
for r in (1, 4, 8, 16):
    print(f"    r = {r:>2}: q,v deltas {qv_e[r]:.1%}, all {len(LINEAR)} deltas {all_e[r]:.1%}, "
          f"random 128 x 128 {random_energy[(128, 128)][r - 1]:.1%}")
print(f"  effective rank of full FT deltas: {min(all_er):.1f} to {max(all_er):.1f} "
      f"(mean {np.mean(all_er):.1f}; random 128 x 128 {random_erank[(128, 128)]:.1f}, "
      f"random 128 x 512 {random_erank[(128, 512)]:.1f})")
print("  held-out comedy loss at rank r: LoRA trained at r | full FT q,v deltas cut to r | all deltas cut to r")
for r in RANKS:
    print(f"    r = {r:>2}: {lora_runs[r, SEED]['loss']:.4f} | {trunc_qv[r]:.4f} | {trunc_all[r]:.4f}")
print(f"  LoRA r={R_SMALL}, seed {SEED + 1}: {lora_runs[R_SMALL, SEED + 1]['loss']:.4f}; "
      f"A moved from its random start by |A - A0| / |A0| = {lora_runs[R_SMALL, SEED]['moved']:.2f} (r={R_SMALL})")
print(f"  subspace similarity of the row space of s B A (mean over {len(ADAPTED)} matrices) vs random:")
F_ = FORMS[2]
print(f"    r={R_SMALL} vs r={R_BIG}: phi(1,1) {phi[F_, 'r8 vs r64', 1]:.3f} (random {rand_rank[0, 0]:.3f}), "
      f"phi(8,8) {phi[F_, 'r8 vs r64', k]:.3f} (random {rand_rank[k - 1, k - 1]:.3f})")
print(f"    seed {SEED} vs {SEED + 1} at r={R_SMALL}: phi(1,1) {phi[F_, 'seed 0 vs 1', 1]:.3f} (random {rand_seed[0, 0]:.3f}), "
      f"phi(8,8) {phi[F_, 'seed 0 vs 1', k]:.3f} (random {rand_seed[k - 1, k - 1]:.3f})")
print(f"    LoRA r={R_SMALL} vs full FT dW top-8: phi(1,1) {phi[F_, 'r8 vs full FT', 1]:.3f}, "
      f"phi(8,8) {phi[F_, 'r8 vs full FT', k]:.3f}")
print(f"  W projected on the top-{k} directions (mean ||U^T W V||_F): of W itself {np.mean(amp['proj_own']):.3f}, "
      f"of full FT dW {np.mean(amp['proj_full']):.3f}, of LoRA r={R_SMALL} {np.mean(amp['proj_lora']):.3f}, "
      f"random {np.mean(amp['proj_rand']):.3f}")
print(f"  amplification factor at r = {k} (mean): full FT dW {np.mean(amp['full']):.3f}, "
      f"LoRA r={R_SMALL} delta {np.mean(amp['lora']):.3f}")

# %% [markdown]
# ## 10. Try it
#
# 1. Turn weight decay on (`WEIGHT_DECAY = 0.1`) for full fine-tuning and look at one ΔW
#    again: how much of it is now a shrunken copy of W? (The cell measures the cosine between
#    ΔW and W with and without decay.)
# 2. Truncate only the MLP deltas of full fine-tuning (up_proj, down_proj) to rank 8 and keep the
#    rest: is the loss closer to the all-cut or to the untouched model?
# 3. Start or data? Train an r = 8 adapter with the same start as the first one but other
#    batches, and one with another start but the same batches, and compare their learned input
#    directions with the first one's.

# %%
# Try it 1: full fine-tuning with weight decay 0.1; how much of dW points along -W?
WEIGHT_DECAY = 0.1
decayed = load_base("shakespeare").model
finetune(decayed, LR_FULL, desc="full, decay")
WEIGHT_DECAY = 0.0
n = "blocks.0.attn.q_proj"
dW_decay = decayed.get_submodule(n).weight.data.astype(np.float64) - W0[n]


def cosine(a, b):
    return float((a * b).sum() / (np.linalg.norm(a) * np.linalg.norm(b)))


print(f"{n}: cosine(dW, W) without decay {cosine(dW[n], W0[n]):+.3f}, with decay 0.1 {cosine(dW_decay, W0[n]):+.3f}; "
      f"|dW| {np.linalg.norm(dW[n]):.4f} -> {np.linalg.norm(dW_decay):.4f}; held-out loss {comedy_loss(decayed):.4f}")

# %%
# Try it 2: full fine-tuning with only its MLP deltas cut to rank 8
mlp = [n for n in LINEAR if "mlp" in n]
m = with_weights(full, {n: W0[n] + lowrank.low_rank_approx(dW[n], 8) for n in mlp})
print(f"MLP deltas cut to rank 8: {comedy_loss(m):.4f} (full fine-tuning {full_loss:.4f}, all cut to 8 {trunc_all[8]:.4f})")
with_weights(full, {n: W0[n] + dW[n] for n in LINEAR})  # put full fine-tuning back

# %%
# Try it 3: the first r = 8 run (start 8, batches of seed 0) against one with its start and other
# batches, and one with another start and its batches; phi(1, 1) of the row space of s B A, mean over matrices
same_start = train_lora(R_SMALL, SEED + 1, init=1000 * SEED + R_SMALL)
same_data = train_lora(R_SMALL, SEED, init=1000 * (SEED + 1) + R_SMALL)
first = learned(lora_runs[R_SMALL, SEED], FORMS[2])
for name, run in (("same start, other batches", same_start), ("other start, same batches", same_data)):
    other_dirs = learned(run, FORMS[2])
    print(f"{name}: phi(1, 1) {np.mean([lowrank.subspace_similarity(first[n], other_dirs[n], 1, 1) for n in ADAPTED]):.3f}"
          f" (both differ: {phi[FORMS[2], 'seed 0 vs 1', 1]:.3f}, random {rand_seed[0, 0]:.3f})")
