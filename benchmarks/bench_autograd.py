"""Autograd overhead: per-op cost of a 1,000-op chain and the MLP training step.

    python benchmarks/bench_autograd.py [--steps 30] [--repeats 3]

Prints median milliseconds (p10-p90) for tinylora, the hand-written NumPy floor, and, when
importable, PyTorch eager, dezero and mygrad, all in one process, float32, with ratios.
"""

import argparse
import os
import platform

import numpy as np

import tinylora as tl
from tinylora import bench


def row(name, stats, ref=None):
    ratio = f"{stats['median_ms'] / ref:6.2f}x" if ref else ""
    return f"{name:<28} {stats['median_ms']:9.3f} ms  ({stats['p10_ms']:.3f}-{stats['p90_ms']:.3f})  {ratio}"


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--repeats", type=int, default=3, help="interleaved rounds; the median of each is kept")
    ap.add_argument("--ops", type=int, default=1000)
    args = ap.parse_args()
    torch = bench.torch_module()
    if torch is not None:
        torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", os.cpu_count())))
    blas = tl.backend.blas_info()
    print(
        f"tinylora {tl.__version__} | numpy {np.__version__} | {blas['library']} {blas['threads']} threads"
        f" | torch {torch.__version__ if torch else 'absent'} | {platform.processor() or platform.machine()}"
        f" | backend {tl.get_backend()}"
    )

    problem = bench.mlp_problem()
    steps = {
        "tinylora": bench.mlp_tinylora_step(problem),
        "floor (hand-written numpy)": bench.mlp_floor_step(problem),
    }
    if torch is not None:
        steps["pytorch eager"] = bench.mlp_torch_step(problem)
    for name, make in bench.PEERS.items():
        try:
            steps[name] = make(problem)
        except Exception as e:  # an optional peer that is missing or broken is reported and skipped
            print(f"({name} skipped: {type(e).__name__}: {e})")
    chain = {"tinylora": bench.op_chain_tinylora(args.ops)}
    if torch is not None:
        chain["pytorch eager"] = bench.op_chain_torch(args.ops)

    results = {k: [] for k in steps}
    chain_results = {k: [] for k in chain}
    for _ in range(args.repeats):  # interleave so drifts in machine load hit everyone alike
        for k, f in steps.items():
            results[k].append(bench.time_steps(f, args.steps))
        for k, f in chain.items():
            chain_results[k].append(bench.time_steps(f, max(5, args.steps // 3)))
    pick = lambda runs: sorted(runs, key=lambda s: s["median_ms"])[len(runs) // 2]

    print(f"\n(a) per-op overhead: forward+backward of {args.ops} ops on (8, 8) float32 tensors")
    ref = pick(chain_results["pytorch eager"])["median_ms"] if "pytorch eager" in chain else None
    for k in chain:
        s = pick(chain_results[k])
        print(
            f"{k:<28} {s['median_ms'] * 1000 / args.ops:7.2f} us/op"
            + (f"  {s['median_ms'] / ref:5.2f}x pytorch" if ref else "")
        )

    sizes = "-".join(map(str, bench.MLP_SIZES))
    print(f"\n(b) MLP {sizes} training step, batch {bench.MLP_BATCH}, float32, SGD (ratio to pytorch)")
    ref = pick(results["pytorch eager"])["median_ms"] if "pytorch eager" in results else None
    for k in steps:
        print(row(k, pick(results[k]), ref))
    floor = pick(results["floor (hand-written numpy)"])["median_ms"]
    print(f"tinylora / floor = {pick(results['tinylora'])['median_ms'] / floor:.2f}")


if __name__ == "__main__":
    main()
