"""GPT training step: tinylora vs PyTorch eager, full fine-tuning and LoRA, side by side.

    python benchmarks/bench_gpt.py [--steps 10] [--repeats 5] [--width 128] [--profile]

The model is the benchmark GPT (n_layer 4, n_head 4, n_embd 128, block 64, vocab 65, tied
head, GELU in its tanh form) on a batch of 32, float32, AdamW. Both libraries start from the
same weights. Each measurement runs in a fresh process that holds one library only (a user's
situation: PyTorch's idle OpenMP workers keep spinning for a while after each op and would
otherwise steal a core from the next library's BLAS threads). Rounds are interleaved so
machine noise hits every variant alike; each time is the median over rounds, and each ratio
the median over rounds of the ratio within a round. A shared VM changes speed in spells of
seconds (both libraries slow down then, tinylora more), so the best single step of each
variant, the machine at its quietest, is shown beside the median. "tinylora bias-only" trains
only the q_proj and v_proj biases: LoRA's backward with adapters that cost nothing, the
least a LoRA step on q and v could take. --profile prints where tinylora's time goes
(cProfile, by function).
"""

import argparse
import cProfile
import pstats

import numpy as np

from tinylora import bench


def measure(impl: str, mode: str, r: int, width: int, steps: int) -> dict:
    """Step times (median_ms, min_ms, ...) of one variant (mode full|lora|bias-only), in a fresh process."""
    spec = {
        "model": "gpt",
        "mode": mode,
        "impl": impl,
        "r": r,
        "width": width,
        "backend": "numpy",
        "steps": steps,
        "warmup": 3,
    }
    return bench.measure_isolated(spec)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--width", type=int, default=128)
    ap.add_argument("--lora-r", type=int, default=8)
    ap.add_argument("--profile", action="store_true")
    args = ap.parse_args()
    torch = bench.torch_module()
    print(bench.machine_info(torch))
    variants = {
        f"tinylora {mode}": ("tinylora", mode) for mode in ("full", "lora", "bias-only")
    }  # bias-only: see above
    if torch is not None:
        variants.update({f"pytorch {mode}": ("pytorch", mode) for mode in ("full", "lora")})
    rounds = {k: [] for k in variants}
    for _ in range(args.repeats):
        for k, (impl, mode) in variants.items():
            rounds[k].append(measure(impl, mode, args.lora_r, args.width, args.steps))
    med = {k: np.array([row["median_ms"] for row in v]) for k, v in rounds.items()}
    best = {k: min(row["min_ms"] for row in v) for k, v in rounds.items()}
    cfg = dict(bench.GPT_SHAPE, n_embd=args.width)
    print(f"\nGPT {cfg}, batch {bench.GPT_BATCH}, LoRA r={args.lora_r} on q_proj, v_proj")
    print(f"  {'':<15} {'median':>8} {'best':>8}   (median of each round)")
    for k in variants:
        rounds_ms = ", ".join(f"{x:.1f}" for x in med[k])
        print(f"  {k:<15} {np.median(med[k]):8.1f} {best[k]:8.1f}   ({rounds_ms})")

    def ratio(a, b):  # median of within-round ratios with their spread, and the ratio of best steps
        r = med[a] / med[b]
        return f"{np.median(r):.2f}  (rounds {r.min():.2f}-{r.max():.2f}; best steps {best[a] / best[b]:.2f})"

    if torch is not None:
        print(f"  tinylora / pytorch, full: {ratio('tinylora full', 'pytorch full')}")
        print(f"  tinylora / pytorch, LoRA: {ratio('tinylora lora', 'pytorch lora')}")
        print(f"  LoRA / full, pytorch:     {ratio('pytorch lora', 'pytorch full')}")
    print(f"  LoRA / full, tinylora:    {ratio('tinylora lora', 'tinylora full')}")
    print(f"  bias-only / full, tinylora: {ratio('tinylora bias-only', 'tinylora full')}")
    if args.profile:
        problem = bench.gpt_problem(n_embd=args.width)
        for name, r in (("tinylora full", None), ("tinylora lora", args.lora_r)):
            step = bench.gpt_tinylora_step(problem, r)
            step()
            prof = cProfile.Profile()
            prof.runcall(lambda step=step: [step() for _ in range(5)])
            print(f"\nwhere the time goes: {name} (5 steps, top 15 by own time)")
            pstats.Stats(prof).sort_stats("tottime").print_stats(15)


if __name__ == "__main__":
    main()
