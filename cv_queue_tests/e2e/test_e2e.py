"""`make e2e` inside the suite: 1,000 jobs through the Dagster-run fleet, each ending where its failure says."""

import pytest

from cv_queue_tests.e2e.runner import run

pytestmark = pytest.mark.daemon


def test_end_to_end_thousand_jobs(bootstrap):
    report = run(jobs=1000, parallel=32, replicas=4, handler_ms=100)  # 32 clients: the seed's figure, and 30 s less
    assert report["problems"] == []
    tally = report["tally"]
    assert sum(tally.values()) == 1000
    assert all(key.endswith(":ok") for key in tally)
    # Every fate held for longer than a late duplicate (a second replay or worker run) would take to show.
    assert report["duplicate_watch_s"] >= report["duplicate_window_s"]
    print(f"e2e wall time {report['wall_s']}s (all jobs settled once after {report['all_jobs_settled_once_s']}s)")
