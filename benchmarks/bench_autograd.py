"""Autograd overhead: per-op cost of a 1,000-op chain and the MLP training step.

    python benchmarks/bench_autograd.py [--steps 30] [--repeats 3] [--ops 1000]

Prints median milliseconds (p10-p90) for tinylora, the hand-written step (the same MLP step
in plain NumPy, no autograd) and, where installed, PyTorch eager, dezero and mygrad, float32.
Each measurement runs in a fresh process that holds one library only; rounds are interleaved
so machine noise hits everyone alike, and each figure is the median over rounds.
"""

import argparse
import statistics

from tinylora import bench


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--repeats", type=int, default=3, help="interleaved rounds; the median of each is kept")
    ap.add_argument("--ops", type=int, default=1000)
    args = ap.parse_args()
    torch = bench.torch_module()
    print(bench.machine_info(torch))

    base = {"backend": "numpy", "mode": "full", "warmup": 3}
    mlp = ["tinylora", "handwritten"] + (["pytorch"] if torch else []) + list(bench.PEERS)
    chain = ["tinylora"] + (["pytorch"] if torch else []) + list(bench.PEERS)
    specs = {
        ("mlp", i): dict(base, model="mlp", impl=i, width=bench.MLP_SIZES[1], steps=args.steps) for i in mlp
    }
    specs.update(
        {
            ("ops", i): dict(
                base, model="ops", impl=i, width=8, n_ops=args.ops, steps=max(5, args.steps // 3)
            )
            for i in chain
        }
    )
    runs = {k: [] for k in specs}
    for _ in range(args.repeats):
        for k, spec in list(specs.items()):
            try:
                runs[k].append(bench.measure_isolated(spec))
            except RuntimeError as e:  # an optional peer that is missing or broken is reported and dropped
                print(f"({k[1]} skipped: {str(e).splitlines()[-1]})")
                del specs[k], runs[k]
    ms = {k: statistics.median(row["median_ms"] for row in v) for k, v in runs.items()}
    best = {k: min(row["min_ms"] for row in v) for k, v in runs.items()}

    print(f"\n(a) per-op overhead: forward+backward of {args.ops} ops on (8, 8) float32 tensors")
    for i in (k[1] for k in specs if k[0] == "ops"):
        ratio = f"  {ms['ops', i] / ms['ops', 'pytorch']:5.2f}x pytorch" if torch else ""
        print(f"  {i:<10} {ms['ops', i] * 1000 / args.ops:7.2f} us/op{ratio}")

    sizes = "-".join(map(str, bench.MLP_SIZES))
    print(f"\n(b) MLP {sizes} training step, batch {bench.MLP_BATCH}, float32, SGD")
    for k in (k for k in specs if k[0] == "mlp"):
        ratio = f"  {ms[k] / ms['mlp', 'pytorch']:5.2f}x pytorch" if torch else ""
        rounds = ", ".join(f"{row['median_ms']:.2f}" for row in runs[k])
        print(f"  {k[1]:<10} {ms[k]:9.3f} ms{ratio}   best step {best[k]:.3f} ms   (rounds: {rounds})")
    print(f"  tinylora / handwritten = {ms['mlp', 'tinylora'] / ms['mlp', 'handwritten']:.2f}")
    for peer in ("pytorch", *bench.PEERS):
        if ("mlp", peer) in ms:
            print(
                f"  tinylora / {peer} = {ms['mlp', 'tinylora'] / ms['mlp', peer]:.2f} "
                f"(best steps: {best['mlp', 'tinylora'] / best['mlp', peer]:.2f})"
            )


if __name__ == "__main__":
    main()
