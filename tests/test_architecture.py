"""Imports point one way: core -> tracing & metrics -> editing -> evaluation & report -> CLI.

Every import statement of every library module (function-level ones included) is parsed; the
test fails on any import circle, on any import from a lower layer to a higher one, on any
library import of ``experiments``, and on any import of the CLI. The checker itself is tested
on small graphs with a known answer, so a broken checker cannot pass silently.
"""
from __future__ import annotations

import ast
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
#: folder -> installed name (pyproject's package-dir): one import root, ``diffloc``
PACKAGES = ("tracing", "editing", "diffloc")
NAMES = {"tracing": "diffloc.tracing", "editing": "diffloc.editing", "diffloc": "diffloc",
         "experiments/toy": "diffloc_toy", "experiments": "experiments"}
PLUGINS = ("experiments", "diffloc_toy")  # sit on top of the library; the library never imports them

#: Modules of the core layer; every other ``tracing`` module is layer 2 (tracing and metrics).
CORE = {"diffloc.tracing." + m for m in ("errors", "registry", "io", "sites", "configs", "arch", "hooks", "models",
                                         "replicas", "replica_parts", "tokenizer", "worlds", "prompts", "families",
                                         "site_kinds")} | {"diffloc.tracing"}
LAYER_NAMES = {1: "core", 2: "tracing & metrics", 3: "editing", 4: "evaluation & report", 5: "CLI"}


def layer(module: str) -> int:
    if module in CORE or module.startswith("diffloc.tracing.families"):
        return 1
    if module.startswith("diffloc.tracing"):
        return 2
    if module.startswith("diffloc.editing"):
        return 3
    if module.startswith("diffloc.cli") or module == "diffloc.__main__":
        return 5
    if module.startswith("diffloc"):
        return 4
    raise AssertionError(f"{module} belongs to no layer")


def module_name(path: Path) -> str:
    rel = path.relative_to(ROOT).with_suffix("").as_posix()
    folder = max((f for f in NAMES if rel == f or rel.startswith(f + "/")), key=len)
    parts = [NAMES[folder]] + rel[len(folder):].strip("/").split("/")
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(p for p in parts if p)


def library_modules(packages: tuple[str, ...] = PACKAGES) -> dict[str, Path]:
    out = {}
    for pkg in packages:
        for p in (ROOT / pkg).rglob("*.py"):
            out[module_name(p)] = p
    return out


def imports_of(name: str, path: Path, known: set[str], packages: tuple[str, ...] = PACKAGES) -> set[str]:
    """Names of the project modules that ``name`` (at ``path``) imports, resolved.

    Imports of a plug-in (``experiments``, ``diffloc_toy``) collapse to ``"experiments"`` unless
    its folder is one of ``packages``."""
    tree = ast.parse(path.read_text())
    is_pkg = path.name == "__init__.py"
    here = name.split(".") if is_pkg else name.split(".")[:-1]
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = here[: len(here) - node.level + 1] if node.level > 1 else here
                stem = ".".join(base + ([node.module] if node.module else []))
            else:
                stem = node.module or ""
            found.add(stem)
            found.update(f"{stem}.{a.name}" for a in node.names)  # `from pkg import module`
    out = set()
    for f in found:
        top = f.split(".")[0]
        if top in PLUGINS and "experiments" not in packages:
            out.add("experiments")
        while f and f not in known:
            f = f.rpartition(".")[0]
        if f:
            out.add(f)
    out.discard(name)
    return out


def graph(packages: tuple[str, ...] = PACKAGES) -> dict[str, set[str]]:
    mods = library_modules(packages)
    return {n: imports_of(n, p, set(mods), packages) for n, p in mods.items()}


def violations(g: dict[str, set[str]]) -> list[str]:
    bad = []
    for a, targets in sorted(g.items()):
        for b in sorted(targets):
            if b == "experiments":
                bad.append(f"{a} imports experiments (worlds plug in through tracing.worlds)")
            elif layer(b) == 5 and layer(a) != 5:
                bad.append(f"{a} imports the CLI module {b}")
            elif layer(b) > layer(a):
                bad.append(f"{a} ({LAYER_NAMES[layer(a)]}) imports {b} ({LAYER_NAMES[layer(b)]}), a higher layer")
    return bad


def cycles(g: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on, out, n = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = n[0]
        n[0] += 1
        stack.append(v)
        on.add(v)
        for w in g.get(v, ()):
            if w not in g:
                continue
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(g):
        if v not in index:
            visit(v)
    return out


def test_checker_finds_circles_and_upward_imports():
    g = {"diffloc.tracing.sweep": {"diffloc.tracing.causal"}, "diffloc.tracing.causal": {"diffloc.tracing.sweep"},
         "diffloc.tracing.sites": {"diffloc.editing.records"}, "diffloc.editing.records": {"experiments"},
         "diffloc.report": {"diffloc.cli.app"}, "diffloc.cli.app": set()}
    assert cycles(g) == [["diffloc.tracing.causal", "diffloc.tracing.sweep"]]
    bad = violations(g)
    assert any("diffloc.tracing.sites (core) imports diffloc.editing.records" in b for b in bad)
    assert any("diffloc.editing.records imports experiments" in b for b in bad)
    assert any("imports the CLI module diffloc.cli.app" in b for b in bad)


def test_resolver_sees_relative_function_level_and_submodule_imports(tmp_path):
    src = "from . import edit\nfrom ..io import x\n\ndef f():\n    from diffloc.tracing.sweep import run_sweep\n    import diffloc_toy\n"
    p = tmp_path / "m.py"
    p.write_text(src)
    known = {"diffloc.cli.edit", "diffloc.io", "diffloc.tracing.sweep", "diffloc.cli.m"}
    assert imports_of("diffloc.cli.m", p, known) == {"diffloc.cli.edit", "diffloc.io", "diffloc.tracing.sweep", "experiments"}


def test_imports_point_one_way_without_circles():
    g = graph()
    assert len(g) > 30, "the parser found the library's modules"
    assert cycles(g) == []
    assert violations(g) == []


def test_plugins_and_scripts_have_no_circles():
    """experiments/ sits on top of the library; its own modules (the toy world, its CLI, scripts) form no circle."""
    g = graph(PACKAGES + ("experiments",))
    assert any(n.startswith("diffloc_toy.") for n in g), "the parser found the plug-in's modules"
    assert cycles(g) == []


def test_tracing_never_imports_experiments():
    r = subprocess.run(["grep", "-rnE", r"(from|import) (experiments|diffloc_toy)", "tracing/", "editing/"], cwd=ROOT,
                       capture_output=True, text=True)
    assert r.stdout == "", r.stdout


def test_one_import_root():
    """Nothing imports the folders by their old top-level names (two names = two copies of a module)."""
    r = subprocess.run(["git", "grep", "-nE", r"^\s*(from|import) (tracing|editing)\b|^\s*(from|import) experiments\.toy\b"],
                       cwd=ROOT, capture_output=True, text=True)
    assert r.stdout == "", r.stdout
