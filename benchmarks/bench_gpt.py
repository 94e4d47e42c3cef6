"""GPT training step: tinylora vs PyTorch eager, full fine-tuning and LoRA, side by side.

    python benchmarks/bench_gpt.py [--steps 10] [--repeats 3] [--width 128] [--profile]

The model is the benchmark GPT (n_layer 4, n_head 4, n_embd 128, block 64, vocab 65, tied
head, GELU in its tanh form) on a batch of 32, float32, AdamW. Both libraries start from the
same weights; rounds are interleaved so machine noise hits every variant alike, and each
figure is the median over rounds of per-round medians. --profile prints where tinylora's
time goes (cProfile, by function).
"""

import argparse
import cProfile
import os
import pstats

import numpy as np

from tinylora import bench


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--width", type=int, default=128)
    ap.add_argument("--lora-r", type=int, default=8)
    ap.add_argument("--profile", action="store_true")
    args = ap.parse_args()
    torch = bench.torch_module()
    if torch is not None:
        torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", os.cpu_count())))
    print(bench.machine_info(torch))
    problem = bench.gpt_problem(n_embd=args.width)
    steps = {
        "tinylora full": bench.gpt_tinylora_step(problem),
        "tinylora lora": bench.gpt_tinylora_step(problem, args.lora_r),
    }
    if torch is not None:
        steps["pytorch full"] = bench.gpt_torch_step(problem)
        steps["pytorch lora"] = bench.gpt_torch_step(problem, args.lora_r)
    rounds = {k: [] for k in steps}
    for _ in range(args.repeats):
        for k, f in steps.items():
            sync = bench.torch_sync if k.startswith("pytorch") else None
            rounds[k].append(bench.time_steps(f, args.steps, warmup=2, sync=sync)["median_ms"])
    ms = {k: float(np.median(v)) for k, v in rounds.items()}
    cfg = dict(bench.GPT_SHAPE, n_embd=args.width)
    print(f"\nGPT {cfg}, batch {bench.GPT_BATCH}, LoRA r={args.lora_r} on q_proj, v_proj")
    for k, v in ms.items():
        print(f"  {k:<15} {v:8.1f} ms   (rounds: {', '.join(f'{x:.1f}' for x in rounds[k])})")
    if torch is not None:
        print(f"  tinylora / pytorch, full: {ms['tinylora full'] / ms['pytorch full']:.2f}")
        print(f"  tinylora / pytorch, LoRA: {ms['tinylora lora'] / ms['pytorch lora']:.2f}")
        print(f"  LoRA / full, pytorch:     {ms['pytorch lora'] / ms['pytorch full']:.2f}")
    print(f"  LoRA / full, tinylora:    {ms['tinylora lora'] / ms['tinylora full']:.2f}")
    if args.profile:
        for name in ("tinylora full", "tinylora lora"):
            prof = cProfile.Profile()
            prof.runcall(lambda f=steps[name]: [f() for _ in range(5)])
            print(f"\nwhere the time goes: {name} (5 steps, top 15 by own time)")
            pstats.Stats(prof).sort_stats("tottime").print_stats(15)


if __name__ == "__main__":
    main()
