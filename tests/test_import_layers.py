"""The README's layout is the import order: every module imports only from the layers above it.

Parsed with ast, never imported: a module-level or lazy import against the order, an import of
the package root, an import of a private name from another module, or a lazy import without a
comment saying why all fail here.
"""

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "tinylora"


def readme_layers() -> list:
    """Top-level names of tinylora/ in the order the README's Layout section lists them."""
    text = (ROOT / "README.md").read_text()
    section = text.split("## Layout", 1)[1].split("\n## ", 1)[0]
    block = section.split("```", 2)[1]
    lines = block.split("tinylora/\n", 1)[1].splitlines()
    names = []
    for line in lines:
        if line.startswith("   "):
            continue  # a description's second line
        m = re.match(r"^  (\w+)(\.py|/)\s", line + " ")
        if not m:
            break  # the first line back at the left margin ends tinylora/'s listing
        names.append(m.group(1))
    return names


def modules(package: Path = PACKAGE) -> list:
    return sorted(p for p in package.rglob("*.py") if p != package / "__init__.py")


def layer_of(path: Path, package: Path = PACKAGE) -> str:
    return path.relative_to(package).parts[0].removesuffix(".py")


def resolve(path: Path, node: ast.ImportFrom, package: Path) -> str:
    """The dotted module a relative `from ... import` names, e.g. 'tinylora.nn.layers'."""
    here = ["tinylora", *path.relative_to(package).parent.parts]  # the package holding the module
    base = here[: len(here) - node.level + 1]
    return ".".join(base + ([node.module] if node.module else []))


def imports(path: Path, package: Path):
    """(line, target module, imported names, inside a function?) for every tinylora import."""
    tree = ast.parse(path.read_text())
    lazy = set()
    for fn in ast.walk(tree):
        if isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)):
            lazy |= {id(n) for n in ast.walk(fn) if isinstance(n, (ast.Import, ast.ImportFrom))}
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            target = resolve(path, node, package) if node.level else (node.module or "")
            yield node.lineno, target, [a.name for a in node.names], id(node) in lazy
        elif isinstance(node, ast.Import):
            for a in node.names:
                yield node.lineno, a.name, [], id(node) in lazy


def targets(target: str, names: list, package: Path) -> list:
    """The tinylora modules one import statement reaches ('tinylora' alone means the root)."""
    if target != "tinylora" and not target.startswith("tinylora."):
        return []
    if target != "tinylora":
        return [target]
    subs = {layer_of(p, package) for p in modules(package)}
    return [f"tinylora.{n}" if n in subs else "tinylora" for n in names] or ["tinylora"]


def violations(layers: list, package: Path = PACKAGE) -> list:
    found = []
    for path in modules(package):
        rel, own = path.relative_to(package.parent), layer_of(path, package)
        lines = path.read_text().splitlines()
        for line, target, names, lazy in imports(path, package):
            for mod in targets(target, names, package):
                if mod == "tinylora":
                    found.append(f"{rel}:{line}: imports the package root (import from the module itself)")
                    continue
                layer = mod.split(".")[1]
                if layer != own and layers.index(layer) > layers.index(own):
                    found.append(f"{rel}:{line}: {own} imports {layer}, which the README lists below it")
            if target.startswith("tinylora") and target.split(".")[1:2] != [own]:
                private = [n for n in names if n.startswith("_") and n != "__version__"]
                if private:
                    found.append(f"{rel}:{line}: imports private names {private} from {target}")
            if lazy and not any("#" in text for text in lines[max(line - 3, 0) : line]):
                found.append(f"{rel}:{line}: a lazy import without a comment saying why")
    return found


def test_readme_lists_every_module_once():
    layers = readme_layers()
    assert len(layers) == len(set(layers)), f"README lists a module twice: {layers}"
    missing = sorted({layer_of(p) for p in modules()} - set(layers))
    assert not missing, (
        f"tinylora/ holds {missing}, which README's Layout section does not list; add each at its layer"
    )


def test_every_import_follows_the_readme_order():
    layers = readme_layers()
    assert layers[:2] == ["_version", "backend"] and "lowrank" in layers and "lora" in layers
    assert layers.index("lowrank") < layers.index("lora")
    problems = violations(layers)
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize(
    "source, expected",
    [
        ("from .lora import LoRALinear\n", "tensor imports lora"),
        ("from . import __version__\n", "imports the package root"),
        ("from .backend import _load_cupy\n", "imports private names"),
        ("def f():\n    from .backend import xp\n    return xp\n", "lazy import without a comment"),
    ],
)
def test_the_check_catches_each_kind_of_bad_import(tmp_path, source, expected):
    """Each rule fires on a copy of tinylora/ whose tensor.py gains one bad line."""
    fake = tmp_path / "tinylora"
    for p in modules():
        dest = fake / p.relative_to(PACKAGE)
        dest.parent.mkdir(parents=True, exist_ok=True)
        dest.write_text(p.read_text())
    layers = readme_layers()
    assert not violations(layers, fake)  # the copy itself is clean
    (fake / "tensor.py").write_text((PACKAGE / "tensor.py").read_text() + "\n" + source)
    assert any(expected in v for v in violations(layers, fake)), violations(layers, fake)
