"""The benchmarks compare like with like: every implementation of a benchmark step computes the
same update, and an isolated measurement reports what it measured or says why it failed."""

import importlib.util

import numpy as np
import pytest

from tinylora import bench

MAKERS = {"tinylora": bench.mlp_tinylora_step, "pytorch": bench.mlp_torch_step, **bench.PEERS}
INSTALLED = ["tinylora"] + [m for m in ("torch", "dezero", "mygrad") if importlib.util.find_spec(m)]


def small_problem():
    return bench.mlp_problem(sizes=(20, 16, 12, 5), batch=8, seed=3)


def after_steps(make, n=3):
    step = make(small_problem())
    for _ in range(n):
        step()
    return step.params()


def test_tinylora_mlp_step_matches_the_hand_written_step():
    ours, by_hand = after_steps(bench.mlp_tinylora_step), after_steps(bench.mlp_handwritten_step)
    start = small_problem()["weights"]
    assert len(ours) == len(by_hand) == 6
    for a, b in zip(ours, by_hand):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)
    assert not np.allclose(ours[0], start[0])  # the step did move the weights


@pytest.mark.parametrize(
    "impl", [i for i in ("pytorch", "dezero", "mygrad") if i.replace("pytorch", "torch") in INSTALLED]
)
def test_peer_mlp_steps_make_the_same_update(impl):
    ours, theirs = after_steps(bench.mlp_tinylora_step), after_steps(MAKERS[impl])
    assert len(theirs) == len(ours) == 6
    for a, b in zip(ours, theirs):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)


def test_op_chain_gradients_match_the_chain_rule():
    step = bench.op_chain_tinylora(n_ops=12, size=3)  # x <- tanh(x * w + b) - b, three times
    step()
    x0, w, b = (t.data.astype(np.float64) for t in step.leaves)
    xs = [x0]
    for _ in range(3):
        xs.append(np.tanh(xs[-1] * w + b) - b)
    g, gw, gb = np.ones_like(x0), np.zeros_like(w), np.zeros_like(b)
    for x in reversed(xs[:-1]):  # d/du tanh(u) = 1 - tanh(u)^2, then through u = x * w + b
        gu = g * (1 - np.tanh(x * w + b) ** 2)
        gw += gu * x
        gb += gu - g
        g = gu * w
    for t, expected in zip(step.leaves, (g, gw, gb)):
        np.testing.assert_allclose(t.grad, expected, rtol=1e-4, atol=1e-6)


def test_measure_runs_a_spec_in_its_own_process_and_reports_failures():
    spec = {
        "model": "mlp",
        "mode": "full",
        "impl": "handwritten",
        "backend": "numpy",
        "width": 512,
        "steps": 2,
        "warmup": 0,
    }
    row = bench.measure_isolated(spec)
    assert row["impl"] == "handwritten" and row["steps"] == 2 and 0 < row["min_ms"] <= row["median_ms"]
    with pytest.raises(RuntimeError, match="benchmark nonsense mlp failed"):
        bench.measure_isolated(dict(spec, impl="nonsense"))


def test_the_gpt_bias_only_step_trains_only_the_q_and_v_biases():
    step = bench.make_step({"model": "gpt", "impl": "tinylora", "mode": "bias-only", "width": 16})
    n_layer = bench.GPT_SHAPE["n_layer"]
    assert step.trainable == 2 * n_layer * 16  # q_proj.bias and v_proj.bias of every block
    params = [p for g in step.optimizer.param_groups for p in g["params"]]
    before = [p.numpy().copy() for p in params]
    step()
    changed = [p for p, b in zip(params, before) if not np.array_equal(p.numpy(), b)]
    assert len(changed) == 2 * n_layer and all(p.ndim == 1 and p.requires_grad for p in changed)


def test_pytorch_runs_on_cuda_when_tinylora_runs_on_cupy(monkeypatch):
    for name, device in (("numpy", "cpu"), ("cupy", "cuda")):
        monkeypatch.setattr(bench.peers.backend, "get_backend", lambda name=name: name)
        assert bench.torch_device() == device


def test_ratios_name_each_baseline_and_the_gpu_speed_up():
    rows = [
        dict(model="gpt", mode=m, width=64, backend=b, impl=i, median_ms=ms)
        for m, b, i, ms in [
            ("full", "numpy", "tinylora", 100.0),
            ("lora", "numpy", "tinylora", 75.0),
            ("bias-only", "numpy", "tinylora", 70.0),
            ("full", "cupy", "tinylora", 4.0),
            ("full", "cupy", "pytorch", 2.0),
        ]
    ] + [
        dict(model="mlp", mode="full", width=512, backend="numpy", impl=i, median_ms=ms)
        for i, ms in [("tinylora", 5.0), ("handwritten", 4.0)]
    ]
    got = {(r["what"], r["mode"], r["backend"]): round(r["ratio"], 3) for r in bench.ratios(rows)}
    assert got == {
        ("LoRA / full (tinylora)", "lora", "numpy"): 0.75,
        ("bias-only / full (tinylora)", "bias-only", "numpy"): 0.7,
        ("numpy / cupy (tinylora)", "full", "cupy"): 25.0,
        ("tinylora / pytorch", "full", "cupy"): 2.0,
        ("tinylora / handwritten", "full", "numpy"): 1.25,
    }
