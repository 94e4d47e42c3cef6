"""The GPU path in one call: install CuPy, check it, time it against PyTorch CUDA, write it up.

    tools/gpu_check.sh [--out DIR] [--budget 480] [--dry-run]

On a machine with an NVIDIA GPU, in this order (the most valuable first, each stage under a
timeout, the report rewritten after every stage and every timed row):

  cupy       the CuPy extra that matches the driver's CUDA major (nvidia-smi), if not importable
  device     nvidia-smi, `tinylora info` on cupy, PyTorch's view of the device
  equality   tests/test_backend_equality.py and tests/test_backend.py (NumPy vs CuPy)
  bench      the rows of `tinylora bench --backend numpy,cupy --compare-torch --width 128,512,1024
             --json`: CuPy and PyTorch CUDA at 512, 128, 1024 (then more rounds while time lasts),
             NumPy and PyTorch CPU pinned to 2 cores at 512 and 128 (the targets' "2 cores")
  chapter10  notebook 10's GPU cells (its set-up cells and every code cell that names cupy)
  suite      the whole test suite with TINYLORA_BACKEND=cupy (in parallel if pytest-xdist is here)

It writes gpu_check.json (everything), gpu_check.md (tables for benchmarks/README.md and the
targets), gpu_check.log, and the JUnit XML of each test stage into --out (default: $OUT, else
./gpu-check). --dry-run does the same on the CPU with NumPy standing in for CuPy, at small
sizes, so CI proves the script works.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import re
import shutil
import signal
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tinylora import bench  # noqa: E402  (after the repo root is on the path)

CUPY_EXTRAS = {12: "gpu-cuda12", 13: "gpu-cuda13"}
CPU_CORES = 2  # the targets compare the GPU with NumPy on 2 cores (the course's machines)
TARGET_SPEEDUP, TARGET_VS_TORCH, TARGET_WIDTH = 30.0, 1.5, 512


class Report:
    """The JSON report, rewritten in full after every change (a killed run keeps what it had)."""

    def __init__(self, out: Path, dry_run: bool):
        self.out = out
        out.mkdir(parents=True, exist_ok=True)
        self.data = {"dry_run": dry_run, "started": time.strftime("%Y-%m-%d %H:%M:%S %Z"), "stages": {}}
        self.log_path = out / "gpu_check.log"
        self.log_path.write_text("")

    def log(self, text: str) -> None:
        print(text, flush=True)
        with self.log_path.open("a") as f:
            f.write(text + "\n")

    def stage(self, name: str, **fields) -> None:
        self.data["stages"].setdefault(name, {}).update(fields)
        self.save()

    def save(self) -> None:
        tmp = self.out / "gpu_check.json.tmp"
        tmp.write_text(json.dumps(self.data, indent=2, default=str))
        tmp.replace(self.out / "gpu_check.json")
        md = self.out / "gpu_check.md.tmp"
        md.write_text(markdown(self.data))
        md.replace(self.out / "gpu_check.md")


def run(cmd, timeout: float, env=None, report: Report | None = None) -> dict:
    """Run a command with a timeout; its output goes to the log. Returns rc, seconds, tail."""
    t0 = time.monotonic()
    try:  # a session of its own, so a timeout ends its children too (pytest-xdist workers, bench rows)
        p = subprocess.Popen(
            cmd,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env=env,
            cwd=ROOT,
            start_new_session=True,
        )
    except OSError as e:
        p, rc, output = None, "not run", f"{type(e).__name__}: {e}"
    if p is not None:
        try:
            output, _ = p.communicate(timeout=max(1.0, timeout))
            rc = p.returncode
        except subprocess.TimeoutExpired:
            os.killpg(p.pid, signal.SIGKILL)
            output, _ = p.communicate()
            rc = "timeout"
    seconds = round(time.monotonic() - t0, 1)
    if report is not None:
        report.log(f"$ {' '.join(map(str, cmd))}   [{rc}, {seconds} s]\n{output[-6000:]}")
    return {"rc": rc, "seconds": seconds, "tail": output[-2000:]}


def env_with(**extra) -> dict:
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    env.update({k: str(v) for k, v in extra.items()})
    return env


# ---- stages ---------------------------------------------------------------------------------------


def nvidia_smi() -> dict:
    """GPU name, driver, memory and the CUDA version the driver supports, from nvidia-smi."""
    if not shutil.which("nvidia-smi"):
        return {"found": False}
    query = ["nvidia-smi", "--query-gpu=name,driver_version,memory.total", "--format=csv,noheader"]
    try:
        q = subprocess.run(query, capture_output=True, text=True, timeout=30)
        head = subprocess.run(["nvidia-smi"], capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.TimeoutExpired) as e:
        return {"found": False, "error": f"{type(e).__name__}: {e}"}
    if q.returncode != 0 or not q.stdout.strip():
        return {"found": False, "error": (q.stdout + q.stderr).strip()[-300:]}
    cuda = re.search(r"CUDA Version:\s*([\d.]+)", head)
    name, driver, memory = ([*map(str.strip, q.stdout.splitlines()[0].split(","))] + ["", "", ""])[:3]
    return {
        "found": True,
        "name": name,
        "driver": driver,
        "memory": memory,
        "cuda": cuda.group(1) if cuda else None,
        "cuda_major": int(cuda.group(1).split(".")[0]) if cuda else None,
    }


def extra_requirements(extra: str) -> list:
    """The requirement strings of one optional-dependency extra in pyproject.toml."""
    text = (ROOT / "pyproject.toml").read_text()
    m = re.search(rf"^{re.escape(extra)}\s*=\s*\[(.*?)\]", text, re.M | re.S)
    if not m:
        raise ValueError(f"pyproject.toml has no extra {extra!r}")
    return re.findall(r'"([^"]+)"', m.group(1))


CUPY_PROBE = "import cupy; n = cupy.cuda.runtime.getDeviceCount(); print(cupy.__version__, n)"


def stage_cupy(report: Report, timeout: float, dry_run: bool) -> str:
    """Make CuPy importable (installing the matching extra if needed); returns the backend to test."""
    if dry_run:
        report.stage("cupy", status="skipped", detail="dry run: NumPy stands in for CuPy")
        return "numpy"
    smi = nvidia_smi()
    report.data["gpu"] = smi
    probe = run([sys.executable, "-c", CUPY_PROBE], min(timeout, 60), env_with(), report)
    installed = None
    if probe["rc"] != 0:
        major = smi.get("cuda_major")
        extra = CUPY_EXTRAS.get(major, "gpu-cuda13" if (major or 0) > 13 else "gpu-cuda12")
        reqs = extra_requirements(extra)
        installed = {"extra": extra, "requirements": reqs}
        pip_cmd = [sys.executable, "-m", "pip", "install", "-q", "--retries", "1", "--timeout", "20", *reqs]
        pip = run(pip_cmd, timeout, env_with(), report)
        installed["pip"] = pip["rc"]
        probe = run([sys.executable, "-c", CUPY_PROBE], 60, env_with(), report)
    ok = probe["rc"] == 0
    report.stage(
        "cupy",
        status="ok" if ok else "failed",
        cupy=probe["tail"].strip().splitlines()[-1] if ok else None,
        installed=installed,
        detail=None if ok else probe["tail"][-800:],
    )
    return "cupy" if ok else ""


def stage_device(report: Report, backend: str, timeout: float, dry_run: bool) -> None:
    """What the run ran on: `tinylora info` on the tested backend, and PyTorch's device."""
    info = run(
        [sys.executable, "-m", "tinylora.cli", "info"], timeout, env_with(TINYLORA_BACKEND=backend), report
    )
    torch_probe = (
        "import torch; print(torch.__version__, torch.cuda.is_available(), "
        "torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'no CUDA')"
    )
    tq = None if dry_run else run([sys.executable, "-c", torch_probe], timeout, env_with(), report)
    report.data["device"] = {
        "tinylora_info": info["tail"].strip(),
        "torch": tq["tail"].strip().splitlines()[-1] if tq and tq["rc"] == 0 else None,
        "python": platform.python_version(),
        "cpu_count": os.cpu_count(),
        "commit": git_commit(),
    }
    report.stage("device", status="ok" if info["rc"] == 0 else "failed", seconds=info["seconds"])


def git_commit() -> str | None:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=ROOT
        )
        dirty = subprocess.run(["git", "status", "--porcelain"], capture_output=True, text=True, cwd=ROOT)
        return out.stdout.strip() + (" (with local changes)" if dirty.stdout.strip() else "") or None
    except OSError:
        return None


def junit_summary(path: Path) -> dict:
    """Counts and the first failures of a pytest JUnit XML file."""
    if not path.exists():
        return {"parsed": False}
    root = ET.parse(path).getroot()
    suites = [root] if root.tag == "testsuite" else list(root.iter("testsuite"))
    total = {k: sum(int(s.get(k, 0)) for s in suites) for k in ("tests", "failures", "errors", "skipped")}
    failed, skip_reasons = [], {}
    for case in root.iter("testcase"):
        name = f"{case.get('classname', '')}::{case.get('name', '')}"
        for tag in ("failure", "error"):
            el = case.find(tag)
            if el is not None:
                failed.append(
                    f"{name}: {(el.get('message') or '').splitlines()[0][:200] if el.get('message') else tag}"
                )
        sk = case.find("skipped")
        if sk is not None:
            reason = (sk.get("message") or "")[:160]
            skip_reasons[reason] = skip_reasons.get(reason, 0) + 1
    total["passed"] = total["tests"] - total["failures"] - total["errors"] - total["skipped"]
    return dict(total, parsed=True, failed=failed[:40], skip_reasons=skip_reasons)


def stage_pytest(
    report: Report, name: str, args: list, timeout: float, backend: str | None, parallel=False
) -> None:
    xml = report.out / f"{name}.xml"
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-rfE", f"--junitxml={xml}", *args]
    if parallel and _importable("xdist"):
        cmd += ["-n", str(min(8, os.cpu_count() or 1))]
    if _importable("pytest_timeout"):
        cmd += ["--timeout", "120"]  # one hung test must not eat the whole budget
    env = env_with(**({"TINYLORA_BACKEND": backend} if backend else {}))
    if not backend:
        env.pop("TINYLORA_BACKEND", None)
    result = run(cmd, timeout, env, report)
    summary = junit_summary(xml)
    status = "timeout" if result["rc"] == "timeout" else ("ok" if result["rc"] == 0 else "failed")
    report.stage(name, status=status, seconds=result["seconds"], backend=backend or "default", **summary)


def _importable(module: str) -> bool:
    return subprocess.run([sys.executable, "-c", f"import {module}"], capture_output=True).returncode == 0


def chapter10_code(dry_run: bool) -> str:
    """Notebook 10's set-up cells and every code cell that names cupy, as one script."""
    src = next((ROOT / "notebooks" / "src").glob("10-*.py")).read_text()
    cells = re.split(r"^# %%.*$", src, flags=re.M)
    heads = re.findall(r"^# %%.*$", src, flags=re.M)
    picked, preamble = [], True
    for head, body in zip(heads, cells[1:]):
        if "[markdown]" in head:
            if re.search(r"^# ## ", body, re.M):
                preamble = False
            continue
        if preamble or "cupy" in body:
            picked.append(body)
    keep = ["import json"]  # plots go to matplotlib's Agg backend (MPLBACKEND), never shown
    if dry_run:  # small sizes: the benchmark GPT at width 32
        keep += [
            "import functools",
            "from tinylora import bench",
            "bench.gpt_problem = functools.partial(bench.gpt_problem, n_embd=32)",
        ]
    tail = [
        "print('CH10_TIMINGS=' + json.dumps({' '.join(k): v for k, v in globals().get('timings', {}).items()}))"
    ]
    return "\n".join(keep + picked + tail)


def stage_chapter10(report: Report, timeout: float, dry_run: bool) -> None:
    code = chapter10_code(dry_run)
    env = env_with(MPLBACKEND="Agg", **({"TINYLORA_FAST": "1"} if dry_run else {}))
    env.pop("TINYLORA_BACKEND", None)
    result = run([sys.executable, "-c", code], timeout, env, report)
    m = re.search(r"^CH10_TIMINGS=(.*)$", result["tail"], re.M)
    printed = [ln for ln in result["tail"].splitlines() if not ln.startswith("CH10_TIMINGS=")]
    report.stage(
        "chapter10",
        status="ok" if result["rc"] == 0 else ("timeout" if result["rc"] == "timeout" else "failed"),
        seconds=result["seconds"],
        timings_ms=json.loads(m.group(1)) if m else None,
        output=printed[-20:],
    )


@contextlib.contextmanager
def pinned(cores: int):
    """Run what follows (and the processes it starts) on `cores` CPUs with as many BLAS threads."""
    names = ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS")
    saved = {k: os.environ.get(k) for k in names}
    cpus = os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") else None
    os.environ.update({k: str(cores) for k in names})
    if cpus and len(cpus) > cores:
        os.sched_setaffinity(0, sorted(cpus)[:cores])
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        if cpus:
            os.sched_setaffinity(0, cpus)


def bench_plan(gpu: str, dry_run: bool, has_torch: bool) -> tuple:
    """(GPU rows, CPU rows, GPU rounds): the specs of `tinylora bench`, most valuable first."""
    widths = [32] if dry_run else [TARGET_WIDTH, 128, 1024]
    steps, warmup = (2, 1) if dry_run else (20, 5)
    gpu_rows = bench.bench_specs([gpu], widths, steps, warmup, has_torch, False, 8)
    gpu_rows.sort(key=lambda s: (s["model"] != "gpt", widths.index(s["width"]) if s["model"] == "gpt" else 0))
    cpu_widths = [32] if dry_run else [TARGET_WIDTH, 128]
    cpu_rows = bench.bench_specs(
        ["numpy"], cpu_widths, 1 if dry_run else 3, 0 if dry_run else 1, has_torch, False, 8
    )
    cpu_rows = [dict(s, cores=CPU_CORES) for s in cpu_rows if not (dry_run and s["model"] == "mlp")]
    gpu_rows = [s for s in gpu_rows if not (dry_run and s["model"] == "mlp")]  # the dry run: GPT rows only
    cpu_rows.sort(
        key=lambda s: (s["model"] != "gpt", cpu_widths.index(s["width"]) if s["model"] == "gpt" else 0)
    )
    return gpu_rows, cpu_rows, 1 if dry_run else 3


def stage_bench(report: Report, gpu: str, timeout: float, dry_run: bool) -> None:
    """Time every row in a process of its own; GPU rows in rounds while the time lasts."""
    deadline = time.monotonic() + timeout
    has_torch = not dry_run and bench.torch_module() is not None
    gpu_rows, cpu_rows, rounds = bench_plan(gpu, dry_run, has_torch)
    per_round, cpu_results, durations, errors = [], [], {}, []
    config = {
        "gpu_backend": gpu,
        "gpu_steps": gpu_rows[0]["steps"],
        "gpu_warmup": gpu_rows[0]["warmup"],
        "cpu_steps": cpu_rows[0]["steps"] if cpu_rows else None,
        "cpu_cores": CPU_CORES,
        "compare_torch": has_torch,
        "gpt": bench.GPT_SHAPE,
        "gpt_batch": bench.GPT_BATCH,
        "lora_r": 8,
        "command": "tinylora bench --backend numpy,cupy --compare-torch --width 128,512,1024 --json (its rows)",
    }

    def timed(spec, into: list) -> bool:
        key = bench.row_key(spec)
        left = deadline - time.monotonic()
        if left < 2 * durations.get(key, 5.0):
            errors.append(f"{key}: skipped, {left:.0f} s left in the stage")
            return False
        t0 = time.monotonic()
        try:
            into.append(bench.measure_isolated(spec, timeout=left))
        except RuntimeError as e:
            errors.append(str(e)[-400:])
            report.log(f"  bench row failed: {e}")
        durations[key] = time.monotonic() - t0
        row = into[-1] if into and bench.row_key(into[-1]) == key else None
        if row:
            report.log(f"  {key}: {row['median_ms']:.2f} ms ({durations[key]:.1f} s)")
        save()
        return True

    def save():
        done = [r for r in per_round if r]
        gpu_ratios = [bench.ratios(r) for r in done]  # within each GPU round; the CPU rows apart
        report.data["bench"] = {
            "machine": bench.machine_info(bench.torch_module() if has_torch else None),
            "config": dict(config, rounds_done=len(done)),
            "results": (bench.median_rows(done) if done else []) + cpu_results,
            "ratios": (bench.median_ratios(gpu_ratios) if gpu_ratios and gpu_ratios[0] else [])
            + [dict(r, cores=CPU_CORES) for r in bench.ratios(cpu_results)],
            "errors": errors,
        }
        report.stage("bench", status="running", seconds=round(timeout - (deadline - time.monotonic()), 1))

    per_round.append([])
    for spec in gpu_rows:
        timed(spec, per_round[0])
    with pinned(CPU_CORES):
        for spec in cpu_rows:
            timed(spec, cpu_results)
    for _ in range(rounds - 1):
        per_round.append([])
        for spec in gpu_rows:
            if not timed(spec, per_round[-1]):
                break
        if len(per_round[-1]) < len(per_round[0]):  # a partial round would skew the medians
            per_round.pop()
            break
    save()
    status = "ok" if not any("failed" in e or "timed out" in e for e in errors) else "partial"
    report.stage("bench", status=status)


# ---- the Markdown report ------------------------------------------------------------------------


def _ms(row) -> str:
    return f"{row['median_ms']:.2f} ms" if row else "-"


def _find(rows, **key):
    return next((r for r in rows if all(r.get(k) == v for k, v in key.items())), None)


def _ratio(ratios, what, backend, width, mode, cores=None):
    r = _find(ratios, what=what, backend=backend, width=width, mode=mode, cores=cores)
    return r["ratio"] if r else None


def _fmt(x, spec=".2f", unit="") -> str:
    return "-" if x is None else format(x, spec) + unit


def markdown(data: dict) -> str:
    """The run as Markdown: device, tests, the GPT and MLP tables, LoRA/full, targets, chapter 10."""
    lines = [
        "# GPU check" + (" (dry run: NumPy standing in for CuPy, small sizes)" if data.get("dry_run") else "")
    ]
    lines.append("")
    gpu, dev = data.get("gpu") or {}, data.get("device") or {}
    if gpu.get("found"):
        lines.append(f"Device: {gpu['name']} ({gpu['memory']}), driver {gpu['driver']}, CUDA {gpu['cuda']}.")
    if dev:
        lines.append(
            f"Python {dev.get('python')}, {dev.get('cpu_count')} CPUs, PyTorch {dev.get('torch') or 'absent'}, "
            f"tinylora at {dev.get('commit')}; started {data.get('started')}."
        )
    lines += ["", "| stage | status | seconds | detail |", "|---|---|---|---|"]
    for name, st in data.get("stages", {}).items():
        detail = ""
        if "tests" in st:
            detail = f"{st['passed']} passed, {st['failures']} failed, {st['errors']} errors, {st['skipped']} skipped"
        elif st.get("detail"):
            detail = str(st["detail"]).splitlines()[0][:120]
        elif st.get("cupy"):
            detail = f"CuPy {st['cupy']}"
        lines.append(f"| {name} | {st.get('status')} | {st.get('seconds', '')} | {detail} |")
    for name, st in data.get("stages", {}).items():
        if st.get("failed"):
            lines += ["", f"Failures in {name} (first {len(st['failed'])}):", ""]
            lines += [f"- `{f}`" for f in st["failed"]]
    b = data.get("bench")
    if b and b.get("results"):
        lines += bench_tables(b)
        lines += targets(b)
    ch = (data.get("stages") or {}).get("chapter10")
    if ch and ch.get("output"):
        cpus = (data.get("device") or {}).get("cpu_count")
        lines += [
            "",
            "### Chapter 10's GPU cells",
            "",
            f"(NumPy here on all {cpus} CPUs of this machine)",
            "",
        ]
        lines += ["```"] + ch["output"] + ["```"]
    return "\n".join(lines) + "\n"


def bench_tables(b: dict) -> list:
    rows, ratios, gpu = b["results"], b["ratios"], b["config"]["gpu_backend"]
    cfg = b["config"]
    out = [
        "",
        f"### The GPT step on {gpu} (median of {cfg.get('rounds_done')} round(s) of {cfg['gpu_steps']} steps) "
        f"and NumPy on {cfg['cpu_cores']} cores ({cfg['cpu_steps']} steps)",
        "",
        f"| width | mode | NumPy, {cfg['cpu_cores']} cores | tinylora on {gpu} | PyTorch CUDA | "
        f"tinylora / PyTorch | speed-up over NumPy |",
        "|---|---|---|---|---|---|---|",
    ]
    widths = sorted({r["width"] for r in rows if r["model"] == "gpt"})
    for w in widths:
        for mode in ("full", "lora"):
            cpu = _find(
                rows,
                model="gpt",
                mode=mode,
                width=w,
                backend="numpy",
                impl="tinylora",
                cores=cfg["cpu_cores"],
            )
            ours = _find(rows, model="gpt", mode=mode, width=w, backend=gpu, impl="tinylora", cores=None)
            torch = _find(rows, model="gpt", mode=mode, width=w, backend=gpu, impl="pytorch", cores=None)
            vs = _ratio(ratios, "tinylora / pytorch", gpu, w, mode)
            speed = cpu["median_ms"] / ours["median_ms"] if cpu and ours else None
            out.append(
                f"| {w} | {mode} | {_ms(cpu)} | {_ms(ours)} | {_ms(torch)} | {_fmt(vs)} | {_fmt(speed, '.1f', 'x')} |"
            )
    out += [
        "",
        "LoRA step / full step:",
        "",
        f"| width | tinylora {gpu} | PyTorch CUDA | tinylora CPU | PyTorch CPU |",
    ]
    out.append("|---|---|---|---|---|")
    for w in widths:
        cells = [
            _ratio(ratios, "LoRA / full (tinylora)", gpu, w, "lora"),
            _ratio(ratios, "LoRA / full (pytorch)", gpu, w, "lora"),
            _cpu_ratio(rows, w, "tinylora", cfg["cpu_cores"]),
            _cpu_ratio(rows, w, "pytorch", cfg["cpu_cores"]),
        ]
        out.append(f"| {w} | " + " | ".join(_fmt(c) for c in cells) + " |")
    mlp = [r for r in rows if r["model"] == "mlp"]
    if mlp:
        out += ["", "MLP 784-512-512-10 step, batch 256:", "", "| backend | impl | median |", "|---|---|---|"]
        out += [
            f"| {r['backend']}{' (2 cores)' if r.get('cores') else ''} | {r['impl']} | {_ms(r)} |"
            for r in mlp
        ]
    if b.get("errors"):
        out += ["", "Rows not measured:", ""] + [f"- {e.splitlines()[0][:200]}" for e in b["errors"]]
    return out


def _cpu_ratio(rows, width, impl, cores):
    full = _find(rows, model="gpt", mode="full", width=width, backend="numpy", impl=impl, cores=cores)
    lora = _find(rows, model="gpt", mode="lora", width=width, backend="numpy", impl=impl, cores=cores)
    return lora["median_ms"] / full["median_ms"] if full and lora else None  # one round: its own ratio


def targets(b: dict) -> list:
    """Issue 17's targets, each with what was measured; measured on a GPU, never checked in CI."""
    rows, ratios, gpu, cores = b["results"], b["ratios"], b["config"]["gpu_backend"], b["config"]["cpu_cores"]
    out = ["", f"### Targets (width {TARGET_WIDTH})", "", "| target | measured | |", "|---|---|---|"]
    for mode in ("full", "lora"):
        cpu = _find(
            rows, model="gpt", mode=mode, width=TARGET_WIDTH, backend="numpy", impl="tinylora", cores=cores
        )
        ours = _find(
            rows, model="gpt", mode=mode, width=TARGET_WIDTH, backend=gpu, impl="tinylora", cores=None
        )
        speed = cpu["median_ms"] / ours["median_ms"] if cpu and ours else None
        verdict = "-" if speed is None else ("met" if speed >= TARGET_SPEEDUP else "not met")
        out.append(
            f"| GPT {mode} step on {gpu} at least {TARGET_SPEEDUP:.0f}x faster than NumPy on {cores} cores "
            f"| {_fmt(speed, '.1f', 'x')} | {verdict} |"
        )
    for mode in ("full", "lora"):
        vs = _ratio(ratios, "tinylora / pytorch", gpu, TARGET_WIDTH, mode)
        verdict = "-" if vs is None else ("met" if vs <= TARGET_VS_TORCH else "not met")
        out.append(
            f"| GPT {mode} step within {TARGET_VS_TORCH}x of PyTorch CUDA eager | {_fmt(vs)} | {verdict} |"
        )
    lf_gpu = _ratio(ratios, "LoRA / full (tinylora)", gpu, TARGET_WIDTH, "lora")
    lf_cpu = _cpu_ratio(rows, TARGET_WIDTH, "tinylora", cores)
    out.append(
        f"| LoRA / full step on the GPU, beside the CPU's | {_fmt(lf_gpu)} (CPU {_fmt(lf_cpu)}) | reported |"
    )
    return out


# ---- the whole run --------------------------------------------------------------------------------


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=os.environ.get("OUT") or "gpu-check", help="folder for the report")
    ap.add_argument("--budget", type=float, default=None, help="seconds for the whole run (480; dry run 60)")
    ap.add_argument(
        "--dry-run", action="store_true", help="on the CPU, NumPy standing in for CuPy, small sizes"
    )
    args = ap.parse_args(argv)
    budget = args.budget or (120.0 if args.dry_run else 480.0)
    start = time.monotonic()
    left = lambda: max(1.0, budget - (time.monotonic() - start) - 5.0)
    report = Report(Path(args.out), args.dry_run)
    report.data["budget_s"] = budget
    report.log(
        f"gpu_check: {'dry run, ' if args.dry_run else ''}budget {budget:.0f} s, report in {report.out}"
    )

    gpu = stage_cupy(report, 0.3 * budget, args.dry_run)
    if not gpu:
        report.log("gpu_check: CuPy is not usable here; nothing else to check (see gpu_check.json)")
        report.save()
        return 1
    stage_device(report, gpu, min(0.1 * budget, left()), args.dry_run)
    # share what is left: equality 20%, bench 45%, chapter 10 12%, the suite the rest (a dry run
    # proves the stages work, so each may take what is left)
    plan = left()
    share = (lambda f: left()) if args.dry_run else (lambda f: min(f * plan, left()))
    eq = ["tests/test_backend_equality.py", "tests/test_backend.py"]
    if args.dry_run:
        eq = ["tests/test_backend_equality.py", "-k", "standin and float64 and (lora or GPT)"]
    stage_pytest(report, "equality", eq, share(0.2), backend=None)
    stage_bench(report, gpu, share(0.45), args.dry_run)
    stage_chapter10(report, share(0.12), args.dry_run)
    suite = ["tests"] if not args.dry_run else ["tests/test_backend.py", "-k", "unknown_backend or restores"]
    stage_pytest(report, "suite", suite, left(), backend=gpu, parallel=not args.dry_run)
    report.data["seconds"] = round(time.monotonic() - start, 1)
    report.save()
    report.log(f"gpu_check: done in {report.data['seconds']} s; {report.out / 'gpu_check.md'}")
    failed = [n for n, s in report.data["stages"].items() if s.get("status") not in ("ok", "skipped")]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
