"""The layout docs/design.md §7 describes: modules of bounded size, imports that point down, a map that is true."""
from __future__ import annotations

import ast
import re
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
LIBRARY = REPO_ROOT / "mclip_hbt"
MAX_LINES = 450
#: Where a module's size is data, not code: the hand-written grammars of the 11 XTD10 languages.
SIZE_EXEMPT = {"data_recipes/scene_grammar.py"}
#: The packages of mclip_hbt from the bottom up; a module may import only from a lower layer or its own package.
LAYERS = {"base": 0, "offline": 1, "model": 2, "data": 2, "train": 3, "retrieval": 3, "search": 4, "commands": 5}
COMMANDS = {"export", "bundled"}
PROJECT_TOP_LEVEL = ("eval", "data_recipes", "bench")


def project_modules() -> list[Path]:
    folders = ("mclip_hbt", "eval", "data_recipes", "bench")
    return sorted([p for f in folders for p in (REPO_ROOT / f).rglob("*.py")]
                  + [REPO_ROOT / "train.py", REPO_ROOT / "demo.py"])


def module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO_ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported_modules(path: Path) -> set[str]:
    """Absolute names of what a module imports (``from a.b import c`` counts ``a.b`` and ``a.b.c``)."""
    package = module_name(path) if path.name == "__init__.py" else module_name(path).rpartition(".")[0]
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            names.add(base)
            names.update(f"{base}.{alias.name}" for alias in node.names)
    return names


def library_graph() -> dict[str, set[str]]:
    modules = {module_name(p): p for p in LIBRARY.rglob("*.py")}
    return {name: {m for m in imported_modules(path) if m in modules} for name, path in modules.items()}


def layer(module: str) -> tuple[str, int]:
    """The package a library module belongs to and its height; the top (``mclip_hbt`` itself, whose public
    names are the model's, and the command modules) may import anything."""
    parts = module.split(".")
    if module == "mclip_hbt" or (len(parts) == 2 and parts[1] in COMMANDS):
        return "commands", LAYERS["commands"]
    package = parts[1] if len(parts) > 2 or (len(parts) == 2 and parts[1] in LAYERS) else "base"
    return package, LAYERS[package]


def test_no_module_is_over_the_size_limit():
    sizes = {str(p.relative_to(REPO_ROOT)): len(p.read_text().splitlines()) for p in project_modules()}
    over = {name: n for name, n in sizes.items() if n > MAX_LINES and name not in SIZE_EXEMPT}
    assert not over, f"modules over {MAX_LINES} lines: {over}"


def test_the_library_imports_nothing_above_it():
    upward = {module_name(p): sorted(m for m in imported_modules(p) if m.split(".")[0] in PROJECT_TOP_LEVEL)
              for p in LIBRARY.rglob("*.py")}
    assert not {k: v for k, v in upward.items() if v}


def test_library_imports_point_down_and_form_no_cycle():
    graph = library_graph()
    wrong = []
    for module, targets in graph.items():
        package, rank = layer(module)
        for target in targets:
            target_package, target_rank = layer(target)
            if target_package != package and target_rank >= rank:
                wrong.append(f"{module} -> {target}")
    assert not wrong, "imports that do not point down: " + ", ".join(sorted(wrong))

    state: dict[str, str] = {}

    def visit(module: str, path: list[str]) -> None:
        state[module] = "open"
        for target in sorted(graph[module]):
            if state.get(target) == "open":
                raise AssertionError("import cycle: " + " -> ".join(path[path.index(target):] + [module, target]))
            if target not in state:
                visit(target, path + [module])
        state[module] = "done"

    for module in sorted(graph):
        if module not in state:
            visit(module, [])


def test_every_module_in_the_design_map_exists():
    design = (REPO_ROOT / "docs" / "design.md").read_text()
    named_files = set(re.findall(r"`((?:mclip_hbt|eval|data_recipes|bench)/[\w/]+\.py)`", design))
    named_modules = set(re.findall(r"`(mclip_hbt(?:\.\w+)+)`", design))
    assert len(named_files) >= 30  # the module map itself, not just a mention or two
    missing = sorted(f for f in named_files if not (REPO_ROOT / f).is_file())
    for module in named_modules:  # a module, or a name defined in one (mclip_hbt.model.clip.MultilingualCLIP)
        path = REPO_ROOT / module.replace(".", "/")
        if not (path.with_suffix(".py").is_file() or (path / "__init__.py").is_file()
                or path.parent.with_suffix(".py").is_file()):
            missing.append(module)
    assert not missing, f"docs/design.md names modules that do not exist: {missing}"
    library = {str(p.relative_to(REPO_ROOT)) for p in LIBRARY.rglob("*.py") if p.name != "__init__.py"}
    assert library <= named_files, f"modules missing from docs/design.md's map: {sorted(library - named_files)}"
