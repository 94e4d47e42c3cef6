"""The `tinylora bench` command: build a step from a spec, time it in a process of its own, in rounds."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tracemalloc

from .. import backend
from .peers import (
    PEERS,
    gpt_torch_step,
    mlp_torch_step,
    op_chain_dezero,
    op_chain_mygrad,
    op_chain_torch,
    torch_module,
    torch_sync,
)
from .steps import (
    FAMILY_MODES,
    GPT_BATCH,
    GPT_MODES,
    GPT_SHAPE,
    MLP_BATCH,
    MLP_SIZES,
    gpt_family_step,
    gpt_problem,
    gpt_tinylora_step,
    mlp_handwritten_step,
    mlp_problem,
    mlp_tinylora_step,
    op_chain_tinylora,
)
from .timing import machine_info, median_ratios, median_rows, ratios, time_steps

OP_CHAINS = {
    "tinylora": op_chain_tinylora,
    "pytorch": op_chain_torch,
    "dezero": op_chain_dezero,
    "mygrad": op_chain_mygrad,
}
MLP_STEPS = {
    "tinylora": mlp_tinylora_step,
    "handwritten": mlp_handwritten_step,
    "pytorch": mlp_torch_step,
    **PEERS,
}


def step_memory(step) -> dict:
    """Optimizer state bytes and the peak bytes traced during one more step (NumPy only)."""
    opt = getattr(step, "optimizer", None)
    out = {"optimizer_state_bytes": opt.state_bytes() if opt is not None else 0, "peak_step_bytes": None}
    if backend.get_backend() == "numpy":
        tracemalloc.start()
        try:
            tracemalloc.reset_peak()
            base = tracemalloc.get_traced_memory()[0]
            step()
            out["peak_step_bytes"] = tracemalloc.get_traced_memory()[1] - base
        finally:
            tracemalloc.stop()
    return out


def make_step(spec: dict):
    """The step a spec names: model mlp|gpt|ops, impl, mode full|lora|bias-only (GPT), width, r."""
    model, impl = spec["model"], spec["impl"]
    if model == "ops":
        return OP_CHAINS[impl](spec.get("n_ops", 1000))
    if model == "mlp":
        return MLP_STEPS[impl](mlp_problem())
    mode = spec["mode"]
    if mode in FAMILY_MODES:  # tinylora only: DoRA, VeRA, merged/unmerged forwards
        return gpt_family_step(gpt_problem(n_embd=spec["width"]), mode, spec.get("r") or 8)
    if mode not in GPT_MODES:
        raise ValueError(f"GPT benchmark mode must be one of {', '.join(GPT_MODES)}, got {mode!r}")
    problem = gpt_problem(n_embd=spec["width"])
    if mode == "bias-only":  # tinylora only: see steps.gpt_tinylora_step
        return gpt_tinylora_step(problem, bias_only=True)
    r = spec.get("r") if mode == "lora" else None
    return (gpt_torch_step if impl == "pytorch" else gpt_tinylora_step)(problem, r)


def measure(spec: dict) -> dict:
    """Time one spec in this process: median and spread of `steps` steps, plus memory for tinylora."""
    step = make_step(spec)
    torch = torch_module() if spec["impl"] == "pytorch" else None
    if torch is not None and spec["backend"] == "numpy":
        torch.set_num_threads(backend.blas_info()["threads"] or 1)
    sync = torch_sync if torch is not None else None
    row = dict(spec, **time_steps(step, spec["steps"], spec["warmup"], sync=sync))
    row["trainable_params"] = getattr(step, "trainable", None)
    if spec["impl"] == "tinylora" and spec["model"] != "ops":
        row.update(step_memory(step))
    return row


CHILD = (
    "import json, sys; from tinylora import backend, bench; backend.keep_freed_memory(); "
    "print(json.dumps(bench.measure(json.loads(sys.argv[1]))))"
)


def measure_isolated(spec: dict, timeout: float | None = None) -> dict:
    """measure(spec) in a fresh process that holds one library only, on spec["backend"].

    A user runs one library at a time; in one shared process PyTorch's idle OpenMP workers
    keep spinning after its ops and steal a core from the next library's BLAS threads.
    """
    env = dict(os.environ, TINYLORA_BACKEND=spec["backend"])
    try:
        out = subprocess.run(
            [sys.executable, "-c", CHILD, json.dumps(spec)],
            capture_output=True,
            text=True,
            env=env,
            timeout=timeout,
        )
    except subprocess.TimeoutExpired:
        raise RuntimeError(
            f"benchmark {spec['impl']} {spec['model']} timed out after {timeout:.0f} s"
        ) from None
    if out.returncode != 0:
        raise RuntimeError(f"benchmark {spec['impl']} {spec['model']} failed: {out.stderr.strip()[-800:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def check_widths(widths) -> None:
    """Refuse GPT widths that the benchmark's heads cannot split evenly."""
    heads = GPT_SHAPE["n_head"]
    if any(w % heads for w in widths):
        raise ValueError(
            f"GPT widths must be multiples of n_head={heads} (e.g. 128,256,512), got {','.join(map(str, widths))}"
        )


def bench_specs(
    backends, widths, steps, warmup, torch: bool, peers: bool, lora_r: int, family: bool = False
) -> list:
    """The rows one round measures: per backend, the MLP step of each implementation, then the GPT's."""
    specs = []
    for name in backends:
        base = {"backend": name, "steps": steps, "warmup": warmup}
        impls = ["tinylora", "handwritten"] + (["pytorch"] if torch else [])
        impls += list(PEERS) if peers and name == "numpy" else []
        specs += [dict(base, model="mlp", mode="full", width=MLP_SIZES[1], impl=i) for i in impls]
        for width in widths:
            for mode in ("full", "lora"):
                for impl in ["tinylora"] + (["pytorch"] if torch else []):
                    specs.append(dict(base, model="gpt", mode=mode, width=width, impl=impl, r=lora_r))
            if family:  # the LoRA family rows (chapter 12): tinylora only
                specs += [
                    dict(base, model="gpt", mode=mode, width=width, impl="tinylora", r=lora_r)
                    for mode in FAMILY_MODES
                ]
    return specs


def run_bench(
    backends=("numpy",),
    widths=(128,),
    steps: int = 20,
    warmup: int = 3,
    compare_torch: bool = False,
    peers: bool = False,
    lora_r: int = 8,
    rounds: int = 1,
    echo=print,
    family: bool = False,
) -> dict:
    """Time MLP and GPT training steps (full and LoRA) on each backend; optionally PyTorch and peers.

    Every row is measured in its own process (see measure_isolated). With rounds > 1 all rows
    are measured again in each round, so a busy spell of a shared machine hits every row alike:
    a row reports the median of its rounds, a ratio the median of its within-round ratios.
    """
    check_widths(widths)
    if rounds < 1:
        raise ValueError(f"run_bench: rounds must be >= 1, got {rounds}")
    torch = torch_module() if compare_torch else None
    if compare_torch and torch is None:
        echo("(--compare-torch: PyTorch is not installed here; pip install torch to compare)")
    specs = bench_specs(backends, widths, steps, warmup, torch is not None, peers, lora_r, family)
    per_round = []
    for n in range(rounds):
        results = []
        for spec in list(specs):
            try:
                row = measure_isolated(spec)
            except RuntimeError as e:
                if spec["impl"] not in PEERS:
                    raise
                echo(f"  ({spec['impl']} skipped: {e})")  # optional peers: report and go on
                specs.remove(spec)
                continue
            results.append(row)
            echo(
                f"  {f'round {n + 1}/{rounds}  ' if rounds > 1 else ''}{row['model']:<4} {row['mode']:<5} "
                f"w={row['width']:<4} {row['impl']:<11} {row['backend']:<6} {row['median_ms']:9.2f} ms "
                f"(p10 {row['p10_ms']:.2f}, p90 {row['p90_ms']:.2f})"
            )
        per_round.append(results)
    return {
        "machine": machine_info(torch),
        "config": {
            "steps": steps,
            "warmup": warmup,
            "rounds": rounds,
            "lora_r": lora_r,
            "mlp_sizes": list(MLP_SIZES),
            "mlp_batch": MLP_BATCH,
            "gpt": GPT_SHAPE,
            "gpt_batch": GPT_BATCH,
            "isolated": True,
            "family": family,
        },
        "results": median_rows(per_round),
        "ratios": median_ratios([ratios(results) for results in per_round]),
    }
