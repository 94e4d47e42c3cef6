"""Build and check the course notebooks.

Each notebook is written as a percent-format Python file, notebooks/src/NN-name.py (cells
start with `# %%`, Markdown cells with `# %% [markdown]`), and committed as
notebooks/NN-name.ipynb together with the outputs of a full run.

    python tools/notebooks.py build [NN ...]   # convert, execute fully, save outputs (slow)
    python tools/notebooks.py check [NN ...]   # CI: sources match, execute with TINYLORA_FAST=1

`build` writes the measured wall time of the full run into the notebook's first cell.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
import time
from pathlib import Path

import nbformat
from nbclient import NotebookClient

ROOT = Path(__file__).resolve().parent.parent
SRC = ROOT / "notebooks" / "src"
OUT = ROOT / "notebooks"
TIMING = re.compile(r"^_Full run: .*_$", re.M)


def parse(source: str) -> list:
    """Split a percent-format file into (kind, text) cells."""
    cells, kind, lines = [], None, []

    def flush():
        if kind is not None:
            text = "\n".join(lines).strip("\n")
            if kind == "markdown":
                text = "\n".join(
                    ln[2:] if ln.startswith("# ") else ln.lstrip("#") for ln in text.splitlines()
                )
            cells.append((kind, text))

    for line in source.splitlines():
        if line.startswith("# %%"):
            flush()
            kind, lines = ("markdown" if "[markdown]" in line else "code"), []
        elif kind is not None:
            lines.append(line)
    flush()
    return cells


def to_notebook(src: Path):
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nb.metadata["language_info"] = {"name": "python"}
    for kind, text in parse(src.read_text()):
        nb.cells.append(
            nbformat.v4.new_markdown_cell(text) if kind == "markdown" else nbformat.v4.new_code_cell(text)
        )
    return nb


def execute(nb, fast: bool, timeout: int) -> float:
    env_fast = os.environ.get("TINYLORA_FAST")
    os.environ["TINYLORA_FAST"] = "1" if fast else "0"
    try:
        t0 = time.perf_counter()
        NotebookClient(
            nb, timeout=timeout, kernel_name="python3", resources={"metadata": {"path": str(OUT)}}
        ).execute()
        return time.perf_counter() - t0
    finally:
        if env_fast is None:
            os.environ.pop("TINYLORA_FAST", None)
        else:
            os.environ["TINYLORA_FAST"] = env_fast


def stamp(nb, seconds: float) -> None:
    """Put the measured time of the full run into the first Markdown cell."""
    minutes, secs = divmod(round(seconds), 60)
    line = f"_Full run: {minutes} min {secs:02d} s on a 2-core CPU, measured by tools/notebooks.py build._"
    first = next(c for c in nb.cells if c.cell_type == "markdown")
    first.source = (
        TIMING.sub(line, first.source) if TIMING.search(first.source) else first.source + "\n\n" + line
    )


def select(names: list, folder: Path, pattern: str) -> list:
    files = sorted(folder.glob(pattern))
    if names:
        files = [f for f in files if any(f.name.startswith(n) for n in names)]
    return files


def build(names: list, timeout: int) -> int:
    for src in select(names, SRC, "*.py"):
        target = OUT / (src.stem + ".ipynb")
        print(f"building {target.relative_to(ROOT)} ...", flush=True)
        nb = to_notebook(src)
        seconds = execute(nb, fast=False, timeout=timeout)
        stamp(nb, seconds)
        tmp = target.with_suffix(".ipynb.tmp")
        nbformat.write(nb, tmp)
        os.replace(tmp, target)
        print(f"  done in {seconds:.0f} s", flush=True)
    return 0


def check(names: list, timeout: int) -> int:
    failures = 0
    for path in select(names, OUT, "*.ipynb"):
        nb = nbformat.read(path, as_version=4)
        src = SRC / (path.stem + ".py")
        if src.exists():
            want = [c.source for c in to_notebook(src).cells if c.cell_type == "code"]
            have = [c.source for c in nb.cells if c.cell_type == "code"]
            if want != have:
                print(
                    f"FAIL {path.name}: code cells differ from {src.relative_to(ROOT)}; run tools/notebooks.py build"
                )
                failures += 1
                continue
        missing = [
            i
            for i, c in enumerate(nb.cells)
            if c.cell_type == "code"
            and c.source.strip()
            and not c.get("outputs")
            and "# no output" not in c.source
        ]
        try:
            seconds = execute(nb, fast=True, timeout=timeout)
        except Exception as e:  # report every notebook, then fail
            print(f"FAIL {path.name}: {type(e).__name__}: {str(e)[-2000:]}")
            failures += 1
            continue
        note = f" (warning: {len(missing)} code cells have no committed outputs)" if missing else ""
        print(f"ok   {path.name} in {seconds:.0f} s (TINYLORA_FAST=1){note}", flush=True)
    return 1 if failures else 0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("action", choices=["build", "check"])
    ap.add_argument("names", nargs="*", help="notebook number prefixes, e.g. 01 05 (default: all)")
    ap.add_argument("--timeout", type=int, default=3600, help="seconds per cell")
    args = ap.parse_args(argv)
    return (build if args.action == "build" else check)(args.names, args.timeout)


if __name__ == "__main__":
    sys.exit(main())
