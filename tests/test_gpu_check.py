"""tools/gpu_check.sh works before a GPU ever runs it: its dry run (NumPy standing in for CuPy,
small sizes) goes through every stage, and its report says what the targets need."""

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

from tinylora import bench

ROOT = Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location("gpu_check", ROOT / "tools" / "gpu_check.py")
gpu_check = importlib.util.module_from_spec(spec)
spec.loader.exec_module(gpu_check)


@pytest.fixture(scope="module")
def dry_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("gpu-check")
    cmd = ["sh", str(ROOT / "tools" / "gpu_check.sh"), "--dry-run", "--out", str(out), "--budget", "300"]
    done = subprocess.run(
        cmd, capture_output=True, text=True, env={**__import__("os").environ, "PYTHON": sys.executable}
    )
    return done, out


def test_the_dry_run_goes_through_every_stage(dry_run):
    done, out = dry_run
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-2000:]
    report = json.loads((out / "gpu_check.json").read_text())
    assert report["dry_run"] is True
    stages = report["stages"]
    assert list(stages) == ["cupy", "device", "equality", "bench", "chapter10", "suite"]
    assert {n: s["status"] for n, s in stages.items()} == {
        "cupy": "skipped",
        "device": "ok",
        "equality": "ok",
        "bench": "ok",
        "chapter10": "ok",
        "suite": "ok",
    }
    for name in ("equality", "suite"):  # the JUnit files were read: tests ran, none failed
        assert stages[name]["passed"] > 0 and stages[name]["failures"] == stages[name]["errors"] == 0
        assert (out / f"{name}.xml").exists()
    assert "TINYLORA_FAST = 1" in stages["chapter10"]["output"][0]
    assert stages["chapter10"]["timings_ms"]["numpy full"] > 0  # notebook 10's GPU cell ran and timed


def test_the_dry_run_times_gpu_rows_and_two_core_rows(dry_run):
    _, out = dry_run
    b = json.loads((out / "gpu_check.json").read_text())["bench"]
    rows = b["results"]
    assert b["errors"] == [] and b["config"]["rounds_done"] == 1
    gpu = {(r["mode"], r["width"]) for r in rows if r["model"] == "gpt" and "cores" not in r}
    cpu = {(r["mode"], r["width"]) for r in rows if r["model"] == "gpt" and r.get("cores") == 2}
    assert gpu == cpu == {("full", 32), ("lora", 32)}
    assert all(r["median_ms"] > 0 for r in rows)
    md = (out / "gpu_check.md").read_text()
    assert md.startswith("# GPU check (dry run") and "### Targets (width 512)" in md
    assert "| 32 | full |" in md and "| 32 | lora |" in md


def test_the_real_plan_times_the_rows_of_the_bench_command_most_valuable_first():
    gpu_rows, cpu_rows, rounds = gpu_check.bench_plan("cupy", dry_run=False, has_torch=True)
    command = bench.bench_specs(["cupy"], [128, 512, 1024], 20, 5, True, False, 8)
    key = lambda s: (s["model"], s["mode"], s["width"], s["impl"])
    assert sorted(map(key, gpu_rows)) == sorted(map(key, command)) and rounds == 3
    assert [key(s) for s in gpu_rows[:4]] == [
        ("gpt", "full", 512, "tinylora"),
        ("gpt", "full", 512, "pytorch"),
        ("gpt", "lora", 512, "tinylora"),
        ("gpt", "lora", 512, "pytorch"),
    ]
    assert {s["backend"] for s in cpu_rows} == {"numpy"} and {s["cores"] for s in cpu_rows} == {2}
    assert {s["width"] for s in cpu_rows if s["model"] == "gpt"} == {512, 128}
    assert {s["impl"] for s in cpu_rows} == {"tinylora", "handwritten", "pytorch"}


def synthetic_report(cupy_full, cupy_lora, torch_full, torch_lora):
    rows = [
        dict(
            model="gpt", mode="full", width=512, backend="numpy", impl="tinylora", cores=2, median_ms=1000.0
        ),
        dict(model="gpt", mode="lora", width=512, backend="numpy", impl="tinylora", cores=2, median_ms=700.0),
        dict(model="gpt", mode="full", width=512, backend="cupy", impl="tinylora", median_ms=cupy_full),
        dict(model="gpt", mode="lora", width=512, backend="cupy", impl="tinylora", median_ms=cupy_lora),
        dict(model="gpt", mode="full", width=512, backend="cupy", impl="pytorch", median_ms=torch_full),
        dict(model="gpt", mode="lora", width=512, backend="cupy", impl="pytorch", median_ms=torch_lora),
    ]
    ratios = [dict(r, cores=None) for r in bench.ratios(rows[2:])]
    config = dict(gpu_backend="cupy", gpu_steps=20, cpu_steps=3, cpu_cores=2, rounds_done=3)
    return {"dry_run": False, "stages": {}, "bench": {"results": rows, "ratios": ratios, "config": config}}


def test_the_targets_are_judged_from_the_measured_rows():
    md = gpu_check.markdown(
        synthetic_report(cupy_full=20.0, cupy_lora=35.0, torch_full=16.0, torch_lora=20.0)
    )
    assert "| GPT full step on cupy at least 30x faster than NumPy on 2 cores | 50.0x | met |" in md
    assert "| GPT lora step on cupy at least 30x faster than NumPy on 2 cores | 20.0x | not met |" in md
    assert "| GPT full step within 1.5x of PyTorch CUDA eager | 1.25 | met |" in md
    assert "| GPT lora step within 1.5x of PyTorch CUDA eager | 1.75 | not met |" in md
    assert "| LoRA / full step on the GPU, beside the CPU's | 1.75 (CPU 0.70) | reported |" in md
    assert "| 512 | full | 1000.00 ms | 20.00 ms | 16.00 ms | 1.25 | 50.0x |" in md


def test_the_cupy_extra_follows_the_drivers_cuda_major():
    assert gpu_check.extra_requirements(gpu_check.CUPY_EXTRAS[12])[0].startswith("cupy-cuda12x")
    assert gpu_check.extra_requirements(gpu_check.CUPY_EXTRAS[13])[0].startswith("cupy-cuda13x")
    with pytest.raises(ValueError, match="no extra 'gpu-cuda99'"):
        gpu_check.extra_requirements("gpu-cuda99")


def test_chapter10_cells_are_its_set_up_and_its_gpu_cells():
    code = gpu_check.chapter10_code(dry_run=True)
    compile(code, "chapter10", "exec")
    assert 'for name in ("numpy", "cupy")' in code and "import tinylora as tl" in code
    assert "plt.subplots" not in code and "measure_isolated" not in code  # plots and PyTorch cells left out
