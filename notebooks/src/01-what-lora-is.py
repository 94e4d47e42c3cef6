# %% [markdown]
# # 01 · What LoRA is
#
# LoRA in one notebook, measured on the small Shakespeare GPT that ships with tinylora: freeze
# the base, attach a small trainable adapter, train it on comedies, and check what changed and
# what did not. Then the costs: trainable parameters, gradients, optimizer state and file sizes
# for full fine-tuning against LoRA, on this model and on layers the size of real ones
# (GPT-3 175B included). The prose is in [chapter 01](../chapters/01-what-lora-is.md).

# %%
import os
FAST = os.environ.get("TINYLORA_FAST") == "1"
print("TINYLORA_FAST =", int(FAST), "(smoke test)" if FAST else "(full run)")

# %%
# no output: imports, seeds and settings
import hashlib
import tempfile
from pathlib import Path

import numpy as np
import matplotlib.pyplot as plt
from IPython.display import Markdown, display

import tinylora as tl
from tinylora import lora, optim
from tinylora.bases import ASSETS, load_base
from tinylora.data import WindowSampler, load_shakespeare, load_text, train_val_split
from tinylora.evaluate import heldout_set, paired_diff, window_losses
from tinylora.train import train

tl.manual_seed(0)
SEED = 0
steps = 5 if FAST else 200        # adapter training steps (each adapter)
n_windows = 32 if FAST else 512  # windows of the course's fixed held-out set (tinylora.evaluate)
tmp = Path(tempfile.mkdtemp(prefix="tinylora-01-"))  # every file this notebook writes goes here

# %% [markdown]
# ## 1. The base: a model that already knows something
#
# A character-level GPT trained on Shakespeare's histories, tragedies, problem plays, Roman plays
# and romances. The comedies were held out: they will be the "new task".

# %%
base = load_base("shakespeare")
model, tok = base.model, base.tokenizer
cfg = model.config
print(f"GPT: {cfg.n_layer} layers, width {cfg.n_embd}, {cfg.n_head} heads, "
      f"context {cfg.block_size} characters, vocabulary {tok.vocab_size}")
print(f"base parameters: {lora.count_parameters(model)['total']:,}")
print("trained on:", ", ".join(base.card["data"]["genres"]), "| held out:", base.card["data"]["held_out_genre"])

comedies = load_shakespeare(("comedies",), tokenizer=tok)


# the course's one evaluation set: fixed 64-character windows of each genre's held-out text
HELD = {g: heldout_set(g, n=n_windows) for g in ("comedies", "histories", "tragedies")}
HELD["own"] = tuple(np.concatenate([HELD[g][i] for g in ("histories", "tragedies")]) for i in (0, 1))


def losses(m, genre):
    """Per-window losses of model m on the fixed held-out windows of a genre ("own": histories + tragedies)."""
    return window_losses(m, *HELD[genre])


def lm_loss(m, genre):
    return float(losses(m, genre).mean())


base_w = {g: losses(model, g) for g in ("comedies", "own")}
base_loss_comedies, base_loss_seen = base_w["comedies"].mean(), base_w["own"].mean()
print(f"held-out windows: {len(HELD['comedies'][0])} of comedies, {len(HELD['own'][0])} of histories + tragedies "
      f"({HELD['comedies'][0].shape[1]} characters each)")
print(f"base loss on its own genres (held-out text): {base_loss_seen:.3f}")
print(f"base loss on comedies (never seen):         {base_loss_comedies:.3f}")

prompt = "ROMEO:\n"
print("\nbase, sampled after 'ROMEO:':\n" + tok.decode(model.generate(tok.encode(prompt)[None], 200,
      temperature=0.8, top_k=20, seed=SEED)[0]))

# %% [markdown]
# ## 2. Freeze the base, attach an adapter
#
# `apply_lora` wraps the attention projections `q_proj` and `v_proj` of every block in a
# `LoRALinear`: the original weight `W` stays (frozen) and two small matrices `A` (r x 128) and
# `B` (128 x r) are added beside it. Everything else is frozen too.
#
# To check later that the base never changes, we fingerprint every base weight (names and
# bytes) with sha256.

# %%
def base_fingerprint(m):
    """sha256 of every base weight (adapter weights excluded), same names with or without LoRA."""
    h = hashlib.sha256()
    for name, p in m.named_parameters():
        if ".adapters." in name:
            continue
        h.update(name.replace(".base.", ".").encode())
        h.update(tl.to_numpy(p.data).tobytes())
    return h.hexdigest()[:16]


before = base_fingerprint(model)
config = lora.LoRAConfig(r=8, alpha=16, target_modules=("q_proj", "v_proj"))
lora.apply_lora(model, config)
after_apply = base_fingerprint(model)
counts = lora.count_parameters(model)
print("base fingerprint before apply_lora:", before)
print("base fingerprint after  apply_lora:", after_apply, "(unchanged)" if before == after_apply else "(CHANGED)")
print(f"total parameters {counts['total']:,} | trainable {counts['trainable']:,} | frozen {counts['frozen']:,}")
print(f"trainable share: {counts['trainable'] / counts['total']:.2%}")

# %%
print(lora.parameter_report(model))

# %% [markdown]
# `B` starts at zero, so before any training the adapter adds exactly nothing: the adapted model
# and the base (adapters switched off) give identical outputs.

# %%
probe = tok.encode("BENEDICK:\nI do love nothing in the world so well as")[None]
logits_adapter = model(probe).numpy()
with lora.disable_adapters(model):
    logits_base = model(probe).numpy()
print("max |adapted - base| before training:", float(np.abs(logits_adapter - logits_base).max()))

# %% [markdown]
# ## 3. Train the adapter on comedies
#
# An ordinary training loop (AdamW, a short warm-up, then a cosine decay of the learning rate).
# The optimizer is given `model.parameters()`, but it keeps only the ones that require a
# gradient: the adapter's `A` and `B`.

# %%
sampler = WindowSampler(comedies.train, cfg.block_size, batch_size=16, seed=SEED)
opt = optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.0)
schedule = optim.CosineSchedule(opt, steps, warmup_steps=min(20, steps))  # warm up, then decay the lr
print(f"tensors the optimizer updates: {len(opt.params)} (all adapter matrices: "
      f"{all('lora' in n for n, p in model.named_parameters() if p.requires_grad)})")
hist = train(model, opt, sampler.sample, steps, eval_every=max(1, steps // 5), schedule=schedule, seed=SEED,
             eval_fn=lambda m: {"loss": lm_loss(m, "comedies")}, progress=False)

adapted_w = {g: losses(model, g) for g in ("comedies", "own")}
comedy_loss, seen_loss = adapted_w["comedies"].mean(), adapted_w["own"].mean()
with lora.disable_adapters(model):
    off_w = {g: losses(model, g) for g in ("comedies", "own")}
off_comedy, off_seen = off_w["comedies"].mean(), off_w["own"].mean()
after_train = base_fingerprint(model)
d_com, se_com = paired_diff(adapted_w["comedies"], base_w["comedies"])
d_own, se_own = paired_diff(adapted_w["own"], base_w["own"])
print(f"comedies loss: base {base_loss_comedies:.3f} -> base + adapter {comedy_loss:.3f} after {steps} steps "
      f"(adapter - base, paired over the same windows: {d_com:+.3f} +- {se_com:.3f})")
print(f"own genres loss: base {base_loss_seen:.3f} -> base + adapter {seen_loss:.3f} "
      f"({d_own:+.3f} +- {se_own:.3f})")
print(f"adapters switched off: comedies {off_comedy:.3f}, own genres {off_seen:.3f}; identical to the base "
      f"on every window: {all(np.array_equal(off_w[g], base_w[g]) for g in off_w)}")
print("base fingerprint after training:", after_train, "(unchanged)" if after_train == before else "(CHANGED)")

fig, ax = plt.subplots(figsize=(6, 3.6))
ax.plot([0] + [r["step"] for r in hist.rows], [base_loss_comedies] + [r["eval_loss"] for r in hist.rows], "o-",
        label="base + adapter")
ax.axhline(base_loss_comedies, color="gray", ls=":", label="base alone")
ax.set(title="Comedies validation loss while training only the adapter", xlabel="step",
       ylabel="cross-entropy (nats per character)")
ax.legend()
plt.tight_layout()
plt.show()

# %% [markdown]
# ### The adapter learned a difference, and it is low rank
#
# For each adapted layer, the change to its weight is `delta W = (alpha / r) * B @ A`: a
# 128 x 128 matrix, but built from an r = 8 product, so its rank is at most 8.

# %%
layer = model.get_submodule("blocks.0.attn.q_proj")
W = layer.base.weight.numpy()
delta = tl.to_numpy(layer.adapters["default"].delta())
print("blocks.0.attn.q_proj: W", W.shape, "| A", layer.lora_A.shape, "| B", layer.lora_B.shape)
print(f"rank of W: {np.linalg.matrix_rank(W)} | rank of delta W: {np.linalg.matrix_rank(delta)}")
print(f"size of the change: ||delta W|| / ||W|| = {np.linalg.norm(delta) / np.linalg.norm(W):.3f}")

# %% [markdown]
# ## 4. An adapter is not a prompt
#
# The same input, three ways: the base; the base with the comedy adapter (weights added, input
# unchanged); the base with a prompt (text added in front, weights unchanged).

# %%
line = "BENEDICK:\nI do love nothing in the world so well as"
prefix = "A merry comedy. Enter two lovers, jesting.\n\n"


def next_char_top(m, text, k=5):
    logits = m(tok.encode(text)[None]).numpy()[0, -1].astype(np.float64)
    p = np.exp(logits - logits.max())
    p /= p.sum()
    top = np.argsort(-p)[:k]
    return p, " ".join(f"{tok.decode([i])!r}:{p[i]:.2f}" for i in top)


with lora.disable_adapters(model):
    p_base, top_base = next_char_top(model, line)
    p_prompt, top_prompt = next_char_top(model, prefix + line)
    fp_base = fp_prompt = base_fingerprint(model)
p_adapter, top_adapter = next_char_top(model, line)
fp_adapter = base_fingerprint(model)
adapter_numbers = lora.count_parameters(model)["trainable"]

print(f"{'':<16} {'input chars':>11} {'base fingerprint':>18} {'extra weights':>13}  top next characters")
print(f"{'base':<16} {len(line):>11} {fp_base:>18} {0:>13}  {top_base}")
print(f"{'base + adapter':<16} {len(line):>11} {fp_adapter:>18} {adapter_numbers:>13,}  {top_adapter}")
print(f"{'base + prompt':<16} {len(prefix + line):>11} {fp_prompt:>18} {0:>13}  {top_prompt}")
tv = lambda p, q: 0.5 * np.abs(p - q).sum()
print(f"\nnext-character distribution moved (total variation): adapter {tv(p_base, p_adapter):.3f}, "
      f"prompt {tv(p_base, p_prompt):.3f}")

# %%
ids = tok.encode(line)[None]
with lora.disable_adapters(model):
    text_base = tok.decode(model.generate(ids, 160, temperature=0.8, top_k=20, seed=SEED)[0])
text_adapter = tok.decode(model.generate(ids, 160, temperature=0.8, top_k=20, seed=SEED)[0])
print("--- base (same sampling seed) ---\n" + text_base)
print("\n--- base + comedy adapter (same sampling seed) ---\n" + text_adapter)

# %% [markdown]
# ## 5. What problem LoRA solves: memory and storage, measured
#
# One training step of full fine-tuning and one of LoRA, each on a fresh copy of the base:
# bytes of weights, of gradients (after `backward`), of AdamW state (after `step`), and of the
# file you keep afterwards.

# %%
def one_step(m):
    """One AdamW step on a batch of comedies; returns (weight bytes, grad bytes, optimizer bytes)."""
    m.train()
    x, y = WindowSampler(comedies.train, cfg.block_size, 16, seed=SEED).sample()
    o = optim.AdamW(m.parameters(), lr=1e-3)
    _, loss = m(x, y)
    loss.backward()
    o.step()
    params = list(m.parameters())
    return (sum(p.data.nbytes for p in params),
            sum(p.grad.nbytes for p in params if p.grad is not None),
            o.state_bytes())


full = load_base("shakespeare").model
full_bytes = one_step(full)
lora_model = lora.apply_lora(load_base("shakespeare").model, config)
lora_bytes = one_step(lora_model)

full_file = tl.io.save_weights(full.state_dict(), tmp / "full-finetune.safetensors")
sizes = lora.save_adapter(model, tmp / "comedy")
base_file = ASSETS / "shakespeare-gpt.safetensors"
rows = [("weights in memory", full_bytes[0], lora_bytes[0]),
        ("gradients", full_bytes[1], lora_bytes[1]),
        ("AdamW state after one step", full_bytes[2], lora_bytes[2]),
        ("file to keep afterwards", full_file.stat().st_size, sizes["weights_bytes"] + sizes["config_bytes"])]
print(f"{'bytes':<28} {'full fine-tuning':>17} {'LoRA r=8 (q, v)':>16} {'LoRA / full':>12}")
for name, f_, l_ in rows:
    print(f"{name:<28} {f_:>17,} {l_:>16,} {l_ / f_:>12.2%}")
print(f"\nthe shipped base file: {base_file.stat().st_size:,} bytes")
print(f"adapter file: {sizes['weights_bytes']:,} bytes of weights ({sizes['parameters']:,} numbers) "
      f"+ {sizes['config_bytes']:,} bytes of JSON config")

# %% [markdown]
# Note what LoRA does *not* save: the frozen weights are still in memory (the forward pass
# needs them). It saves the gradients, the optimizer state and the stored copy.

# %% [markdown]
# ## 6. The same count at real sizes
#
# A square d x d layer has d^2 weights; its LoRA pair has r (d + d). And GPT-3 175B with LoRA on
# W_q and W_v at r = 4 (the setting of the LoRA paper): 96 layers, d_model 12288.

# %%
r = 8
cases = [(f"one {d} x {d} layer, r = {r}", d * d, r * 2 * d) for d in (768, 4096, 12288)]
n_layers, d_model, r_gpt3, gpt3_total = 96, 12288, 4, 175_000_000_000
gpt3_lora = n_layers * 2 * r_gpt3 * (d_model + d_model)  # 2 matrices (W_q, W_v) per layer
cases.append(("GPT-3 175B, r = 4 on W_q, W_v", gpt3_total, gpt3_lora))

table = ["| what | full fine-tuning | LoRA | LoRA / full |", "|---|---:|---:|---:|"]
table += [f"| {name} | {f_:,} | {l_:,} | {l_ / f_:.4%} |" for name, f_, l_ in cases]
display(Markdown("\n".join(table)))

fig, ax = plt.subplots(figsize=(8, 4))
xpos = np.arange(len(cases))
ax.bar(xpos - 0.2, [c[1] for c in cases], 0.4, label="full fine-tuning")
ax.bar(xpos + 0.2, [c[2] for c in cases], 0.4, label="LoRA")
ax.set_yscale("log")
ax.set_xticks(xpos, [c[0].replace(", r", "\nr") for c in cases], fontsize=8)
ax.set(title="Trainable parameters: full fine-tuning vs LoRA", ylabel="trainable parameters (log scale)")
ax.legend()
plt.tight_layout()
plt.show()

# %% [markdown]
# What that means in bytes for GPT-3 175B, at 4 bytes per number (float32) and AdamW's two
# moments per trainable number:

# %%
def gb(n_bytes):
    """Bytes in GB (10^9) or, below one GB, in MB (10^6)."""
    return f"{n_bytes / 1e9:,.1f} GB" if n_bytes >= 1e9 else f"{n_bytes / 1e6:,.1f} MB"


rows = [("frozen/base weights in memory", 4 * gpt3_total, 4 * gpt3_total),
        ("gradients", 4 * gpt3_total, 4 * gpt3_lora),
        ("AdamW state (2 moments)", 8 * gpt3_total, 8 * gpt3_lora),
        ("checkpoint to store per task", 4 * gpt3_total, 4 * gpt3_lora)]
table = ["| GPT-3 175B, float32 | full fine-tuning | LoRA r = 4 |", "|---|---:|---:|"]
table += [f"| {name} | {gb(f_)} | {gb(l_)} |" for name, f_, l_ in rows]
display(Markdown("\n".join(table)))
print(f"ten tasks, full fine-tuning: {gb(10 * 4 * gpt3_total)} of checkpoints; "
      f"LoRA: one base {gb(4 * gpt3_total)} + ten adapters {gb(10 * 4 * gpt3_lora)}")

# %% [markdown]
# ## 7. One base, many adapters
#
# A second adapter on the same base, trained to write in capitals (comedies, upper-cased). Both
# adapters live in the model; `set_adapter` picks one, `disable_adapters` gives the base back.

# %%
upper_train, upper_val = train_val_split(tok.encode(load_text(("comedies",)).upper()))
lora.add_adapter(model, "shouting", config)
lora.set_adapter(model, "shouting")
opt2 = optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.0)
train(model, opt2, WindowSampler(upper_train, cfg.block_size, 16, seed=SEED).sample, steps, seed=SEED,
      schedule=optim.CosineSchedule(opt2, steps, warmup_steps=min(20, steps)), progress=False)
print("adapters in the model:", lora.adapter_names(model))
print("base fingerprint:", base_fingerprint(model), "(unchanged)" if base_fingerprint(model) == before else "(CHANGED)")

ids = tok.encode("BENEDICK:\n")[None]
for name in ["default", "shouting", None]:
    if name is None:
        with lora.disable_adapters(model):
            text = tok.decode(model.generate(ids, 120, temperature=0.8, top_k=20, seed=SEED)[0])
    else:
        lora.set_adapter(model, name)
        text = tok.decode(model.generate(ids, 120, temperature=0.8, top_k=20, seed=SEED)[0])
    print(f"--- {name or 'no adapter (the base)'} ---\n{text}\n")

# %%
shout_sizes = lora.save_adapter(model, tmp / "shouting", adapter_name="shouting")
adapter_bytes = shout_sizes["weights_bytes"] + shout_sizes["config_bytes"]
base_bytes = base_file.stat().st_size
full_copy = full_file.stat().st_size
print(f"adapter 'shouting' on disk: {adapter_bytes:,} bytes")
print(f"ten tasks as ten full fine-tuned copies: {10 * full_copy:,} bytes")
print(f"ten tasks as one base + ten adapters:    {base_bytes + 10 * adapter_bytes:,} bytes "
      f"({(base_bytes + 10 * adapter_bytes) / (10 * full_copy):.1%})")

# %% [markdown]
# ## 8. The terms, as objects in this notebook

# %%
lora.set_adapter(model, "default")
frozen = [(n, p) for n, p in model.named_parameters() if not p.requires_grad and ".adapters." not in n]
trainable = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
print(f"frozen weights:          {len(frozen)} tensors, {sum(p.size for _, p in frozen):,} numbers "
      f"(e.g. {next(n for n, _ in frozen if 'q_proj' in n)})")
print(f"trainable parameters:    {len(trainable)} tensors, {sum(p.size for _, p in trainable):,} numbers "
      f"(what the optimizer may update)")
print(f"adapter weights:         lora_A {tuple(trainable[0][1].shape)} and lora_B {tuple(trainable[1][1].shape)} "
      f"in each of {len(lora.lora_layers(model))} layers, e.g. {trainable[0][0]}")
print(f"parameter-efficient fine-tuning: train {counts['trainable'] / counts['total']:.2%} of the numbers, "
      f"keep the rest as they are")

# %% [markdown]
# ## 9. Steering or teaching? LoRA on a random base
#
# "LoRA steers a model that already works" is a claim we can test in seconds on the digits MLP
# of chapter 05: the same LoRA (r = 8 and r = 1, alpha = 16, on fc1, fc2, fc3), the same
# batches and steps on the rotated digits, once on the shipped pretrained MLP (trained on
# upright digits) and once on a randomly initialised MLP of the same shape. Each base gets its
# own learning rate, tuned on a grid by accuracy on a tuning split (the last fifth of the
# rotated training images, never trained on); the course's fixed digits test split
# (`tinylora.evaluate.digits_heldout`, rotated) is used only at the end, over three seeds,
# with a paired difference and +-2 standard errors over the same test images.

# %%
from tinylora.data import load_digits
from tinylora.evaluate import accuracy_per_example, digits_heldout
from tinylora.models import MLP

rot = load_digits(rotate=True)
x_test, y_test = digits_heldout(rotate=True)
n_tune = len(rot.y_train) // 5
x_fit, y_fit, x_tune, y_tune = rot.x_train[:-n_tune], rot.y_train[:-n_tune], rot.x_train[-n_tune:], rot.y_train[-n_tune:]
digits_card = load_base("digits").card
D_STEPS = 20 if FAST else 300
LRS = (1e-3, 3e-3, 1e-2, 3e-2)
SEEDS = (0,) if FAST else (0, 1, 2)
RANKS = (8, 1)
print(f"rotated digits: {len(y_fit)} training images, {len(y_tune)} for tuning the lr, {len(y_test)} test images")
print(f"{D_STEPS} steps of 64 images, AdamW, learning rates tried: {LRS}, seeds {SEEDS}")


def digits_base(kind, seed):
    """The shipped pretrained MLP, or a random one of the same shape (its own seed per run)."""
    if kind == "pretrained":
        return load_base("digits").model
    tl.manual_seed(1000 + seed)
    return MLP(**digits_card["config"])


def lora_run(kind, r, lr, seed):
    m = digits_base(kind, seed)
    tl.manual_seed(seed)
    lora.apply_lora(m, lora.LoRAConfig(r=r, alpha=16, target_modules=("fc1", "fc2", "fc3")))
    opt_d = optim.AdamW(m.parameters(), lr=lr, weight_decay=0.0)
    pick = np.random.default_rng(seed)

    def batch():  # the same batches for both bases
        i = pick.integers(0, len(y_fit), 64)
        return x_fit[i], y_fit[i]

    train(m, opt_d, batch, D_STEPS, seed=seed, progress=False)
    return m


for kind in ("pretrained", "random"):
    print(f"{kind:>10} base before training: rotated test accuracy "
          f"{accuracy_per_example(digits_base(kind, 0), x_test, y_test).mean():.2%}")
tuned = {}
for r in RANKS:
    for kind in ("pretrained", "random"):
        acc = {lr: accuracy_per_example(lora_run(kind, r, lr, 0), x_tune, y_tune).mean() for lr in LRS}
        tuned[(kind, r)] = max(acc, key=acc.get)
        print(f"r = {r}, {kind:>10}: tuning accuracy " + ", ".join(f"lr {lr:g} {a:.1%}" for lr, a in acc.items())
              + f"  -> lr {tuned[(kind, r)]:g}")

# %%
steer = {}
for r in RANKS:
    correct = {kind: np.mean([accuracy_per_example(lora_run(kind, r, tuned[(kind, r)], s), x_test, y_test)
                              for s in SEEDS], axis=0) for kind in ("pretrained", "random")}
    d, se = paired_diff(correct["pretrained"], correct["random"])
    steer[r] = (correct, d, se)
    print(f"r = {r}: rotated test accuracy, mean of {len(SEEDS)} seeds: pretrained base {correct['pretrained'].mean():.1%}, "
          f"random base {correct['random'].mean():.1%}; pretrained - random {100 * d:+.1f} +- {100 * se:.1f} points")

fig, ax = plt.subplots(figsize=(6, 3.6))
for j, kind in enumerate(("pretrained", "random")):
    ax.bar(np.arange(len(RANKS)) + (j - 0.5) * 0.38, [100 * steer[r][0][kind].mean() for r in RANKS], 0.38,
           label=f"LoRA on the {kind} MLP")
ax.set_xticks(np.arange(len(RANKS)), [f"r = {r}" for r in RANKS])
ax.set(ylim=(0, 100), ylabel="rotated test accuracy (%)",
       title=f"Rotated digits, {D_STEPS} steps, each base at its tuned lr")
ax.legend(loc="lower right")
plt.tight_layout()
plt.show()

# %% [markdown]
# ## Check yourself, answered by the notebook
#
# **1. What stays frozen in LoRA?** Every base weight: the fingerprint of all of them is the same
# before LoRA, after attaching adapters, and after training two of them.

# %%
print("fingerprints (before, after apply, after training, now):", before, after_apply, after_train,
      base_fingerprint(model))
print("all equal:", len({before, after_apply, after_train, base_fingerprint(model)}) == 1)
print("base weights that require grad:", sum(p.requires_grad for n, p in model.named_parameters() if ".adapters." not in n))

# %% [markdown]
# **2. What actually gets trained?** Only the active adapter's `lora_A` and `lora_B` matrices.

# %%
for n, p in trainable[:4]:
    print(f"{n:<48} {str(p.shape):>10}")
print(f"... {len(trainable)} tensors in all, {sum(p.size for _, p in trainable):,} numbers, "
      f"all named lora_A or lora_B: {all(n.endswith(('lora_A', 'lora_B')) for n, _ in trainable)}")

# %% [markdown]
# **3. Why is LoRA smaller than full fine-tuning?** It trains r (d + k) numbers per adapted layer
# instead of d k, so gradients, optimizer state and the saved file shrink with it.

# %%
print(f"trainable numbers: {counts['trainable']:,} of {counts['total']:,} ({counts['trainable'] / counts['total']:.2%})")
print(f"AdamW state: {lora_bytes[2]:,} vs {full_bytes[2]:,} bytes ({lora_bytes[2] / full_bytes[2]:.2%})")
kept = sizes["weights_bytes"] + sizes["config_bytes"]
print(f"file kept: {kept:,} vs {full_copy:,} bytes ({kept / full_copy:.2%})")
print(f"GPT-3 175B at r = 4 on W_q, W_v: {gpt3_lora:,} trainable numbers ({gpt3_lora / gpt3_total:.4%})")

# %% [markdown]
# **4. Why is a LoRA adapter different from a prompt?** A prompt is input text: it makes the
# input longer and leaves the weights alone. An adapter is trained weights: the input stays the
# same and selected layers compute something different.

# %%
print(f"prompt:  input {len(line)} -> {len(prefix + line)} characters, weights unchanged "
      f"(fingerprint {fp_prompt}), extra weights 0")
print(f"adapter: input {len(line)} -> {len(line)} characters, base weights unchanged "
      f"(fingerprint {fp_adapter}), extra weights {adapter_numbers:,} numbers in "
      f"{len(lora.lora_layers(model))} layers")
print(f"both move the next-character distribution: adapter {tv(p_base, p_adapter):.3f}, prompt {tv(p_base, p_prompt):.3f}")


# %% [markdown]
# ## Try it
#
# Starting cells for the chapter's exercises; each runs as it is.
#
# **1. A random GPT.** The digits were easy for a random base. Do the same on the Shakespeare
# GPT: LoRA r = 8 on q_proj and v_proj of a randomly initialised GPT of the base's shape,
# trained on comedies like the adapter of section 3. Raise `try_steps` and try a few learning
# rates before you conclude anything.

# %%
from tinylora.models import GPT

try_steps = 3 if FAST else 20  # <- raise this (section 3 used 200), and tune lr
tl.manual_seed(0)
random_gpt = lora.apply_lora(GPT(cfg), config)
opt_try = optim.AdamW(random_gpt.parameters(), lr=3e-3, weight_decay=0.0)
train(random_gpt, opt_try, WindowSampler(comedies.train, cfg.block_size, 16, seed=SEED).sample, try_steps,
      seed=SEED, progress=False)
print(f"random GPT + LoRA after {try_steps} steps: comedies held-out loss {lm_loss(random_gpt, 'comedies'):.3f} "
      f"(the pretrained base alone: {base_loss_comedies:.3f})")

# %% [markdown]
# **2. How much does the rotated task need?** Section 9 at other ranks and step counts: change
# `r_try` and `steps_try` (the learning rates are the ones tuned at r = 8).

# %%
r_try, steps_try = 2, (10 if FAST else 100)  # <- change these
D_STEPS, saved_steps = steps_try, D_STEPS
for kind in ("pretrained", "random"):
    acc = accuracy_per_example(lora_run(kind, r_try, tuned[(kind, 8)], 0), x_test, y_test).mean()
    print(f"r = {r_try}, {steps_try} steps, {kind} base: rotated test accuracy {acc:.1%}")
D_STEPS = saved_steps
