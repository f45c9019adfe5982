#!/usr/bin/env python3
"""Check that bcscan's imports only go downward: no import cycle between modules, and no
sub-package importing from one that builds on it.  Imports inside functions count.

    python .ci/check_imports.py [PACKAGE_DIR]   # prints the layers; exit 1 with the offending imports

Layers, bottom first; a module may import from its own unit and from units of lower layers.
"""
from __future__ import annotations

import ast
import sys
from pathlib import Path

LAYERS = [
    ["bcscan.errors"],                                               # every error and exit code
    ["bcscan", "bcscan.config", "bcscan.logs"],                      # version, configuration, logging
    ["bcscan.scan"],                                                 # per-scan stages
    ["bcscan.model"],                                                # the VGG-16 and its classifier
    ["bcscan.results"],                                              # patients, tables, reports
    ["bcscan.batch", "bcscan.training"],                             # the batch; training and evaluation
    ["bcscan.review"],                                               # the pathologist's review of a run
    ["bcscan.testing"],                                              # helpers for tests and benchmarks
    ["bcscan.cli"],                                                  # the command line
]
PACKAGE = Path(__file__).resolve().parents[1] / "bcscan"


def modules(package: Path) -> dict[str, Path]:
    return {".".join(p.relative_to(package.parent).with_suffix("").parts).removesuffix(".__init__"): p
            for p in sorted(package.rglob("*.py"))}


def imports(name: str, path: Path, known: set[str]) -> set[str]:
    """The package's modules that `name` imports, anywhere in the file."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            candidates = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(parts + ([base] if base else []))
            candidates = [base] + [f"{base}.{alias.name}" for alias in node.names]
        else:
            continue
        found.update(c for c in candidates if c in known and c != name)
    return found


def unit(name: str) -> str:
    """The layer unit of a module: its sub-package, or the module itself at the top."""
    for units in LAYERS:
        for u in sorted(units, key=len, reverse=True):
            if name == u or (u != "bcscan" and name.startswith(u + ".")):
                return u
    return name


def layer(u: str) -> int:
    return next(i for i, units in enumerate(LAYERS) if u in units)


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    found, done = [], set()

    def visit(node: str, stack: list[str]) -> None:
        if node in stack:
            found.append(stack[stack.index(node):] + [node])
            return
        if node in done:
            return
        for nxt in sorted(graph[node]):
            visit(nxt, stack + [node])
        done.add(node)

    for node in sorted(graph):
        visit(node, [])
    return found


def main(package: Path = PACKAGE) -> int:
    mods = modules(package)
    graph = {name: imports(name, path, set(mods)) for name, path in mods.items()}
    problems = []
    unplaced = sorted({unit(m) for m in mods} - {u for units in LAYERS for u in units})
    problems += [f"{u}: not placed in a layer (add it to LAYERS in {Path(__file__).name})" for u in unplaced]
    for name, deps in sorted(graph.items()):
        for dep in sorted(deps):
            a, b = unit(name), unit(dep)
            if a != b and a not in unplaced and b not in unplaced and layer(b) >= layer(a):
                problems.append(f"{name} imports {dep}: {b} is not below {a}")
    problems += ["import cycle: " + " -> ".join(c) for c in cycles(graph)]
    for i, units in enumerate(LAYERS):
        print(f"layer {i}: {', '.join(units)}")
    print(f"{len(mods)} modules, {sum(map(len, graph.values()))} imports between them")
    for problem in problems:
        print("FAIL", problem)
    if not problems:
        print("OK: no import cycle, no upward import")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main(Path(sys.argv[1]) if len(sys.argv) > 1 else PACKAGE))
