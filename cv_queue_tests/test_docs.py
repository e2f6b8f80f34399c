"""Every link, `make` target, `cv-queue` command and flag, environment variable and repository path that README.md and
docs/*.md show exists (cv_queue_tests/doc_checks.py), and the pages read in order. Pure Python: no broker, no Dagster.

When a check fails because the docs are wrong (a moved file, a renamed flag), fix the docs, not the check."""

import re
from pathlib import Path

import pytest

from cv_queue_tests.doc_checks import (
    DOCS,
    EXAMPLE_ONLY,
    PROJECT_ROOT,
    README,
    anchors,
    cli_parser,
    doc_files,
    makefile_targets,
    problems,
    read_elsewhere_problems,
    settings_variables,
    slug,
)

PAGES = sorted(DOCS.glob("*.md"))


@pytest.mark.parametrize("page", doc_files(), ids=lambda p: str(p.relative_to(PROJECT_ROOT)))
def test_everything_a_page_shows_exists(page):
    found = problems(page, page.read_text())
    assert not found, "\n".join(found)


def test_variables_read_elsewhere_are_still_read_there():
    assert not read_elsewhere_problems()
    assert not EXAMPLE_ONLY & settings_variables(), "an example-only variable became a setting: drop it from the list"


def test_pages_are_numbered_and_the_readme_lists_them_in_order():
    names = [p.name for p in PAGES]
    assert names and all(re.match(r"^\d\d-[a-z0-9-]+\.md$", n) for n in names), names
    assert [int(n[:2]) for n in names] == list(range(1, len(names) + 1))
    readme = README.read_text()
    listed = re.findall(r"^\d+\. \[[^\]]+\]\(docs/(\d\d-[a-z0-9-]+\.md)\)", readme, flags=re.MULTILINE)
    assert listed == names, "README's Documentation list must link every page, in reading order"
    assert len(readme.split("\n")) <= 170, "the README is the front page: move details into a docs page"


@pytest.mark.parametrize("index", range(len(PAGES)), ids=lambda i: PAGES[i].name)
def test_each_page_links_back_to_the_readme_and_to_its_neighbours(index):
    lines = PAGES[index].read_text().strip("\n").split("\n")
    expected = ["](../README.md)"]
    if index > 0:
        expected.append(f"]({PAGES[index - 1].name})")
    if index + 1 < len(PAGES):
        expected.append(f"]({PAGES[index + 1].name})")
    for where, line in (("first", lines[0]), ("last", lines[-1])):
        for link in expected:
            assert link in line, f"{PAGES[index].name}: its {where} line does not link {link[2:-1]}"


# --- the checks can fail -----------------------------------------------------------------------------------------

BROKEN = """# A page

## Getting started
See [the architecture](docs/01-architecture.md#no-such-heading), [a missing page](docs/99-nothing.md),
[this page](#getting-started), [nowhere here](#nowhere) and [a moved module](cv_queue/kafka/no_such_module.py).
![an image](docs/screenshots/missing.png)

```
make run
make no-such-target LLM=local
cv-queue broker start --nodes 2 --no-such-flag
cv-queue dlq replay --dry-run | peek --limit 5       # alternatives of one synopsis
cv-queue nosuchcommand
cv-queue fleet relayout --partitions 16 --per-worker 2
kubectl -n cv-queue apply -f deploy/k8s/nothing.yaml
python -m cv_queue.kafka.no_such_module
```

Set `CVQ_WORKER__MAX_IN_FLIGHT`, `CVQ_WORKER__NO_SUCH_SETTING`, `KAFKA_SASL_*`, `CVQ_NOPE__*` and
`cv-queue enqueue --lane fast`; the handler `cv_queue.evaluation.llm:NoSuchEvaluator`.
"""


def test_a_broken_page_is_reported():
    page = PROJECT_ROOT / "synthetic.md"
    found = "\n".join(problems(page, BROKEN, targets={"run", "test"}, parser=cli_parser(),
                               known_env={"CVQ_WORKER__MAX_IN_FLIGHT", "KAFKA_SASL_USERNAME"}))
    expected = [
        "link 'docs/01-architecture.md#no-such-heading': docs/01-architecture.md has no heading #no-such-heading",
        "link 'docs/99-nothing.md': no such file docs/99-nothing.md",
        "link '#nowhere': synthetic.md has no heading #nowhere",
        "link 'cv_queue/kafka/no_such_module.py': no such file",
        "link 'docs/screenshots/missing.png': no such file",
        "`make no-such-target`: no such Makefile target",
        "has no flag --no-such-flag",
        "--nodes 2: not one of ['1', '3']",
        "`cv-queue` has no subcommand 'nosuchcommand'",
        "--lane fast: not one of ['bulk', 'interactive']",
        "CVQ_WORKER__NO_SUCH_SETTING: no such setting",
        "CVQ_NOPE__*: matches no setting",
        "deploy/k8s/nothing.yaml: no such file in the repository",
        "cv_queue.kafka.no_such_module: cv_queue/kafka/__init__.py has no no_such_module",
        "cv_queue.evaluation.llm:NoSuchEvaluator: cv_queue/evaluation/llm/__init__.py has no NoSuchEvaluator",
    ]
    for text in expected:
        assert text in found, f"not reported: {text}\n--- reported:\n{found}"
    # and nothing valid is reported
    for fine in ("#getting-started", "make run", "--dry-run", "peek", "--limit", "relayout", "--per-worker",
                 "CVQ_WORKER__MAX_IN_FLIGHT:", "KAFKA_SASL_*", "`make run`", "apply"):
        assert fine not in found, f"reported although valid: {fine}\n--- reported:\n{found}"
    assert len(found.split("\n")) == len(expected), found


def test_the_checks_read_the_real_makefile_and_parser():
    targets = makefile_targets((PROJECT_ROOT / "Makefile").read_text())
    assert {"run", "test", "docs", "bench", "e2e", "chaos", "screenshots", "ci-e2e-optimized"} <= targets
    assert not {"PHONY", ".PHONY", "CHROMIUM", "SUDO", "$(STAMP)"} & targets
    page = PROJECT_ROOT / "synthetic.md"
    assert problems(page, "`cv-queue acls describe --markdown`\n") == []
    assert problems(page, "`cv-queue acls describe --json`\n") != []


def test_github_anchors():
    assert slug("The `cv-queue` command") == "the-cv-queue-command"
    assert slug("Scaling out (re-layout)") == "scaling-out-re-layout"
    assert slug("The production instance (`deploy/dagster.yaml`)") == "the-production-instance-deploydagsteryaml"
    assert slug("The provider's quota") == "the-providers-quota"
    assert anchors("# A\n## A\n```\n# not a heading\n```\n## B_c\n") == {"a", "a-1", "b_c"}


def test_the_synthetic_page_is_not_a_real_file():
    assert not Path(PROJECT_ROOT / "synthetic.md").exists()
