"""The shape of beam_jobs: sub-packages whose imports run one way, and only the commands at the top.

Reads every module's imports (module level and inside functions) with `ast`, without importing anything.
"""
import ast
import pathlib

import pytest

PACKAGE = pathlib.Path(__file__).resolve().parents[2] / "beam_jobs"
# Lowest first: a sub-package may import itself and those before it, never one after it (README, "Architecture").
LAYERS = ("modalities", "storage", "inputs", "records", "table", "console", "runners", "pipeline")
MAX_TOP_LEVEL_MODULES = 8


def module_name(path: pathlib.Path) -> str:
    parts = ("beam_jobs", *path.relative_to(PACKAGE).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules() -> dict[str, pathlib.Path]:
    return {module_name(path): path for path in sorted(PACKAGE.rglob("*.py"))}


def imported_modules(name: str, path: pathlib.Path, known: set[str]) -> set[str]:
    """The beam_jobs modules that the module `name` at `path` imports; `from P import M` counts as P.M when M is
    a module."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[:len(package.split(".")) - (node.level - 1)]
                base = ".".join(anchor + ([node.module] if node.module else []))
            found.update(f"{base}.{alias.name}" if f"{base}.{alias.name}" in known else base for alias in node.names)
    return {module for module in found if module.split(".")[0] == "beam_jobs"} - {name}


def import_graph() -> dict[str, set[str]]:
    found = modules()
    return {name: imported_modules(name, path, set(found)) for name, path in found.items()}


def layer_of(module: str) -> int | None:
    """The index of the sub-package `module` lies in; None for the top (the root package and the commands)."""
    parts = module.split(".")
    return LAYERS.index(parts[1]) if len(parts) > 1 and parts[1] in LAYERS else None


def test_every_sub_package_is_a_layer_with_a_one_line_purpose():
    folders = sorted(path.name for path in PACKAGE.iterdir() if (path / "__init__.py").exists())
    assert folders == sorted(LAYERS)
    for folder in folders:
        docstring = ast.get_docstring(ast.parse((PACKAGE / folder / "__init__.py").read_text()))
        assert docstring, f"beam_jobs/{folder}/__init__.py says nothing of what the folder is for"


def test_only_the_commands_are_at_the_top():
    top = sorted(path for path in PACKAGE.glob("*.py") if path.name != "__init__.py")
    assert len(top) + 1 <= MAX_TOP_LEVEL_MODULES
    for path in top:
        assert 'if __name__ == "__main__":' in path.read_text(), f"{path.name} is not a command: move it to a layer"


@pytest.mark.parametrize("layer", LAYERS)
def test_a_layer_imports_only_itself_and_the_layers_below(layer):
    upward = []
    for module, imported in import_graph().items():
        if layer_of(module) != LAYERS.index(layer):
            continue
        for target in sorted(imported):
            if target == "beam_jobs":
                continue  # the root package: PIPELINE_VERSION, and no imports of its own
            target_layer = layer_of(target)
            if target_layer is None or target_layer > LAYERS.index(layer):
                upward.append(f"{module} imports {target}")
    assert not upward, "imports against the layer order:\n" + "\n".join(upward)


def test_the_root_package_imports_nothing():
    assert import_graph()["beam_jobs"] == set()


def test_no_module_imports_itself_through_others():
    graph = import_graph()
    state, cycles = {}, []

    def visit(path: list[str]) -> None:  # depth first; `path` ends with the module visited
        state[path[-1]] = "open"
        for target in sorted(graph.get(path[-1], ())):
            if state.get(target) == "open":
                cycles.append(" -> ".join(path[path.index(target):] + [target]))
            elif target not in state:
                visit(path + [target])
        state[path[-1]] = "done"

    for module in sorted(graph):
        if module not in state:
            visit([module])
    assert not cycles, "import cycles:\n" + "\n".join(cycles)
