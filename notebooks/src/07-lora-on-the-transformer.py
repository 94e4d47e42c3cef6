# %% [markdown]
# # 07 · LoRA on the transformer
#
# The Shakespeare base of chapter 06 never saw a comedy. Here we adapt it to the comedies with
# LoRA and compare, from the same base, seed, batches and number of steps: where the adapters go
# (q and v, all linear layers, the MLP only) at a fixed rank, a rank sweep on q and v, and full
# fine-tuning as the reference. For each run we record the held-out comedy loss as training goes,
# the trainable parameters, the size of the file it leaves, and the time per step; then we read
# samples before and after and count whose names the model now writes. The prose is in
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

import tinylora as tl
from tinylora import lora, optim
from tinylora.bases import load_base
from tinylora.data import WindowSampler, load_shakespeare, load_text
from tinylora.io import save_weights
from tinylora.train import evaluate_lm, train

np.set_printoptions(precision=4, suppress=True)
tl.manual_seed(0)

# %% [markdown]
# ## 1. The base, the new genre, the settings
#
# The base is `load_base("shakespeare")`, trained on histories, tragedies, problem plays, Roman
# plays and romances. The new task is the comedies: `load_shakespeare(("comedies",),
# tokenizer=base.tokenizer)` encodes them with the base's own tokenizer, and keeps the last 10%
# of every comedy as the held-out text we measure on; training windows come from the first 90%.
#
# Every run below uses the same settings: windows of 64 characters, 16 windows a step, drawn by a
# `WindowSampler` with seed 0 (so every run sees exactly the same batches), AdamW without weight
# decay, a constant learning rate, and the held-out loss measured every 50 steps on the same 8
# batches of 32 windows.

# %%
BLOCK, BATCH = 64, 16
STEPS = 3 if FAST else 400
EVAL_EVERY = 3 if FAST else 50
EVAL_BATCHES = 1 if FAST else 8
TRIAL_STEPS = 3 if FAST else 100
LR_LORA, LR_FULL = 1e-3, 1e-4  # chosen by the trial of section 3 and the full-length check of section 4
QV = ("q_proj", "v_proj")
ALL = ("q_proj", "k_proj", "v_proj", "o_proj", "up_proj", "down_proj")
MLP = ("up_proj", "down_proj")
print(f"windows of {BLOCK} characters, batch {BATCH}, {STEPS} steps per run, held-out loss every {EVAL_EVERY} steps "
      f"on {EVAL_BATCHES} batches of 32 windows")
print(f"learning rates: LoRA {LR_LORA}, full fine-tuning {LR_FULL}; LoRA alpha = 2r (scaling alpha/r = 2 at every rank)")

base = load_base("shakespeare")
tok, card = base.tokenizer, base.card
comedies = load_shakespeare(("comedies",), tokenizer=tok)
own = load_shakespeare(tuple(card["data"]["genres"]), tokenizer=tok)
print(comedies)
print(f"base: {card['parameters']:,} parameters, trained on {', '.join(card['data']['genres'])}")


def comedy_loss(m):
    return evaluate_lm(m, comedies.val, BLOCK, batch_size=32, batches=EVAL_BATCHES)


before = comedy_loss(base.model)["loss"]
before_own = evaluate_lm(base.model, own.val, BLOCK, batch_size=32, batches=EVAL_BATCHES)["loss"]
print(f"base, before any training: held-out comedy loss {before:.4f}, own-genre held-out loss {before_own:.4f} "
      f"(64-character windows)")

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
lora.apply_lora(probe, lora.LoRAConfig(r=8, alpha=16, target_modules=ALL))
print(lora.parameter_report(probe))
print(lora.count_parameters(probe))
del probe

# %% [markdown]
# ## 3. A short trial of learning rates
#
# Before the long runs, a trial of 100 steps: LoRA on q and v at r = 8 (alpha = 16) at four
# learning rates, and full fine-tuning at four. Too small a rate moves too slowly; too large a
# rate first damages a model that is already good. A short trial has a bias, though: it rewards
# the rate that gains most *early*, and a larger rate often leads early and ends no better.
# So section 4 also runs the trial's winners for the whole 400 steps.

# %%
def run(config=None, lr=LR_LORA, steps=STEPS, eval_every=EVAL_EVERY):
    """Full fine-tuning (config=None) or LoRA with `config`, from a fresh base, same seed and batches."""
    model = load_base("shakespeare").model
    tl.manual_seed(0)
    if config is None:
        model.requires_grad_(True)
    else:
        lora.apply_lora(model, config)
    counts = lora.count_parameters(model)
    opt = optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    sampler = WindowSampler(comedies.train, BLOCK, BATCH, seed=0)
    eval_seconds = []

    def timed_eval(m):
        t = time.perf_counter()
        out = comedy_loss(m)
        eval_seconds.append(time.perf_counter() - t)
        return out

    t0 = time.perf_counter()
    hist = train(model, opt, sampler.sample, steps, eval_fn=timed_eval, eval_every=eval_every, seed=0, progress=False)
    seconds = time.perf_counter() - t0
    model.eval()
    with tempfile.TemporaryDirectory() as tmp:
        if config is None:
            file_bytes = save_weights(model.state_dict(), Path(tmp) / "model.safetensors").stat().st_size
        else:
            file_bytes = lora.save_adapter(model, tmp)["weights_bytes"]
    return dict(model=model, history=hist, trainable=counts["trainable"], lr=lr, config=config,
                step_ms=1000 * (seconds - sum(eval_seconds)) / steps, seconds=seconds,
                file_bytes=file_bytes, state_bytes=opt.state_bytes(), final=hist.final["eval_loss"])


trial = {}
for lr in (3e-4, 1e-3, 3e-3, 1e-2):
    trial[("LoRA q,v r=8", lr)] = run(lora.LoRAConfig(r=8, alpha=16, target_modules=QV), lr, TRIAL_STEPS, TRIAL_STEPS)
for lr in (3e-5, 1e-4, 3e-4, 1e-3):
    trial[("full fine-tuning", lr)] = run(None, lr, TRIAL_STEPS, TRIAL_STEPS)
for (name, lr), res in trial.items():
    print(f"trial, {TRIAL_STEPS} steps: {name:17s} lr {lr:<7g} held-out comedy loss {before:.4f} -> {res['final']:.4f}")
for family in ("LoRA q,v r=8", "full fine-tuning"):
    best_lr = min((lr for n, lr in trial if n == family), key=lambda lr: trial[(family, lr)]["final"])
    print(f"lowest after {TRIAL_STEPS} steps, {family}: lr {best_lr:g}")

# %% [markdown]
# ## 4. The runs
#
# Nine runs of 400 steps each, from a fresh base every time: full fine-tuning; LoRA on q and v at
# r = 1, 2, 4, 8, 16, 32; LoRA at r = 8 on all linear layers and on the MLP only. All LoRA runs use
# alpha = 2r, so the scaling alpha/r is 2 at every rank, and one learning rate (0.001). The wall
# time per step printed here excludes the evaluations, but the machine is shared with other jobs
# while the runs go on one after another; section 6 times the methods again, side by side.

# %%
RANKS = [1, 2, 4, 8, 16, 32]
results = {"full fine-tuning": run(None, LR_FULL)}
for r in RANKS:
    results[f"LoRA q,v r={r}"] = run(lora.LoRAConfig(r=r, alpha=2 * r, target_modules=QV))
for label, targets in PLACEMENTS.items():
    if label != "q,v":
        results[f"LoRA {label} r=8"] = run(lora.LoRAConfig(r=8, alpha=16, target_modules=targets))
for name, res in results.items():
    print(f"{name:22s} trainable {res['trainable']:7,d}  held-out comedy loss {before:.4f} -> {res['final']:.4f}  "
          f"{res['step_ms']:.0f} ms/step  ({res['seconds']:.0f} s)")

# %%
def curve(res):
    h = res["history"]
    return [0] + h.column("step"), [before] + h.column("eval_loss")


fig, axes = plt.subplots(1, 2, figsize=(13, 4.5), sharey=True)
full_style = dict(color="black", lw=2.2, label="full fine-tuning")
axes[0].plot(*curve(results["full fine-tuning"]), **full_style)
for label in PLACEMENTS:
    name = f"LoRA {label} r=8"
    axes[0].plot(*curve(results[name]), marker="o", ms=3, label=f"{name} ({results[name]['trainable']:,} params)")
axes[0].set_title("Where the adapters go (r = 8, alpha = 16)")
axes[1].plot(*curve(results["full fine-tuning"]), **full_style)
for r in RANKS:
    name = f"LoRA q,v r={r}"
    axes[1].plot(*curve(results[name]), marker="o", ms=3, label=f"r={r} ({results[name]['trainable']:,} params)")
axes[1].set_title("Rank sweep on q and v (alpha = 2r)")
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
ax.plot(xs, ys, "o-", label="LoRA on q, v (r = 1 ... 32)")
for r, xv, yv in zip(RANKS, xs, ys):
    ax.annotate(f"r={r}", (xv, yv), textcoords="offset points", xytext=(-6, 7), fontsize=8)
for label, marker in (("all linear", "^"), ("MLP only", "v")):
    res = results[f"LoRA {label} r=8"]
    ax.plot(res["trainable"], res["final"], marker, ms=9, label=f"LoRA {label}, r = 8")
full = results["full fine-tuning"]
ax.plot(full["trainable"], full["final"], "s", color="black", ms=8, label="full fine-tuning")
ax.axhline(before, color="gray", ls=":", label="base, before training")
ax.set_xscale("log"); ax.set_xlabel("trainable parameters (log scale)")
ax.set_ylabel(f"held-out comedy loss after {STEPS} steps")
ax.set_title("Trainable parameters against the loss they reach")
ax.grid(alpha=0.3, which="both"); ax.legend(fontsize=8)
plt.tight_layout(); plt.show()

# %% [markdown]
# **Checking the learning rates over the whole run.** The trial of section 3 preferred larger
# rates after 100 steps (3e-3 for LoRA, 3e-4 for full fine-tuning). The same runs at those rates
# for all 400 steps, against the rates used above:

# %%
lr_check = {}
for name, config, lr in (("full fine-tuning", None, 3e-4),
                         ("LoRA q,v r=8", lora.LoRAConfig(r=8, alpha=16, target_modules=QV), 3e-3),
                         ("LoRA q,v r=32", lora.LoRAConfig(r=32, alpha=64, target_modules=QV), 3e-3)):
    res = run(config, lr)
    lr_check[name] = res
    print(f"{name:17s} after {STEPS} steps: lr {lr:g} -> {res['final']:.4f}   "
          f"lr {results[name]['lr']:g} -> {results[name]['final']:.4f}")
    del res["model"]

# %% [markdown]
# Full fine-tuning ends level at both rates. For LoRA the answer depends on the rank: with
# alpha = 2r the scaling is the same at every rank, but the same step on every entry of A and B
# moves their product B A (a sum of r rank-one pieces) further when r is larger, so the best rate
# falls as the rank grows. One rate for the whole sweep is a compromise; we keep 0.001.

# %% [markdown]
# Did adapting to comedies cost the base's own genres anything? The held-out loss on its own
# genres (the endings of the plays it trained on), before and after, for full fine-tuning and
# three adapters:

# %%
for name in ("full fine-tuning", "LoRA q,v r=8", "LoRA all linear r=8", "LoRA MLP only r=8"):
    after_own = evaluate_lm(results[name]["model"], own.val, BLOCK, batch_size=32, batches=EVAL_BATCHES)["loss"]
    print(f"{name:22s} own-genre held-out loss {before_own:.4f} -> {after_own:.4f} ({after_own - before_own:+.4f})")

# %% [markdown]
# ## 5. Samples before and after, and whose names they use
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
# ## 6. Time per step, side by side
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
    if res["config"] is None:
        m.requires_grad_(True)
    else:
        lora.apply_lora(m, res["config"])
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
# ## 7. Summary
#
# The headline numbers of this chapter. Adapter bytes are the size of `adapter_model.safetensors`
# as written by `lora.save_adapter` (A and B in float32 plus a small header); for full fine-tuning
# it is the whole `state_dict` written with `save_weights`. "Gain" is the base's loss minus the
# run's loss, and "share of full FT gain" is that gain divided by full fine-tuning's gain. Step
# times are section 6's, on this 2-core CPU: compare them with each other, not with other
# machines.

# %%
print(f"Comedies, {STEPS} steps of {BATCH} windows x {BLOCK} characters, AdamW (no weight decay), seed 0; "
      f"LoRA lr {LR_LORA} with alpha = 2r, full fine-tuning lr {LR_FULL}")
print(f"base before training: held-out comedy loss {before:.4f}")
full_gain = before - results["full fine-tuning"]["final"]
header = (f"| {'method':22s} | {'trainable params':>16s} | {'% of base':>9s} | {'file bytes':>10s} | "
          f"{'held-out loss':>13s} | {'gain':>6s} | {'share of full FT gain':>21s} | {'ms/step':>7s} | {'Adam state bytes':>16s} |")
print(header)
print("|" + "|".join("-" * len(c) for c in header.split("|")[1:-1]) + "|")
print(f"| {'base, no training':22s} | {0:16d} | {0:8.2f}% | {card['file_bytes']:10,d} | {before:13.4f} | {0:6.4f} | "
      f"{0:21.0%} | {'-':>7s} | {0:16d} |")
for name, res in results.items():
    print(f"| {name:22s} | {res['trainable']:16,d} | {100 * res['trainable'] / card['parameters']:8.2f}% | "
          f"{res['file_bytes']:10,d} | {res['final']:13.4f} | {before - res['final']:6.4f} | "
          f"{(before - res['final']) / full_gain:21.0%} | {res['bench_ms']:7.1f} | {res['state_bytes']:16,d} |")
gap = {n: res["final"] - results["full fine-tuning"]["final"] for n, res in results.items()}
best = min((n for n in results if n.startswith("LoRA")), key=lambda n: results[n]["final"])
print(f"best LoRA run: {best}, {gap[best]:.4f} nats/char above full fine-tuning, with "
      f"{results[best]['trainable'] / results['full fine-tuning']['trainable']:.1%} of its trainable parameters")
