# %% [markdown]
# # 02 · Low rank by hand
#
# What "low rank" means, measured: rank as the number of independent directions, the SVD that
# finds them, the best rank-r approximation (Eckart-Young) checked against the formula and
# against other rank-r matrices, how much "energy" the top directions keep, what r * (d + k)
# numbers cost instead of d * k, and an 8x8 digit rebuilt from 1, 2, 4 and 8 directions.
# The prose is in [chapter 02](../chapters/02-low-rank-by-hand.md).

# %%
import os
FAST = os.environ.get("TINYLORA_FAST") == "1"
print("TINYLORA_FAST =", int(FAST), "(smoke test)" if FAST else "(full run)")

# %%
# no output: imports, seeds and settings
import numpy as np
import matplotlib.pyplot as plt

import tinylora as tl
from tinylora import lowrank
from tinylora.data import load_digits

np.set_printoptions(precision=3, suppress=True, linewidth=100)
tl.manual_seed(0)
rng = np.random.default_rng(0)

# %% [markdown]
# ## 1. Rank: how many independent directions a matrix has
#
# An outer product `u v^T` has rank 1: every row is a multiple of `v`. Adding a second outer
# product with new directions gives rank 2. A rank-r matrix of shape (d, k) can always be
# written as `B @ A` with `B` (d, r) and `A` (r, k).

# %%
u, v = np.array([1.0, 2.0, -1.0, 0.5]), np.array([3.0, 0.0, 1.0, -2.0, 1.0])
M1 = np.outer(u, v)  # (4, 5): every row is a multiple of v
print("rank-1 matrix u v^T:\n", M1)
print("rank of u v^T:", np.linalg.matrix_rank(M1))

u2, v2 = np.array([0.0, 1.0, 1.0, -1.0]), np.array([1.0, 1.0, -1.0, 0.0, 2.0])
M2 = M1 + np.outer(u2, v2)
print("rank of u v^T + u2 v2^T:", np.linalg.matrix_rank(M2))

B_, A_ = np.stack([u, u2], axis=1), np.stack([v, v2])  # B (4, 2), A (2, 5)
print("B @ A equals M2:", np.allclose(B_ @ A_, M2), "| B", B_.shape, "A", A_.shape)
print(f"numbers stored: full {M2.size}, as B and A {B_.size + A_.size}")

# %% [markdown]
# ## 2. The SVD finds the directions, strongest first
#
# `M = U diag(s) V^T` with orthonormal columns in `U` and `V` and singular values `s` in
# decreasing order. Equivalently, `M` is a sum of rank-1 pieces `s_i u_i v_i^T`.

# %%
M = rng.standard_normal((6, 5))
U, s, Vt = lowrank.svd(M)
print("U", U.shape, "s", s.shape, "Vt", Vt.shape)
print("singular values:", s)
print("U^T U = I:", np.allclose(U.T @ U, np.eye(5)), "| V^T V = I:", np.allclose(Vt @ Vt.T, np.eye(5)))
pieces = sum(s[i] * np.outer(U[:, i], Vt[i]) for i in range(len(s)))
print("sum of s_i u_i v_i^T rebuilds M:", np.allclose(pieces, M))
print("rank of M:", np.linalg.matrix_rank(M), "= number of non-zero singular values")

# %% [markdown]
# ## 3. The best rank-r approximation (Eckart-Young)
#
# A matrix that is "really" low rank plus a little noise: 64 x 48, a rank-4 signal and noise.
# Keeping the top r singular triplets gives `M_r = low_rank_approx(M, r)`; its error is
# exactly `sqrt(s_{r+1}^2 + ... + s_k^2)`, the singular values it dropped.

# %%
d, k, true_rank = 64, 48, 4
signal = rng.standard_normal((d, true_rank)) @ rng.standard_normal((true_rank, k))
noise = 0.1 * rng.standard_normal((d, k))
M = signal + noise
s = lowrank.singular_values(M)
print("top 8 singular values:", s[:8])
print(f"s_4 / s_5 = {s[3] / s[4]:.1f}  (the gap after the true rank)")

print(f"\n{'r':>3} {'||M - M_r||_F':>15} {'sqrt(sum dropped s^2)':>22} {'energy kept':>12}")
for r in [1, 2, 3, 4, 5, 8, 16]:
    err = np.linalg.norm(M - lowrank.low_rank_approx(M, r))
    formula = np.sqrt((s[r:] ** 2).sum())
    print(f"{r:>3} {err:>15.6f} {formula:>22.6f} {lowrank.energy(M, r):>12.4%}")

# %%
fig, ax = plt.subplots(1, 2, figsize=(11, 3.6))
ax[0].semilogy(np.arange(1, len(s) + 1), s, "o-", ms=3)
ax[0].axvline(true_rank, color="gray", ls=":", label=f"true rank {true_rank}")
ax[0].set(title="Singular values of a rank-4 signal + noise", xlabel="index i", ylabel="s_i (log scale)")
ax[0].legend()
curve = lowrank.energy_curve(M)
ax[1].plot(np.arange(1, len(curve) + 1), curve, "o-", ms=3)
ax[1].set(title="Energy kept by the top r directions", xlabel="rank r", ylabel="sum(s[:r]^2) / sum(s^2)",
          ylim=(0, 1.02))
plt.tight_layout()
plt.show()

# %% [markdown]
# ### No other rank-r matrix does better
#
# Two kinds of competitors at r = 4: (a) random rank-4 matrices, each given its best chance
# (project M onto a random 4-dimensional column space, which is the best fit with those
# columns), and (b) the optimal factors nudged a little. Every one of them is further from M.

# %%
r = 4
best = np.linalg.norm(M - lowrank.low_rank_approx(M, r))
trials = 20 if FAST else 2000
random_errs = []
for _ in range(trials):
    Q, _ = np.linalg.qr(rng.standard_normal((d, r)))  # a random r-dimensional column space
    random_errs.append(np.linalg.norm(M - Q @ (Q.T @ M)))
B_opt, A_opt = lowrank.lora_from_delta(M, r)
nudged_errs = []
for _ in range(trials):
    Bn = B_opt + 0.01 * rng.standard_normal(B_opt.shape)
    An = A_opt + 0.01 * rng.standard_normal(A_opt.shape)
    nudged_errs.append(np.linalg.norm(M - Bn @ An))
print(f"Eckart-Young error at r = {r}:            {best:.4f}")
print(f"best of {trials} random rank-{r} subspaces:   {min(random_errs):.4f}  (median {np.median(random_errs):.2f})")
print(f"best of {trials} nudged optimal factors:   {min(nudged_errs):.4f}")
print("any competitor closer than the SVD?", min(random_errs + nudged_errs) < best)

# %% [markdown]
# ## 4. What r * (d + k) costs instead of d * k
#
# Storing `B` (d, r) and `A` (r, k) takes `r * (d + k)` numbers; the full matrix takes `d * k`.

# %%
print(f"{'shape d x k':>14} {'r':>4} {'d * k':>14} {'r * (d + k)':>12} {'fraction':>9}")
for (dd, kk) in [(64, 48), (768, 768), (4096, 4096), (12288, 12288)]:
    for rr in [1, 8, 64]:
        full, low = dd * kk, rr * (dd + kk)
        print(f"{f'{dd} x {kk}':>14} {rr:>4} {full:>14,} {low:>12,} {low / full:>9.3%}")

# %% [markdown]
# ## 5. Effective rank: a soft count of directions
#
# `effective_rank` is `exp(entropy of s / sum(s))`: n for n equal singular values, 1 for rank 1.

# %%
for name, X in [("rank-1 outer product", M1), ("rank-4 signal + noise", M),
                ("pure Gaussian noise 64 x 48", rng.standard_normal((64, 48))),
                ("identity 48 x 48", np.eye(48))]:
    print(f"{name:>28}: rank {np.linalg.matrix_rank(X):>2}, effective rank {lowrank.effective_rank(X):6.2f}")

# %% [markdown]
# ## 6. A digit image, rebuilt from its top directions
#
# An 8x8 digit is an 8 x 8 matrix, so it has at most 8 directions. Keep 1, 2, 4 and 8.

# %%
digits = load_digits()
img = digits.x_train[0].reshape(8, 8).astype(np.float64)
label = int(digits.y_train[0])
s_img = lowrank.singular_values(img)
print("digit label:", label)
print("singular values of the image:", s_img)
print(f"{'r':>3} {'numbers r*(8+8)':>16} {'energy kept':>12} {'error ||X - X_r||':>18}")
recon = {}
for r in [1, 2, 4, 8]:
    recon[r] = lowrank.low_rank_approx(img, r)
    print(f"{r:>3} {r * 16:>16} {lowrank.energy(img, r):>12.2%} {np.linalg.norm(img - recon[r]):>18.4f}")

# %%
fig, ax = plt.subplots(1, 5, figsize=(12, 2.8))
ax[0].imshow(img, cmap="gray_r", vmin=0, vmax=1)
ax[0].set_title(f"original ({label})")
for a, r in zip(ax[1:], [1, 2, 4, 8]):
    a.imshow(recon[r], cmap="gray_r", vmin=0, vmax=1)
    a.set_title(f"rank {r}: {lowrank.energy(img, r):.0%} energy")
for a in ax:
    a.set_xticks([]), a.set_yticks([])
fig.suptitle("An 8x8 digit rebuilt from its top r singular directions")
plt.tight_layout()
plt.show()

# %% [markdown]
# The whole training set as one matrix (1347 images x 64 pixels): how many directions do the
# digits span? Far fewer than 64 carry most of the energy.

# %%
X = digits.x_train.astype(np.float64)
curve = lowrank.energy_curve(X)
need = {p: int(np.searchsorted(curve, p) + 1) for p in (0.80, 0.90, 0.95, 0.99)}
print("data matrix shape:", X.shape)
for p, r in need.items():
    print(f"directions needed for {p:.0%} of the energy: {r} of 64")
print(f"effective rank of the data matrix: {lowrank.effective_rank(X):.1f}")

fig, ax = plt.subplots(figsize=(6, 3.6))
ax.plot(np.arange(1, 65), curve, "o-", ms=3)
for p, r in need.items():
    ax.axhline(p, color="gray", lw=0.5, ls=":")
ax.set(title="Energy kept vs rank: all training digits (1347 x 64)", xlabel="rank r",
       ylabel="fraction of squared Frobenius norm")
plt.tight_layout()
plt.show()

# %% [markdown]
# ## 7. From a weight change to a LoRA pair
#
# Suppose fine-tuning changed a 256 x 256 weight by `delta` (here: rank 8 plus noise).
# `lora_from_delta(delta, r)` returns the `B` (out, r) and `A` (r, in) whose product is the best
# rank-r approximation. This is the question LoRA bets on: is the useful change low rank?

# %%
out_f, in_f = 256, 256
delta = rng.standard_normal((out_f, 8)) @ rng.standard_normal((8, in_f)) / 8 + 0.02 * rng.standard_normal((out_f, in_f))
print(f"{'r':>3} {'B shape':>10} {'A shape':>10} {'params':>7} {'of d*k':>7} {'energy':>8} {'rel. error':>10}")
for r in [1, 4, 8, 16, 64]:
    Bf, Af = lowrank.lora_from_delta(delta, r)
    same = np.allclose(Bf @ Af, lowrank.low_rank_approx(delta, r))
    assert same
    rel = np.linalg.norm(delta - Bf @ Af) / np.linalg.norm(delta)
    n = Bf.size + Af.size
    print(f"{r:>3} {str(Bf.shape):>10} {str(Af.shape):>10} {n:>7,} {n / delta.size:>7.1%} "
          f"{lowrank.energy(delta, r):>8.2%} {rel:>10.4f}")
print("B @ A equals low_rank_approx(delta, r) at every r: True")

# %% [markdown]
# ## Try it
#
# Starting cells for the chapter's exercises. Each runs as it is; change the marked line and
# run it again.
#
# **1. Where is the knee?** A matrix with a true rank of `true_rank` plus noise of size
# `noise`: how much energy do ranks 1 to 8 keep? Change `true_rank` and `noise` and watch where
# the curve stops climbing.

# %%
true_rank, noise = 3, 0.05  # <- change these
try_rng = np.random.default_rng(1)
M_try = try_rng.standard_normal((64, true_rank)) @ try_rng.standard_normal((true_rank, 48))
M_try += noise * np.sqrt(true_rank) * try_rng.standard_normal(M_try.shape)
print(f"true rank {true_rank}, noise {noise}: effective rank {lowrank.effective_rank(M_try):.2f}")
print("energy kept at r = 1..8:", " ".join(f"{lowrank.energy(M_try, r):.3f}" for r in range(1, 9)))

# %% [markdown]
# **2. A random update is not low rank.** `lora_from_delta` on a 256 x 256 change with no
# structure at all (pure noise): what share of it does rank 8 keep, and how does that compare
# with the structured `delta` of section 7?

# %%
delta_noise = np.random.default_rng(2).standard_normal((256, 256))  # <- try other shapes or ranks
for r in (8, 64):
    Bn, An = lowrank.lora_from_delta(delta_noise, r)
    print(f"r = {r:>2}: pure noise keeps {lowrank.energy(delta_noise, r):.1%} of its energy; "
          f"the structured delta of section 7 keeps {lowrank.energy(delta, r):.1%}")
