"""The import graph of the Rust crate and the Python package, from the code's own imports, by top-level module.

Prints every edge between top-level modules (Rust: `crate::X` and `super::` paths; Python: `latte_rs.X` and
relative imports) and exits with 1 when the module graph has a cycle. `.ci/run` runs it; the docs' architecture
page shows its output.
"""

from __future__ import annotations

import re
import sys
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def rust_edges() -> dict[str, set[str]]:
    src = ROOT / "src"
    top = {p.stem if p.is_file() else p.name for p in src.iterdir() if p.suffix == ".rs" or p.is_dir()}
    top -= {"lib", "main"}
    edges: dict[str, set[str]] = defaultdict(set)
    for f in src.rglob("*.rs"):
        rel = f.relative_to(src)
        if rel.name in ("tests.rs", "test_util.rs") or "tests" in rel.parts[:-1]:
            continue
        me = rel.parts[0].removesuffix(".rs")
        if me in ("lib", "test_util"):
            continue
        text = re.sub(r"#\[cfg\(test\)\]\s*mod tests \{.*", "", f.read_text(), flags=re.S)
        text = "\n".join(line for line in text.splitlines() if not line.lstrip().startswith("//"))
        for m in re.finditer(r"crate::([a-z_0-9]+)", text):
            if m.group(1) in top and m.group(1) != me:
                edges[me].add(m.group(1))
    return edges


def python_edges() -> dict[str, set[str]]:
    pkg = ROOT / "python" / "latte_rs"
    edges: dict[str, set[str]] = defaultdict(set)
    for f in pkg.rglob("*.py"):
        rel = f.relative_to(pkg)
        me = rel.parts[0].removesuffix(".py")
        if me == "__init__":
            continue
        depth = len(rel.parts) - 1
        for m in re.finditer(r"^\s*from (\.+)([a-zA-Z_0-9.]*) import ([^\n(]+|\([^)]*\))", f.read_text(), re.M):
            dots, mod, names = len(m.group(1)), m.group(2), m.group(3)
            if dots - 1 > depth:
                continue
            parts = list(rel.parts[: depth - (dots - 1)]) + ([p for p in mod.split(".") if p] if mod else [])
            if parts:
                target = parts[0].removesuffix(".py")
            else:
                # `from . import x` at the package root names modules.
                target = None
                for name in re.findall(r"[A-Za-z_0-9]+", names):
                    if name != me and ((pkg / f"{name}.py").exists() or (pkg / name).is_dir()):
                        edges[me].add(name)
            if target and target != me and target != "__init__":
                edges[me].add(target)
    return edges


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    found, state, stack = [], {}, []

    def visit(n: str) -> None:
        state[n] = 1
        stack.append(n)
        for m in sorted(edges.get(n, ())):
            if state.get(m) == 1:
                found.append(stack[stack.index(m):] + [m])
            elif m not in state:
                visit(m)
        stack.pop()
        state[n] = 2

    for n in sorted(edges):
        if n not in state:
            visit(n)
    return found


def main() -> int:
    bad = False
    for name, edges in (("Rust crate (src/)", rust_edges()), ("Python package (python/latte_rs/)", python_edges())):
        print(f"{name}:")
        for a in sorted(edges):
            print(f"  {a} -> {', '.join(sorted(edges[a]))}")
        for c in cycles(edges):
            bad = True
            print(f"  CYCLE: {' -> '.join(c)}")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
