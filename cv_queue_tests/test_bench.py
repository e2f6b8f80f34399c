"""`cv-queue bench` runs its scenarios with worker processes, accounts for every job and prints JSON lines."""

import json
import os
import subprocess

import pytest

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


# The release scenarios (head-of-line, crash-rework): their pure parts, without a broker.

def test_slow_jobs_are_one_percent_and_leave_a_fast_job():
    from cv_queue.bench.release import slow_count

    assert slow_count(2000) == 20 and slow_count(1000) == 10
    assert slow_count(10) == 1  # something must still block a partition head
    assert slow_count(2) == 1
    with pytest.raises(ValueError):
        slow_count(1)


def test_release_jobs_put_the_slow_ones_first_with_the_sleep_directive():
    from cv_queue.bench.release import SLOW_MS, _jobs
    from cv_queue.messages import decode_job

    records, slow = _jobs(300, seed=1, prefix="t")
    assert len(records) == 300 and len(slow) == 3
    assert {key for key, _ in records[:3]} == slow  # produced first: they reach the partition heads
    for key, value in records:
        labels = decode_job(value, key).labels
        assert labels == ({"simulate": f"sleep:{SLOW_MS}"} if key in slow else {})


def test_fast_latency_leaves_out_the_slow_jobs_and_counts_unsettled_as_late():
    from cv_queue.bench.release import fast_latency

    sent_at = {b"slow": 0.0, **{f"f{i}".encode(): 0.0 for i in range(10)}}
    first_seen = {b"slow": 20.0, **{f"f{i}".encode(): 0.1 * (i + 1) for i in range(9)}}  # f9 never settled
    first_seen[b"f8"] = 5.0  # one fast job stuck behind a slow head
    figures = fast_latency(sent_at, first_seen, {b"slow"})
    assert figures["fast_jobs"] == 10
    assert figures["fast_p50_ms"] == 500.0  # the median of the 9 settled fast jobs: 0.1..0.8 s and 5 s
    assert figures["fast_p99_ms"] == 5000.0  # not 20 s: the slow job is not a fast one
    assert figures["fast_share_within_3s"] == 0.8  # f8 was late, f9 never came


def test_fast_latency_with_no_fast_job():
    from cv_queue.bench.release import fast_latency

    figures = fast_latency({b"s": 0.0}, {b"s": 20.0}, {b"s"})
    assert figures == {"fast_jobs": 0, "fast_p50_ms": 0.0, "fast_p99_ms": 0.0, "fast_share_within_3s": None}


def test_reexecutions_from_a_call_log():
    from cv_queue.bench.release import call_counts, reexecutions

    counts = call_counts("a\nb\na\nc\nb\na\npart")  # "part": a line still being written when the file was read
    assert counts == {"a": 3, "b": 2, "c": 1}
    assert reexecutions(counts) == (2, 3)  # a and b ran again; a twice more, b once more
    assert reexecutions(call_counts("")) == (0, 0)
    assert reexecutions(call_counts("x\ny\n")) == (0, 0)


def test_the_victim_is_the_slot_owning_the_most_slow_jobs():
    from cv_queue.bench.release import pick_victim
    from cv_queue.settings import Slot

    slots = [Slot(partitions=(0, 1, 2, 3)), Slot(partitions=(4, 5, 6, 7))]
    partitions = {b"s1": 1, b"s2": 5, b"s3": 6, b"f": 0}
    assert pick_victim(slots, partitions, {b"s1", b"s2", b"s3"}).name == "4-7"
    assert pick_victim(slots, partitions, {b"s1", b"s2"}).name == "0-3"  # a tie: the first slot


def _release_row(scenario, mode, **extra):
    return {"scenario": scenario, "release_outputs": mode, "fast_p50_ms": 80.0, "fast_p99_ms": 400.0,
            "fast_share_within_3s": 0.995, "lost": 0, "duplicated": 0, "handler_ms": 50.0, "jobs_per_s": 90.0,
            **extra}


def test_release_table_has_a_line_per_mode():
    from cv_queue.bench.report import add_ratios, release_table

    rows = [_release_row("head-of-line", "at_once"), _release_row("head-of-line", "in_order"),
            _release_row("crash-rework", "at_once", reexecuted_jobs=5, extra_calls=5, victim_unsettled_at_kill=5),
            {"scenario": "cv-queue", "handler_ms": 100.0, "jobs_per_s": 1000.0, "lost": 0, "duplicated": 0}]
    add_ratios(rows)  # rows without a seed-before of their handler get no ratio, and do not break it
    table = release_table(rows).splitlines()
    assert table[0].split()[:2] == ["SCENARIO", "RELEASE_OUTPUTS"]
    assert len(table) == 4  # the cv-queue row is not a release row
    assert "80.0 / 400.0 ms" in table[1] and "99.5 %" in table[1]
    assert table[3].split()[-4:] == ["5", "5", "0", "0"] and "5 / 5" in table[3]
    assert release_table([rows[-1]]) == ""


def test_standard_set_runs_both_release_scenarios_with_their_own_handler():
    import argparse

    from cv_queue.bench.release import FAST_MS
    from cv_queue.cli.bench_cmd import _plan

    plan = _plan(argparse.Namespace(standard=True))
    release = [(name, n, w.latency_ms) for name, n, w in plan if name in ("head-of-line", "crash-rework")]
    assert release == [("head-of-line", 2000, FAST_MS), ("crash-rework", 1000, FAST_MS)]
    adhoc = argparse.Namespace(standard=False, jobs=["head-of-line=500"], scenario=["head-of-line", "cv-queue"],
                               latency_ms=100.0, latency_p99_ms=None, transient=0.0, permanent=0.0, invalid=0.0)
    assert [(name, n, w.latency_ms) for name, n, w in _plan(adhoc)] == [("head-of-line", 500, FAST_MS),
                                                                        ("cv-queue", 2000, 100.0)]


def test_bench_help_lists_the_release_scenarios():
    proc = subprocess.run([CV_QUEUE, "bench", "--help"], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0
    assert "head-of-line" in proc.stdout and "crash-rework" in proc.stdout
