"""The import graph: plugin -> core -> adapters, no cycles, no pytest below the pytest face."""

from __future__ import annotations

import ast
import os
import pathlib
import subprocess
import sys

import pytest

import pytest_padaudit

PACKAGE = pathlib.Path(pytest_padaudit.__file__).parent
#: the only package that speaks to pytest.
PYTEST_FACE = "plugin"
FRAMEWORKS = {
    "torch",
    "tensorflow",
    "keras",
    "tf_keras",
    "jax",
    "flax",
    "optax",
    "transformers",
    "lightning",
}
#: the guards that subclass a framework's callback class: each imports its framework (the
#: package reaches them through a lazy ``__getattr__``); guards.watch imports none.
FRAMEWORK_GUARDS = {"guards.transformers", "guards.keras", "guards.lightning", "guards.torch_rows"}


def _modules() -> dict[str, pathlib.Path]:
    found = {}
    for path in PACKAGE.rglob("*.py"):
        parts = list(path.relative_to(PACKAGE).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        found[".".join(parts)] = path
    return found


def _imports(name: str, path: pathlib.Path, known: set[str]) -> tuple[set[str], set[str]]:
    """Return (package modules, top-level external packages) imported anywhere in the file.

    Imports under ``if TYPE_CHECKING:`` are left out: they never run.
    """
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    inner: set[str] = set()
    outer: set[str] = set()

    def walk(node: ast.AST) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and "TYPE_CHECKING" in ast.unparse(child.test):
                for other in child.orelse:
                    walk(other)
                continue
            if isinstance(child, ast.Import):
                for alias in child.names:
                    top, _, rest = alias.name.partition(".")
                    if top == "pytest_padaudit":
                        inner.add(rest)
                    else:
                        outer.add(top)
            elif isinstance(child, ast.ImportFrom):
                if child.level:
                    base = package.split(".") if package else []
                    base = base[: len(base) - (child.level - 1)] if child.level > 1 else base
                    module = ".".join(p for p in [*base, child.module or ""] if p)
                    for alias in child.names:
                        full = f"{module}.{alias.name}" if module else alias.name
                        inner.add(full if full in known else module)
                elif (child.module or "").split(".")[0] == "pytest_padaudit":
                    inner.add((child.module or "").partition(".")[2])
                else:
                    outer.add((child.module or "").split(".")[0])
            walk(child)

    walk(ast.parse(path.read_text()))
    inner.discard(name)
    return {m for m in inner if m in known}, outer


def _graph() -> tuple[dict[str, set[str]], dict[str, set[str]]]:
    modules = _modules()
    known = set(modules)
    inner, outer = {}, {}
    for name, path in modules.items():
        inner[name], outer[name] = _imports(name, path, known)
    return inner, outer


def test_only_the_pytest_face_imports_pytest() -> None:
    _, outer = _graph()
    speaking = {name for name, ext in outer.items() if {"pytest", "_pytest"} & ext}
    assert all(_within(name, PYTEST_FACE) for name in speaking), sorted(speaking)


def _within(name: str, package: str) -> bool:
    return name == package or name.startswith(package + ".")


#: which top-level packages each may import at run time: plugin -> core -> adapters,
#: render beside core (it writes what core decided), guards on top of core and adapters.
ALLOWED = {
    "": {"core"},
    "core": {"core", "adapters", "render"},
    "adapters": {"core", "adapters"},
    "render": {"core", "render"},
    "plugin": {"plugin", "core", "render", ""},
    "guards": {"guards", "core", "adapters", "render"},
}


def test_layers_point_one_way() -> None:
    inner, _ = _graph()
    offenders = {}
    for name, targets in inner.items():
        top = name.split(".")[0] if "." in name or name in ALLOWED else ""
        bad = sorted(t for t in targets if (t.split(".")[0] if t else "") not in ALLOWED[top])
        if bad:
            offenders[name] = bad
    assert not offenders


def test_no_flat_modules_beside_the_packages() -> None:
    flat = sorted(p.name for p in PACKAGE.glob("*.py") if p.name != "__init__.py")
    assert flat == []


def test_engine_and_core_import_no_framework() -> None:
    _, outer = _graph()
    core = [
        n
        for n in outer
        if not _within(n, "adapters") and n != "core.checkpoint_files" and n not in FRAMEWORK_GUARDS
    ]
    offenders = {n: sorted(outer[n] & FRAMEWORKS) for n in core if outer[n] & FRAMEWORKS}
    assert not offenders


def test_no_import_cycles() -> None:
    inner, _ = _graph()
    cycles = []
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(inner[node]):
            # a package's __init__ is imported by its children anyway: not a cycle edge
            if node.startswith(nxt + ".") or (nxt == "" and node):
                continue
            if state.get(nxt) == 1:
                cycles.append([*stack[stack.index(nxt) :], nxt])
            elif nxt not in state:
                visit(nxt)
        stack.pop()
        state[node] = 2

    for node in sorted(inner):
        if node not in state:
            visit(node)
    assert not cycles


def test_importing_the_plugin_loads_no_framework() -> None:
    code = (
        "import sys, pytest_padaudit.plugin, pytest_padaudit.plugin.reporting\n"
        "import pytest_padaudit.adapters\n"
        "from pytest_padaudit import audit, AuditReport, Finding\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in "
        f"{sorted(FRAMEWORKS | {'numpy'} - {'optax'})!r}))"
    )
    env = {**os.environ, "PYTHONPATH": str(PACKAGE.parent)}
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120
    )
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "[]"


#: the roles every built-in framework subpackage has, under the same file names.
ROLES = {
    "__init__",
    "handle",
    "passes",
    "tables",
    "state",
    "optim",
    "explain",
    "noise",
    "checkpoint",
}


def _adapters() -> list[str]:
    return sorted(p.parent.name for p in (PACKAGE / "adapters").glob("*/__init__.py"))


def test_every_adapter_is_checked() -> None:
    assert _adapters() == ["flax", "keras", "torch"]


@pytest.mark.parametrize("framework", _adapters())
def test_each_framework_has_the_same_roles(framework: str) -> None:
    files = {p.stem for p in (PACKAGE / "adapters" / framework).glob("*.py")}
    assert files >= ROLES, sorted(ROLES - files)


@pytest.mark.parametrize("framework", _adapters())
def test_each_handle_subclasses_the_base(framework: str) -> None:
    """Every ``handle.py`` builds its handle on ``core.base.BaseHandle``."""
    tree = ast.parse((PACKAGE / "adapters" / framework / "handle.py").read_text())
    bases = {
        node.name: [ast.unparse(b) for b in node.bases]
        for node in tree.body
        if isinstance(node, ast.ClassDef) and node.name.endswith("Handle")
    }
    assert bases and all(b == ["BaseHandle"] for b in bases.values()), bases


@pytest.mark.parametrize("framework", _adapters())
def test_each_checkpoint_role_says_its_words(framework: str) -> None:
    """``audit_checkpoint``'s words for a framework live in its adapter, not in the core."""
    import importlib

    from pytest_padaudit.core.handle import CheckpointWords

    module = importlib.import_module(f"pytest_padaudit.adapters.{framework}.checkpoint")
    assert isinstance(module.WORDS, CheckpointWords)
    assert "{zero}" in module.WORDS.nonzero_fix


def test_the_core_keeps_no_framework_word_lists() -> None:
    """No table keyed by framework name, no optimizer class list, no fix text per framework."""
    core = PACKAGE / "core"
    for name in ("stepping.py", "checkpoint.py"):
        text = (core / name).read_text()
        for word in ('"torch":', '"keras":', "_TORCH_ZERO", "_KERAS_ZERO", "set_weights"):
            assert word not in text, (name, word)
