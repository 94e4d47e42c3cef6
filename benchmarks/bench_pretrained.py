"""Real pretrained models: load time, memory, forward speed, generation and a LoRA step.

    python benchmarks/bench_pretrained.py [--tokens 64] [--repeats 5] [--skip-quantized]

all-MiniLM-L6-v2 (safetensors, fp32) and SmolLM2-135M-Instruct (GGUF, Q4_1), batch 1,
float32 on the active backend. Times are medians over --repeats runs after one warm-up.
"""

import argparse
import platform
import statistics
import time

import numpy as np

import tinylora as tl
from tinylora import lora, optim
from tinylora.models import pretrained


def timed(fn, repeats: int) -> float:
    """Median seconds of fn() over `repeats` runs after one warm-up run."""
    fn()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        tl.backend.synchronize()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def once(fn):
    t = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t


def mb(n: int) -> str:
    return f"{n / 2**20:8.1f} MiB"


def bench_minilm(tokens: int, repeats: int) -> None:
    from tinylora.models.minilm import MiniLM

    model, load_s = once(MiniLM.from_pretrained)
    n = sum(p.size for p in model.parameters())
    print(f"MiniLM-L6-v2   load {load_s:6.2f} s   {n / 1e6:.1f}M params   float32 {mb(4 * n)}")
    ids = np.random.default_rng(0).integers(1000, 30000, size=(1, tokens))
    mask = np.ones_like(ids, dtype=bool)
    with tl.no_grad():
        s = timed(lambda: model(ids, mask), repeats)
    print(f"  forward  batch 1 x {tokens} tokens: {1e3 * s:8.1f} ms  = {tokens / s:8.0f} tokens/s")
    texts = ["A man is eating food."] * 32
    s = timed(lambda: model.embed(texts), max(1, repeats // 2))
    print(f"  embed    32 short sentences:       {1e3 * s:8.1f} ms  = {32 / s:8.0f} sentences/s")


def bench_smollm2(tokens: int, repeats: int, quantized: bool) -> None:
    from tinylora.models.llama import SmolLM2

    model, load_s = once(SmolLM2.from_pretrained)
    mem = model.file_memory
    print(
        f"SmolLM2-135M   load {load_s:6.2f} s   {mem['parameters'] / 1e6:.1f}M params   "
        f"float32 {mb(mem['float32_bytes'])}   in the GGUF {mb(mem['quantized_bytes'])} "
        f"({mem['bits_per_weight']:.2f} bits/weight)"
    )
    for qtype, e in sorted(mem["by_type"].items()):
        print(f"  {qtype:5} {e['tensors']:4} tensors {e['elements'] / 1e6:7.1f}M weights  {mb(e['bytes'])}")
    ids = np.random.default_rng(0).integers(100, 49000, size=(1, tokens))
    with tl.no_grad():
        s = timed(lambda: model(ids), repeats)
    print(f"  forward  batch 1 x {tokens} tokens: {1e3 * s:8.1f} ms  = {tokens / s:8.0f} tokens/s")

    prompt = np.asarray([model.tokenizer.encode_chat("What is the capital of France?")])
    new = 16
    s = timed(lambda: model.generate(prompt, new, stop_ids=()), max(1, repeats // 2))
    print(f"  generate {prompt.shape[1]}-token prompt + {new} new (KV cache): {1e3 * s:8.1f} ms")

    lora.apply_lora(model, lora.LoRAConfig(r=8, alpha=16, target_modules=("q_proj", "v_proj")))
    params = [p for p in model.parameters() if p.requires_grad]
    opt = optim.AdamW(params, lr=1e-4)
    x, y = ids[:, :-1], ids[:, 1:]

    def step():
        _, loss = model(x, y)
        opt.zero_grad()
        loss.backward()
        opt.step()

    model.train()
    s = timed(step, repeats)
    n_train = sum(p.size for p in params)
    print(f"  LoRA step (r 8 on q,v; {n_train} trainable; seq {tokens - 1}; AdamW): {1e3 * s:8.1f} ms")

    if quantized:
        q, load_s = once(lambda: SmolLM2.from_pretrained(quantized=True))
        print(
            f"SmolLM2 4-bit base (QuantizedLinear)   load {load_s:6.2f} s   parameters held "
            f"{mb(q.parameter_bytes())} (float32 model: {mb(mem['float32_bytes'])})"
        )
        with tl.no_grad():
            s = timed(lambda: q(ids), max(1, repeats // 2))
        print(f"  forward  batch 1 x {tokens} tokens: {1e3 * s:8.1f} ms  = {tokens / s:8.0f} tokens/s")
        lora.apply_lora(q, lora.LoRAConfig(r=8, alpha=16, target_modules=("q_proj", "v_proj")))
        params = [p for p in q.parameters() if p.requires_grad]
        opt = optim.AdamW(params, lr=1e-4)

        def qstep():
            _, loss = q(x, y)
            opt.zero_grad()
            loss.backward()
            opt.step()

        q.train()
        s = timed(qstep, max(1, repeats // 2))
        print(f"  QLoRA step (same setup, 4-bit base dequantised per use): {1e3 * s:8.1f} ms")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tokens", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--skip-quantized", action="store_true")
    args = ap.parse_args()
    tl.keep_freed_memory()  # as `tinylora bench` does: freed blocks are reused, not page-faulted in again
    blas = tl.backend.blas_info()
    print(
        f"tinylora {tl.__version__} | numpy {np.__version__} | {blas['library']} {blas['threads']} threads"
        f" | {platform.processor() or platform.machine()} | backend {tl.get_backend()}"
    )
    for name in ("minilm", "smollm2"):
        if not pretrained.is_available(name):
            print(f"({name} not installed: {pretrained.INSTALL_MODELS})")
    if pretrained.is_available("minilm"):
        bench_minilm(args.tokens, args.repeats)
    if pretrained.is_available("smollm2"):
        bench_smollm2(args.tokens, args.repeats, quantized=not args.skip_quantized)


if __name__ == "__main__":
    main()
