# %% [markdown]
# # 09 · Many adapters, one base
#
# One frozen Shakespeare GPT, three small style adapters (comedies, histories, tragedies)
# trained the same way. We save each adapter to its own folder and compare the files with the
# base's, open them to see what they hold, load all three onto a single copy of the base, swap
# between them and measure each adapter on each genre, prove that swapping never touches the
# base's weights, merge one adapter in for inference and take it out again, and watch the
# adapter files refuse a base they were not trained on and a file that was cut short. Last, we
# take the comedies adapter to PyTorch and Hugging Face PEFT, and an adapter PEFT trained back.
# The prose is in [chapter 09](../chapters/09-many-adapters-one-base.md).

# %%
import os
FAST = os.environ.get("TINYLORA_FAST") == "1"
print("TINYLORA_FAST =", int(FAST), "(smoke test)" if FAST else "(full run)")

# %%
# no output: imports, seeds and the settings every adapter shares
import hashlib
import json
import shutil
import tempfile
import time
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
from safetensors.numpy import load_file
from threadpoolctl import threadpool_limits

import tinylora as tl
from tinylora import lora, optim
from tinylora.bases import ASSETS, FILES, load_base
from tinylora.data import WindowSampler, list_plays, load_play, load_shakespeare, train_val_split
from tinylora.evaluate import heldout_set, paired_diff, window_losses
from tinylora.io import load_weights, read_metadata, save_weights
from tinylora.models import GPT, GPTConfig
from tinylora.train import train

threadpool_limits(1)  # one BLAS thread: on a shared 2-core machine a second one only waits for a busy core
np.set_printoptions(precision=4, suppress=True, linewidth=110)
tl.manual_seed(0)

STYLES = ("comedies", "histories", "tragedies")
BLOCK, BATCH = 64, 16            # training windows of 64 characters, 16 windows a step
STEPS = 3 if FAST else 300       # optimizer steps per adapter
LR = 1e-3                        # AdamW, no weight decay (the main experiment)
LR_HIGH = 5e-3                   # the same histories adapter once more at this rate, to show why not
CURVE_EVERY = 1 if FAST else 25  # held-out loss every CURVE_EVERY steps, for the two histories runs
N_EVAL = 64 if FAST else 512     # the course's fixed held-out windows of each genre (tinylora.evaluate)
CONFIG = lora.LoRAConfig(r=8, alpha=16, target_modules=("q_proj", "k_proj", "v_proj", "o_proj"))
WORK = Path(tempfile.mkdtemp(prefix="tinylora-09-"))  # every file this notebook writes goes here
HELD = {g: heldout_set(g, block_size=BLOCK, n=N_EVAL) for g in STYLES}


def val_losses(model, genre) -> np.ndarray:
    """Next-character loss of each of the N_EVAL fixed held-out windows of `genre` (the same windows
    in every chapter: evenly spaced over the genre's validation text)."""
    return window_losses(model, *HELD[genre])


def val_loss(model, genre) -> float:
    return float(val_losses(model, genre).mean())


def base_hash(model) -> str:
    """sha256 of the base's weights only (adapters left out), named as in the plain model."""
    h = hashlib.sha256()
    for name, p in sorted(model.named_parameters()):
        if ".adapters." in name:
            continue
        h.update(name.replace(".base.", ".").encode())
        h.update(np.ascontiguousarray(tl.to_numpy(p.data)).tobytes())
    return h.hexdigest()


def best_ms(fn, reps: int) -> float:
    """The fastest of `reps` calls, in ms (the least disturbed by other work on the machine)."""
    fn()  # warm-up
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return 1000 * min(times)

# %% [markdown]
# ## 1. The base and the three genres
#
# `load_base("shakespeare")` is the character-level GPT that ships with tinylora (4 layers,
# width 128), pretrained on every genre except comedies. `load_shakespeare` splits every play on
# its own: its first 90% is training text, its last 10% validation text (ids from the base's
# tokenizer), and a genre's two parts are those of its plays put end to end. The adapters train
# only on the train part; every loss below is on the validation part.

# %%
base = load_base("shakespeare")
card = base.card
tok = base.tokenizer
base_file = ASSETS / f"{FILES['shakespeare']}.safetensors"
base_bytes = base_file.stat().st_size
print("base:", card["config"])
print(f"base parameters: {card['parameters']:,} | file {base_file.name}: {base_bytes:,} bytes")
print("pretrained on:", ", ".join(card["data"]["genres"]), "| held out:", card["data"]["held_out_genre"])
data = {g: load_shakespeare(g, tokenizer=tok) for g in STYLES}
for g in STYLES:
    print(f"{g:>10}: {len(data[g].train):>9,} train characters, {len(data[g].val):>8,} validation characters")

# %% [markdown]
# The base was pretrained with the same per-play split, so no validation text below was ever in
# its training text: checked, not assumed. We rebuild the base's split, then for each genre
# search the base's training text for the train part and the validation part of every play, and
# for every 64-character piece of the genre's validation text. (For histories and tragedies the
# train parts *are* in it: those adapters train on text the base has already read.)

# %%
pretrain = load_shakespeare(tuple(card["data"]["genres"]), tokenizer=tok)
print(f"base's split, rebuilt: {len(pretrain.train):,} train + {len(pretrain.val):,} validation characters "
      f"(its card: {card['data']['train_chars']:,} + {card['data']['val_chars']:,})")
pre_bytes = pretrain.train.astype(np.uint8).tobytes()


def found(ids) -> bool:
    """Does this run of ids occur, byte for byte, in the base's training text?"""
    return pre_bytes.find(ids.astype(np.uint8).tobytes()) >= 0


print(f"{'genre':>10} {'plays':>6} {'train parts found':>18} {'validation parts found':>23} "
      f"{'64-char validation pieces found':>32}")
for g in STYLES:
    splits = [train_val_split(tok.encode(load_play(p) + "\n")) for p in list_plays(g)]
    assert np.array_equal(np.concatenate([v for _, v in splits]), data[g].val)  # the genre's validation = the plays' tails
    pieces = [data[g].val[i:i + BLOCK] for i in range(0, len(data[g].val) - BLOCK + 1, BLOCK)]
    print(f"{g:>10} {len(splits):>6} {sum(found(t) for t, _ in splits):>18} {sum(found(v) for _, v in splits):>23} "
          f"{f'{sum(found(x) for x in pieces)} of {len(pieces):,}':>32}")
r = card["recipe"]
passes = r["steps"] * r["batch_size"] * card["config"]["block_size"] / len(pretrain.train)
print(f"the base read {r['steps']} x {r['batch_size']} windows of {card['config']['block_size']} characters: "
      f"about {passes:.1f} passes over its {len(pretrain.train):,} training characters")
m = card["metrics"]
print(f"base card: final train loss {m['final_train_loss']:.4f}, loss on its own held-out split {m['val_loss']:.4f}, "
      f"on comedies {m['comedies_loss']:.4f}")
del pretrain, pre_bytes

# %% [markdown]
# ## 2. Three adapters, trained the same way
#
# Each adapter starts from a **fresh copy** of the base. The recipe is identical for all three:
# LoRA with r = 8, α = 16 (scaling 2) on all four attention projections (`q_proj`, `k_proj`,
# `v_proj`, `o_proj`) of every block, the same seed (so the same initial A), 64-character
# windows, 16 windows a step, AdamW at lr 1e-3 without weight decay. Only the text differs.
# (Section 5 shows why 1e-3 and not 5e-3.) The histories adapter also measures its held-out loss
# every 25 steps on the way, for that comparison; the measurement does not change the training.

# %%
def train_adapter(g, lr, eval_every):
    """A fresh copy of the base with one adapter for genre g, trained by the shared recipe at `lr`;
    held-out loss on g every `eval_every` steps and after the last."""
    model = load_base("shakespeare").model
    tl.manual_seed(0)
    lora.apply_lora(model, CONFIG, adapter_name=g)
    opt = optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    sampler = WindowSampler(data[g].train, BLOCK, BATCH, seed=0)
    hist = train(model, opt, sampler.sample, STEPS, eval_every=eval_every, seed=0, progress=False,
                 eval_fn=lambda m: {"loss": val_loss(m, g)})
    return model, hist


trained, histories, train_seconds = {}, {}, {}
for g in STYLES:
    t0 = time.perf_counter()
    trained[g], histories[g] = train_adapter(g, LR, CURVE_EVERY if g == "histories" else STEPS)
    train_seconds[g] = time.perf_counter() - t0
    model = trained[g]
    counts = lora.count_parameters(model)
    print(f"{g:>10}: {STEPS} steps at lr {LR:g} in {train_seconds[g]:5.1f} s | trainable {counts['trainable']:,} "
          f"of {counts['total']:,} | final validation loss on {g}: {histories[g].final['eval_loss']:.4f}")
print("adapted layers:", len(lora.lora_layers(trained["comedies"])), "e.g.",
      ", ".join(n for n, _ in lora.lora_layers(trained["comedies"])[:4]))

# %%
fig, ax = plt.subplots(figsize=(7.5, 3.6))
window = max(1, STEPS // 15)
for g in STYLES:
    steps, losses = zip(*histories[g].train_losses)
    smooth = np.convolve(losses, np.ones(window) / window, mode="valid")
    ax.plot(steps[window - 1:], smooth, label=g)
ax.set(title=f"Training loss of the three adapters (moving average of {window} steps)",
       xlabel="step", ylabel="cross-entropy (nats per character)")
ax.legend()
plt.tight_layout()
plt.show()

# %% [markdown]
# ## 3. Saving: one small folder per adapter
#
# `save_adapter` writes PEFT's layout: `adapter_config.json` and `adapter_model.safetensors`.
# It returns what it wrote. We compare the weights file with the base's safetensors file.

# %%
dirs = {g: WORK / f"{g}-adapter" for g in STYLES}
sizes = {g: lora.save_adapter(trained[g], dirs[g]) for g in STYLES}
print(f"{'adapter':>10} {'parameters':>11} {'weights file':>13} {'of which header':>16} "
      f"{'config file':>12} {'weights / base':>15}")
for g in STYLES:
    s = sizes[g]
    print(f"{g:>10} {s['parameters']:>11,} {s['weights_bytes']:>13,} {s['header_bytes']:>16,} "
          f"{s['config_bytes']:>12,} {s['weights_bytes'] / base_bytes:>15.2%}")
s = sizes["comedies"]
print(f"\nbase weights file: {base_bytes:,} bytes = {base_bytes / s['weights_bytes']:.1f} x one adapter's weights file")
folder = s["weights_bytes"] + s["config_bytes"]
print(f"one adapter folder (both files): {folder:,} bytes = {folder / base_bytes:.2%} of the base file")
print(f"base + 3 adapter folders: {base_bytes + 3 * folder:,} bytes;  "
      f"3 fine-tuned copies of the base: {3 * base_bytes:,} bytes")

# %% [markdown]
# ## 4. What the files contain
#
# The JSON holds the config with PEFT's keys and values only, so PEFT reads it as its own. What
# only tinylora uses sits in the safetensors header's metadata, where PEFT does not look: its
# version, the sha256 of the tensors, and a **fingerprint** of the base (the shape and sha256 of
# every frozen tensor the adapter was trained on top of). The tensors are A and B for each
# adapted layer, keyed as PEFT keys them.

# %%
meta = json.loads((dirs["comedies"] / "adapter_config.json").read_text())
print("adapter_config.json:", json.dumps(meta))
info = read_metadata(dirs["comedies"] / "adapter_model.safetensors")
print("safetensors metadata keys:", sorted(info))
print(f"  {'tinylora_version':>23}: {info['tinylora_version']} | adapter name: {info['tinylora_adapter_name']}")
print(f"  {'tinylora_tensors_sha256':>23}: {info['tinylora_tensors_sha256'][:16]}...")
fp = info["tinylora_fingerprint"]
print(f"  {'tinylora_fingerprint':>23}: sha256 {fp['sha256'][:16]}... over {len(fp['modules'])} base tensors, e.g.")
for name in list(fp["modules"])[:3]:
    print(f"{'':>27}{name}: {fp['modules'][name]['shape']} sha256 {fp['modules'][name]['sha256'][:12]}...")

# %%
tensors = load_file(str(dirs["comedies"] / "adapter_model.safetensors"))
print(f"adapter_model.safetensors: {len(tensors)} tensors, "
      f"{sum(t.size for t in tensors.values()):,} numbers, dtypes {sorted({str(t.dtype) for t in tensors.values()})}")
for key in sorted(tensors)[:8]:
    print(f"  {key:<52} {tensors[key].shape}")
print("  ...")
with open(dirs["comedies"] / "adapter_model.safetensors", "rb") as f:
    n = int.from_bytes(f.read(8), "little")
print(f"layout: 8 bytes (header length {n}) + {n} bytes of JSON header + "
      f"{sizes['comedies']['payload_bytes']:,} bytes of float32 = {8 + n + sizes['comedies']['payload_bytes']:,} bytes")
layer = trained["comedies"].blocks[0].attn.q_proj
print("base_model.model.blocks.0.attn.q_proj.lora_A.weight equals the trained A:",
      np.array_equal(tensors["base_model.model.blocks.0.attn.q_proj.lora_A.weight"], tl.to_numpy(layer.lora_A.data)))

# %% [markdown]
# ## 5. One base, three adapters
#
# A server keeps **one** copy of the base in memory and loads every adapter beside it, each
# under its own name. `set_adapter` picks which one the next forward pass uses. Before anything
# else we hash the base's weights; we will hash them again after all the swapping.

# %%
server = load_base("shakespeare").model
hash_fresh = base_hash(server)
load_ms = {}
for g in STYLES:
    t0 = time.perf_counter()
    lora.load_adapter(server, dirs[g], name=g)
    load_ms[g] = 1000 * (time.perf_counter() - t0)
print("adapters:", lora.adapter_names(server), "| active:", lora.active_adapter(server))
print("load_adapter times (ms):", {g: round(t, 1) for g, t in load_ms.items()})
counts = lora.count_parameters(server)
print(f"parameters in memory: {counts['total']:,} (base {card['parameters']:,} + 3 x "
      f"{sizes['comedies']['parameters']:,})")
hash_before = base_hash(server)
print("base hash after loading 3 adapters equals the plain base's:", hash_before == hash_fresh,
      f"({hash_before[:16]}...)")

# %% [markdown]
# Each loaded adapter computes exactly what the model it was trained in computed: the file
# round trip is lossless.

# %%
x_check = data["comedies"].val[: 4 * BLOCK].reshape(4, BLOCK)
with tl.no_grad():
    for g in STYLES:
        lora.set_adapter(server, g)
        diff = np.abs(tl.to_numpy(server(x_check).data) - tl.to_numpy(trained[g](x_check).data)).max()
        print(f"{g:>10}: max |server - trained model| over 4 x {BLOCK} positions = {diff}")

# %% [markdown]
# ### The 3 x 3 table: every adapter on every genre
#
# The base row runs inside `disable_adapters`, which makes every adapted layer compute its
# base output. All rows use the same validation windows.

# %%
rows = ("base",) + STYLES
per_batch = {}
for row in rows:
    for g in STYLES:
        if row == "base":
            with lora.disable_adapters(server):
                per_batch[row, g] = val_losses(server, g)
        else:
            lora.set_adapter(server, row)
            per_batch[row, g] = val_losses(server, g)
table = np.array([[per_batch[row, g].mean() for g in STYLES] for row in rows])
print(f"validation loss (nats per character), the {N_EVAL} held-out windows of {BLOCK} characters of each genre")
print(f"{'model':>20} " + " ".join(f"{g:>10}" for g in STYLES))
for i, row in enumerate(rows):
    label = row if row == "base" else f"{row} adapter"
    print(f"{label:>20} " + " ".join(f"{v:10.4f}" for v in table[i]))
best = [rows[1 + int(np.argmin(table[1:, j]))] for j in range(len(STYLES))]


def paired(a, b) -> str:
    """mean of a - b over the same windows, +- 2 standard errors of that mean."""
    d, se = paired_diff(a, b)
    return f"{d:+.4f} +- {se:.4f}"


print("\ndifferences on the same windows (+- 2 standard errors over the", N_EVAL, "windows):")
for j, g in enumerate(STYLES):
    other = min((o for o in STYLES if o != g), key=lambda o: table[1 + STYLES.index(o), j])
    print(f"on {g:>9}: best adapter {best[j]:>9} | own adapter - base {paired(per_batch[g, g], per_batch['base', g])} "
          f"| own adapter - best other ({other}) {paired(per_batch[g, g], per_batch[other, g])}")
print("each adapter is best on its own genre:", all(best[j] == g for j, g in enumerate(STYLES)))
print("diagonal equals the loss measured right after training:",
      all(np.isclose(table[1 + j, j], histories[g].final["eval_loss"]) for j, g in enumerate(STYLES)))

# %%
fig, axes = plt.subplots(1, 2, figsize=(12, 4))
labels = ["base"] + [f"{g} adapter" for g in STYLES]
delta = table[1:] - table[0]  # each adapter minus the base, per genre
lim = np.abs(delta).max()
panels = [(table, labels, "viridis_r", None, "Validation loss", "nats per character (lower is better)"),
          (delta, labels[1:], "RdBu_r", (-lim, lim), "Adapter minus base (blue: better than the base)",
           "change in nats per character")]
for ax, (M, ylabels, cmap, vlim, title, clabel) in zip(axes, panels):
    im = ax.imshow(M, cmap=cmap, vmin=vlim and vlim[0], vmax=vlim and vlim[1])
    ax.set_xticks(range(len(STYLES)), STYLES)
    ax.set_yticks(range(len(ylabels)), ylabels)
    for i in range(M.shape[0]):
        for j in range(M.shape[1]):
            own = ylabels[i] == f"{STYLES[j]} adapter"
            ax.text(j, i, f"{M[i, j]:+.3f}" if M is delta else f"{M[i, j]:.3f}", ha="center", va="center",
                    fontweight="bold" if own else "normal",
                    color="white" if (M is table and M[i, j] > M.mean()) or (M is delta and abs(M[i, j]) > lim / 2)
                    else "black")
    ax.set(title=title, xlabel="validation text of genre")
    fig.colorbar(im, ax=ax, label=clabel)
plt.tight_layout()
plt.show()

# %% [markdown]
# How to read the table. Compare down a column: same text, different models. No model here has
# read any of this validation text (section 1), so every number is a held-out number. The
# columns differ in what the base already knows. It never read a comedy, and in the comedies
# column the comedies adapter is far below the base. Histories and tragedies are in the base's
# training text (their train parts, which the adapters read too): the base has already learned
# them from far more text than an adapter's 300 steps read, so there is little left to gain, and
# the genre's own adapter gains little: about 0.01 nats per character, small but well beyond the
# noise. Between the adapters the comparison shows the specialisation: in every column the
# genre's own adapter is the best of the three. The comedies adapter pays on the other two
# genres; the histories and tragedies adapters stay close to the base on the genres they did not
# train on.

# %% [markdown]
# ### Why lr 1e-3: the histories adapter once more at 5e-3
#
# Why not a larger step? We train the histories adapter again by the same recipe (same seed,
# same windows, same 300 steps) at lr 5e-3, five times larger, and follow its held-out
# histories loss every 25 steps, beside the 1e-3 run of section 2 and the base. We also
# measure it on the other two genres.

# %%
t0 = time.perf_counter()
high_model, high_hist = train_adapter("histories", LR_HIGH, CURVE_EVERY)  # same seed, same steps, same windows
high_seconds = time.perf_counter() - t0
base_h = table[0, STYLES.index("histories")]
runs = {f"lr {LR:g}": histories["histories"], f"lr {LR_HIGH:g}": high_hist}
print(f"histories adapter, {STEPS} steps, held-out histories loss (base: {base_h:.4f}); "
      f"the lr {LR_HIGH:g} run took {high_seconds:.1f} s")
print(f"{'run':>10} {'final':>8} {'highest on the way':>24} {'lowest on the way':>24}")
for name, h in runs.items():
    steps_, losses_ = h.column("step"), h.column("eval_loss")
    hi, lo = int(np.argmax(losses_)), int(np.argmin(losses_))
    print(f"{name:>10} {h.final['eval_loss']:8.4f} {f'{losses_[hi]:.4f} at step {steps_[hi]}':>24} "
          f"{f'{losses_[lo]:.4f} at step {steps_[lo]}':>24}")
high_batches = {g: val_losses(high_model, g) for g in STYLES}
print(f"\nminus the base, on the same {N_EVAL} windows (+- 2 standard errors):")
print(f"  lr {LR:g}:  {paired(per_batch['histories', 'histories'], per_batch['base', 'histories'])}")
print(f"  lr {LR_HIGH:g}:  {paired(high_batches['histories'], per_batch['base', 'histories'])}")
print(f"  lr {LR_HIGH:g} minus lr {LR:g}:  {paired(high_batches['histories'], per_batch['histories', 'histories'])}")
print("\nthe two histories adapters on the other genres (base | lr "
      f"{LR:g} | lr {LR_HIGH:g}):")
for g in STYLES:
    if g != "histories":
        print(f"  {g:>9}: {per_batch['base', g].mean():.4f} | {per_batch['histories', g].mean():.4f} | "
              f"{high_batches[g].mean():.4f}")
del high_model

# %%
fig, ax = plt.subplots(figsize=(7.5, 3.8))
for (name, h), style in zip(runs.items(), ("o-", "s-")):
    # at step 0 B = 0, so the adapter computes exactly the base: every curve starts on the base line
    ax.plot([0] + h.column("step"), [base_h] + h.column("eval_loss"), style, ms=4, label=f"histories adapter, {name}")
ax.axhline(base_h, color="gray", ls="--", label=f"base ({base_h:.4f})")
ax.set(title="Held-out histories loss while the histories adapter trains",
       xlabel="optimizer step", ylabel="validation loss on histories (nats per character)")
ax.legend()
plt.tight_layout()
plt.show()

# %% [markdown]
# Both curves start on the base line (B = 0 at step 0). At 1e-3 the loss is below the base from
# the first evaluation on, falls at almost every one, and is lowest at step 300. At 5e-3 it
# jumps *above* the base within 25 steps and never comes back below it: the base already sits
# near a good point for this text, and steps this large carry the weights past it, undoing
# some of what the base knew about histories. The damage is not confined to histories: at 5e-3
# the adapter is worse than the base on comedies and tragedies too, while at 1e-3 it stays
# close to the base there. An adapter on a base that already knows its genre needs a gentler
# step.

# %% [markdown]
# ### Samples: the same prompt, the same seed, four models
#
# The prompt ends a speech, so each model has to choose the next speaker and what they say.
# Only the active adapter differs between the four runs.

# %%
prompt = tok.encode("Now, sir, what news?\n\n")
n_new = 60 if FAST else 240
for row in rows:
    if row == "base":
        with lora.disable_adapters(server):
            out = server.generate(prompt, n_new, temperature=0.8, top_k=20, seed=0)
    else:
        lora.set_adapter(server, row)
        out = server.generate(prompt, n_new, temperature=0.8, top_k=20, seed=0)
    print(f"----- {row if row == 'base' else row + ' adapter'} -----")
    print(tok.decode(out[0]))
    print()

# %% [markdown]
# ## 6. Swapping never touches the base
#
# `set_adapter` only changes which adapter each `LoRALinear` reads; no weight is copied or
# written. We hash the base again after the table, the samples and thousands of swaps, time a
# swap, and compare it with reloading the whole base's weights from its file.

# %%
n_swaps = 30 if FAST else 3000
t0 = time.perf_counter()
for i in range(n_swaps):
    lora.set_adapter(server, STYLES[i % 3])
swap_us = 1e6 * (time.perf_counter() - t0) / n_swaps
reload_ms = best_ms(lambda: base.model.load_state_dict(load_weights(base_file)), 3 if FAST else 10)
print(f"set_adapter: {swap_us:.0f} microseconds per swap (mean of {n_swaps})")
print(f"reloading the base's weights from its file (load_weights + load_state_dict): {reload_ms:.1f} ms "
      f"(best of {3 if FAST else 10}), {1000 * reload_ms / swap_us:.2f} x one swap")
hash_after = base_hash(server)
print(f"base hash before swapping: {hash_before[:16]}...\nbase hash after swapping:  {hash_after[:16]}...")
print("unchanged:", hash_after == hash_before)

# %% [markdown]
# At this toy size a swap and a reload of all 3.3 MB of the base from a file the operating
# system has cached both take about a millisecond or less: a swap's cost is Python bookkeeping
# (one walk of the modules, setting a name and `requires_grad` in each adapted layer), not data.
# The difference is in how they grow: the bookkeeping does not grow with the weights; reloading
# does. The same measurement on a GPT of the same depth but 4 times wider:

# %%
tl.manual_seed(0)
wide = GPT(GPTConfig(**dict(card["config"], n_embd=512)))
wide_file = save_weights(wide.state_dict(), WORK / "wide-gpt.safetensors")
wide_reload_ms = best_ms(lambda: wide.load_state_dict(load_weights(wide_file)), 3 if FAST else 10)
for g in STYLES:
    lora.add_adapter(wide, g, CONFIG)
t0 = time.perf_counter()
for i in range(n_swaps):
    lora.set_adapter(wide, STYLES[i % 3])
wide_swap_us = 1e6 * (time.perf_counter() - t0) / n_swaps
print(f"{'':>26} {'weights':>12} {'file bytes':>12} {'reload weights':>15} {'one swap':>10}")
print(f"{'shipped base (width 128)':>26} {card['parameters']:>12,} {base_bytes:>12,} {reload_ms:>12.1f} ms "
      f"{swap_us:>7.0f} us")
print(f"{'wide GPT (width 512)':>26} {sum(p.size for n, p in wide.named_parameters() if '.adapters.' not in n):>12,} "
      f"{wide_file.stat().st_size:>12,} {wide_reload_ms:>12.1f} ms {wide_swap_us:>7.0f} us")
print(f"wide / shipped: file {wide_file.stat().st_size / base_bytes:.1f} x, reload {wide_reload_ms / reload_ms:.1f} x, "
      f"swap {wide_swap_us / swap_us:.2f} x")
del wide
wide_file.unlink()

# %% [markdown]
# ### disable_adapters gives exactly the base
#
# Inside the block the model is the base, bit for bit: compare it with a freshly loaded base
# that never had an adapter. After the block the active adapter is back.

# %%
lora.set_adapter(server, "tragedies")
plain = load_base("shakespeare").model
x = data["tragedies"].val[: BATCH * BLOCK].reshape(BATCH, BLOCK)
with tl.no_grad():
    with lora.disable_adapters(server):
        y_disabled = tl.to_numpy(server(x).data)
    y_plain = tl.to_numpy(plain(x).data)
    y_tragedies = tl.to_numpy(server(x).data)
print("disabled == plain base (np.array_equal):", np.array_equal(y_disabled, y_plain),
      f"| max abs diff {np.abs(y_disabled - y_plain).max()}")
print("active adapter after the block:", lora.active_adapter(server),
      f"| its logits differ from the base by up to {np.abs(y_tragedies - y_plain).max():.4f}")

# %% [markdown]
# ## 7. Merging for inference
#
# `merge_lora` folds s · B A of the active adapter into each base weight, so the forward pass is
# a plain linear layer again. Outputs should match the unmerged model: for a batch of many rows
# `F.lora_linear` itself works with W + s · B A, summed exactly as `merge_lora` sums it, so they
# can agree bit for bit (with a few rows, up to float32 rounding). `unmerge_lora` subtracts the
# same product, which restores the base weights up to rounding.

# %%
lora.set_adapter(server, "comedies")
snapshot = {n: tl.to_numpy(p.data).copy() for n, p in server.named_parameters() if ".adapters." not in n}
reps = 3 if FAST else 40


def forward():
    with tl.no_grad():
        return tl.to_numpy(server(x).data)


y_unmerged = forward()
lora.merge_lora(server)
y_merged = forward()
print(f"merged vs unmerged logits: max abs diff {np.abs(y_merged - y_unmerged).max():.3e}, "
      f"same next-character choice at {np.mean(y_merged.argmax(-1) == y_unmerged.argmax(-1)):.2%} of positions")
try:
    lora.set_adapter(server, "histories")
except RuntimeError as e:
    print("switching while merged ->", type(e).__name__ + ":", e)

# %%
lora.unmerge_lora(server)
diffs = {n: np.abs(tl.to_numpy(p.data) - snapshot[n]).max() for n, p in server.named_parameters()
         if ".adapters." not in n}
worst = max(diffs, key=diffs.get)
print(f"after unmerge: max |W - W_before| = {diffs[worst]:.3e} (in {worst}); "
      f"{sum(v == 0 for v in diffs.values())} of {len(diffs)} base tensors bit-identical")
print("base hash unchanged after merge + unmerge:", base_hash(server) == hash_before)
print(f"unmerged again: logits max abs diff from before the merge {np.abs(forward() - y_unmerged).max():.3e}")

# %% [markdown]
# What merging buys in speed: three models answer the same batch in turn, many times over, and
# each keeps its fastest time (taking turns spreads any slowdown of the shared machine over all
# three): the comedies adapter unmerged, a copy with it merged, and the plain base.

# %%
unmerged_model = load_base("shakespeare").model
lora.load_adapter(unmerged_model, dirs["comedies"])
merged_model = load_base("shakespeare").model
lora.load_adapter(merged_model, dirs["comedies"])
lora.merge_lora(merged_model)
contenders = {"unmerged adapter": unmerged_model, "merged adapter": merged_model, "plain base": plain}
times = {k: [] for k in contenders}
with tl.no_grad():
    for k, m_ in contenders.items():
        m_(x)  # warm-up
    for _ in range(reps):
        for k, m_ in contenders.items():
            t0 = time.perf_counter()
            m_(x)
            times[k].append(1000 * (time.perf_counter() - t0))
fast = {k: min(v) for k, v in times.items()}
print(f"forward pass, batch {BATCH} x {BLOCK}, fastest of {reps}:")
for k, v in fast.items():
    print(f"  {k:>16}: {v:6.2f} ms  ({v / fast['plain base'] - 1:+.1%} vs the plain base)")
del unmerged_model, merged_model

# %% [markdown]
# Merging is for serving one adapter at full speed; a server that swaps between adapters keeps
# them unmerged (or must unmerge before each swap, and its base then drifts by rounding).
# For a clean base we reload it.

# %%
server = load_base("shakespeare").model
for g in STYLES:
    lora.load_adapter(server, dirs[g], name=g)
print("reloaded: base hash equals the original:", base_hash(server) == hash_fresh,
      "| adapters:", lora.adapter_names(server))

# %% [markdown]
# ### merge_and_unload: one style, baked in
#
# `merge_and_unload` merges the active adapter and puts plain `nn.Linear` layers back: the
# result is an ordinary GPT with no LoRA left, exactly the size of the base.

# %%
solo = load_base("shakespeare").model
lora.load_adapter(solo, dirs["tragedies"])
with tl.no_grad():
    y_adapter = tl.to_numpy(solo(x).data)
    lora.merge_and_unload(solo)
    y_baked = tl.to_numpy(solo(x).data)
print("LoRA layers left:", len(lora.lora_layers(solo)), "| blocks.0.attn.q_proj is",
      type(solo.blocks[0].attn.q_proj).__name__)
print(f"parameters: {sum(p.size for p in solo.parameters()):,} (the base has {card['parameters']:,})")
print(f"logits vs the unmerged tragedies adapter: max abs diff {np.abs(y_baked - y_adapter).max():.3e}")
baked_file = save_weights(solo.state_dict(), WORK / "tragedies-merged.safetensors")
print(f"saved as a full model: {baked_file.stat().st_size:,} bytes, "
      f"{baked_file.stat().st_size / sizes['tragedies']['weights_bytes']:.1f} x the adapter's weights file")

# %% [markdown]
# ## 8. The wrong base is refused
#
# An adapter only makes sense on top of the weights it was trained with. We build two GPTs the
# adapter was not trained on: the same shape with a different seed (random weights), and a
# narrower one (width 64). `load_adapter` compares the fingerprint first and raises
# `AdapterFileError` before touching the model.

# %%
def state(model):
    return base_hash(model), len(lora.lora_layers(model)), type(model.blocks[0].attn.q_proj).__name__


cfg = dict(card["config"])
tl.manual_seed(1)
others = {"same shape, seed 1": GPT(GPTConfig(**cfg)),
          "width 64 instead of 128": GPT(GPTConfig(**dict(cfg, n_embd=64)))}
for label, other in others.items():
    before = state(other)
    try:
        lora.load_adapter(other, dirs["comedies"])
        print(label, "-> loaded (unexpected)")
    except lora.AdapterFileError as e:
        print(f"--- {label} ---\n{type(e).__name__}: {str(e).replace(str(WORK), '<tmp>')}")
    after = state(other)
    print(f"model unchanged: {after == before} (LoRA layers: {after[1]}, q_proj is {after[2]})\n")

# %% [markdown]
# ## 9. A damaged file is refused too
#
# Copy an adapter folder and damage it. Cut the weights file in half and the safetensors reader
# catches it; change a few bytes of the numbers and the sha256 of the tensors kept in the header
# does; cut the JSON short and the JSON parser does. We load onto the server each time and check
# that its adapters are still the same three.

# %%
def damaged(tag, fix):
    d = WORK / f"damaged-{tag}"
    shutil.copytree(dirs["comedies"], d)
    fix(d)
    return d


def truncate(path):
    data_ = path.read_bytes()
    path.write_bytes(data_[: len(data_) // 2])


def flip_numbers(path):
    data_ = bytearray(path.read_bytes())
    data_[-40:-30] = bytes(b ^ 0xFF for b in data_[-40:-30])  # ten bytes of the last tensor's float32
    path.write_bytes(bytes(data_))


cases = {
    "weights file cut in half": damaged("half", lambda d: truncate(d / "adapter_model.safetensors")),
    "ten bytes of the numbers changed": damaged("flip", lambda d: flip_numbers(d / "adapter_model.safetensors")),
    "config file cut in half": damaged("json", lambda d: truncate(d / "adapter_config.json")),
}
hash_server = base_hash(server)
for label, d in cases.items():
    try:
        lora.load_adapter(server, d, name="broken")
        print(label, "-> loaded (unexpected)")
    except lora.AdapterFileError as e:
        print(f"--- {label} ---\n{type(e).__name__}: {str(e).replace(str(WORK), '<tmp>')}")
    print("server adapters:", lora.adapter_names(server), "| base unchanged:", base_hash(server) == hash_server, "\n")

# %% [markdown]
# ## 10. Retiring an adapter
#
# `delete_adapter` removes one adapter everywhere; the others and the base stay as they were.

# %%
lora.set_adapter(server, "histories")
lora.delete_adapter(server, "histories")
print("adapters:", lora.adapter_names(server), "| active now:", lora.active_adapter(server))
lora.set_adapter(server, "comedies")
print(f"comedies adapter on comedies, after the deletion: {val_loss(server, 'comedies'):.4f} "
      f"(table: {table[1, 0]:.4f}) | base unchanged: {base_hash(server) == hash_fresh}")

# %% [markdown]
# ## 11. Taking an adapter to PEFT
#
# The comedies folder is Hugging Face PEFT's own format, so PyTorch can run the adapter. PEFT
# needs the base as a PyTorch model with the same module names; for SmolLM2 and MiniLM that is
# transformers' `LlamaForCausalLM` and `BertModel` (tinylora maps the names, see the tests in
# `tests/test_peft_interop.py`); for our GPT we write it in PyTorch below, 30 lines, and give it
# the base's weights. Then `PeftModel.from_pretrained` loads the folder, and we compare logits on
# comedies validation windows. The section needs the `interop` extra (PyTorch, transformers, peft).

# %%
try:
    import torch
    import torch.nn.functional as TF
    from peft import LoraConfig, PeftModel, get_peft_model
    HAVE_PEFT = True
except ImportError:
    HAVE_PEFT = False
    print("skipped: PyTorch and PEFT are not installed (pip install -e '.[interop]')")

if HAVE_PEFT:
    class TorchAttention(torch.nn.Module):
        def __init__(self, c, h):
            super().__init__()
            self.h = h
            self.q_proj, self.k_proj, self.v_proj, self.o_proj = (torch.nn.Linear(c, c) for _ in range(4))

        def forward(self, x):
            b, t, c = x.shape
            q, k, v = (p(x).view(b, t, self.h, c // self.h).transpose(1, 2)  # (B, H, T, D)
                       for p in (self.q_proj, self.k_proj, self.v_proj))
            y = TF.scaled_dot_product_attention(q, k, v, is_causal=True)  # a fused kernel (FlashAttention on GPUs)
            return self.o_proj(y.transpose(1, 2).reshape(b, t, c))  # (B, T, C)

    class TorchMLP(torch.nn.Module):
        def __init__(self, c):
            super().__init__()
            self.up_proj, self.down_proj = torch.nn.Linear(c, 4 * c), torch.nn.Linear(4 * c, c)

        def forward(self, x):
            return self.down_proj(TF.gelu(self.up_proj(x), approximate="tanh"))

    class TorchBlock(torch.nn.Module):
        def __init__(self, c, h):
            super().__init__()
            self.ln_1, self.attn, self.ln_2, self.mlp = torch.nn.LayerNorm(c), TorchAttention(c, h), torch.nn.LayerNorm(c), TorchMLP(c)

        def forward(self, x):
            x = x + self.attn(self.ln_1(x))
            return x + self.mlp(self.ln_2(x))

    class TorchGPT(torch.nn.Module):
        """tinylora's GPT in PyTorch, module for module (same names, so the same adapter keys)."""

        def __init__(self, cfg):
            super().__init__()
            c = cfg["n_embd"]
            self.tok_emb = torch.nn.Embedding(cfg["vocab_size"], c)
            self.pos_emb = torch.nn.Embedding(cfg["block_size"], c)
            self.blocks = torch.nn.ModuleList(TorchBlock(c, cfg["n_head"]) for _ in range(cfg["n_layer"]))
            self.ln_f = torch.nn.LayerNorm(c)
            self.lm_head = torch.nn.Linear(c, cfg["vocab_size"], bias=False)
            self.lm_head.weight = self.tok_emb.weight  # tied, as in the base

        def forward(self, idx):
            x = self.tok_emb(idx) + self.pos_emb(torch.arange(idx.shape[1]))
            for block in self.blocks:
                x = block(x)
            return self.lm_head(self.ln_f(x))  # (B, T, vocab)

    def torch_base():
        weights = {n: torch.from_numpy(tl.to_numpy(p.data).copy()) for n, p in load_base("shakespeare").model.named_parameters()}
        model = TorchGPT(card["config"])
        model.load_state_dict(dict(weights, **{"lm_head.weight": weights["tok_emb.weight"]}))
        return model.eval()

# %%
if HAVE_PEFT:
    windows = np.stack([data["comedies"].val[i:i + BLOCK] for i in range(0, 8 * 997, 997)])  # (8, 64)
    peft_model = PeftModel.from_pretrained(torch_base(), str(dirs["comedies"])).eval()
    with torch.no_grad():
        theirs = peft_model(torch.from_numpy(windows)).numpy()
        base_logits = torch_base()(torch.from_numpy(windows)).numpy()
    ours = trained["comedies"].eval()(windows).numpy()
    print("PEFT loaded the adapter:", type(peft_model.base_model.model.blocks[0].attn.q_proj).__module__)
    print(f"logits, tinylora vs PyTorch + PEFT: max abs diff {np.abs(ours - theirs).max():.2e} "
          f"(the adapter itself moves them by up to {np.abs(ours - base_logits).max():.2f})")

    def nll(logits):  # mean next-character loss of the windows, from logits (8, 64, vocab)
        z = logits[:, :-1] - logits[:, :-1].max(-1, keepdims=True)
        logp = z - np.log(np.exp(z).sum(-1, keepdims=True))
        return -np.take_along_axis(logp, windows[:, 1:, None], -1).mean()

    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        half = peft_model(torch.from_numpy(windows)).float().numpy()
    print(f"loss on these windows: tinylora {nll(ours):.4f} | PyTorch + PEFT {nll(theirs):.4f} "
          f"| the same in bfloat16 autocast {nll(half):.4f}")

# %% [markdown]
# And back: PEFT trains an adapter of its own on the same base (PyTorch's AdamW, a few steps of
# the comedies recipe), `save_pretrained` writes it, and `lora.load_adapter` reads it into
# tinylora's GPT with the same outputs.

# %%
if HAVE_PEFT:
    torch.manual_seed(0)
    config = LoraConfig(r=8, lora_alpha=16, target_modules=["q_proj", "k_proj", "v_proj", "o_proj"])
    peft_trained = get_peft_model(torch_base(), config)
    opt_t = torch.optim.AdamW([p for p in peft_trained.parameters() if p.requires_grad], lr=LR, weight_decay=0.0)
    sampler = WindowSampler(data["comedies"].train, BLOCK, BATCH, seed=0)
    for _ in range(3 if FAST else 30):
        xb, yb = sampler.sample()
        loss = TF.cross_entropy(peft_trained(torch.from_numpy(xb)).flatten(0, 1), torch.from_numpy(yb).flatten())
        opt_t.zero_grad()
        loss.backward()
        opt_t.step()
    peft_trained.save_pretrained(str(WORK / "from-peft"))
    print("PEFT wrote:", sorted(p.name for p in (WORK / "from-peft").iterdir()))
    back = lora.load_adapter(load_base("shakespeare").model, WORK / "from-peft")
    with torch.no_grad():
        theirs = peft_trained.eval()(torch.from_numpy(windows)).numpy()
    print(f"loaded into tinylora as adapter {lora.active_adapter(back)!r}: logits max abs diff "
          f"{np.abs(back.eval()(windows).numpy() - theirs).max():.2e}")

shutil.rmtree(WORK)

# %% [markdown]
# ## 12. Try it
#
# Starting cells for the chapter's exercises; each runs as it is.
#
# **1. Turn an adapter up or down.** An adapter adds s B A to each weight; scale s and the
# server's comedies adapter moves between the plain base (0) and past what it was trained to
# be. Where on this dial is the comedies loss lowest?

# %%
lora.set_adapter(server, "comedies")
for factor in (0.0, 0.5, 1.0, 1.5):  # <- try others
    for _, layer in lora.lora_layers(server):
        layer.adapters["comedies"].scaling = factor * CONFIG.alpha / CONFIG.r
    print(f"s = {factor:.1f} x alpha/r: comedies held-out loss {val_loss(server, 'comedies'):.4f}")
for _, layer in lora.lora_layers(server):
    layer.adapters["comedies"].scaling = CONFIG.alpha / CONFIG.r  # as trained

# %% [markdown]
# **2. One more style, quickly.** The shared recipe for another genre at another learning rate,
# for a short run: change the genre (`"comedies"`, `"histories"`, `"tragedies"`), the rate and
# the steps.

# %%
STEPS, saved_steps = (3 if FAST else 60), STEPS  # <- a short run
m_try, h_try = train_adapter("tragedies", 2e-3, STEPS)
STEPS = saved_steps
print(f"tragedies adapter after {STEPS if FAST else 60} steps at lr 2e-3: held-out loss "
      f"{h_try.final['eval_loss']:.4f} (base {table[0, 2]:.4f})")
