"""One training loop for the CLI, the notebooks and the benchmarks: steps, evals, history."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

import numpy as np

from . import backend
from . import functional as F
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
    eval_every steps and after the last. Raises FloatingPointError naming the step if the
    loss becomes NaN or infinite. Deterministic for a given seed and batch source.
    """
    if steps < 0:
        raise ValueError(f"train: steps must be >= 0, got {steps}")
    if eval_every < 1:
        raise ValueError(f"train: eval_every must be >= 1, got {eval_every}")
    if seed is not None:
        manual_seed(seed)
    next_batch = batches if callable(batches) else iter(batches).__next__
    history = History()
    bar = _progress(steps, desc, progress)
    start = time.perf_counter()

    def evaluate(step, train_loss):
        row = {
            "step": step,
            "train_loss": train_loss,
            "seconds": time.perf_counter() - start,
            "lr": optimizer.param_groups[0]["lr"] if optimizer.param_groups else None,
        }
        if eval_fn is not None:
            was_training = model.training
            model.eval()
            try:
                with no_grad():
                    metrics = eval_fn(model)
            finally:
                model.train(was_training)
            row.update({f"eval_{k}": float(v) for k, v in metrics.items()})
        history.rows.append(row)
        return row

    model.train()
    recent = []
    try:
        for step in range(1, steps + 1):
            x, y = next_batch()
            loss = loss_fn(
                model,
                backend.asarray(x) if not isinstance(x, Tensor) else x,
                backend.asarray(y) if not isinstance(y, Tensor) else y,
            )
            value = loss.item()
            if not math.isfinite(value):
                raise FloatingPointError(
                    f"training diverged at step {step}: the loss is {value}. Lower the learning rate "
                    "or clip gradients (clip_norm=1.0)."
                )
            optimizer.zero_grad()
            loss.backward()
            if clip_norm is not None:
                clip_grad_norm_(optimizer.params, clip_norm)
            optimizer.step()
            if schedule is not None:
                schedule.step()
            history.train_losses.append((step, value))
            recent.append(value)
            if step % eval_every == 0 or step == steps:
                row = evaluate(step, float(np.mean(recent)))
                recent = []
                if bar is not None:
                    bar.set_postfix({k: f"{v:.4g}" for k, v in row.items() if k.startswith("eval_")})
            if bar is not None:
                bar.update(1)
    finally:
        if bar is not None:
            bar.close()
    if steps == 0:
        evaluate(0, float("nan"))
    return history


@no_grad()
def evaluate_classifier(model, x, y, batch_size: int = 512) -> dict:
    """Mean cross-entropy and accuracy of a classifier on (x, y), in batches."""
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
