"""The layout the README promises: layers whose imports point down, no import cycles (Python or Rust), each
decoding loop on one screen, and every `file::function` the README cites for a step of the math exists."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

import specref

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "specref"
# Each layer may import its own and those below it: core < formats < train < api, conformance < tools.
LAYERS = {"formats": 1, "train": 2, "api": 3, "conformance": 3, "tools": 4}


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def layer(module: str) -> int:
    parts = module.split(".")
    return LAYERS.get(parts[1], 0) if len(parts) > 1 else 0


def imports() -> dict[str, set[str]]:
    """specref module -> the specref modules it imports anywhere in its body (function-level imports too)."""
    graph = {}
    for path in PACKAGE.rglob("*.py"):
        name, found = module_name(path), set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module == "specref":  # the public names: where they live
                found |= {specref._PUBLIC[a.name][0] if a.name in specref._PUBLIC else f"specref.{a.name}"
                          for a in node.names}
            elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("specref"):
                found |= {f"{node.module}.{a.name}" if f"{node.module}.{a.name}" in MODULES else node.module
                          for a in node.names}
            elif isinstance(node, ast.Import):
                found |= {a.name for a in node.names if a.name.startswith("specref")}
        graph[name] = {m for m in found if m in MODULES and m != name}
    return graph


MODULES = {module_name(p) for p in PACKAGE.rglob("*.py")}


def test_imports_point_down():
    """The core (decoder, cache, logits, loops, trees, heads) imports no formats, training or tools."""
    entry = {"specref", "specref.__main__"}  # the package's public names and the CLI entry point
    upward = [(m, d) for m, deps in imports().items() if m not in entry for d in deps
              if layer(d) > layer(m) and not (m.count(".") == 1 and d == "specref")]
    assert not upward, f"imports that point up a layer: {upward}"


def cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}

    def visit(node: str, trail: list[str]) -> list[str] | None:
        state[node] = 1
        for dep in sorted(graph.get(node, ())):
            if state.get(dep) == 1:
                return [*trail, node, dep]
            if dep not in state and (found := visit(dep, [*trail, node])):
                return found
        state[node] = 2
        return None

    return next((c for n in sorted(graph) if n not in state and (c := visit(n, []))), None)


def test_no_python_import_cycle():
    graph = {m: {d for d in deps if d != "specref"} for m, deps in imports().items()}
    assert cycle(graph) is None, f"import cycle: {cycle(graph)}"


def test_no_rust_module_cycle():
    src = ROOT / "rust_sampler" / "src"
    names = {p.stem for p in src.glob("*.rs")} - {"lib"}
    graph = {p.stem: set(re.findall(r"crate::(\w+)", re.sub(r"(?s)#\[cfg\(test\)\]\s*(pub\(crate\) )?mod tests.*",
                                                         "", p.read_text()))) & names - {p.stem}
             for p in src.glob("*.rs") if p.stem != "lib"}
    assert cycle(graph) is None, f"Rust module cycle: {cycle(graph)}"


@pytest.mark.parametrize("module", ["autoregressive", "sps", "eagle_decode"])
def test_each_loop_fits_one_screen(module):
    tree = ast.parse((PACKAGE / f"{module}.py").read_text())
    loop = next(n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == "generate_batch")
    first = loop.body[1] if isinstance(loop.body[0], ast.Expr) else loop.body[0]  # after the docstring
    body = loop.end_lineno - first.lineno + 1
    assert body <= 50, f"{module}.generate_batch has {body} lines of body"


def defined(path: Path, name: str) -> bool:
    """Whether `name` (a function, class or constant; `Class.method` for a method) is defined in `path`."""
    text = path.read_text()
    if path.suffix == ".rs":
        return re.search(rf"\b(fn|struct|enum|const|type|trait)\s+{re.escape(name)}\b", text) is not None
    scope: list[ast.stmt] = ast.parse(text).body
    for part in name.split("."):
        match = [n for n in scope if getattr(n, "name", None) == part
                 or (isinstance(n, ast.Assign) and any(getattr(t, "id", None) == part for t in n.targets))]
        if not match:
            return False
        scope = getattr(match[0], "body", [])
    return True


REFERENCE = re.compile(r"`((?:specref|rust_sampler)/[\w/]+\.(?:py|rs))::([\w.]+)`")


def test_readme_references_exist():
    refs = REFERENCE.findall((ROOT / "README.md").read_text())
    assert len(refs) >= 20, "the README's math should cite the code of each step"
    missing = [f"{f}::{n}" for f, n in refs if not (ROOT / f).is_file() or not defined(ROOT / f, n)]
    assert not missing, f"README cites code that does not exist: {missing}"


def test_reference_checker_catches_a_missing_name():
    assert defined(PACKAGE / "sps.py", "score") and defined(PACKAGE / "kv_cache.py", "KVCache.keep")
    assert not defined(PACKAGE / "sps.py", "no_such_step") and not defined(PACKAGE / "kv_cache.py", "KVCache.drop")
    assert defined(ROOT / "rust_sampler/src/chain.rs", "verify_chain")
    assert not defined(ROOT / "rust_sampler/src/chain.rs", "verify_tree")
