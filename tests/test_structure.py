import locust  # noqa: F401  (first: gevent monkey-patches sockets before anything else imports them)

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "dg_locust"


def _imports_of(path: Path) -> set[str]:
    """The dg_locust modules one module imports (at any depth of its code, lazy imports included)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("dg_locust."):
            found.add(node.module.split(".")[1])
        elif isinstance(node, ast.Import):
            found.update(alias.name.split(".")[1] for alias in node.names if alias.name.startswith("dg_locust."))
    return found


def _graph() -> dict[str, set[str]]:
    modules = {path.stem: path for path in PACKAGE.glob("*.py")}
    modules.update({path.name: path / "__init__.py" for path in PACKAGE.iterdir() if (path / "__init__.py").exists()})
    # A subpackage is one node: its modules importing each other is no cycle between layers.
    return {name: (_imports_of(path) & set(modules)) - {name} for name, path in modules.items()}


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, str] = {}

    def visit(node: str, trail: list[str]) -> list[str] | None:
        state[node] = "open"
        for target in sorted(graph[node]):
            if state.get(target) == "open":
                return [*trail[trail.index(target) :], target] if target in trail else [node, target]
            if target not in state and (found := visit(target, [*trail, target])):
                return found
        state[node] = "done"
        return None

    for start in sorted(graph):
        if start not in state and (found := visit(start, [start])):
            return found
    return None


def test_the_package_has_no_import_cycle():
    graph = _graph()
    assert {"run", "pipeline", "options", "schema", "errors"} <= set(graph)
    assert _cycle(graph) is None, f"import cycle: {' -> '.join(_cycle(graph))}"


def test_the_cycle_check_finds_a_cycle():
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b"}, "b": set()}) is None


def test_lower_layers_do_not_import_the_run_or_its_listeners():
    graph = _graph()
    upper = {"run", "users", "locustfile", "cli", "checks", "metrics", "webui"}
    lower_layers = (
        "errors",
        "model",
        "generator",
        "batch",
        "schema",
        "options",
        "client",
        "feed",
        "ledger",
        "pipeline",
    )
    for lower in (*lower_layers, "queries", "query_ledger", "query_workload"):
        assert not graph.get(lower, set()) & upper, f"{lower} imports {graph[lower] & upper}"


def test_every_module_says_what_it_owns():
    for path in [*PACKAGE.glob("*.py"), *PACKAGE.glob("*/*.py")]:
        docstring = ast.get_docstring(ast.parse(path.read_text()))
        assert docstring and len(docstring) > 40, f"{path.name} has no docstring saying what it owns"


def test_the_product_never_points_outside_the_repository():
    root = PACKAGE.parent
    texts = [*PACKAGE.rglob("*.py"), root / "README.md", root / "locustfile.py", *root.glob("k8s/**/*.md")]
    for path in texts:
        assert "shared/notes" not in path.read_text() and "../shared" not in path.read_text(), path
