"""The rules of the source tree (docs/architecture.md): the core imports neither Dagster nor the CLI, no
module imports itself back through others, no source file grows past 500 lines, and code cites only
documents the repository carries."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("prismatic", "prism_assets", "resources", "prism_cli")
MAX_LINES = 500


def module_files() -> dict[str, Path]:
    """Dotted module name → file, for every module of the project's packages."""
    found = {}
    for package in PACKAGES:
        for path in sorted((REPO / package).rglob("*.py")):
            parts = path.relative_to(REPO).with_suffix("").parts
            found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return found


def imports_of(path: Path, name: str) -> set[str]:
    """Every module `path` imports, at any depth of its code (function-level imports count too)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[:len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, *([base] if base else [])])
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names)
    return found


def project_graph() -> dict[str, set[str]]:
    """module → the project modules it imports (a `from package import module` counts as the module)."""
    files = module_files()
    return {name: {target for target in imports_of(path, name) if target in files and target != name}
            for name, path in files.items()}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan's algorithm)."""
    index, low, on_stack, stack, found = {}, {}, set(), [], []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in graph[node]:
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in graph:
        if node not in index:
            visit(node)
    return found


def test_the_cycle_finder_finds_a_planted_cycle():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}, "e": set()}
    assert cycles(graph) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_no_import_cycle_among_the_project_modules():
    assert cycles(project_graph()) == []


def test_the_core_imports_neither_dagster_nor_the_layers_above_it():
    above = ("dagster", "dagster_aws", "dagster_k8s", "dagster_postgres", "prism_assets", "resources", "prism_cli",
             "typer")
    offenders = {}
    for name, path in module_files().items():
        if name.split(".")[0] == "prismatic":
            bad = sorted(m for m in imports_of(path, name) if m.split(".")[0] in above)
            if bad:
                offenders[name] = bad
    assert offenders == {}


def test_the_config_model_imports_nothing_of_the_project():
    files = module_files()
    assert {m for m in imports_of(files["prismatic.config"], "prismatic.config") if m in files} == {
        "prismatic.config_deploy", "prismatic.config_student"}
    assert {m for m in imports_of(files["prismatic.config_deploy"], "prismatic.config_deploy")
            if m.startswith("prism")} == set()
    assert {m for m in imports_of(files["prismatic.config_student"], "prismatic.config_student")
            if m in files} == {"prismatic.config_deploy"}
    reader = {m for m in imports_of(files["prismatic.config_file"], "prismatic.config_file") if m in files}
    assert reader == {"prismatic.config", "prismatic.errors"}


@pytest.mark.parametrize("package", PACKAGES)
def test_no_source_file_over_500_lines(package):
    long = {str(path.relative_to(REPO)): n for path in (REPO / package).rglob("*.py")
            if (n := len(path.read_text(encoding="utf-8").splitlines())) > MAX_LINES}
    assert long == {}


def test_code_cites_only_documents_in_the_repository():
    """Every docs/ file cited anywhere exists; nothing cites the design notes the repository does not carry."""
    cited, outside = set(), []
    for path in [*REPO.glob("*.md"), *REPO.glob("Makefile"), *(p for d in (*PACKAGES, "tests", "benchmarks", "docs")
                                                               for p in (REPO / d).rglob("*") if p.is_file()
                                                               and p.suffix in {".py", ".md"})]:
        if path == Path(__file__):
            continue
        text = path.read_text(encoding="utf-8")
        cited.update(re.findall(r"\bdocs/[\w./-]+\.md", text))
        if re.search(r"DESIGN(\.md| §)|\.\./shared/DESIGN", text):
            outside.append(str(path.relative_to(REPO)))
    assert outside == []
    assert sorted(doc for doc in cited if not (REPO / doc).is_file()) == []


def test_the_architecture_page_names_every_module_where_it_lives():
    """docs/architecture.md names each module of the packages by its path (a package without modules of its own
    by its folder), and every path it names exists."""
    packages = "|".join(PACKAGES)
    named = set(re.findall(rf"`((?:{packages})/[\w/]*?(?:\.py|/))`",
                           (REPO / "docs" / "architecture.md").read_text(encoding="utf-8")))
    expected = set()
    for path in module_files().values():
        relative = path.relative_to(REPO).as_posix()
        if path.name != "__init__.py":
            expected.add(relative)
        elif len(list(path.parent.glob("*.py"))) == 1 and path.parent.name not in PACKAGES:
            expected.add(relative.removesuffix("__init__.py"))
    assert sorted(expected - named) == []
    assert sorted(p for p in named if not (REPO / p).exists()) == []
