"""The layout's rules, checked over the source with `ast` (imports inside functions count too):

- cv_queue.kafka's subpackages import one another only as KAFKA_ALLOWED says (a DAG: wire < client < admin < fleet <
  metrics < worker, replay), and nothing from the rest of the product but KAFKA_MAY_IMPORT_OUTSIDE;
- no import cycle between kafka's subpackages, nor among the modules of cv_queue.defs (nor of the whole product);
- nothing under cv_queue.kafka imports Dagster;
- the product never imports its tests: an installed wheel runs without them (`make run LLM=local` and `cv-queue
  bench` use the local LLM server, which is the product's, in cv_queue/llm_server/).

A negative test feeds the checker a synthetic tree with one violation of each kind and sees each reported.
"""

import ast
from dataclasses import dataclass
from pathlib import Path

from cv_queue_tests.conftest import PROJECT_ROOT

#: Which of cv_queue.kafka's subpackages each may import (besides itself). Read top to bottom, each layer builds on
#: those below it; worker and replay sit side by side on top and never import each other.
KAFKA_ALLOWED: dict[str, frozenset[str]] = {
    "wire": frozenset(),
    "client": frozenset({"wire"}),
    "admin": frozenset({"client", "wire"}),
    "fleet": frozenset({"admin", "client", "wire"}),
    "metrics": frozenset({"fleet", "admin", "client", "wire"}),
    "worker": frozenset({"metrics", "fleet", "admin", "client", "wire"}),
    "replay": frozenset({"metrics", "fleet", "admin", "client", "wire"}),
}

#: What cv_queue.kafka may import from the rest of the product: the core modules (each with whatever lies under it)
#: and the handler contract. Never the Dagster layer (cv_queue.defs), the CLI, the bench or the local broker.
KAFKA_MAY_IMPORT_OUTSIDE = (
    "cv_queue.errors", "cv_queue.headers", "cv_queue.lanes", "cv_queue.messages", "cv_queue.settings",
    "cv_queue.quota_settings", "cv_queue.dotted_paths", "cv_queue.evaluation.handler",
)

KAFKA = "cv_queue.kafka"
DEFS = "cv_queue.defs"


@dataclass(frozen=True)
class Import:
    importer: str  # the importing module
    imported: str  # the module imported: the longest product module the statement names, else the name as written
    line: int
    in_function: bool

    def where(self) -> str:
        return f"{self.importer}:{self.line}{' (inside a function)' if self.in_function else ''}"


def _module_name(root: Path, path: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _resolve(name: str, known: set[str]) -> str:
    """The longest known module that `name` starts with; `name` itself when it names none (an outside package)."""
    candidate = name
    while candidate:
        if candidate in known:
            return candidate
        candidate = candidate.rpartition(".")[0]
    return name


class _ImportVisitor(ast.NodeVisitor):
    def __init__(self, module: str, is_package: bool, known: set[str]) -> None:
        self.module, self.known = module, known
        self.package = module if is_package else module.rpartition(".")[0]
        self.depth = 0
        self.found: list[Import] = []

    def _add(self, name: str, node: ast.stmt) -> None:
        self.found.append(Import(self.module, _resolve(name, self.known), node.lineno, self.depth > 0))

    def _scoped(self, node: ast.AST) -> None:
        self.depth += 1
        self.generic_visit(node)
        self.depth -= 1

    visit_FunctionDef = visit_AsyncFunctionDef = visit_Lambda = _scoped

    def visit_Import(self, node: ast.Import) -> None:
        for alias in node.names:
            self._add(alias.name, node)

    def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
        if node.level:
            base = self.package.split(".")
            base = base[:len(base) - node.level + 1]
            source = ".".join([*base, node.module] if node.module else base)
        else:
            source = node.module or ""
        for alias in node.names:  # `from package import module` imports the module
            self._add(f"{source}.{alias.name}" if f"{source}.{alias.name}" in self.known else source, node)


def product_imports(root: Path) -> list[Import]:
    """Every import statement of every module under root/cv_queue, at module level or inside a function."""
    paths = sorted((root / "cv_queue").rglob("*.py"))
    known = {_module_name(root, p) for p in paths}
    found: list[Import] = []
    for path in paths:
        visitor = _ImportVisitor(_module_name(root, path), path.name == "__init__.py", known)
        visitor.visit(ast.parse(path.read_text(), str(path)))
        found += visitor.found
    return found


def _within(name: str, prefix: str) -> bool:
    return name == prefix or name.startswith(prefix + ".")


def _subpackage(module: str) -> str:
    """'worker' for cv_queue.kafka.worker.intake; '' for cv_queue.kafka itself."""
    rest = module.removeprefix(KAFKA).lstrip(".")
    return rest.partition(".")[0]


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The import cycles of a graph: its strongly connected components of more than one node (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in sorted(graph.get(node, ())):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                top = stack.pop()
                on_stack.discard(top)
                component.append(top)
                if top == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def kafka_violations(imports: list[Import]) -> list[str]:
    """Imports under cv_queue.kafka that cross a rule (KAFKA_ALLOWED, KAFKA_MAY_IMPORT_OUTSIDE) or import Dagster."""
    found = []
    for imp in imports:
        if not _within(imp.importer, KAFKA):
            continue
        mine = _subpackage(imp.importer)
        if imp.importer != KAFKA and mine not in KAFKA_ALLOWED:
            found.append(f"{imp.where()}: {imp.importer} is in no subpackage of the table (KAFKA_ALLOWED)")
            continue
        top = imp.imported.partition(".")[0]
        if top == "dagster" or top.startswith("dagster_"):
            found.append(f"{imp.where()}: imports Dagster ({imp.imported}); the broker layer never does")
        elif _within(imp.imported, KAFKA):
            theirs = _subpackage(imp.imported)
            if theirs and theirs != mine and theirs not in KAFKA_ALLOWED.get(mine, ()):
                found.append(f"{imp.where()}: kafka/{mine} may not import kafka/{theirs} ({imp.imported})")
        elif top == "cv_queue" and not any(_within(imp.imported, ok) for ok in KAFKA_MAY_IMPORT_OUTSIDE):
            found.append(f"{imp.where()}: the broker layer may not import {imp.imported}")
    return found


def kafka_subpackage_cycles(imports: list[Import]) -> list[list[str]]:
    graph: dict[str, set[str]] = {}
    for imp in imports:
        if _within(imp.importer, KAFKA) and _within(imp.imported, KAFKA):
            mine, theirs = _subpackage(imp.importer), _subpackage(imp.imported)
            if mine and theirs and mine != theirs:
                graph.setdefault(mine, set()).add(theirs)
    return cycles(graph)


def module_cycles_within(imports: list[Import], package: str) -> list[list[str]]:
    """Cycles among the modules of `package`, an import inside a function counting as one at module level."""
    graph: dict[str, set[str]] = {}
    for imp in imports:
        if _within(imp.importer, package) and _within(imp.imported, package) and imp.importer != imp.imported:
            graph.setdefault(imp.importer, set()).add(imp.imported)
    return cycles(graph)


def mentions_of_the_tests(root: Path) -> list[str]:
    """Modules under cv_queue that import the test package, or name it in a string (a `-m` path, say)."""
    offenders = [f"{imp.where()}: imports {imp.imported}" for imp in product_imports(root)
                 if imp.imported.partition(".")[0] == "cv_queue_tests"]
    for path in sorted((root / "cv_queue").rglob("*.py")):
        if "cv_queue_tests" in path.read_text() and not any(o.startswith(_module_name(root, path) + ":")
                                                             for o in offenders):
            offenders.append(f"{_module_name(root, path)}: names cv_queue_tests (a -m path or a string)")
    return offenders



# ------------------------------------------------------------------------------------------------ the rules


def test_the_table_is_a_dag_of_kafkas_subpackages() -> None:
    kafka = PROJECT_ROOT / "cv_queue" / "kafka"
    subpackages = {p.parent.name for p in kafka.glob("*/__init__.py")}
    assert subpackages == set(KAFKA_ALLOWED), "every subpackage of cv_queue/kafka has a row in KAFKA_ALLOWED"
    assert all(allowed <= set(KAFKA_ALLOWED) for allowed in KAFKA_ALLOWED.values())
    assert cycles({k: set(v) for k, v in KAFKA_ALLOWED.items()}) == []
    assert [p.name for p in kafka.glob("*.py")] == ["__init__.py"], "every kafka module lives in a subpackage"


def test_kafka_imports_keep_to_the_table() -> None:
    assert kafka_violations(product_imports(PROJECT_ROOT)) == []


def test_no_import_cycle_between_kafka_subpackages() -> None:
    assert kafka_subpackage_cycles(product_imports(PROJECT_ROOT)) == []


def test_no_import_cycle_among_the_defs_modules() -> None:
    assert module_cycles_within(product_imports(PROJECT_ROOT), DEFS) == []


def test_no_import_cycle_among_any_of_the_products_modules() -> None:
    assert module_cycles_within(product_imports(PROJECT_ROOT), "cv_queue") == []


def test_no_module_under_cv_queue_names_the_test_package() -> None:
    assert mentions_of_the_tests(PROJECT_ROOT) == []


# ------------------------------------------------------------------------------------------------ the checker


def _write(root: Path, files: dict[str, str]) -> None:
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)


def test_the_checker_reports_each_kind_of_violation(tmp_path: Path) -> None:
    _write(tmp_path, {
        "cv_queue/__init__.py": "",
        "cv_queue/cli/__init__.py": "",
        "cv_queue/cli/main.py": "",
        "cv_queue/settings/__init__.py": "",
        "cv_queue/kafka/__init__.py": "",
        "cv_queue/kafka/wire/__init__.py": "",
        # upwards, hidden inside a function:
        "cv_queue/kafka/wire/records.py": "def late():\n    from cv_queue.kafka.worker import loop\n",
        "cv_queue/kafka/worker/__init__.py": "",
        # allowed (relative, downwards; the settings), then Dagster:
        "cv_queue/kafka/worker/loop.py": "from ..wire import records\nfrom cv_queue.settings import X\n"
                                         "import dagster as dg\n",
        "cv_queue/kafka/replay/__init__.py": "",
        "cv_queue/kafka/replay/replayer.py": "from cv_queue.kafka.worker.loop import step\n"  # sideways
                                             "async def run():\n    import cv_queue.cli.main\n",  # outside
        "cv_queue/defs/__init__.py": "",
        "cv_queue/defs/notify.py": "from cv_queue.defs import resources\n",
        "cv_queue/defs/resources.py": "def default_resources():\n    from cv_queue.defs.notify import A\n",
        "cv_queue/evaluation/__init__.py": "",
        "cv_queue/evaluation/scorer.py": "from cv_queue_tests.support import unique\n",
        "cv_queue/bench/__init__.py": "",
        "cv_queue/bench/run.py": "ARGS = ['-m', 'cv_queue_tests.e2e.runner']\n",
    })
    imports = product_imports(tmp_path)
    assert sorted(kafka_violations(imports)) == sorted([
        "cv_queue.kafka.wire.records:2 (inside a function): kafka/wire may not import kafka/worker "
        "(cv_queue.kafka.worker.loop)",
        "cv_queue.kafka.worker.loop:3: imports Dagster (dagster); the broker layer never does",
        "cv_queue.kafka.replay.replayer:1: kafka/replay may not import kafka/worker (cv_queue.kafka.worker.loop)",
        "cv_queue.kafka.replay.replayer:3 (inside a function): the broker layer may not import cv_queue.cli.main",
    ])
    assert kafka_subpackage_cycles(imports) == [["wire", "worker"]]  # wire -> worker inside a function, back at once
    assert module_cycles_within(imports, DEFS) == [["cv_queue.defs.notify", "cv_queue.defs.resources"]]
    assert mentions_of_the_tests(tmp_path) == [
        "cv_queue.evaluation.scorer:1: imports cv_queue_tests.support",
        "cv_queue.bench.run: names cv_queue_tests (a -m path or a string)",
    ]


def test_the_checker_finds_a_module_outside_every_subpackage(tmp_path: Path) -> None:
    _write(tmp_path, {
        "cv_queue/__init__.py": "",
        "cv_queue/kafka/__init__.py": "",
        "cv_queue/kafka/loose.py": "from cv_queue.errors import E\n",
        "cv_queue/errors.py": "",
    })
    assert kafka_violations(product_imports(tmp_path)) == [
        "cv_queue.kafka.loose:1: cv_queue.kafka.loose is in no subpackage of the table (KAFKA_ALLOWED)"]
