"""The `tinylora` command end to end: info, demo (--fast), bench (--json), pretrain, and refusals."""

import json
import os
import subprocess
import sys

import pytest

from tinylora import bases, bench, cli

DEMO_FILES = {"results.md", "results.json", "samples.txt", "digits_loss.png", "shakespeare_loss.png"}


def run(*args, env=None):
    """Run the installed CLI in a subprocess, as a user would."""
    return subprocess.run(
        [sys.executable, "-m", "tinylora.cli", *args],
        capture_output=True,
        text=True,
        env=dict(os.environ, **(env or {})),
        timeout=900,
    )


def test_info_prints_versions_and_backend():
    out = run("info")
    assert out.returncode == 0, out.stderr
    for word in ("tinylora", "numpy", "backend", "BLAS"):
        assert word in out.stdout


def test_a_bad_backend_lists_the_valid_ones():
    for command in ("demo", "bench"):
        out = run(command, "--backend", "tpu")
        assert out.returncode == 2
        assert "invalid backend tpu: choose from numpy, cupy" in out.stderr


@pytest.mark.skipif("cupy" in __import__("tinylora").available_backends(), reason="a GPU is present")
def test_cupy_without_a_gpu_is_a_clear_error(tmp_path):
    out = run("bench", "--backend", "numpy,cupy", "--steps", "1")
    assert out.returncode != 0
    assert "cupy is not available here" in out.stderr and "pip install" in out.stderr
    demo = run("demo", "--fast", "--backend", "cupy", "--out", str(tmp_path / "r"), "--no-progress")
    assert demo.returncode == 2 and "CuPy" in demo.stderr
    assert not (tmp_path / "r").exists() and not list(tmp_path.iterdir())  # nothing half-written


@pytest.fixture(scope="module")
def demo_report(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo") / "report"
    result = run("demo", "--fast", "--out", str(out), "--no-progress", "--seed", "3")
    assert result.returncode == 0, result.stderr[-3000:]
    return out, result


def test_demo_fast_writes_a_complete_report(demo_report):
    out, result = demo_report
    assert DEMO_FILES <= {p.name for p in out.iterdir()}
    data = json.loads((out / "results.json").read_text())
    runs = data["runs"]
    assert {r["task"] for r in runs} == {"digits", "shakespeare"}
    assert {r["method"] for r in runs} >= {"full fine-tuning", "LoRA r=4", "LoRA r=16"}
    full = next(r for r in runs if r["task"] == "shakespeare" and r["r"] is None)
    lora16 = next(r for r in runs if r["task"] == "shakespeare" and r["r"] == 16)
    assert lora16["trainable_params"] < full["trainable_params"] / 10
    assert lora16["file_bytes"] < full["file_bytes"] / 10
    assert lora16["optimizer_state_bytes"] == 2 * 4 * lora16["trainable_params"]
    for r in runs:  # an adapter folder per LoRA run, with PEFT's two files
        if r["r"] is not None:
            folder = out / "adapters" / f"{r['task']}-lora-r{r['r']}"
            assert {p.name for p in folder.iterdir()} == {"adapter_config.json", "adapter_model.safetensors"}
    assert "trainable params" in result.stdout and "base + comedy adapter" in result.stdout
    assert data["machine"]["seed"] == 3 and data["machine"]["fast"] is True
    assert "| task |" in (out / "results.md").read_text()


def test_demo_refuses_a_non_empty_folder_unless_forced(demo_report):
    out, _ = demo_report
    marker = out / "results.md"
    before = marker.read_text()
    refused = run("demo", "--fast", "--out", str(out), "--no-progress")
    assert refused.returncode == 2 and "not empty" in refused.stderr and "--force" in refused.stderr
    assert marker.read_text() == before  # untouched
    assert not [p for p in out.parent.iterdir() if p.name.startswith(".report")]  # no temp folders left


def _tiny_demo(monkeypatch):
    from tinylora import demo

    monkeypatch.setattr(demo, "FAST_STEPS", {"digits": 2, "shakespeare": 1})
    monkeypatch.setattr(demo, "DIGITS_RUNS", [("LoRA r=1", 1)])
    monkeypatch.setattr(demo, "SHAKESPEARE_RUNS", [("LoRA r=4", 4)])
    return demo


def test_demo_force_replaces_an_earlier_report_whole(tmp_path, monkeypatch):
    demo = _tiny_demo(monkeypatch)
    out = tmp_path / "report"
    demo.run_demo(out, fast=True, progress=False, echo=lambda *a: None)
    assert (out / demo.MARKER).is_file()  # reports are marked so that --force can recognise them
    (out / "old.txt").write_text("old")
    demo.run_demo(out, fast=True, force=True, progress=False, echo=lambda *a: None)
    names = {p.name for p in out.iterdir()}
    assert "old.txt" not in names and "results.json" in names and demo.MARKER in names
    assert [p.name for p in tmp_path.iterdir()] == ["report"]  # no temporary or old folders left


def test_demo_force_never_deletes_a_folder_that_is_not_a_report(tmp_path, monkeypatch):
    demo = _tiny_demo(monkeypatch)
    docs = tmp_path / "Documents"
    docs.mkdir()
    (docs / "thesis.txt").write_text("years of work")
    with pytest.raises(FileExistsError, match="not a tinylora report .* --force will not delete them"):
        demo.run_demo(docs, fast=True, force=True, progress=False, echo=lambda *a: None)
    out = run("demo", "--fast", "--force", "--out", str(docs), "--no-progress")
    assert out.returncode == 2 and "not a tinylora report" in out.stderr and "Traceback" not in out.stderr
    assert [p.name for p in docs.iterdir()] == ["thesis.txt"] and (
        docs / "thesis.txt"
    ).read_text() == "years of work"
    assert [p.name for p in tmp_path.iterdir()] == ["Documents"]


def test_an_os_error_in_the_demo_is_one_line_exit_1_and_leaves_nothing(tmp_path, monkeypatch, capsys):
    import errno

    from tinylora import io

    _tiny_demo(monkeypatch)

    def full_disk(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(io._safetensors_numpy(), "save_file", full_disk)
    out = tmp_path / "report"
    assert cli.main(["demo", "--fast", "--out", str(out), "--no-progress"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert f"could not write {out}" in err and "No space left" in err and "free some disk space" in err
    assert list(tmp_path.iterdir()) == []


def test_a_demo_that_cannot_write_stops_before_training(tmp_path, monkeypatch, capsys):
    demo = _tiny_demo(monkeypatch)
    monkeypatch.setattr(demo, "train", lambda *a, **k: pytest.fail("trained before checking --out"))
    blocker = tmp_path / "file"
    blocker.write_text("x")
    assert cli.main(["demo", "--fast", "--out", str(blocker / "report"), "--no-progress"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and str(blocker) in err and "is a file" in err
    assert blocker.read_text() == "x" and [p.name for p in tmp_path.iterdir()] == ["file"]


def test_a_failing_demo_leaves_no_half_written_report(tmp_path, monkeypatch):
    from tinylora import demo

    def boom(*args, **kwargs):
        raise RuntimeError("interrupted mid-run")

    monkeypatch.setattr(demo, "_plot", boom)
    monkeypatch.setattr(demo, "FAST_STEPS", {"digits": 2, "shakespeare": 1})
    monkeypatch.setattr(demo, "DIGITS_RUNS", [("LoRA r=1", 1)])
    monkeypatch.setattr(demo, "SHAKESPEARE_RUNS", [("LoRA r=4", 4)])
    with pytest.raises(RuntimeError, match="interrupted"):
        demo.run_demo(tmp_path / "report", fast=True, progress=False, echo=lambda *a: None)
    assert list(tmp_path.iterdir()) == []


BENCH_ROW_FIELDS = {
    "model",
    "mode",
    "backend",
    "width",
    "impl",
    "median_ms",
    "p10_ms",
    "p90_ms",
    "min_ms",
    "steps",
    "trainable_params",
}


def test_bench_json_has_the_documented_fields():
    out = run("bench", "--json", "--steps", "2", "--warmup", "1", "--width", "32,64", "--rounds", "2")
    assert out.returncode == 0, out.stderr
    report = json.loads(out.stdout)
    assert set(report) == {"machine", "config", "results", "ratios"}
    assert report["config"]["rounds"] == 2
    rows = report["results"]
    for r in rows:  # each row: the round with the median time, and both rounds' medians
        assert len(r["rounds_median_ms"]) == 2 and r["median_ms"] in r["rounds_median_ms"]
        assert r["min_ms"] <= min(r["rounds_median_ms"])
    for r in report["ratios"]:  # each ratio: the median of the ratios measured within each round
        assert len(r["rounds"]) == 2 and r["ratio"] == pytest.approx(sum(r["rounds"]) / 2)
    assert all(BENCH_ROW_FIELDS <= set(r) for r in rows)
    gpt = [r for r in rows if r["model"] == "gpt" and r["impl"] == "tinylora"]
    assert {(r["mode"], r["width"]) for r in gpt} == {("full", 32), ("lora", 32), ("full", 64), ("lora", 64)}
    for r in gpt:
        assert r["optimizer_state_bytes"] == 2 * 4 * r["trainable_params"]  # AdamW moments, float32
        assert r["peak_step_bytes"] > 0
    lora32 = next(r for r in gpt if r["mode"] == "lora" and r["width"] == 32)
    assert lora32["trainable_params"] == 4 * 2 * 8 * (32 + 32)  # 4 layers, q and v, r = 8
    assert any(r["impl"] == "handwritten" for r in rows)
    assert any(r["what"] == "LoRA / full (tinylora)" for r in report["ratios"])
    assert all(r["median_ms"] > 0 for r in rows)


def test_bench_table_prints_ratios():
    out = run("bench", "--steps", "1", "--warmup", "0", "--width", "32", "--rounds", "1")
    assert out.returncode == 0, out.stderr
    assert "tinylora / handwritten" in out.stdout and "LoRA / full (tinylora)" in out.stdout


def test_pretrain_digits_into_a_folder_reproduces_a_loadable_base(tmp_path):
    out = run("pretrain", "digits", "--out", str(tmp_path), "--steps", "50", "--no-progress")
    assert out.returncode == 0, out.stderr
    base = bases.load_base("digits", tmp_path)
    assert base.card["recipe"]["steps"] == 50 and base.card["metrics"]["test"]["accuracy"] > 0.5


def _asset_bytes():
    return {p.name: p.read_bytes() for p in bases.ASSETS.iterdir()}


def test_pretrain_writes_into_the_package_only_when_asked(monkeypatch, capsys):
    before = _asset_bytes()
    monkeypatch.setattr(bases, "train", lambda *a, **k: pytest.fail("trained without a destination"))
    assert cli.main(["pretrain", "shakespeare", "--steps", "1"]) == 2
    err = capsys.readouterr().err
    assert "give --out FOLDER" in err and "--into-package" in err and str(bases.ASSETS) in err
    with pytest.raises(ValueError, match="give the folder to write to"):
        bases.pretrain("digits", None, steps=1)
    with pytest.raises(SystemExit):
        cli.build_parser().parse_args(["pretrain", "digits", "--out", "x", "--into-package"])
    assert _asset_bytes() == before


def test_pretrain_into_package_says_where_it_writes(monkeypatch, capsys):
    calls = []
    monkeypatch.setattr(
        bases,
        "pretrain",
        lambda name, directory, **k: (
            calls.append(directory) or {"parameters": 1, "training_seconds": 0.0, "metrics": {"loss": 1.0}}
        ),
    )
    assert cli.main(["pretrain", "digits", "--into-package", "--no-progress"]) == 0
    assert calls == [bases.ASSETS] and f"written to {bases.ASSETS}" in capsys.readouterr().out


def test_pretrain_checks_its_folder_before_training(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(bases, "train", lambda *a, **k: pytest.fail("trained before checking --out"))
    blocker = tmp_path / "file"
    blocker.write_text("x")
    assert cli.main(["pretrain", "digits", "--out", str(blocker / "base"), "--no-progress"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err and f"could not write {blocker / 'base'}" in err


def test_a_failed_pretrain_write_keeps_the_earlier_base_whole(tmp_path, monkeypatch, capsys):
    import errno

    from tinylora import io

    assert cli.main(["pretrain", "digits", "--out", str(tmp_path), "--steps", "2", "--no-progress"]) == 0
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    real = io._safetensors_numpy().save_file

    def full_disk(arrays, path, metadata=None):
        real(arrays, path, metadata=metadata)  # the file is written, then the disk fills up
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(io._safetensors_numpy(), "save_file", full_disk)
    assert cli.main(["pretrain", "digits", "--out", str(tmp_path), "--steps", "3", "--no-progress"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "No space left" in err and "digits-mlp.safetensors" in err
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before  # weights and card: both old
    assert bases.load_base("digits", tmp_path).card["recipe"]["steps"] == 2


def test_parser_rejects_bad_widths():
    with pytest.raises(SystemExit):
        cli.build_parser().parse_args(["bench", "--width", "0"])


@pytest.mark.parametrize(
    "argv, words",
    [
        (["bench", "--steps", "0"], "--steps: expected an integer >= 1, got 0"),
        (["bench", "--warmup", "-1"], "--warmup: expected an integer >= 0, got -1"),
        (["bench", "--lora-r", "0"], "--lora-r: expected an integer >= 1, got 0"),
        (["bench", "--steps", "many"], "--steps: expected an integer, got 'many'"),
        (["pretrain", "digits", "--steps", "0"], "--steps: expected an integer >= 1, got 0"),
        (["demo", "--seed", "-1"], "--seed: expected an integer >= 0, got -1"),
    ],
)
def test_bad_counts_are_refused_with_what_was_expected(argv, words, capsys):
    with pytest.raises(SystemExit):
        cli.build_parser().parse_args(argv)
    assert words in capsys.readouterr().err


def test_bench_refuses_widths_that_heads_cannot_split():
    out = run("bench", "--width", "128,130", "--steps", "1")
    assert out.returncode != 0
    assert "multiples of n_head=4" in out.stderr and "128,130" in out.stderr
    assert "Traceback" not in out.stderr
    with pytest.raises(ValueError, match="multiples of n_head=4"):
        bench.run_bench(widths=(130,), steps=1)


def test_time_steps_needs_at_least_one_step():
    with pytest.raises(ValueError, match="steps >= 1"):
        bench.time_steps(lambda: None, steps=0)
