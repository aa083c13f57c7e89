"""The import structure of bridge/: dependencies point one way, and no module imports itself round a cycle.

Every `import` of bridge/ counts: at module level, inside a function, under `if TYPE_CHECKING:`. A module
is one of three kinds (README, "Development"):

- a **feature**: a package of FEATURES (`bridge/intake/`, ...);
- an **entry point**: a module of ENTRY_POINTS, which assembles features into a process or a document;
- **shared**: every other module (`bridge/settings.py`, `bridge/http.py`, ..., and SHARED_PACKAGES).

The rules:
- shared modules import no feature and no entry point;
- a feature imports no entry point, and no other feature's `views`, `schemas` or `cli` (their models and
  services it may: apps is the tenant every feature hangs off, the outbox is where intake writes);
- a feature's `views` are imported by `bridge.web` only, its `cli` by `bridge.cli` only;
- no import cycle;
- a job named by its dotted path (as RQ stores it: `"bridge.delivery.pusher.drain_app"`) names a function.
"""
from __future__ import annotations

import ast
import importlib
import re
from dataclasses import dataclass
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "bridge"

FEATURES = ("apps", "intake", "delivery", "registry", "cohorts", "catalog", "dashboard", "privacy")
# Packages that are shared plumbing: Amplitude's HTTP API (its hosts, the client the Runtime holds, and a
# local stand-in server) and the messaging platforms' (an adapter per platform, and a local stand-in for
# OneSignal) import nothing of the bridge's features.
SHARED_PACKAGES = ("amplitude", "platforms")
ENTRY_POINTS = frozenset({
    "bridge.__main__", "bridge.cli", "bridge.web", "bridge.webserver", "bridge.worker", "bridge.demo",
    "bridge.maintenance",  # the sweep and the pruning: jobs across features (delivery, cohorts)
    "bridge.openapi",  # the API's document, from every feature's schemas
    "bridge.scrape",  # /metrics: the database's state across features (outbox, cohort batches, tags)
    "bridge.models",  # every table, for Alembic
})
# A feature's modules that no other feature may import.
FACING_MODULES = ("views", "schemas", "cli")
ONLY_IMPORTED_BY = {"views": "bridge.web", "cli": "bridge.cli"}


@dataclass(frozen=True)
class Edge:
    """`source` imports `target` (both dotted module names) at `where` (path:line)."""

    source: str
    target: str
    where: str

    def __str__(self) -> str:
        return f"{self.source} -> {self.target} ({self.where})"


def module_name(path: Path, root: Path = PACKAGE) -> str:
    parts = list(path.relative_to(root.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def read_edges(root: Path = PACKAGE) -> tuple[set[str], list[Edge]]:
    """Every module under `root` and every import among them."""
    files = {module_name(path, root): path for path in sorted(root.rglob("*.py"))}
    edges: list[Edge] = []
    for source, path in files.items():
        tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
        where = path.relative_to(root.parent)
        package = source if path.name == "__init__.py" else source.rpartition(".")[0]
        for node in ast.walk(tree):
            for target in _targets(node, package, files):
                if target != source:
                    edges.append(Edge(source, target, f"{where}:{node.lineno}"))
    return set(files), edges


def _targets(node: ast.AST, package: str, modules: dict[str, Path]) -> list[str]:
    """The modules of `modules` that an import statement loads (the most specific for each name)."""
    if isinstance(node, ast.Import):
        names = [alias.name for alias in node.names]
    elif isinstance(node, ast.ImportFrom):
        base = node.module or ""
        if node.level:
            anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
            base = ".".join(anchor + ([base] if base else []))
        names = [f"{base}.{alias.name}" for alias in node.names] + [base]
    else:
        return []
    found = []
    for name in names:
        while name and name not in modules:
            name = name.rpartition(".")[0]
        if name and name not in found:
            found.append(name)
    if isinstance(node, ast.ImportFrom) and len(found) > 1:
        # `from bridge.cohorts import report` loads bridge.cohorts.report; its package is no edge of its own
        base_module = found[-1]
        if any(other.startswith(base_module + ".") for other in found[:-1]):
            found.pop()
    return found


def feature_of(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and parts[1] in FEATURES else None


def kind_of(module: str) -> str:
    if feature_of(module):
        return "feature"
    if module in ENTRY_POINTS:
        return "entry point"
    return "shared"


def forbidden(edges: list[Edge]) -> list[str]:
    """Each edge that breaks a rule of this module's docstring, with the rule."""
    problems = []
    for edge in edges:
        source_kind, target_kind = kind_of(edge.source), kind_of(edge.target)
        target_leaf = edge.target.rpartition(".")[2]
        source_feature, target_feature = feature_of(edge.source), feature_of(edge.target)
        if source_kind == "shared" and target_kind != "shared":
            problems.append(f"{edge}: a shared module imports {'a' if target_kind == 'feature' else 'an'} "
                            f"{target_kind}")
        elif source_kind == "feature" and target_kind == "entry point":
            problems.append(f"{edge}: a feature imports an entry point")
        elif source_feature and target_feature and source_feature != target_feature and target_leaf in FACING_MODULES:
            problems.append(f"{edge}: the feature {source_feature} imports the {target_leaf} of {target_feature}")
        elif target_feature and target_leaf in ONLY_IMPORTED_BY and edge.source != ONLY_IMPORTED_BY[target_leaf]:
            problems.append(f"{edge}: only {ONLY_IMPORTED_BY[target_leaf]} imports a feature's {target_leaf}")
    return problems


def cycles(modules: set[str], edges: list[Edge]) -> list[list[Edge]]:
    """The import cycles: for each group of modules that import one another (Tarjan's strongly connected
    components), the edges inside it."""
    graph: dict[str, set[str]] = {module: set() for module in modules}
    for edge in edges:
        graph[edge.source].add(edge.target)
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    groups: list[set[str]] = []

    def visit(module: str) -> None:
        index[module] = low[module] = len(index)
        stack.append(module)
        on_stack.add(module)
        for target in sorted(graph[module]):
            if target not in index:
                visit(target)
                low[module] = min(low[module], low[target])
            elif target in on_stack:
                low[module] = min(low[module], index[target])
        if low[module] == index[module]:
            group = set()
            while True:
                member = stack.pop()
                on_stack.discard(member)
                group.add(member)
                if member == module:
                    break
            if len(group) > 1:
                groups.append(group)

    for module in sorted(graph):
        if module not in index:
            visit(module)
    return [sorted((e for e in edges if e.source in group and e.target in group), key=str) for group in groups]


MODULES, EDGES = read_edges()


def test_no_import_cycle():
    found = cycles(MODULES, EDGES)
    assert not found, "import cycles (each module of a group imports the next, round to the first):\n" + "\n".join(
        "cycle:\n" + "\n".join(f"  {edge}" for edge in group) for group in found)


def test_dependencies_point_one_way():
    problems = forbidden(EDGES)
    assert not problems, "imports against the layout (tests/test_structure.py's docstring):\n" + "\n".join(problems)


def test_every_package_is_placed():
    packages = {path.parent.name for path in PACKAGE.glob("*/__init__.py")}
    assert packages == set(FEATURES) | set(SHARED_PACKAGES), (
        "each package of bridge/ is a feature or shared: add it to FEATURES or SHARED_PACKAGES")
    assert ENTRY_POINTS <= MODULES, f"ENTRY_POINTS names modules that do not exist: {sorted(ENTRY_POINTS - MODULES)}"


_DOTTED = re.compile(r"bridge(\.[A-Za-z_]\w*)+")


def test_jobs_named_by_their_path_exist():
    """A job that another module enqueues by its dotted path (as RQ stores it), so that neither imports the
    other, must name a function: a rename would otherwise fail only when the job runs."""
    named = sorted({(node.value, module_name(path))
                    for path in PACKAGE.rglob("*.py")
                    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8")))
                    if isinstance(node, ast.Constant) and isinstance(node.value, str) and _DOTTED.fullmatch(node.value)
                    and node.value.rpartition(".")[0] in MODULES - {"bridge"}})
    assert ("bridge.delivery.pusher.drain_app", "bridge.delivery.scheduling") in named
    for path, where in named:
        module, _, name = path.rpartition(".")
        assert callable(getattr(importlib.import_module(module), name, None)), f"{where} names {path}, which is not a function"


# The checks themselves, on made-up trees: each names the edge that breaks a rule.

def _tree(tmp_path: Path, files: dict[str, str]) -> tuple[set[str], list[Edge]]:
    root = tmp_path / "bridge"
    for name, text in {"__init__.py": "", **files}.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)
    return read_edges(root)


def test_a_cycle_through_a_function_level_import_is_named(tmp_path):
    modules, edges = _tree(tmp_path, {
        "runtime.py": "def runner():\n    from bridge.jobs import make\n",
        "jobs.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from bridge.runtime import Runtime\n",
        "times.py": "from bridge import runtime\n",
    })
    assert [[str(edge) for edge in group] for group in cycles(modules, edges)] == [[
        "bridge.jobs -> bridge.runtime (bridge/jobs.py:3)", "bridge.runtime -> bridge.jobs (bridge/runtime.py:2)"]]


@pytest.mark.parametrize(("source", "text", "problem"), [
    ("registry/views.py", "from bridge.intake.views import read_items",
     "bridge.registry.views -> bridge.intake.views (bridge/registry/views.py:1): the feature registry imports the views of intake"),
    ("registry/schemas.py", "from bridge.intake import schemas",
     "bridge.registry.schemas -> bridge.intake.schemas (bridge/registry/schemas.py:1): the feature registry imports the schemas of intake"),
    ("http.py", "def f():\n    from bridge.intake.service import prepare",
     "bridge.http -> bridge.intake.service (bridge/http.py:2): a shared module imports a feature"),
    ("intake/service.py", "import bridge.cli",
     "bridge.intake.service -> bridge.cli (bridge/intake/service.py:1): a feature imports an entry point"),
    ("openapi.py", "from bridge.intake.views import MAX_JSON_DEPTH",
     "bridge.openapi -> bridge.intake.views (bridge/openapi.py:1): only bridge.web imports a feature's views"),
])
def test_a_forbidden_edge_is_named(tmp_path, source, text, problem):
    files = {name: "" for name in ("cli.py", "http.py", "openapi.py", "intake/__init__.py", "intake/views.py",
                                   "intake/schemas.py", "intake/service.py", "registry/__init__.py",
                                   "registry/views.py", "registry/schemas.py")}
    _, edges = _tree(tmp_path, {**files, source: text + "\n"})
    assert forbidden(edges) == [problem]
