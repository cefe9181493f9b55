"""Each layer imports only downward (DESIGN.md, "Import direction"): no import loops in src/.

The graph counts every import, function-level ones too (only ``if TYPE_CHECKING:`` blocks are
left out), since a lazy import back up is still a loop between the two modules' designs.
"""

from __future__ import annotations

import ast
import logging
from pathlib import Path

SRC = Path(__file__).resolve().parent.parent / "src"
KNOWN: list[set[str]] = []  # none: every loop is a failure


def _import_graph() -> dict[str, set[str]]:
    mods = {}
    for f in SRC.rglob("*.py"):
        name = ".".join(f.relative_to(SRC).with_suffix("").parts).removesuffix(".__init__")
        mods[name] = f
    edges: dict[str, set[str]] = {m: set() for m in mods}
    for m, f in mods.items():
        tree = ast.parse(f.read_text(encoding="utf-8"))
        pkg = m if f.name == "__init__.py" else m.rpartition(".")[0]
        skip = {
            id(n)
            for t in ast.walk(tree)
            if isinstance(t, ast.If) and "TYPE_CHECKING" in ast.dump(t.test)
            for b in t.body
            for n in ast.walk(b)
        }
        for node in ast.walk(tree):
            if id(node) in skip:
                continue
            if isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    parts = pkg.split(".")[: len(pkg.split(".")) - node.level + 1]
                    base = ".".join(parts + ([base] if base else []))
                found = [f"{base}.{a.name}" for a in node.names if f"{base}.{a.name}" in mods]
                found = found or ([base] if base in mods else [])
            elif isinstance(node, ast.Import):
                found = [a.name for a in node.names if a.name in mods]
            else:
                continue
            edges[m].update(x for x in found if x != m)
    return edges


def _loops(edges: dict[str, set[str]]) -> list[set[str]]:
    """Strongly connected components of more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[set[str]] = []
    for root in edges:
        if root in index:
            continue
        work = [(root, iter(sorted(edges[root])))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on.add(root)
        while work:
            v, children = work[-1]
            for w in children:
                if w not in index:
                    index[w] = low[w] = len(index)
                    stack.append(w)
                    on.add(w)
                    work.append((w, iter(sorted(edges[w]))))
                    break
                if w in on:
                    low[v] = min(low[v], index[w])
            else:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[v])
                if low[v] == index[v]:
                    comp = set()
                    while True:
                        w = stack.pop()
                        on.discard(w)
                        comp.add(w)
                        if w == v:
                            break
                    if len(comp) > 1:
                        out.append(comp)
    return out


def test_the_finder_sees_a_loop():
    assert _loops({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [{"a", "b", "c"}]


def test_src_has_no_import_loops():
    loops = [sorted(c) for c in _loops(_import_graph()) if c not in KNOWN]
    assert loops == []


def test_onnx_converter_learns_image_preprocess_without_importing_the_zoo():
    edges = _import_graph()
    assert not {m for e in edges if e.startswith("kerascope.onnx_export") for m in edges[e]
                if m.startswith("kerascope.zoo")}  # fmt: skip
    from kerascope.onnx_export.graph import _CONVERTERS
    from kerascope.zoo.preprocess import ImagePreprocess

    assert f"{ImagePreprocess.__module__}.ImagePreprocess" in _CONVERTERS


def test_library_warnings_are_printed_by_the_command_as_one_note(monkeypatch, capsys):
    from kerascope.cli_common import print_library_notes

    monkeypatch.setattr(logging.getLogger("kerascope"), "handlers", [])
    print_library_notes()
    print_library_notes()  # once only: one line per warning
    logging.getLogger("kerascope.zoo.weights").warning("cached weights '%s' are damaged", "a\x1bb")
    assert capsys.readouterr().err == "kerascope: cached weights 'a\\x1bb' are damaged\n"
