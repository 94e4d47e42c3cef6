"""`tinylora bench --family`: the LoRA-family rows (DoRA, VeRA, merged and unmerged forwards)."""

import numpy as np
import pytest

from tinylora import bench


def test_family_rows_are_added_only_when_asked_and_only_for_tinylora():
    plain = bench.bench_specs(["numpy"], [128], 2, 0, torch=True, peers=False, lora_r=8)
    family = bench.bench_specs(["numpy"], [128], 2, 0, torch=True, peers=False, lora_r=8, family=True)
    added = family[len(plain) :]
    assert family[: len(plain)] == plain
    assert [s["mode"] for s in added] == list(bench.FAMILY_MODES)
    assert {s["impl"] for s in added} == {"tinylora"} and {s["model"] for s in added} == {"gpt"}


@pytest.mark.parametrize("mode", bench.FAMILY_MODES)
def test_each_family_step_runs_and_reports_what_trains(mode):
    problem = bench.gpt_problem(n_embd=32, batch=2)
    step = bench.gpt_family_step(problem, mode, lora_r=2)
    step()
    layers = 2 * problem["config"]["n_layer"]  # q_proj and v_proj of every block
    expect = {
        "vera": layers * (32 + bench.steps.VERA_R),
        "dora": layers * (2 * (32 + 32) + 32),
        "lora-infer": layers * 2 * 64,
        "lora-merged-infer": layers * 2 * 64,
    }
    assert step.trainable == expect.get(mode, layers * (2 * 64 + 32))
    assert (step.optimizer is None) == mode.endswith("infer")


def test_merged_and_unmerged_forwards_compute_the_same_logits():
    from tinylora import lora

    problem = bench.gpt_problem(n_embd=32, batch=2)
    for kind in ("lora", "dora"):
        outs = []
        for mode in (f"{kind}-infer", f"{kind}-merged-infer"):
            step = bench.gpt_family_step(problem, mode, lora_r=2)
            model = step.model
            assert all(bool(layer.merged) == ("merged" in mode) for _, layer in lora.lora_layers(model))
            outs.append(model(problem["x"]).numpy())
        np.testing.assert_allclose(outs[0], outs[1], rtol=1e-4, atol=1e-5)


def test_ratios_put_dora_and_vera_against_lora_and_merged_against_unmerged():
    rows = [
        dict(model="gpt", mode=m, backend="numpy", width=128, impl="tinylora", median_ms=ms)
        for m, ms in (
            ("lora", 10.0),
            ("dora", 15.0),
            ("vera", 12.0),
            ("dora-infer", 8.0),
            ("dora-merged-infer", 4.0),
        )
    ]
    got = {r["what"]: r["ratio"] for r in bench.ratios(rows)}
    assert got["DoRA / LoRA"] == pytest.approx(1.5) and got["VeRA / LoRA"] == pytest.approx(1.2)
    assert got["merged / unmerged forward"] == pytest.approx(0.5)


def test_an_unknown_family_mode_is_refused():
    with pytest.raises(ValueError, match="mode must be one of"):
        bench.gpt_family_step(bench.gpt_problem(n_embd=32, batch=2), "lokr")
