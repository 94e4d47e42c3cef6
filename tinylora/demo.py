"""`tinylora demo`: full fine-tuning vs LoRA on the two shipped bases, with a report folder.

1. digits: the upright-digits MLP adapted to digits rotated by 90 degrees;
2. shakespeare: the character GPT (never shown a comedy) adapted to the comedies.

Each run starts from the same frozen base, seed and number of steps. The report folder holds
the table (Markdown and JSON), loss curves (PNG), generated samples and the saved adapters.
It is built in a temporary folder and renamed into place only when complete.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

from . import __version__, lora
from .backend import device_name, get_backend, set_backend
from .bases import load_base
from .data import WindowSampler, load_digits, load_shakespeare
from .io import WriteError, check_writable, save_weights
from .optim import AdamW
from .train import evaluate_classifier, evaluate_lm, train

FULL_STEPS = {"digits": 400, "shakespeare": 300}
FAST_STEPS = {"digits": 30, "shakespeare": 8}
DIGITS_RUNS = [("full fine-tuning", None), ("LoRA r=1", 1), ("LoRA r=4", 4), ("LoRA r=16", 16)]
SHAKESPEARE_RUNS = [("full fine-tuning", None), ("LoRA r=4", 4), ("LoRA r=16", 16)]
PROMPT = "BEATRICE:\n"


MARKER = ".tinylora-report"  # in every report folder: the only kind of folder --force replaces


def _prepare_out(out: Path, force: bool) -> Path:
    """Refuse an --out that holds anything but an earlier report; return a new temporary folder beside it."""
    if out.exists() and not out.is_dir():
        raise FileExistsError(f"--out {str(out)!r} exists and is not a folder")
    if out.is_dir() and any(out.iterdir()):
        if not force:
            raise FileExistsError(
                f"--out {str(out)!r} is not empty; pass --force to replace it, or choose another --out"
            )
        if not (out / MARKER).is_file():
            raise FileExistsError(
                f"--out {str(out)!r} holds files that are not a tinylora report (it has no {MARKER} file), "
                "so --force will not delete them: choose another --out, or empty that folder yourself"
            )
    check_writable(out.parent)  # before any training
    tmp = None
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}-", dir=out.parent))
        (tmp / MARKER).write_text(
            f"This folder was written by `tinylora demo` (tinylora {__version__}); "
            "`tinylora demo --force` may replace it.\n"
        )
    except OSError as e:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
        raise WriteError(e.errno, e.strerror, str(out)) from e
    return tmp


def _publish(tmp: Path, out: Path) -> None:
    """Swap the finished report into place (the old one, with --force, goes only once the new one is there)."""
    old = None
    if out.exists():
        old = out.with_name(f".{out.name}-old-{os.getpid()}")
        os.replace(out, old)
    try:
        os.replace(tmp, out)
    except OSError:
        if old is not None:  # put the earlier report back
            os.replace(old, out)
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def _task(task: str, base, seed: int) -> tuple:
    """The task's batch source, evaluation, LoRA targets and learning rates (full, LoRA)."""
    if task == "digits":
        data = load_digits(rotate=True)
        rng = np.random.default_rng(seed)
        batches = lambda: (lambda i: (data.x_train[i], data.y_train[i]))(
            rng.integers(0, len(data.y_train), 64)
        )
        eval_fn = lambda m: evaluate_classifier(m, data.x_test, data.y_test)
        targets, lr_full, lr_lora = ("fc1", "fc2", "fc3"), 1e-3, 1e-2
    else:
        data = load_shakespeare(("comedies",), tokenizer=base.tokenizer)
        batches = WindowSampler(data.train, 64, 16, seed=seed).sample
        eval_fn = lambda m: evaluate_lm(m, data.val, 64, batch_size=32, batches=8)
        targets, lr_full, lr_lora = ("q_proj", "v_proj"), 3e-4, 3e-3
    return batches, eval_fn, targets, lr_full, lr_lora


def _run(task: str, method: str, r, steps: int, seed: int, tmp: Path, progress: bool) -> dict:
    """One row of the table: train the base fully (r=None) or with LoRA rank r, and save the result."""
    base = load_base(task)
    model = base.model
    batches, eval_fn, targets, lr_full, lr_lora = _task(task, base, seed)
    before = eval_fn(model)
    if r is None:
        model.requires_grad_(True)
        lr = lr_full
    else:
        lora.apply_lora(model, lora.LoRAConfig(r=r, alpha=2 * r, target_modules=targets))
        lr = lr_lora
    counts = lora.count_parameters(model)
    opt = AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    t0 = time.perf_counter()
    history = train(
        model,
        opt,
        batches,
        steps,
        eval_fn=eval_fn,
        eval_every=max(1, steps // 10),
        seed=seed,
        progress=progress,
        desc=f"{task}: {method}",
    )
    seconds = time.perf_counter() - t0
    slug = f"{task}-{'full' if r is None else f'lora-r{r}'}"
    if r is None:  # full fine-tuning has to keep a whole new copy of the model
        path = save_weights(model.state_dict(), tmp / "weights" / f"{slug}.safetensors")
        file_bytes = path.stat().st_size
    else:
        file_bytes = lora.save_adapter(model, tmp / "adapters" / slug)["weights_bytes"]
    final = history.final
    return {
        "task": task,
        "method": method,
        "r": r,
        "steps": steps,
        "lr": lr,
        "trainable_params": counts["trainable"],
        "total_params": counts["total"],
        "trainable_pct": 100.0 * counts["trainable"] / counts["total"],
        "file_bytes": file_bytes,
        "optimizer_state_bytes": opt.state_bytes(),
        "eval_loss_before": before["loss"],
        "eval_loss": final.get("eval_loss"),
        "eval_accuracy_before": before.get("accuracy"),
        "eval_accuracy": final.get("eval_accuracy"),
        "seconds": seconds,
        "history": history.rows,
        "model": model,
        "tokenizer": base.tokenizer,
    }


def _fmt_bytes(n: int) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


def table(rows: list) -> list:
    """The demo's table as a header and string rows."""
    head = [
        "task",
        "method",
        "trainable params",
        "trainable %",
        "saved file",
        "optimizer state",
        "eval loss (before -> after)",
        "eval accuracy",
        "seconds",
    ]
    body = []
    for r in rows:
        acc = (
            ""
            if r["eval_accuracy"] is None
            else f"{r['eval_accuracy_before']:.1%} -> {r['eval_accuracy']:.1%}"
        )
        body.append(
            [
                r["task"],
                r["method"],
                f"{r['trainable_params']:,}",
                f"{r['trainable_pct']:.2f}",
                _fmt_bytes(r["file_bytes"]),
                _fmt_bytes(r["optimizer_state_bytes"]),
                f"{r['eval_loss_before']:.3f} -> {r['eval_loss']:.3f}",
                acc,
                f"{r['seconds']:.1f}",
            ]
        )
    return [head] + body


def _text_table(cells: list) -> str:
    widths = [max(len(row[i]) for row in cells) for i in range(len(cells[0]))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(row, widths)) for row in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def _markdown_table(cells: list) -> str:
    lines = ["| " + " | ".join(cells[0]) + " |", "|" + "---|" * len(cells[0])]
    return "\n".join(lines + ["| " + " | ".join(row) + " |" for row in cells[1:]])


def _plot(rows: list, task: str, path: Path) -> bool:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    fig, ax = plt.subplots(figsize=(6, 4))
    for r in rows:
        if r["task"] == task:
            steps = [h["step"] for h in r["history"]]
            ax.plot(
                [0] + steps,
                [r["eval_loss_before"]] + [h["eval_loss"] for h in r["history"]],
                marker="o",
                ms=3,
                label=f"{r['method']} ({r['trainable_params']:,} trainable)",
            )
    ax.set_xlabel("training step")
    ax.set_ylabel("held-out loss (cross-entropy)" + (", log scale" if task == "digits" else ""))
    if task == "digits":  # the rotated task starts at a loss near 30: a log axis shows the rest
        ax.set_yscale("log")
    title = "rotated digits" if task == "digits" else "Shakespeare comedies"
    ax.set_title(f"{title}: full fine-tuning vs LoRA")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return True


def _samples(rows: list, seed: int, fast: bool) -> str:
    """Text generated by the Shakespeare base and by it with the last comedy adapter, same seed."""
    base = load_base("shakespeare")
    tok = base.tokenizer
    adapted = rows[-1]
    n_new = 120 if fast else 240
    prompt = tok.encode(PROMPT)
    before = tok.decode(base.model.generate(prompt, n_new, temperature=0.8, top_k=20, seed=seed)[0])
    after = tok.decode(adapted["model"].generate(prompt, n_new, temperature=0.8, top_k=20, seed=seed)[0])
    return (
        f"--- base (pretrained without comedies) ---\n{before}\n\n"
        f"--- base + comedy adapter ({adapted['method']}) ---\n{after}\n"
    )


def _write_report(tmp: Path, rows: list, cells: list, samples: str, machine: dict) -> list:
    """results.json, results.md, samples.txt and the loss curves; returns the runs without models."""
    plots = [_plot(rows, t, tmp / f"{t}_loss.png") for t in ("digits", "shakespeare")]
    clean = [{k: v for k, v in r.items() if k not in ("model", "tokenizer")} for r in rows]
    (tmp / "samples.txt").write_text(samples)
    (tmp / "results.json").write_text(json.dumps({"machine": machine, "runs": clean}, indent=2) + "\n")
    md = [
        "# tinylora demo",
        "",
        f"Backend: {machine['backend']} ({machine['device']}); seed {machine['seed']}"
        + ("; --fast" if machine["fast"] else ""),
        "",
        _markdown_table(cells),
        "",
        "## Samples",
        "",
        "```",
        samples,
        "```",
    ]
    if all(plots):
        md += ["", "![digits](digits_loss.png)", "![shakespeare](shakespeare_loss.png)"]
    else:
        md += ["", '(loss-curve PNGs skipped: matplotlib is not installed; pip install "tinylora[course]")']
    (tmp / "results.md").write_text("\n".join(md) + "\n")
    return clean


def run_demo(
    out="tinylora-demo",
    fast: bool = False,
    seed: int = 0,
    backend: str = "numpy",
    force: bool = False,
    progress: bool = True,
    echo=print,
) -> dict:
    """Run the demo and write the report folder; returns the results (without models).

    force=True replaces `out` only if it holds an earlier report (it has the marker file).
    """
    out = Path(out)
    tmp = _prepare_out(out, force)
    restore = get_backend()
    try:
        set_backend(backend)
        steps = FAST_STEPS if fast else FULL_STEPS
        t0 = time.perf_counter()
        rows = [_run("digits", m, r, steps["digits"], seed, tmp, progress) for m, r in DIGITS_RUNS]
        rows += [
            _run("shakespeare", m, r, steps["shakespeare"], seed, tmp, progress) for m, r in SHAKESPEARE_RUNS
        ]
        cells = table(rows)
        echo(_text_table(cells))
        samples = _samples(rows, seed, fast)
        echo("\n" + samples)
        machine = {
            "backend": get_backend(),
            "device": device_name(),
            "fast": fast,
            "seed": seed,
            "seconds_total": time.perf_counter() - t0,
        }
        clean = _write_report(tmp, rows, cells, samples, machine)
        _publish(tmp, out)
    except OSError as e:
        shutil.rmtree(tmp, ignore_errors=True)
        if e.errno is None:  # a refusal of ours, not the system's
            raise
        raise WriteError(e.errno, e.strerror, str(out)) from e  # name the report, not its temporary
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    finally:
        set_backend(restore)
    echo(
        f"\nreport written to {out}/ in {machine['seconds_total']:.0f} s: results.md, results.json, "
        "*_loss.png, samples.txt, adapters/"
    )
    return {"machine": machine, "runs": clean}
