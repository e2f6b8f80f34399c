"""The product never imports its tests: an installed wheel runs without them (`make run LLM=local` and `cv-queue
bench` use the local LLM server, which is the product's, in cv_queue/llm_server/)."""

import ast
from pathlib import Path

PRODUCT = Path(__file__).resolve().parents[1] / "cv_queue"


def test_no_module_under_cv_queue_names_the_test_package() -> None:
    offenders = []
    for path in sorted(PRODUCT.rglob("*.py")):
        text = path.read_text()
        for node in ast.walk(ast.parse(text)):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module or ""] if isinstance(node, ast.ImportFrom) else []
            offenders += [f"{path.relative_to(PRODUCT)}: {n}" for n in names if n.split(".")[0] == "cv_queue_tests"]
        if "cv_queue_tests" in text and not offenders:
            offenders.append(f"{path.relative_to(PRODUCT)}: names cv_queue_tests (a -m path or a string)")
    assert offenders == []
