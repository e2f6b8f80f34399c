"""`cv-queue bench` runs its scenarios with worker processes, accounts for every job and prints JSON lines."""

import json
import os
import subprocess

from cv_queue_tests.conftest import CV_QUEUE


def test_bench_small_run(bootstrap):
    proc = subprocess.run([CV_QUEUE, "bench", "--scenario", "seed-after", "--scenario", "cv-queue",
                           "--scenario", "bare-consumer", "--jobs", "300", "--latency-ms", "20"],
                          capture_output=True, text=True, timeout=300, env=os.environ.copy())
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    assert [r["scenario"] for r in rows] == ["seed-after", "cv-queue", "bare-consumer"]
    for row in rows:
        assert row["jobs"] == 300 and row["lost"] == 0 and row["duplicated"] == 0
        assert row["jobs_per_s"] > 0 and row["seconds"] > 0
    seed_after, ours = rows[0], rows[1]
    assert seed_after["in_flight"] == 8 and ours["in_flight"] == 128
    assert ours["efficiency"] > 0 and ours["peak_worker_rss_mb"] > 0
    assert "METRIC" in proc.stdout and "throughput" in proc.stdout  # the seed-shaped table
    assert "settled" in proc.stderr  # progress while it runs


def test_bench_reports_a_clear_error_for_bad_arguments(bootstrap):
    proc = subprocess.run([CV_QUEUE, "bench", "--jobs", "nope=5"], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and "unknown scenario" in proc.stderr
