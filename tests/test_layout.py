"""The package layout: a small root, no import cycles, a math layer free of Lightning.

The import graph is read from the source (every ``import`` statement, at module level or
inside functions), so a lazy import that closes a cycle counts too.
"""

from __future__ import annotations

import ast
import warnings
from pathlib import Path

import pytest

from lightning_accel._moved import MOVED

PACKAGE = Path(__file__).parents[1] / "lightning_accel"
# The compression math, the backends and the structural log: testable without a Trainer.
MATH_LAYER = ("pruning", "quantization", "binarization", "checkpointing", "backends", "utilities")


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for p in PACKAGE.rglob("*.py")}


def _imports(path: Path, modules: dict[str, Path]) -> set[str]:
    """Modules of this package (and third-party top-level names) that ``path`` imports."""
    name = _module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join([*parent, base] if base else parent)
            for alias in node.names:
                candidate = f"{base}.{alias.name}"
                found.add(candidate if candidate in modules else base)
    return found


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    return {
        name: {imp for imp in _imports(path, modules) if imp in modules and imp != name}
        for name, path in modules.items()
    }


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle, as a list of modules, or ``None``."""
    state: dict[str, int] = {}  # 1: on the stack, 2: done
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return [*stack[stack.index(nxt) :], nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (found := visit(node)):
            return found
    return None


def test_import_graph_has_no_cycle() -> None:
    cycle = _cycle(_graph())
    assert cycle is None, " -> ".join(cycle or [])


def test_cycle_finder_finds_a_cycle() -> None:  # the check above could otherwise pass vacuously
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b"}, "b": set()}) is None


@pytest.mark.parametrize("layer", MATH_LAYER)
def test_math_layer_imports_neither_lightning_nor_the_callbacks(layer: str) -> None:
    modules = _modules()
    offenders = []
    for name, path in modules.items():
        if not name.startswith(f"lightning_accel.{layer}"):
            continue
        for imported in _imports(path, modules):
            top = imported.split(".")[0]
            if top in ("lightning", "pytorch_lightning") or imported.startswith(
                "lightning_accel.callbacks"
            ):
                offenders.append(f"{name} imports {imported}")
    assert not offenders, offenders


def test_package_root_holds_at_most_four_modules_besides_subpackages() -> None:
    root_modules = [p.name for p in PACKAGE.glob("*.py")]
    assert "__init__.py" in root_modules
    assert len(root_modules) <= 4, root_modules
    subpackages = {p.parent.name for p in PACKAGE.glob("*/__init__.py")}
    expected = {"pruning", "quantization", "binarization", "callbacks", "export", "backends"}
    assert subpackages >= expected | {"checkpointing", "tracking", "recipes", "cli"}


def test_tests_mirror_the_package_tree() -> None:
    tests = Path(__file__).parent
    for sub in ("pruning", "quantization", "binarization", "callbacks", "export", "backends"):
        assert any((tests / sub).glob("test_*.py")), f"tests/{sub}/ has no tests"


@pytest.mark.parametrize(
    ("old", "name", "new"),
    [
        ("lightning_accel.benchmark", "latency", "lightning_accel.backends.onnxruntime"),
        ("lightning_accel.benchmark", "Latency", "lightning_accel.backends.timing"),
        ("lightning_accel.comparison", "bench_onnx", "lightning_accel.export.bench"),
        ("lightning_accel.comparison", "export_and_compare", "lightning_accel.export.compare"),
        ("lightning_accel.structured", "prune_channels", "lightning_accel.pruning.channels"),
        ("lightning_accel.surgery", "restore_compression", "lightning_accel.checkpointing"),
        ("lightning_accel.recipe", "Recipe", "lightning_accel.recipes.recipe"),
        ("lightning_accel.zoo", "build", "lightning_accel.models.zoo"),
    ],
)
def test_old_import_paths_resolve_with_a_warning_naming_the_new_one(
    old: str, name: str, new: str
) -> None:
    import importlib
    import sys

    import lightning_accel  # noqa: F401  installs the resolver

    sys.modules.pop(old, None)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        module = importlib.import_module(old)
    assert any(
        issubclass(w.category, DeprecationWarning) and "moved to" in str(w.message) for w in caught
    )
    assert getattr(module, name) is getattr(importlib.import_module(new), name)
    with pytest.raises(AttributeError, match="moved to .* define no 'no_such_name'"):
        module.no_such_name  # noqa: B018


@pytest.mark.parametrize(
    ("old", "names"),
    [
        ("lightning_accel.schedules", {"cubic_sparsity", "StepSchedule"}),
        ("lightning_accel.comparison", {"bench_onnx", "export_and_compare"}),  # split in two
        (
            "lightning_accel.verify",
            {"compare_outputs", "Tolerance"},
        ),  # its new home defines __all__
    ],
)
def test_star_import_from_an_old_path_gives_the_new_modules_names(old: str, names: set) -> None:
    import importlib

    import lightning_accel  # noqa: F401  installs the resolver

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        namespace: dict = {}
        exec(f"from {old} import *", namespace)  # the statement under test
        expected: set[str] = set()
        for target in MOVED[old]:
            module = importlib.import_module(target)
            expected.update(getattr(module, "__all__", None) or _public_names(module))
    assert names <= set(namespace) and expected <= set(namespace)
    assert all(namespace[name] is getattr(importlib.import_module(old), name) for name in names)


def _public_names(module: object) -> list[str]:
    return [name for name in vars(module) if not name.startswith("_")]


def _public_functions() -> list[tuple[str, ast.FunctionDef]]:
    """Public module-level functions and methods (Lightning hooks marked ``@override`` aside)."""
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        if path.name == "_moved.py":  # import-system protocol methods
            continue
        tree = ast.parse(path.read_text())
        scopes = [tree.body] + [n.body for n in tree.body if isinstance(n, ast.ClassDef)]
        for body in scopes:
            for node in body:
                if not isinstance(node, ast.FunctionDef) or node.name.startswith("_"):
                    continue
                decorators = {ast.unparse(d) for d in node.decorator_list}
                if "override" not in decorators:
                    found.append((f"{path.relative_to(PACKAGE.parent)}:{node.lineno}", node))
    return found


def test_public_functions_with_three_or_more_parameters_document_each() -> None:
    undocumented = []
    for where, node in _public_functions():
        arguments = [*node.args.args, *node.args.kwonlyargs]
        names = [a.arg for a in arguments if a.arg not in ("self", "cls")]
        if len(names) < 3:
            continue
        doc = ast.get_docstring(node) or ""
        missing = [name for name in names if f"{name}:" not in doc]
        if missing:
            undocumented.append(f"{where} {node.name}: {missing}")
    assert not undocumented, "\n".join(undocumented)
