"""The README's configuration reference is the one the code generates, so documented defaults cannot drift."""

from cv_queue.cli.config_cmd import reference
from cv_queue_tests.conftest import PROJECT_ROOT


def test_readme_config_reference_matches_the_settings():
    readme = (PROJECT_ROOT / "README.md").read_text()
    assert reference() in readme


def test_readme_shows_the_two_commands_and_the_cli_launch():
    readme = (PROJECT_ROOT / "README.md").read_text()
    for text in ("make run", "make test", "dagster job launch -j reprocess_dlq -w workspace.yaml -c",
                 "KAFKA_BOOTSTRAP_SERVERS"):
        assert text in readme


def test_readme_acl_table_is_the_one_the_code_applies():
    """The Security section's principal/ACL table is what `cv-queue acls describe --markdown` generates from the rules
    `cv-queue acls apply` applies (default namespace)."""
    from cv_queue.kafka.admin.acls import markdown_table
    from cv_queue.settings import QueueSettings

    readme = (PROJECT_ROOT / "README.md").read_text()
    embedded = readme.split("<!-- acl-table:start -->\n", 1)[1].split("\n<!-- acl-table:end -->", 1)[0]
    assert embedded == markdown_table(QueueSettings(namespace=""))
