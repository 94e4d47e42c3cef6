"""Time the GPT full and LoRA steps of two tinylora trees, alternating in rounds.

    python benchmarks/compare_trees.py OLD_TREE NEW_TREE ROUNDS

Each row runs in a fresh process with PYTHONPATH set to one tree, so both versions see the same
machine state; prints each tree's median and the median of the within-round ratios new / old.
"""

import json
import os
import statistics
import subprocess
import sys

if len(sys.argv) != 4 or not sys.argv[3].isdigit() or int(sys.argv[3]) < 1:
    sys.exit(f"usage: compare_trees.py OLD_TREE NEW_TREE ROUNDS (a positive integer); got {sys.argv[1:]}")
OLD, NEW, ROUNDS = sys.argv[1], sys.argv[2], int(sys.argv[3])
for tree in (OLD, NEW):
    if not os.path.isfile(os.path.join(tree, "tinylora", "__init__.py")):
        sys.exit(f"compare_trees.py: {tree!r} holds no tinylora/ package")
SPECS = [
    dict(backend="numpy", steps=10, warmup=2, model="gpt", mode="full", width=128, impl="tinylora"),
    dict(backend="numpy", steps=10, warmup=2, model="gpt", mode="lora", width=128, impl="tinylora", r=8),
]
CHILD = (
    "import json, sys, tinylora as tl\nfrom tinylora import bench\n"
    "getattr(tl, 'keep_freed_memory', lambda: None)()\n"
    "r = bench.measure(json.loads(sys.argv[1])); print(json.dumps(r['median_ms']))"
)
res = {}
for rnd in range(ROUNDS):
    order = [("old", OLD), ("new", NEW)] if rnd % 2 == 0 else [("new", NEW), ("old", OLD)]
    for i, spec in enumerate(SPECS):
        for name, path in order:
            env = dict(os.environ, PYTHONPATH=path, TINYLORA_BACKEND="numpy")
            out = subprocess.run(
                [sys.executable, "-c", CHILD, json.dumps(spec)],
                capture_output=True,
                text=True,
                env=env,
                cwd="/tmp",
            )
            if out.returncode:
                sys.exit(out.stderr[-2000:])
            res.setdefault((name, i), []).append(float(out.stdout.strip().splitlines()[-1]))
for i, spec in enumerate(SPECS):
    o, n = res[("old", i)], res[("new", i)]
    r = [b / a for a, b in zip(o, n)]
    print(
        f"gpt {spec['mode']}: old {statistics.median(o):.2f} new {statistics.median(n):.2f} ratio {statistics.median(r):.3f} ({', '.join(f'{x:.2f}' for x in r)})"
    )
