"""The generated parts of the docs are what the code generates, so documented defaults and ACLs cannot drift: the
configuration reference (docs/09-configuration.md) from the settings models, the ACL table (docs/06-security.md) from
the rules `cv-queue acls apply` applies. `make docs` regenerates both."""

import shutil

from cv_queue.cli.config_cmd import END, START, reference, sections, write_reference
from cv_queue_tests.conftest import PROJECT_ROOT
from cv_queue_tests.doc_checks import CONFIG_PAGE, README, SECURITY_PAGE, acl_table, embedded_acl_table

REGENERATE = "run `make docs` (or `cv-queue config --write docs/09-configuration.md`)"


def test_configuration_page_is_the_generated_reference(tmp_path):
    """Compared with what `cv-queue config --write` writes now, never with literals: settings added or changed in the
    models make this fail until the page is regenerated."""
    regenerated = tmp_path / CONFIG_PAGE.name
    shutil.copyfile(CONFIG_PAGE, regenerated)
    write_reference(regenerated)
    page = CONFIG_PAGE.read_text()
    assert page == regenerated.read_text(), f"docs/09-configuration.md is out of date: {REGENERATE}"
    assert f"\n{reference()}\n{END}" in page and START in page


def test_configuration_page_lists_every_setting_under_its_section():
    page = CONFIG_PAGE.read_text()
    for section in sections():
        heading = f"{'#' * section.level} {section.title}\n"
        assert heading in page, f"no heading {heading!r}: {REGENERATE}"
        after = page.split(heading, 1)[1]
        for env, _, _ in section.rows:
            assert f"| `{env}` |" in after.split("\n#", 1)[0], f"{env} is not under {section.title}: {REGENERATE}"


def test_config_readme_flag_is_an_alias_of_write(tmp_path):
    """`--readme FILE`, the flag scripts used before the docs pages, still rewrites a file's reference in place."""
    from cv_queue.cli.main import main

    page = tmp_path / "page.md"
    page.write_text(f"# Title\n\n{START} (regenerate) -->\nstale\n{END}\n\nafter\n")
    assert main(["config", "--readme", str(page)]) == 0
    assert page.read_text() == f"# Title\n\n{START} (regenerate) -->\n{reference()}\n{END}\n\nafter\n"
    created = tmp_path / "new" / "configuration.md"
    assert main(["config", "--write", str(created)]) == 0
    assert reference() in created.read_text()


def test_readme_shows_the_two_commands_and_the_cli_launch():
    readme = README.read_text()
    for text in ("make run", "make test", "KAFKA_BOOTSTRAP_SERVERS", "## What a fresh machine needs"):
        assert text in readme
    operations = (PROJECT_ROOT / "docs" / "05-operations.md").read_text()
    assert "dagster job launch -j reprocess_dlq -w workspace.yaml -c" in operations


def test_security_page_acl_table_is_the_one_the_code_applies():
    """The Security page's principal/ACL table is what `cv-queue acls describe --markdown` generates from the rules
    `cv-queue acls apply` applies (default namespace)."""
    embedded = embedded_acl_table(SECURITY_PAGE.read_text())
    assert embedded == acl_table(), (
        "the ACL table of docs/06-security.md is out of date: run `make docs` "
        "(or paste `cv-queue acls describe --markdown` between its acl-table markers)")
