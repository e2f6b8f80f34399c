"""Fixtures of the deployment tests: a real PostgreSQL server for the session."""

from collections.abc import Iterator

import pytest

from cv_queue_tests.deploy.postgres import PostgresServer, running_postgres


@pytest.fixture(scope="session")
def postgres() -> Iterator[PostgresServer]:
    with running_postgres() as server:
        yield server
