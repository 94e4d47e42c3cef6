"""Timing: the median of a step's times, rounds of rows, and ratios measured side by side."""

from __future__ import annotations

import os
import platform
import statistics
import time

import numpy as np

from .. import backend


def time_steps(step, steps: int = 20, warmup: int = 3, sync=None) -> dict:
    """Median and spread of `steps` calls of step() after `warmup` calls, in milliseconds."""
    if steps < 1 or warmup < 0:
        raise ValueError(f"time_steps: need steps >= 1 and warmup >= 0, got steps={steps}, warmup={warmup}")
    sync = sync or backend.synchronize
    for _ in range(warmup):
        step()
    sync()
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        step()
        sync()  # GPU work is queued: wait for it, or the time is only the launches'
        times.append((time.perf_counter() - t0) * 1e3)
    times.sort()
    q = lambda f: times[min(len(times) - 1, int(f * len(times)))]
    return {
        "median_ms": statistics.median(times),
        "p10_ms": q(0.1),
        "p90_ms": q(0.9),
        "min_ms": times[0],
        "steps": steps,
    }


def row_key(row: dict) -> tuple:
    """What identifies a measured row across rounds."""
    return row["model"], row["mode"], row["backend"], row["width"], row["impl"]


def median_rows(per_round: list) -> list:
    """One row per configuration: the round with the median time, plus every round's median."""
    out = []
    for first in per_round[0]:
        runs = [r for rs in per_round for r in rs if row_key(r) == row_key(first)]  # in round order
        row = dict(sorted(runs, key=lambda r: r["median_ms"])[(len(runs) - 1) // 2])
        row["rounds_median_ms"] = [r["median_ms"] for r in runs]
        row["min_ms"] = min(r["min_ms"] for r in runs)
        out.append(row)
    return out


def median_ratios(per_round: list) -> list:
    """Each ratio as the median of its values in the rounds (each measured within one round)."""
    key = lambda r: (r["what"], r["model"], r["mode"], r["backend"], r["width"])
    out = []
    for first in per_round[0]:
        values = [r["ratio"] for rs in per_round for r in rs if key(r) == key(first)]
        out.append(dict(first, ratio=statistics.median(values), rounds=values))
    return out


def _ratio(what: str, k: tuple, value: float) -> dict:
    return {"what": what, "model": k[0], "mode": k[1], "backend": k[2], "width": k[3], "ratio": value}


def ratios(results: list) -> list:
    """Ratios of rows measured in the same round.

    tinylora / each other implementation (same model, mode, backend, width); LoRA / full and
    bias-only / full for tinylora and PyTorch; and "numpy / <backend>", the speed-up of a GPU
    backend over NumPy for the same tinylora step (backend says which GPU backend).
    """
    key = lambda r: (r["model"], r["mode"], r["backend"], r["width"])
    by = {(key(r), r["impl"]): r["median_ms"] for r in results}
    out = []
    for (k, impl), ms in by.items():
        if impl != "tinylora":
            continue
        for other in ("pytorch", "handwritten", "dezero", "mygrad"):
            if (k, other) in by:
                out.append(_ratio(f"tinylora / {other}", k, ms / by[(k, other)]))
        if k[2] != "numpy" and ((k[0], k[1], "numpy", k[3]), impl) in by:
            out.append(_ratio(f"numpy / {k[2]} (tinylora)", k, by[((k[0], k[1], "numpy", k[3]), impl)] / ms))
        full = (k[0], "full", k[2], k[3])
        if k[1] in ("lora", "bias-only") and (full, impl) in by:
            name = "LoRA" if k[1] == "lora" else "bias-only"
            out.append(_ratio(f"{name} / full (tinylora)", k, ms / by[(full, impl)]))
            if (k, "pytorch") in by and (full, "pytorch") in by:
                out.append(_ratio(f"{name} / full (pytorch)", k, by[(k, "pytorch")] / by[(full, "pytorch")]))
        # the LoRA family (--family): DoRA and VeRA against LoRA, merged against unmerged forwards
        lora_row = (k[0], "lora", k[2], k[3])
        if k[1] in ("dora", "vera") and (lora_row, impl) in by:
            out.append(
                _ratio({"dora": "DoRA / LoRA", "vera": "VeRA / LoRA"}[k[1]], k, ms / by[(lora_row, impl)])
            )
        unmerged = (k[0], k[1].replace("-merged", ""), k[2], k[3])
        if "-merged" in k[1] and (unmerged, impl) in by:
            out.append(_ratio("merged / unmerged forward", k, ms / by[(unmerged, impl)]))
    return out


def machine_info(torch=None) -> dict:
    """What the numbers were measured on."""
    blas = backend.blas_info()
    info = {
        "python": platform.python_version(),
        "numpy": np.__version__,
        "blas": blas["library"],
        "blas_threads": blas["threads"],
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "cupy": backend.versions()["cupy"],
    }
    if torch is not None:
        info["torch"] = torch.__version__
    return info
