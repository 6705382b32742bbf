"""Imports point down only: docs/architecture.md's layer table, checked against every module's imports.

Each module under `longshort/` is parsed with `ast` (imports at module level and inside functions, as the
package imports heavy dependencies lazily) and mapped to its layer by the table in docs/architecture.md
("Layers: imports point down only"); no module may import one of a higher layer, and every module must be
in a row of the table. Inside the wiring layer `pipeline/` ← `commands/` ← `cli.py`, and inside `pipeline/`
the modules have their own order (`PIPELINE` below, as the paragraph under the table describes it).
`scripts/` and `bench/` use the library, never the command modules.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
PACKAGE = REPO / "longshort"
DOC = REPO / "docs" / "architecture.md"

# Inside pipeline/: plan (recipes, fingerprints) <- inputs, stages (and the stage-level helpers) <- report <- runner.
# `shipped` (the shipped reasoner, read by plan) and `compare` (paired statistics) import nothing of pipeline/.
PIPELINE = {"__init__": 0, "shipped": 0, "compare": 0, "plan": 1, "inputs": 2, "stages": 2, "viewer": 2, "check": 2,
            "report": 3, "runner": 4}
# Inside the wiring layer: the pipeline is driven by its command, the commands by the CLI.
WIRING = {"pipeline": 0, "commands": 1, "cli": 2}
# Known imports against the table, each to be fixed by moving code (remove the entry when it is): the check fails
# on a new violation and on an entry that no longer occurs.
KNOWN: dict[tuple[str, str], str] = {}


def doc_layers() -> dict[str, int]:
    """{`types.py` | `config/` ...: layer} from the table's rows `| 1 vocabulary | `types.py`, `config/` ... |`."""
    section = DOC.read_text().split("\n## Layers", 1)[-1].split("\n## ", 1)[0]
    layers: dict[str, int] = {}
    for row in (line for line in section.splitlines() if line.startswith("|")):
        cells = [c.strip() for c in row.strip().strip("|").split("|")]
        m = re.match(r"(\d+) \w+$", cells[0]) if len(cells) >= 2 else None
        if m:
            for name in re.findall(r"`([\w/.]+)`", cells[1]):
                if name.endswith((".py", "/")):  # a module or a package; `vllm_engine` and the like are parts of one
                    layers[name] = int(m.group(1))
    return layers


def module_name(path: Path) -> str:
    parts = path.relative_to(REPO).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules() -> dict[str, Path]:
    return {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def layer_of(module: str, layers: dict[str, int]) -> int | None:
    """The layer of `longshort.x.y`: its file's row (`x.py`) or its package's (`x/`); the package root is 0."""
    parts = module.split(".")[1:]
    if not parts:
        return 0
    if len(parts) == 1 and f"{parts[0]}.py" in layers:
        return layers[f"{parts[0]}.py"]
    return layers.get(f"{parts[0]}/")


def imports(module: str, path: Path, known: set[str]) -> list[tuple[int, str]]:
    """(line, `longshort.…` module) of every import in `path`, wherever in the file it is."""
    found: list[tuple[int, str]] = []
    package = module if path.name == "__init__.py" else module.rsplit(".", 1)[0]
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: from . import x, from ..y import z
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            for a in node.names:  # `from longshort.pipeline import shipped` imports the module pipeline.shipped
                found.append((node.lineno, f"{base}.{a.name}" if f"{base}.{a.name}" in known else base))
    return [(line, name) for line, name in found if name == "longshort" or name.startswith("longshort.")]


def imports_of(mods: dict[str, Path]):
    """(module, its file, line, imported `longshort.…` module) for every import of every module under longshort/."""
    known = set(mods)
    for module, path in mods.items():
        for line, target in imports(module, path, known):
            yield module, path, line, target


def where(path: Path, line: int) -> str:
    return f"[{path.relative_to(REPO)}:{line}]"


def test_doc_table_names_real_modules():
    layers = doc_layers()
    assert sorted(set(layers.values())) == [1, 2, 3, 4, 5, 6], f"{DOC}: layer table not found or incomplete: {layers}"
    missing = [name for name in layers if not (PACKAGE / name).exists()]
    assert not missing, f"{DOC} layer table names modules that do not exist under longshort/: {missing}"
    text = DOC.read_text()
    undocumented = [name for name in PIPELINE if name != "__init__" and f"`{name}`" not in text]
    assert not undocumented, f"pipeline modules of tests/test_layers.py PIPELINE that {DOC.name} does not name: {undocumented}"


def test_every_module_has_a_layer():
    layers, mods = doc_layers(), modules()
    unassigned = [m for m in mods if layer_of(m, layers) is None]
    assert not unassigned, f"modules in no row of the layer table of docs/architecture.md (add them there): {unassigned}"
    unordered = [m for m in mods if m.startswith("longshort.pipeline") and pipeline_name(m) not in PIPELINE]
    assert not unordered, f"pipeline modules missing from tests/test_layers.py PIPELINE (give them their place): {unordered}"


def test_imports_point_down():
    layers, mods = doc_layers(), modules()
    bad, seen = [], set()
    for module, path, line, target in imports_of(mods):
        own, theirs = layer_of(module, layers), layer_of(target, layers)
        if theirs is not None and own is not None and theirs > own:
            seen.add((module, target))
            if (module, target) not in KNOWN:
                bad.append(f"{module} -> {target} (layer {own} imports layer {theirs})  {where(path, line)}")
    assert not bad, "imports pointing up the layer table of docs/architecture.md:\n  " + "\n  ".join(bad)
    fixed = sorted(set(KNOWN) - seen)
    assert not fixed, f"tests/test_layers.py KNOWN lists violations that no longer occur (remove them): {fixed}"


def pipeline_name(module: str) -> str:
    return module.split(".")[2] if module.count(".") >= 2 else "__init__"


def test_pipeline_imports_point_down():
    bad = []
    for module, path, line, target in imports_of(modules()):
        if module.startswith("longshort.pipeline") and target.startswith("longshort.pipeline.") and target != module:
            if PIPELINE[pipeline_name(target)] >= PIPELINE[pipeline_name(module)]:
                bad.append(f"{module} -> {target}  {where(path, line)}")
    assert not bad, ("imports against the order inside pipeline/ (plan <- inputs, stages <- report <- runner, siblings "
                     "not each other; tests/test_layers.py PIPELINE):\n  " + "\n  ".join(bad))


def test_wiring_imports_point_down():
    def rank(module: str) -> int | None:
        return WIRING.get(module.split(".")[1]) if module.count(".") >= 1 else None

    bad = []
    for module, path, line, target in imports_of(modules()):
        own, theirs = rank(module), rank(target)
        if own is not None and theirs is not None and theirs > own:
            bad.append(f"{module} -> {target}  {where(path, line)}")
    assert not bad, "imports against pipeline/ <- commands/ <- cli.py (library code must not call a command):\n  " + "\n  ".join(bad)


def test_scripts_and_bench_use_the_library():
    bad = []
    for path in sorted([*(REPO / "scripts").rglob("*.py"), *(REPO / "bench").rglob("*.py")]):
        for line, target in imports(module_name(path), path, set()):
            if target.split(".")[:2] in (["longshort", "commands"], ["longshort", "cli"]):
                bad.append(f"{path.relative_to(REPO)} -> {target}  {where(path, line)}")
    assert not bad, "scripts/ and bench/ import command modules (move what they need into the library):\n  " + "\n  ".join(bad)
