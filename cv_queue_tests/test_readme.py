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
