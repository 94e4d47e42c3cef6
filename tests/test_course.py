"""The course: chapters and notebooks pair up, notebooks carry full-run outputs, and every
number a chapter quotes appears in its notebook (as an output, or in the code that set it)."""

import json
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
CHAPTERS = sorted((ROOT / "chapters").glob("[0-9][0-9]-*.md"))
NOTEBOOKS = sorted((ROOT / "notebooks").glob("[0-9][0-9]-*.ipynb"))
PLANNED = [
    "01-what-lora-is",
    "02-low-rank-by-hand",
    "03-autograd-from-scratch",
    "04-layers-losses-optimizers",
    "05-the-lora-layer",
    "06-a-tiny-transformer",
    "07-lora-on-the-transformer",
    "08-what-full-fine-tuning-changes",
    "09-many-adapters-one-base",
    "10-backends-and-timing",
    "11-a-real-pretrained-model",
    "12-the-lora-family",
]
APPENDICES = sorted((ROOT / "chapters").glob("appendix-*.md"))
NUMBER = re.compile(r"(?<![\w.])-?\d[\d,]*(?:\.\d+)?(?:e-?\d+)?")


def notebook_text(path: Path, sources: bool = True) -> str:
    """Sources (unless sources=False) and text outputs of a notebook, as one string."""
    nb = json.loads(path.read_text())
    parts = []
    for cell in nb["cells"]:
        if sources:
            parts.append("".join(cell["source"]))
        for out in cell.get("outputs", []):
            parts.append("".join(out.get("text", "")))
            data = out.get("data", {})
            parts.append("".join(data.get("text/plain", "")))
            parts.append("".join(data.get("text/markdown", "")))
    return "\n".join(parts)


def quoted_numbers(markdown: str) -> set:
    """Numbers in the prose of a chapter (not in code blocks, links or years), commas removed."""
    text = re.sub(r"```.*?```", " ", markdown, flags=re.S)
    text = re.sub(r"\]\([^)]*\)", "]", text)  # link targets such as 05-the-lora-layer.ipynb
    text = re.sub(r"`[^`]*`", " ", text)  # inline code: names, not measurements
    numbers = set()
    for m in NUMBER.finditer(text):
        raw = m.group().replace(",", "")
        digits = re.sub(r"\D", "", raw.split("e")[0])
        if len(digits.lstrip("0")) < 2:  # single digits (r = 4, 2 cores) are not measurements
            continue
        if re.fullmatch(r"(19|20)\d\d", raw):  # years in citations
            continue
        numbers.add(raw)
    return numbers


def number_forms(text: str) -> set:
    """Every number in the text as written, and each rounded to fewer decimals (prose may round)."""
    forms = set()
    for m in NUMBER.finditer(text):
        raw = m.group().replace(",", "")
        forms.add(raw)
        if "e" in raw or "." not in raw:
            continue
        value, decimals = float(raw), len(raw.split(".")[1])
        forms.update(f"{value:.{k}f}" for k in range(decimals))
    return forms


def test_every_planned_chapter_has_a_notebook_and_vice_versa():
    chapters = {p.stem for p in CHAPTERS}
    notebooks = {p.stem for p in NOTEBOOKS}
    assert chapters == notebooks, f"unpaired: {sorted(chapters ^ notebooks)}"
    assert chapters <= set(PLANNED), f"not in the plan: {sorted(chapters - set(PLANNED))}"
    assert chapters >= set(PLANNED), f"planned but not written: {sorted(set(PLANNED) - chapters)}"


@pytest.mark.parametrize("chapter", CHAPTERS, ids=[p.stem for p in CHAPTERS])
def test_chapter_numbers_come_from_its_notebook(chapter):
    notebook = ROOT / "notebooks" / f"{chapter.stem}.ipynb"
    assert notebook.exists(), f"{chapter.name} has no notebook"
    available = number_forms(notebook_text(notebook))
    missing = sorted(n for n in quoted_numbers(chapter.read_text()) if n not in available)
    assert not missing, f"{chapter.name} quotes numbers its notebook does not show: {missing}"


@pytest.mark.parametrize("chapter", CHAPTERS, ids=[p.stem for p in CHAPTERS])
def test_chapter_links_resolve_and_it_has_check_yourself_answers(chapter):
    text = chapter.read_text()
    for target in re.findall(r"\]\(([^)#\s]+)\)", text):
        if not target.startswith(("http://", "https://")):
            assert (chapter.parent / target).resolve().exists(), f"{chapter.name}: broken link {target}"
    assert re.search(r"^#+ .*check yourself", text, re.I | re.M), (
        f"{chapter.name}: no 'Check yourself' section"
    )
    assert f"../notebooks/{chapter.stem}.ipynb" in text, f"{chapter.name} does not link its notebook"


@pytest.mark.parametrize("notebook", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_carries_the_outputs_of_a_full_run(notebook):
    nb = json.loads(notebook.read_text())
    code = [c for c in nb["cells"] if c["cell_type"] == "code" and "".join(c["source"]).strip()]
    assert code, f"{notebook.name} has no code"
    assert all(c.get("execution_count") for c in code), f"{notebook.name} has cells that were never executed"
    errors = [o for c in code for o in c.get("outputs", []) if o.get("output_type") == "error"]
    assert not errors, f"{notebook.name} carries an error output"
    first = "".join(next(c for c in nb["cells"] if c["cell_type"] == "markdown")["source"])
    assert re.search(r"_Full run: \d+ min \d\d s on a 2-core CPU", first), (
        f"{notebook.name}: no measured run time"
    )
    assert "TINYLORA_FAST" in notebook_text(notebook), f"{notebook.name} ignores TINYLORA_FAST"
    printed = notebook_text(notebook, sources=False)
    assert "TINYLORA_FAST = 0 (full run)" in printed, f"{notebook.name} was not built by a full run"
    assert "(smoke test)" not in printed, f"{notebook.name} carries outputs of a smoke test"


def test_quoted_numbers_checker_catches_a_made_up_figure(tmp_path):
    assert quoted_numbers("LoRA reached **97.3%** with 1,234 parameters in 2021 at r = 4.") == {
        "97.3",
        "1234",
    }
    assert "97.3" in number_forms("accuracy 97.3% (1234 params)")
    assert "97.4" not in number_forms("accuracy 97.3%")
    assert {"0.21", "0.207", "0.2"} <= number_forms("gap 0.2071 nats")  # prose may round a printed value
    assert "0.22" not in number_forms("gap 0.2071 nats")  # but not to another value


def linked_notebooks(markdown: str, folder: Path) -> list:
    """The course notebooks a page links to (../notebooks/NN-name.ipynb)."""
    names = re.findall(r"\]\(\.\./notebooks/([0-9][0-9]-[\w-]+\.ipynb)\)", markdown)
    return sorted({(folder.parent / "notebooks" / n) for n in names})


@pytest.mark.parametrize("appendix", APPENDICES, ids=[p.stem for p in APPENDICES])
def test_appendix_numbers_come_from_the_notebooks_it_links(appendix):
    text = appendix.read_text()
    notebooks = linked_notebooks(text, ROOT / "chapters")
    assert notebooks, f"{appendix.name} links no notebook, so its numbers cannot be checked"
    for nb in notebooks:
        assert nb.exists(), f"{appendix.name}: broken link {nb.name}"
    for target in re.findall(r"\]\(([^)#\s]+)\)", text):
        if not target.startswith(("http://", "https://")):
            assert (appendix.parent / target).resolve().exists(), f"{appendix.name}: broken link {target}"
    available = set().union(*(number_forms(notebook_text(nb)) for nb in notebooks))
    missing = sorted(n for n in quoted_numbers(text) if n not in available)
    assert not missing, f"{appendix.name} quotes numbers none of its notebooks show: {missing}"


def test_the_readme_course_table_lists_every_appendix():
    readme = (ROOT / "README.md").read_text()
    for page in APPENDICES:
        assert f"(chapters/{page.name})" in readme, f"README's course table does not list {page.name}"


def summary_and_exercises(markdown: str) -> tuple:
    """(take-aways under '## Summary', exercises under '## Try it'), counted as list items."""

    def items(heading: str, bullet: str) -> int:
        m = re.search(rf"^## {heading}\s*$(.*?)(?=^## |\Z)", markdown, re.M | re.S)
        return len(re.findall(bullet, m.group(1), re.M)) if m else 0

    return items("Summary", r"^- "), items("Try it", r"^\d+\. ")


# every chapter ends with "## Summary" (three take-aways) and "## Try it" (two or three exercises
# whose starting cells are in the notebook's "## Try it" section)
@pytest.mark.parametrize("stem", PLANNED)
def test_chapter_ends_with_a_summary_and_exercises_with_starting_cells(stem):
    chapter = ROOT / "chapters" / f"{stem}.md"
    takeaways, exercises = summary_and_exercises(chapter.read_text())
    assert takeaways == 3, f"{chapter.name}: '## Summary' should hold three take-aways, found {takeaways}"
    assert 2 <= exercises <= 3, (
        f"{chapter.name}: '## Try it' should hold two or three exercises, found {exercises}"
    )
    cells = json.loads((ROOT / "notebooks" / f"{stem}.ipynb").read_text())["cells"]
    start = [
        i
        for i, c in enumerate(cells)
        if c["cell_type"] == "markdown" and re.search(r"^## (\d+\. )?Try it", "".join(c["source"]), re.M)
    ]
    assert start, f"{stem}.ipynb has no '## Try it' section"
    runnable = [c for c in cells[start[-1] :] if c["cell_type"] == "code" and c.get("outputs")]
    assert len(runnable) >= exercises, (
        f"{stem}.ipynb: {exercises} exercises but {len(runnable)} executed starting cells after '## Try it'"
    )


def test_summary_checker_counts_items():
    text = "## Summary\n\n- one\n- two\n- three\n\n## Try it\n\n1. **a** x\n2. **b** y\n"
    assert summary_and_exercises(text) == (3, 2)
    assert summary_and_exercises("## Summary\n\n- only one\n") == (1, 0)
