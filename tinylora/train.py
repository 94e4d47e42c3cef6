"""One training loop for the CLI, the notebooks and the benchmarks: steps, evals, history."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

import numpy as np

from . import backend
from . import functional as F
from .nn.checks import integer, number
from .optim import clip_grad_norm_
from .tensor import Tensor, manual_seed, no_grad


@dataclass
class History:
    """What happened during training: one row per evaluation, plus every step's train loss."""

    rows: list = field(default_factory=list)  # dicts: step, train_loss, eval_loss, eval_accuracy, seconds, lr
    train_losses: list = field(default_factory=list)  # (step, loss) for every step

    def column(self, key: str) -> list:
        """A column of the evaluation rows, e.g. history.column("eval_loss")."""
        return [r.get(key) for r in self.rows]

    @property
    def final(self) -> dict:
        """The last evaluation row."""
        return self.rows[-1] if self.rows else {}

    def to_dict(self) -> dict:
        return {"rows": self.rows, "train_losses": self.train_losses}


def default_loss(model, x, y) -> Tensor:
    """Cross-entropy of the model's logits (last axis) against integer targets."""
    return F.cross_entropy(model(x), y)


def _progress(total: int, desc: str, enabled: bool):
    if not enabled:
        return None
    try:
        from tqdm.auto import tqdm
    except ImportError:  # the bar is a nicety: train silently without tqdm
        return None
    return tqdm(total=total, desc=desc, leave=False, dynamic_ncols=True)


def _batch_source(batches):
    """A function giving the next (x, y): it calls `batches`, or steps through an iterable of pairs."""
    if callable(batches):
        return batches
    try:
        return iter(batches).__next__
    except TypeError:
        raise TypeError(
            f"train: batches must be a callable or an iterable giving (x, y) pairs, got {type(batches).__name__}"
        ) from None


def _next_batch(next_batch, step: int, steps: int) -> tuple:
    """The batch for `step` as backend arrays (or Tensors); clear errors if there is none."""
    try:
        batch = next_batch()
    except StopIteration:
        raise ValueError(
            f"train: the batches ran out at step {step} of {steps}: only {step - 1} batches were given. "
            "Give at least `steps` batches, a callable, or an endless iterator (itertools.cycle)"
        ) from None
    if not isinstance(batch, (tuple, list)) or len(batch) != 2:
        raise ValueError(f"train: step {step}: a batch must be an (x, y) pair, got {type(batch).__name__}")
    return tuple(v if isinstance(v, Tensor) else backend.asarray(v) for v in batch)


def _check_finite_grads(params, step: int) -> None:
    """Raise before the update if any gradient holds NaN or infinity (the step is not taken)."""
    grads = [p.grad for p in params if p.grad is not None]
    if not grads or math.isfinite(float(sum(g.sum(dtype="float64") for g in grads))):  # one sync
        return
    bad = sum(1 for g in grads if not math.isfinite(float(g.sum(dtype="float64"))))
    raise FloatingPointError(
        f"training diverged at step {step}: {bad} of {len(params)} gradients hold NaN or infinity; "
        "the step was not taken. Lower the learning rate or clip gradients (clip_norm=1.0)."
    )


def _step(model, optimizer, loss_fn, batch: tuple, step: int, clip_norm) -> float:
    """One optimizer step on one batch; returns the loss. A NaN or infinite loss or gradient raises first."""
    loss = loss_fn(model, *batch)
    value = loss.item()
    if not math.isfinite(value):
        raise FloatingPointError(
            f"training diverged at step {step}: the loss is {value}. Lower the learning rate "
            "or clip gradients (clip_norm=1.0)."
        )
    optimizer.zero_grad()
    loss.backward()
    _check_finite_grads(optimizer.params, step)
    if clip_norm is not None:
        clip_grad_norm_(optimizer.params, clip_norm)
    optimizer.step()
    return value


def _evaluate(model, eval_fn) -> dict:
    """eval_fn(model) under no_grad in eval mode, then the model's mode as it was."""
    was_training = model.training
    model.eval()
    try:
        with no_grad():
            metrics = eval_fn(model)
    finally:
        model.train(was_training)
    return {f"eval_{k}": float(v) for k, v in metrics.items()}


def train(
    model,
    optimizer,
    batches,
    steps: int,
    *,
    loss_fn=default_loss,
    eval_fn=None,
    eval_every: int = 100,
    schedule=None,
    clip_norm: float | None = None,
    seed: int | None = 0,
    progress: bool = True,
    desc: str = "train",
) -> History:
    """Run `steps` optimizer steps on batches (an iterator or callable giving (x, y)).

    eval_fn(model) -> {"loss": ..., "accuracy": ...} runs under no_grad in eval mode every
    eval_every steps and after the last. A NaN or infinite loss or gradient raises
    FloatingPointError naming the step, before that step changes the model.
    """
    steps = integer("train", "steps", steps, 0)
    eval_every = integer("train", "eval_every", eval_every, 1)
    if clip_norm is not None:
        clip_norm = number("train", "clip_norm", clip_norm, 0, above=True)
    next_batch = _batch_source(batches)
    if seed is not None:
        seed = integer("train", "seed", seed, 0)
        manual_seed(seed)
    history, bar, start = History(), _progress(steps, desc, progress), time.perf_counter()

    def record(step, train_loss):
        lr = optimizer.param_groups[0]["lr"] if optimizer.param_groups else None
        row = {"step": step, "train_loss": train_loss, "seconds": time.perf_counter() - start, "lr": lr}
        row.update(_evaluate(model, eval_fn) if eval_fn is not None else {})
        history.rows.append(row)
        return row

    model.train()
    recent = []
    try:
        for step in range(1, steps + 1):
            value = _step(model, optimizer, loss_fn, _next_batch(next_batch, step, steps), step, clip_norm)
            if schedule is not None:
                schedule.step()
            history.train_losses.append((step, value))
            recent.append(value)
            if step % eval_every == 0 or step == steps:
                row = record(step, float(np.mean(recent)))
                recent = []
                if bar is not None:
                    bar.set_postfix({k: f"{v:.4g}" for k, v in row.items() if k.startswith("eval_")})
            if bar is not None:
                bar.update(1)
    finally:
        if bar is not None:
            bar.close()
    if steps == 0:
        record(0, float("nan"))
    return history


@no_grad()
def evaluate_classifier(model, x, y, batch_size: int = 512) -> dict:
    """Mean cross-entropy and accuracy of a classifier on (x, y), in batches."""
    batch_size = integer("evaluate_classifier", "batch_size", batch_size, 1)
    n = len(y)
    if n == 0:
        raise ValueError("evaluate_classifier: no examples")
    loss_sum, correct = 0.0, 0
    for i in range(0, n, batch_size):
        xb, yb = backend.asarray(x[i : i + batch_size]), backend.asarray(y[i : i + batch_size])
        logits = model(xb)
        loss_sum += F.cross_entropy(logits, yb).item() * len(yb)
        correct += int((logits.data.argmax(axis=-1) == yb).sum())
    return {"loss": loss_sum / n, "accuracy": correct / n}


@no_grad()
def evaluate_lm(
    model, ids, block_size: int, batch_size: int = 32, batches: int = 8, seed: int = 1234
) -> dict:
    """Mean next-token cross-entropy of a language model on random windows of `ids` (fixed seed)."""
    for name, value in (("block_size", block_size), ("batch_size", batch_size), ("batches", batches)):
        integer("evaluate_lm", name, value, 1)
    ids = np.asarray(backend.to_numpy(ids))
    if len(ids) <= block_size + 1:
        raise ValueError(f"evaluate_lm: need more than block_size + 1 = {block_size + 1} ids, got {len(ids)}")
    rng = np.random.default_rng(seed)
    losses = []
    for _ in range(batches):
        starts = rng.integers(0, len(ids) - block_size - 1, batch_size)
        x = np.stack([ids[s : s + block_size] for s in starts])
        y = np.stack([ids[s + 1 : s + block_size + 1] for s in starts])
        losses.append(F.cross_entropy(model(backend.asarray(x)), backend.asarray(y)).item())
    return {"loss": float(np.mean(losses))}
