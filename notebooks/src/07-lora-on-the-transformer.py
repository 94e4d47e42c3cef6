# %% [markdown]
# # 07 · LoRA on the transformer
#
# The Shakespeare base of chapter 06 never saw a comedy. Here we adapt it to the comedies with
# LoRA and compare, from the same base, seed, batches and number of steps: the learning rate
# against the rank (with alpha fixed, as Hu et al. 2021 scale, and with alpha = 2r), a rank
# sweep on q and v, where the adapters go (q and v, all linear layers, the MLP only), and full
# fine-tuning at several learning rates as the reference. For each run we record what it learned
# (the held-out comedy loss) and what it forgot (the held-out loss on the base's own histories and
# tragedies), on the course's fixed held-out windows, with paired ±2 standard errors; then we
# read samples before and after and count whose names the model now writes. The prose is in
# [chapter 07](../chapters/07-lora-on-the-transformer.md).

# %%
import os
FAST = os.environ.get("TINYLORA_FAST") == "1"
print("TINYLORA_FAST =", int(FAST), "(smoke test)" if FAST else "(full run)")

# %%
# no output: imports and seeds
import re
import tempfile
import time
from collections import Counter
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
from threadpoolctl import threadpool_limits

import tinylora as tl
from tinylora import lora, optim
from tinylora.bases import load_base
from tinylora.data import WindowSampler, load_shakespeare, load_text
from tinylora.evaluate import heldout_set, paired_diff, window_losses
from tinylora.io import save_weights
from tinylora.train import train

threadpool_limits(1)  # one BLAS thread: on a shared 2-core machine extra threads only contend
np.set_printoptions(precision=4, suppress=True)
tl.manual_seed(0)

# %% [markdown]
# ## 1. The base, the new genre, the settings
#
# The base is `load_base("shakespeare")`, trained on histories, tragedies, problem plays, Roman
# plays and romances. The new task is the comedies: `load_shakespeare(("comedies",),
# tokenizer=base.tokenizer)` encodes them with the base's own tokenizer; training windows come
# from the first 90% of every comedy.
#
# Every score is on the course's fixed held-out sets (`tinylora.evaluate.heldout_set`): 512
# windows of 64 characters, evenly spaced over the last 10% of every play of a genre, the same
# windows in every chapter. The comedies' set measures learning; the histories' and tragedies'
# sets (text the base never trained on, from genres it did) measure forgetting. Losses are kept
# window by window, so two models are compared on the same windows with a paired ±2 standard
# error.
#
# Every run below uses the same settings: windows of 64 characters, 16 windows a step, drawn by a
# `WindowSampler` with seed 0 (so every run sees exactly the same batches), AdamW without weight
# decay, a constant learning rate, 400 steps.

# %%
BLOCK, BATCH = 64, 16
STEPS = 3 if FAST else 400
EVAL_EVERY = 3 if FAST else 200
N_EVAL = 64 if FAST else 512
QV = ("q_proj", "v_proj")
ALL = ("q_proj", "k_proj", "v_proj", "o_proj", "up_proj", "down_proj")
MLP = ("up_proj", "down_proj")
ALPHA = 16  # alpha fixed (Hu et al. 2021): scaling alpha / r
print(f"windows of {BLOCK} characters, batch {BATCH}, {STEPS} steps per run; held-out sets of {N_EVAL} windows; "
      f"LoRA alpha = {ALPHA} at every rank")

base = load_base("shakespeare")
tok, card = base.tokenizer, base.card
comedies = load_shakespeare(("comedies",), tokenizer=tok)
print(comedies)
print(f"base: {card['parameters']:,} parameters, trained on {', '.join(card['data']['genres'])}")

GENRES = ("comedies", "histories", "tragedies")
EVAL = {g: heldout_set(g, block_size=BLOCK, n=N_EVAL) for g in GENRES}


def scores(m):
    """Per-window held-out losses of model m on each genre's fixed set."""
    return {g: window_losses(m, *EVAL[g]) for g in GENRES}


def own(sc):
    """The base's own genres: histories and tragedies windows together."""
    return np.concatenate([sc["histories"], sc["tragedies"]])


base_scores = scores(base.model)
before = float(base_scores["comedies"].mean())
before_own = float(own(base_scores).mean())
print(f"base, before any training: held-out loss comedies {before:.4f}, histories {base_scores['histories'].mean():.4f}, "
      f"tragedies {base_scores['tragedies'].mean():.4f} (own genres together {before_own:.4f})")
print(f"2 standard errors of the base's comedy mean over {N_EVAL} windows (unpaired): "
      f"{2 * base_scores['comedies'].std(ddof=1) / np.sqrt(N_EVAL):.4f}")

# %% [markdown]
# ## 2. Where adapters can go
#
# Each block has six Linear layers: q_proj, k_proj, v_proj, o_proj (C×C each, C = 128) and
# up_proj (C → 4C), down_proj (4C → C). A rank-r adapter on a layer with `in` inputs and `out`
# outputs adds r·(in + out) parameters. The three placements we compare, at r = 8 on all four
# blocks:

# %%
cfg = base.model.config
C, L = cfg.n_embd, cfg.n_layer
shapes = {"q_proj": (C, C), "k_proj": (C, C), "v_proj": (C, C), "o_proj": (C, C), "up_proj": (C, 4 * C), "down_proj": (4 * C, C)}
PLACEMENTS = {"q,v": QV, "all linear": ALL, "MLP only": MLP}
for label, targets in PLACEMENTS.items():
    n = L * sum(8 * (shapes[t][0] + shapes[t][1]) for t in targets)
    print(f"{label:11s} ({', '.join(targets)}): {L} blocks x "
          f"{' + '.join(f'8*({shapes[t][0]}+{shapes[t][1]})' for t in targets)} = {n:,} parameters "
          f"({n / card['parameters']:.2%} of the base)")

# %% [markdown]
# `apply_lora` wraps each matching layer; the report shows, per module, what stays frozen and what
# trains. Here for all linear layers at r = 8 (embeddings, LayerNorms and the tied `lm_head` stay
# frozen, and so do the biases):

# %%
probe = load_base("shakespeare").model
lora.apply_lora(probe, lora.LoRAConfig(r=8, alpha=ALPHA, target_modules=ALL))
print(lora.parameter_report(probe))
print(lora.count_parameters(probe))
del probe

# %% [markdown]
# ## 3. alpha, the rank and the learning rate
#
# LoRA's update is s · B A with s = α/r. B starts at zero, and Adam moves each of its entries by
# about one learning rate per step, so the part of s B A that follows the gradient starts growing
# like s · r · lr (chapter 05 measures this on the digits). With α fixed, s · r = α: the early
# update has the same size at every rank, and Hu et al. (2021) fix α so that the learning rate
# need not be retuned when r changes. With α = 2r (s = 2 at every rank) the early update grows
# with r, and the best learning rate should fall as r grows.
#
# A grid of full 400-step runs tests this on the transformer: LoRA on q and v at r = 1, 8 and 32
# with α fixed at 16, at three learning rates; and r = 32 with α = 2r = 64 (the same s = 2 as
# r = 8), the scaling this chapter used before. Every LoRA and full fine-tuning run is cached,
# so the sections below reuse these runs.

# %%
cache = {}


def run(targets=QV, r=8, alpha=ALPHA, lr=3e-3, seed=0):
    """Full fine-tuning (targets=None) or LoRA, from a fresh base with the same batches; cached."""
    key = (targets, r if targets else None, alpha if targets else None, lr, seed)
    if key in cache:
        return cache[key]
    model = load_base("shakespeare").model
    tl.manual_seed(seed)
    if targets is None:
        model.requires_grad_(True)
    else:
        lora.apply_lora(model, lora.LoRAConfig(r=r, alpha=alpha, target_modules=targets))
    counts = lora.count_parameters(model)
    opt = optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    sampler = WindowSampler(comedies.train, BLOCK, BATCH, seed=seed)
    eval_seconds = []

    def timed_eval(m):
        t = time.perf_counter()
        out = {"loss": float(window_losses(m, *EVAL["comedies"]).mean())}
        eval_seconds.append(time.perf_counter() - t)
        return out

    t0 = time.perf_counter()
    hist = train(model, opt, sampler.sample, STEPS, eval_fn=timed_eval, eval_every=EVAL_EVERY, seed=seed, progress=False)
    seconds = time.perf_counter() - t0
    model.eval()
    with tempfile.TemporaryDirectory() as tmp:
        if targets is None:
            file_bytes = save_weights(model.state_dict(), Path(tmp) / "model.safetensors").stat().st_size
        else:
            file_bytes = lora.save_adapter(model, tmp)["weights_bytes"]
    sc = scores(model)
    cache[key] = res = dict(
        model=model, history=hist, trainable=counts["trainable"], lr=lr, targets=targets, r=r,
        alpha=alpha, step_ms=1000 * (seconds - sum(eval_seconds)) / STEPS, file_bytes=file_bytes,
        state_bytes=opt.state_bytes(), scores=sc, final=float(sc["comedies"].mean()),
        gain=paired_diff(base_scores["comedies"], sc["comedies"]),  # base - run: what it learned
        forgot=paired_diff(own(sc), own(base_scores)),  # run - base on its own genres: what it lost
    )
    return res


GRID_LRS = [1e-3, 3e-3] if FAST else [1e-3, 3e-3, 1e-2]
GRID_RANKS = [1, 8] if FAST else [1, 8, 32]
print(f"{'LoRA q,v':22s} " + " ".join(f"{'lr ' + format(lr, 'g'):>9s}" for lr in GRID_LRS) + "   best lr")
best_lr = {}
for r, alpha in [(r, ALPHA) for r in GRID_RANKS] + [(GRID_RANKS[-1], 2 * GRID_RANKS[-1])]:
    losses = [run(QV, r, alpha, lr)["final"] for lr in GRID_LRS[: 2 if alpha != ALPHA else None]]
    best_lr[r, alpha] = GRID_LRS[int(np.argmin(losses))]
    print(f"{f'r={r}, alpha={alpha} (s={alpha / r:g})':22s} " + " ".join(f"{v:9.4f}" for v in losses)
          + ("" if alpha == ALPHA else f" {'-':>9s}" * (len(GRID_LRS) - 2)) + f"   {best_lr[r, alpha]:g}")
LR_LORA = best_lr[8, ALPHA]
for r in GRID_RANKS:
    d, se = paired_diff(run(QV, r, ALPHA, GRID_LRS[0])["scores"]["comedies"], run(QV, r, ALPHA, LR_LORA)["scores"]["comedies"])
    print(f"r={r}, alpha={ALPHA}: loss at lr {GRID_LRS[0]:g} minus loss at lr {LR_LORA:g}: {d:+.4f} ± {se:.4f}")
r_big = GRID_RANKS[-1]
d, se = paired_diff(run(QV, r_big, 2 * r_big, GRID_LRS[0])["scores"]["comedies"], run(QV, r_big, 2 * r_big, LR_LORA)["scores"]["comedies"])
print(f"r={r_big}, alpha={2 * r_big}: loss at lr {GRID_LRS[0]:g} minus loss at lr {LR_LORA:g}: {d:+.4f} ± {se:.4f}")
print(f"LoRA learning rate from here on: {LR_LORA:g} (best at r = 8), alpha = {ALPHA} at every rank")

# %% [markdown]
# ## 4. The runs: ranks, placements, full fine-tuning at several learning rates
#
# The rank sweep on q and v (r = 1 to 32, α = 16, one learning rate); LoRA at r = 8 on all linear
# layers and on the MLP only, each at two learning rates (it has more parameters than q, v, and
# its best rate need not be the same); and full fine-tuning at three learning rates, 1e-4 to 1e-3.
# The best full fine-tuning and the best all-linear adapter also run with a second seed (other
# batches, another draw of A), since the difference between them is small.

# %%
RANKS = [1, 8] if FAST else [1, 2, 4, 8, 16, 32]
FULL_LRS = [1e-4, 3e-4] if FAST else [1e-4, 3e-4, 1e-3]
PLACE_LRS = [1e-3, 3e-3]
for r in RANKS:
    run(QV, r, ALPHA, LR_LORA)
for targets in (ALL, MLP):
    for lr in PLACE_LRS:
        run(targets, 8, ALPHA, lr)
for lr in FULL_LRS:
    run(None, lr=lr)
LR_FULL = min(FULL_LRS, key=lambda lr: run(None, lr=lr)["final"])
LR_ALL = min(PLACE_LRS, key=lambda lr: run(ALL, 8, ALPHA, lr)["final"])
LR_MLP = min(PLACE_LRS, key=lambda lr: run(MLP, 8, ALPHA, lr)["final"])
results = {"full fine-tuning": run(None, lr=LR_FULL)}
for r in RANKS:
    results[f"LoRA q,v r={r}"] = run(QV, r, ALPHA, LR_LORA)
results["LoRA MLP only r=8"] = run(MLP, 8, ALPHA, LR_MLP)
results["LoRA all linear r=8"] = run(ALL, 8, ALPHA, LR_ALL)
print(f"best learning rates: full fine-tuning {LR_FULL:g} (of {', '.join(map(str, FULL_LRS))}), "
      f"all linear {LR_ALL:g}, MLP only {LR_MLP:g} (of {', '.join(map(str, PLACE_LRS))})")
for (targets, r, alpha, lr, seed), res in cache.items():
    name = "full fine-tuning" if targets is None else f"LoRA {dict((v, k) for k, v in PLACEMENTS.items())[targets]} r={r}, alpha={alpha}"
    print(f"{name:30s} lr {lr:<6g} held-out comedy loss {before:.4f} -> {res['final']:.4f}  "
          f"gain {res['gain'][0]:.4f} ± {res['gain'][1]:.4f}  own genres {res['forgot'][0]:+.4f} ± {res['forgot'][1]:.4f}  "
          f"({res['step_ms']:.0f} ms/step)")

# %% [markdown]
# Two seeds where the difference is small: the best all-linear adapter against the best full
# fine-tuning.

# %%
SEEDS = [0] if FAST else [0, 1]
for seed in SEEDS:
    a, b = run(ALL, 8, ALPHA, LR_ALL, seed=seed), run(None, lr=LR_FULL, seed=seed)
    d, se = paired_diff(a["scores"]["comedies"], b["scores"]["comedies"])
    print(f"seed {seed}: all linear r=8 {a['final']:.4f}, full fine-tuning {b['final']:.4f}; "
          f"all linear minus full: {d:+.4f} ± {se:.4f}")
two = {m: np.mean([run(*args, seed=s)["scores"]["comedies"] for s in SEEDS], axis=0)
       for m, args in (("all", (ALL, 8, ALPHA, LR_ALL)), ("full", (None, 8, ALPHA, LR_FULL)))}
d, se = paired_diff(two["all"], two["full"])
print(f"mean of {len(SEEDS)} seeds: all linear minus full fine-tuning {d:+.4f} ± {se:.4f}")

# %%
def curve(res):
    hh = res["history"]
    return [0] + hh.column("step"), [before] + hh.column("eval_loss")


fig, axes = plt.subplots(1, 2, figsize=(13, 4.5), sharey=True)
full_style = dict(color="black", lw=2.2, label=f"full fine-tuning (lr {LR_FULL:g})")
axes[0].plot(*curve(results["full fine-tuning"]), **full_style)
for label in PLACEMENTS:
    name = f"LoRA {label} r=8"
    axes[0].plot(*curve(results[name]), marker="o", ms=3,
                 label=f"{name} ({results[name]['trainable']:,} params, lr {results[name]['lr']:g})")
axes[0].set_title(f"Where the adapters go (r = 8, alpha = {ALPHA})")
axes[1].plot(*curve(results["full fine-tuning"]), **full_style)
for r in RANKS:
    name = f"LoRA q,v r={r}"
    axes[1].plot(*curve(results[name]), marker="o", ms=3, label=f"r={r} ({results[name]['trainable']:,} params)")
axes[1].set_title(f"Rank sweep on q and v (alpha = {ALPHA}, lr {LR_LORA:g})")
for ax in axes:
    ax.axhline(before, color="gray", ls=":", lw=1)
    ax.set_xlabel("step"); ax.set_ylabel("held-out comedy loss (nats per character)")
    ax.grid(alpha=0.3); ax.legend(fontsize=8)
fig.suptitle(f"Adapting the Shakespeare base to the comedies: same base, seed, batches and {STEPS} steps")
plt.tight_layout(); plt.show()

# %%
fig, ax = plt.subplots(figsize=(7, 4.5))
xs = [results[f"LoRA q,v r={r}"]["trainable"] for r in RANKS]
ys = [results[f"LoRA q,v r={r}"]["final"] for r in RANKS]
es = [results[f"LoRA q,v r={r}"]["gain"][1] for r in RANKS]
ax.errorbar(xs, ys, yerr=es, fmt="o-", capsize=3, label=f"LoRA on q, v (r = 1 ... 32, alpha {ALPHA})")
for r, xv, yv in zip(RANKS, xs, ys):
    ax.annotate(f"r={r}", (xv, yv), textcoords="offset points", xytext=(-6, 7), fontsize=8)
for label, marker in (("all linear", "^"), ("MLP only", "v")):
    res = results[f"LoRA {label} r=8"]
    ax.errorbar(res["trainable"], res["final"], yerr=res["gain"][1], fmt=marker, ms=9, capsize=3, label=f"LoRA {label}, r = 8")
full = results["full fine-tuning"]
ax.errorbar(full["trainable"], full["final"], yerr=full["gain"][1], fmt="s", color="black", ms=8, capsize=3, label="full fine-tuning")
ax.axhline(before, color="gray", ls=":", label="base, before training")
ax.set_xscale("log"); ax.set_xlabel("trainable parameters (log scale)")
ax.set_ylabel(f"held-out comedy loss after {STEPS} steps")
ax.set_title("Trainable parameters against the loss they reach (bars: paired ±2 SE vs the base)")
ax.grid(alpha=0.3, which="both"); ax.legend(fontsize=8)
plt.tight_layout(); plt.show()

# %% [markdown]
# ## 5. Learning against forgetting
#
# Biderman et al. (2024) put it in their title: "LoRA learns less and forgets less". Every run
# above, as a point: how much it learned (the drop of the held-out comedy loss from the base's)
# against how much it forgot (the rise of the held-out loss on the base's own histories and
# tragedies, 1024 windows together). Lines join the same method at different learning rates, or
# q and v at different ranks; bars are paired ±2 standard errors.

# %%
fig, ax = plt.subplots(figsize=(8.5, 5.2))
families = {
    "full fine-tuning (lr 1e-4 ... 1e-3)": [run(None, lr=lr) for lr in FULL_LRS],
    f"LoRA q,v r=8 (lr {GRID_LRS[0]:g} ... {GRID_LRS[-1]:g})": [run(QV, 8, ALPHA, lr) for lr in GRID_LRS],
    f"LoRA q,v, lr {LR_LORA:g} (r = 1 ... 32)": [run(QV, r, ALPHA, LR_LORA) for r in RANKS],
    "LoRA all linear r=8 (lr 1e-3, 3e-3)": [run(ALL, 8, ALPHA, lr) for lr in PLACE_LRS],
    "LoRA MLP only r=8 (lr 1e-3, 3e-3)": [run(MLP, 8, ALPHA, lr) for lr in PLACE_LRS],
}
for (label, runs), style in zip(families.items(), ("s-", "o--", "o-", "^-", "v-")):
    ax.errorbar([x["gain"][0] for x in runs], [x["forgot"][0] for x in runs], xerr=[x["gain"][1] for x in runs],
                yerr=[x["forgot"][1] for x in runs], fmt=style, capsize=2, ms=6, label=label,
                color="black" if label.startswith("full") else None)
for lr, x in zip(FULL_LRS, families["full fine-tuning (lr 1e-4 ... 1e-3)"]):
    ax.annotate(f"lr {lr:g}", (x["gain"][0], x["forgot"][0]), textcoords="offset points", xytext=(5, -10), fontsize=7)
ax.axhline(0, color="gray", lw=0.8)
ax.set_xlabel("learned: held-out comedy loss, base minus run (nats per character)")
ax.set_ylabel("forgot: own-genre held-out loss, run minus base")
ax.set_title("Learning against forgetting (Biderman et al. 2024), every run of this notebook")
ax.grid(alpha=0.3); ax.legend(fontsize=7, loc="upper left")
plt.tight_layout(); plt.show()

print(f"{'run':34s} {'learned (comedies)':>20s} {'histories':>18s} {'tragedies':>18s}")
for label, runs in families.items():
    for x in runs:
        hist_ = paired_diff(x["scores"]["histories"], base_scores["histories"])
        trag_ = paired_diff(x["scores"]["tragedies"], base_scores["tragedies"])
        name = "full FT" if x["targets"] is None else dict((v, k) for k, v in PLACEMENTS.items())[x["targets"]] + f" r={x['r']}"
        print(f"{name + ', lr ' + format(x['lr'], 'g'):34s} {x['gain'][0]:+9.4f} ± {x['gain'][1]:.4f} "
              f"{hist_[0]:+9.4f} ± {hist_[1]:.4f} {trag_[0]:+9.4f} ± {trag_[1]:.4f}")
# %% [markdown]
# ## 6. Samples before and after, and whose names they use
#
# The same prompt and seed for the base and four adapted models. A character-level model shows
# its genre most plainly in the speaker names it writes: we generate 8 samples from each model and
# sort the speaker lines they contain into names that occur only in the comedies, names that occur
# only in the base's genres, names found in both, and invented ones.

# %%
SPEAKER = re.compile(r"(?:^|\n\n)([A-Za-z][A-Za-z' .-]{1,30}):\n")
comedy_names = set(SPEAKER.findall(load_text("comedies")))
own_names = set(SPEAKER.findall(load_text(tuple(card["data"]["genres"]))))
print(f"speaker names: {len(comedy_names)} in the comedies, {len(own_names)} in the base's genres, "
      f"{len(comedy_names & own_names)} in both")


def kind(name):
    if name in comedy_names and name not in own_names:
        return "comedy only"
    if name in own_names and name not in comedy_names:
        return "base genres only"
    return "both" if name in comedy_names else "invented"


models = {"base": load_base("shakespeare").model}
for name in ("LoRA q,v r=8", "LoRA MLP only r=8", "LoRA all linear r=8", "full fine-tuning"):
    models[name] = results[name]["model"]
prompt = tok.encode("\n\n")
n_samples, n_new = (2, 30) if FAST else (8, 400)
name_counts = {}
for name, m in models.items():
    out = m.generate(np.repeat(prompt[None], n_samples, axis=0), n_new, temperature=0.8, top_k=20, seed=0)
    texts = [tok.decode(row) for row in out]
    found = [s for t in texts for s in SPEAKER.findall(t)]
    name_counts[name] = Counter(kind(s) for s in found)
    print(f"=== {name}: first sample (temperature 0.8, top_k 20, seed 0) ===")
    print(texts[0].strip()[:400])
    print(f"speaker names in {n_samples} samples: {len(found)}; {dict(name_counts[name])}")
    print(f"names: {', '.join(sorted(set(found))[:25])}\n")

# %%
kinds = ["comedy only", "both", "base genres only", "invented"]
fig, ax = plt.subplots(figsize=(9.5, 4.2))
left = np.zeros(len(models))
for kd in kinds:
    vals = np.array([name_counts[n][kd] / max(1, sum(name_counts[n].values())) for n in models])
    ax.barh(list(models), vals, left=left, label=kd)
    left += vals
ax.set_xlabel("share of the speaker lines in the samples"); ax.invert_yaxis()
ax.set_title("Whose names the model writes, before and after adapting to the comedies")
ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1))
plt.tight_layout(); plt.show()

# %% [markdown]
# ## 7. Time per step, side by side
#
# Other jobs shared this 2-core machine while the runs above went one after another, so their
# wall times per step are not comparable. Here every method takes training steps on the same batch,
# interleaved: in each of 3 rounds, 10 steps of every method in turn. A method's time is its
# fastest round (the one least disturbed by other jobs).

# %%
TIME_STEPS, ROUNDS = (1, 1) if FAST else (10, 3)
xb, yb = WindowSampler(comedies.train, BLOCK, BATCH, seed=1).sample()


def timed_model(res):
    m = load_base("shakespeare").model
    if res["targets"] is None:
        m.requires_grad_(True)
    else:
        lora.apply_lora(m, lora.LoRAConfig(r=res["r"], alpha=res["alpha"], target_modules=res["targets"]))
    m.train()
    return m, optim.AdamW(m.parameters(), lr=res["lr"], weight_decay=0.0)


def one_step(m, opt):
    _, loss = m(xb, yb)
    opt.zero_grad()
    loss.backward()
    opt.step()


timers = {name: timed_model(res) for name, res in results.items()}
times = {name: [] for name in results}
for m, opt in timers.values():
    one_step(m, opt)  # warm-up: first-touch allocations
for _ in range(ROUNDS):
    for name, (m, opt) in timers.items():
        t = time.perf_counter()
        for _ in range(TIME_STEPS):
            one_step(m, opt)
        times[name].append(1000 * (time.perf_counter() - t) / TIME_STEPS)
full_ms = min(times["full fine-tuning"])
for name in results:
    results[name]["bench_ms"] = min(times[name])
    print(f"{name:22s} {min(times[name]):6.1f} ms/step  ({min(times[name]) / full_ms:.2f} x full fine-tuning)   "
          f"rounds: {', '.join(f'{t:.0f}' for t in times[name])}")
del timers

# %% [markdown]
# ## 8. Summary
#
# The headline numbers of this chapter. Adapter bytes are the size of `adapter_model.safetensors`
# as written by `lora.save_adapter` (A and B in float32 plus a small header); for full fine-tuning
# it is the whole `state_dict` written with `save_weights`. "Gain" is the base's held-out comedy
# loss minus the run's, with paired ±2 SE over the 512 windows; "share" is that gain divided by
# full fine-tuning's; "own genres" is the change of the held-out loss on the histories and
# tragedies (positive: forgotten). Step times are section 7's, on this 2-core CPU.

# %%
print(f"Comedies, {STEPS} steps of {BATCH} windows x {BLOCK} characters, AdamW (no weight decay), seed 0; "
      f"LoRA alpha = {ALPHA}")
print(f"base before training: held-out comedy loss {before:.4f}, own genres {before_own:.4f}")
full_gain = results["full fine-tuning"]["gain"][0]
header = (f"| {'method':22s} | {'lr':>6s} | {'trainable params':>16s} | {'% of base':>9s} | {'file bytes':>10s} | "
          f"{'held-out loss':>13s} | {'gain ± 2 SE':>15s} | {'share of full FT gain':>21s} | {'own genres ± 2 SE':>17s} | "
          f"{'ms/step':>7s} | {'Adam state bytes':>16s} |")
print(header)
print("|" + "|".join("-" * len(c) for c in header.split("|")[1:-1]) + "|")
print(f"| {'base, no training':22s} | {'-':>6s} | {0:16d} | {0:8.2f}% | {card['file_bytes']:10,d} | {before:13.4f} | {'':>15s} | "
      f"{'':>21s} | {'':>17s} | {'-':>7s} | {0:16d} |")
for name, res in results.items():
    g_, f_ = res["gain"], res["forgot"]
    print(f"| {name:22s} | {res['lr']:6g} | {res['trainable']:16,d} | {100 * res['trainable'] / card['parameters']:8.2f}% | "
          f"{res['file_bytes']:10,d} | {res['final']:13.4f} | {f'{g_[0]:.4f} ± {g_[1]:.4f}':>15s} | "
          f"{g_[0] / full_gain:21.0%} | {f'{f_[0]:+.4f} ± {f_[1]:.4f}':>17s} | {res['bench_ms']:7.1f} | {res['state_bytes']:16,d} |")

# %% [markdown]
# ## 9. Try it
#
# 1. Run the rank sweep with α = 2r instead (`run(QV, r, 2 * r, LR_LORA)`): at which rank does
#    one learning rate stop suiting it?
# 2. Put the adapters on the attention output and the MLP down projection only
#    (`("o_proj", "down_proj")`, the layers that write into the residual stream): where does that
#    point land on the learning-against-forgetting plot?
# 3. Evaluate on the problem plays or romances (`heldout_set("romances")`): does forgetting look
#    the same on genres the base trained on but this chapter did not measure?

# %%
# Try it 1: the rank sweep with alpha = 2r at the rate tuned for alpha fixed (the same run at r = 8)
for r in RANKS:
    fixed, doubled = run(QV, r, ALPHA, LR_LORA), run(QV, r, 2 * r, LR_LORA)
    d, se = paired_diff(doubled["scores"]["comedies"], fixed["scores"]["comedies"])
    print(f"r = {r:>2}: alpha fixed {fixed['final']:.4f}, alpha = 2r {doubled['final']:.4f} (difference {d:+.4f} ± {se:.4f})")

# %%
# Try it 2: adapters on o_proj and down_proj only, at the q,v learning rate
res = run(("o_proj", "down_proj"), 8, ALPHA, LR_LORA)
print(f"o_proj + down_proj r=8: learned {res['gain'][0]:.4f} ± {res['gain'][1]:.4f}, "
      f"own genres {res['forgot'][0]:+.4f} ± {res['forgot'][1]:.4f}, {res['trainable']:,} parameters")

# %%
# Try it 3: forgetting on a genre this chapter did not measure (the romances, which the base trained on)
romances = heldout_set("romances", block_size=BLOCK, n=N_EVAL)
base_rom = window_losses(load_base("shakespeare").model, *romances)
for name, res in (("full FT", run(None, lr=LR_FULL)), ("q,v r=8", run(QV, 8, ALPHA, LR_LORA)),
                  ("all linear r=8", run(ALL, 8, ALPHA, LR_ALL))):
    d, se = paired_diff(window_losses(res["model"], *romances), base_rom)
    print(f"{name:>15}: romances {d:+.4f} ± {se:.4f} (histories + tragedies {res['forgot'][0]:+.4f} ± {res['forgot'][1]:.4f})")

