"""The course's one evaluation protocol: fixed held-out sets, per-example scores, paired errors.

Every chapter scores a model on the same fixed windows of held-out text (or the same digits
test split) and compares two models on the same examples, quoting the mean difference with
+-2 standard errors of that paired difference.
"""

from __future__ import annotations

import functools

import numpy as np

from . import backend
from .data import load_digits
from .data.shakespeare import _check_genre, corpus_tokenizer, list_plays, load_play, train_val_split
from .tensor import no_grad

VAL_FRACTION = 0.1  # as load_shakespeare: the last 10% of every play is held out


def _positive_int(value, name: str, who: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{who}: {name} must be a positive integer, got {value!r}")
    return int(value)


@functools.lru_cache(maxsize=16)
def _heldout_cached(genre: str, block_size: int, n: int) -> tuple[np.ndarray, np.ndarray]:
    tok = corpus_tokenizer()
    vals = [train_val_split(tok.encode(load_play(p) + "\n"), VAL_FRACTION)[1] for p in list_plays(genre)]
    ids = np.concatenate(vals)
    # every start whose window and next token lie inside one play's held-out part
    offsets = np.cumsum([0] + [len(v) for v in vals[:-1]])
    starts = np.concatenate(
        [o + np.arange(len(v) - block_size) for o, v in zip(offsets, vals) if len(v) > block_size]
    )
    if n > len(starts):
        raise ValueError(
            f"heldout_set: asked for {n} windows of {block_size} tokens but the held-out text of "
            f"{genre!r} has only {len(starts)} distinct windows"
        )
    chosen = starts[np.linspace(0, len(starts) - 1, n).round().astype(np.int64)]  # evenly spaced
    index = chosen[:, None] + np.arange(block_size)  # (n, block_size)
    x, y = ids[index], ids[index + 1]
    x.flags.writeable = False
    y.flags.writeable = False
    return x, y


def _modes(model) -> list:
    return [(m, m.training) for m in model.modules()]


def _restore(modes) -> None:
    for m, training in modes:
        object.__setattr__(m, "training", training)


def heldout_set(genre: str, block_size: int = 64, n: int = 512) -> tuple[np.ndarray, np.ndarray]:
    """n fixed windows (x, y), int64 (n, block_size), evenly spaced over one genre's held-out text."""
    genre = _check_genre(genre)
    block_size = _positive_int(block_size, "block_size", "heldout_set")
    n = _positive_int(n, "n", "heldout_set")
    x, y = _heldout_cached(genre, block_size, n)
    return x.copy(), y.copy()


def window_losses(model, x, y, batch_size: int = 64) -> np.ndarray:
    """Mean next-token cross-entropy of each window (float64, (n,)), in eval mode, without grad."""
    x, y = np.asarray(backend.to_numpy(x)), np.asarray(backend.to_numpy(y))
    if x.ndim != 2 or x.shape != y.shape:
        raise ValueError(
            f"window_losses: x and y must be (n, block_size) arrays of the same shape, "
            f"got {x.shape} and {y.shape}"
        )
    batch_size = _positive_int(batch_size, "batch_size", "window_losses")
    modes = _modes(model)
    model.eval()
    out = np.empty(len(x), dtype=np.float64)
    try:
        with no_grad():
            for i in range(0, len(x), batch_size):
                logits = backend.to_numpy(model(backend.asarray(x[i : i + batch_size])).data).astype(
                    np.float64
                )
                m = logits.max(axis=-1, keepdims=True)  # (b, T, 1)
                lse = np.log(np.exp(logits - m).sum(axis=-1)) + m[..., 0]  # (b, T)
                picked = np.take_along_axis(logits, y[i : i + batch_size, :, None], axis=-1)[..., 0]
                out[i : i + batch_size] = (lse - picked).mean(axis=1)
    finally:
        _restore(modes)
    return out


def paired_diff(a, b) -> tuple[float, float]:
    """Mean of a - b over the same examples, and twice its standard error (std(ddof=1) / sqrt(n))."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if a.ndim != 1 or a.shape != b.shape or len(a) < 2:
        raise ValueError(
            f"paired_diff: a and b must be 1-D scores of the same examples (at least 2), "
            f"got shapes {a.shape} and {b.shape}"
        )
    d = a - b
    return float(d.mean()), float(2 * d.std(ddof=1) / np.sqrt(len(d)))


def digits_heldout(rotate: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """The fixed digits test split (x (n, 64) float32, y (n,) int64); rotate=True turns the images."""
    d = load_digits(rotate=rotate)
    return d.x_test, d.y_test


def accuracy_per_example(model, x, y, batch_size: int = 512) -> np.ndarray:
    """Whether the model's top class is right for each example (bool, (n,)), in eval mode."""
    x, y = np.asarray(backend.to_numpy(x)), np.asarray(backend.to_numpy(y))
    if len(x) != len(y) or y.ndim != 1:
        raise ValueError(
            f"accuracy_per_example: expected y (n,) for x with n rows, got {x.shape} and {y.shape}"
        )
    batch_size = _positive_int(batch_size, "batch_size", "accuracy_per_example")
    modes = _modes(model)
    model.eval()
    out = np.empty(len(y), dtype=bool)
    try:
        with no_grad():
            for i in range(0, len(y), batch_size):
                logits = backend.to_numpy(model(backend.asarray(x[i : i + batch_size])).data)
                out[i : i + batch_size] = logits.argmax(axis=-1) == y[i : i + batch_size]
    finally:
        _restore(modes)
    return out
