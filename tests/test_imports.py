"""The import rules of rmlab, read from the source (ast: nothing is imported or run).

Layers, lowest first; a module may import from its own layer and the layers below it, never above:

    layer        modules                                                   may import
    base         rmlab (package), errors, strict_json, config, hardware,   base
                 console, checkpoint, hub, version
    text         rmlab.text.*                                              base
    data         rmlab.data.*                                              base, text
    model        rmlab.model.*                                             base, text, data
    diagnostics  rmlab.diagnostics.*                                       base, text, data, model
    run          trained, launch, preflight, throughput, final_validation, all of the above
                 progress
    entry        train, evaluate, export, score, audit, sweep, bench.*     all of the above; never another entry point

On top of the layers, no module reaches itself through its imports (no cycles, inside a layer
either). What several entry points share (reading a checkpoint and its tokenizer back, the
precision choice, the sweep's run names) lives in the `run` or `base` layer.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "rmlab"

# The table of the module docstring: (layer, module prefixes), lowest layer first.
LAYERS = (
    ("base", ("rmlab", "rmlab.errors", "rmlab.strict_json", "rmlab.config", "rmlab.hardware", "rmlab.console",
              "rmlab.checkpoint", "rmlab.hub", "rmlab.version")),
    ("text", ("rmlab.text",)),
    ("data", ("rmlab.data",)),
    ("model", ("rmlab.model",)),
    ("diagnostics", ("rmlab.diagnostics",)),
    ("run", ("rmlab.trained", "rmlab.launch", "rmlab.preflight", "rmlab.throughput", "rmlab.final_validation",
             "rmlab.progress")),
    ("entry", ("rmlab.train", "rmlab.evaluate", "rmlab.export", "rmlab.score", "rmlab.audit", "rmlab.sweep", "rmlab.bench")),
)
RANK = {name: rank for rank, (name, _) in enumerate(LAYERS)}


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def layer_of(module: str) -> str:
    """The layer whose longest prefix matches `module` (`rmlab` alone matches only the package itself)."""
    best, length = None, -1
    for name, prefixes in LAYERS:
        for prefix in prefixes:
            matches = module == prefix or (prefix != "rmlab" and module.startswith(prefix + "."))
            if matches and len(prefix) > length:
                best, length = name, len(prefix)
    if best is None:
        raise AssertionError(f"{module} is in no layer: add it to LAYERS (and the table in this file's docstring)")
    return best


def entry_point(module: str) -> str:
    """`rmlab.bench.baselines` -> `rmlab.bench`: the submodules of one entry point are one entry point."""
    return ".".join(module.split(".")[:2])


def imports_of(path: Path, modules: set[str]) -> set[str]:
    """The rmlab modules that a file imports, anywhere in it (function-level imports included)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names if alias.name.split(".")[0] == "rmlab")
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "rmlab":
            for alias in node.names:  # `from rmlab import strict_json` imports the module rmlab.strict_json
                sub = f"{node.module}.{alias.name}"
                found.add(sub if sub in modules else node.module)
    return found


def import_graph() -> dict[str, set[str]]:
    files = {module_name(path): path for path in PACKAGE.rglob("*.py")}
    return {module: imports_of(path, set(files)) for module, path in files.items()}


def violations(graph: dict[str, set[str]]) -> list[str]:
    """Every import that breaks the layer rules, as `importer -> imported (why)`."""
    problems = []
    for module, imported in sorted(graph.items()):
        mine = layer_of(module)
        for target in sorted(imported):
            theirs = layer_of(target)
            if RANK[theirs] > RANK[mine]:
                problems.append(f"{module} -> {target} ({mine} may not import {theirs}, a higher layer)")
            elif mine == theirs == "entry" and entry_point(module) != entry_point(target):
                problems.append(f"{module} -> {target} (an entry point imports another; move what they share down)")
    return problems


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Import cycles among rmlab modules (one per strongly connected component, depth-first)."""
    found, state = [], {}  # state: 1 on the current path, 2 done

    def visit(module: str, path: list[str]) -> None:
        state[module] = 1
        for target in sorted(graph.get(module, ())):
            if target == module or target == "rmlab":  # the package's __init__ runs first for every module
                continue
            if state.get(target) == 1:
                found.append(path[path.index(target):] + [target])
            elif target not in state:
                visit(target, path + [target])
        state[module] = 2

    for module in sorted(graph):
        if module not in state:
            visit(module, [module])
    return found


def test_every_import_follows_the_layers():
    assert violations(import_graph()) == []


def test_no_import_cycles():
    assert cycles(import_graph()) == []


@pytest.mark.parametrize("importer, imported, why", [
    ("rmlab.data.collate", "rmlab.model.module", "data may not import model, a higher layer"),
    ("rmlab.data.augment", "rmlab.diagnostics.probes", "data may not import diagnostics, a higher layer"),
    ("rmlab.model.backbone", "rmlab.trained", "model may not import run, a higher layer"),
    ("rmlab.score", "rmlab.export", "an entry point imports another; move what they share down"),
    ("rmlab.evaluate", "rmlab.train", "an entry point imports another; move what they share down"),
])
def test_a_planted_back_import_is_caught(importer, imported, why):
    graph = import_graph()
    graph[importer] = graph[importer] | {imported}
    assert violations(graph) == [f"{importer} -> {imported} ({why})"]


def test_a_planted_cycle_is_caught():
    graph = import_graph()  # inside one layer, so only the cycle check can see it
    graph["rmlab.data.collate"] = graph["rmlab.data.collate"] | {"rmlab.data.datamodule"}
    assert violations(graph) == []
    found = cycles(graph)  # every cycle through the planted edge (datamodule also reaches collate through set_collate)
    assert found and all(cycle[0] == cycle[-1] for cycle in found)
    assert all({"rmlab.data.collate", "rmlab.data.datamodule"} <= set(cycle) for cycle in found)
