"""The `cv-queue` commands against the real broker: provision, describe, enqueue (and its input checks), status,
dlq peek and replay."""

import json
import os
import subprocess

from cv_queue.evaluation.samples import sample_jobs
from cv_queue.evaluation.simulated import SimulatedLLM
from cv_queue_tests.conftest import CV_QUEUE
from cv_queue_tests.support import read_topic, running_workers, tuned, wait_for


def cli(*args: str, env: dict | None = None, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([CV_QUEUE, *args], capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, **(env or {})})


def test_topics_provision_then_describe(bootstrap, settings):
    first = cli("--namespace", settings.namespace, "topics", "provision")
    assert first.returncode == 0, first.stderr
    assert first.stdout.count("created") == 6
    second = cli("--namespace", settings.namespace, "topics", "provision")
    assert second.stdout.count("unchanged") == 6
    described = cli("--namespace", settings.namespace, "topics", "describe", settings.topic_names.main)
    assert described.returncode == 0
    assert "PARTITIONS  8" in described.stdout and "DRIFT       none" in described.stdout
    assert "compression.type" in described.stdout and "snappy" in described.stdout
    missing = cli("--namespace", settings.namespace + "x", "topics", "describe")
    assert missing.returncode == 1 and "does not exist" in missing.stdout


def test_enqueue_file_with_a_bad_line_sends_nothing(conn, provisioned, tmp_path):
    good = [j.model_dump_json() for j in sample_jobs(3, seed=1)]
    path = tmp_path / "jobs.jsonl"
    path.write_text("\n".join([good[0], '{"job_id": "broken"}', good[1], "not json", good[2]]) + "\n")
    proc = cli("--namespace", provisioned.namespace, "enqueue", "--file", str(path))
    assert proc.returncode == 2
    assert "2 invalid line(s); nothing was sent" in proc.stderr
    assert "line 2:" in proc.stderr and "line 4:" in proc.stderr
    assert read_topic(conn, provisioned.topic_names.main, idle_s=1.0) == []

    path.write_text("\n".join(good) + "\n")
    ok = cli("--namespace", provisioned.namespace, "enqueue", "--file", str(path))
    assert ok.returncode == 0, ok.stderr
    keys = sorted(m.key().decode() for m in read_topic(conn, provisioned.topic_names.main, expect=3))
    assert keys == sorted(json.loads(g)["job_id"] for g in good)


def test_enqueue_status_peek_and_replay(conn, provisioned):
    ns = provisioned.namespace
    sent = cli("--namespace", ns, "enqueue", "--count", "40", "--permanent", "0.25", "--invalid", "3")
    assert sent.returncode == 0, sent.stderr
    assert "enqueued 43 record(s)" in sent.stdout
    settings = tuned(provisioned, retry={"inprocess_tries": 1})
    with running_workers(conn, settings, handler=SimulatedLLM(latency_ms=0)):
        # Workers take a few seconds to start: wait for every record to settle somewhere, then read both ends.
        wait_for(lambda: len(read_topic(conn, settings.topic_names.results, idle_s=0.3))
                 + len(read_topic(conn, settings.topic_names.dlq, idle_s=0.3)) >= 43, 90, "all 43 records to settle")
        results = read_topic(conn, settings.topic_names.results, idle_s=0.5)
        letters = read_topic(conn, settings.topic_names.dlq, idle_s=0.5)
    assert len(results) + len(letters) == 43 and len(letters) >= 3

    status = cli("--namespace", ns, "status")
    assert status.returncode == 0, status.stderr
    depth = int(status.stdout.split("DLQ depth: ")[1].split()[0])
    assert depth >= len(letters)  # offsets: letters plus one commit marker per transaction
    assert "LAG" in status.stdout and settings.topic_names.main in status.stdout

    peek = cli("--namespace", ns, "dlq", "peek", "--limit", "100")
    assert peek.returncode == 0, peek.stderr
    assert peek.stdout.count("invalid_payload") == 3
    assert peek.stdout.count("PermanentJobError") == len(letters) - 3

    dry = cli("--namespace", ns, "dlq", "replay", "--category", "permanent", "--dry-run")
    assert dry.returncode == 0 and "DRY RUN" in dry.stdout
    assert f"replayed {len(letters) - 3}" in dry.stdout
    real = cli("--namespace", ns, "dlq", "replay", "--category", "permanent")
    assert f"replayed {len(letters) - 3}" in real.stdout
    after = cli("--namespace", ns, "status").stdout
    permanent_row = next(line for line in after.splitlines() if " permanent " in f" {line} ")
    assert permanent_row.split()[-1] == "0"  # the replayed partition is empty, markers included
    again = cli("--namespace", ns, "dlq", "replay", "--category", "permanent")
    assert "replayed 0" in again.stdout


def test_worker_command_refuses_unprovisioned_topics(settings):
    proc = cli("--namespace", settings.namespace, "worker", "--partitions", "0,1", timeout=90)
    assert proc.returncode == 2
    assert "does not exist" in proc.stderr and "cv-queue topics provision" in proc.stderr


def test_worker_command_rejects_a_bad_slot_and_handler(provisioned):
    bad_slot = cli("--namespace", provisioned.namespace, "worker", "--partitions", "zero")
    assert bad_slot.returncode == 2 and "not a partition list" in bad_slot.stderr
    bad_handler = cli("--namespace", provisioned.namespace, "worker", "--partitions", "0,1",
                      "--handler", "no.such.module:Thing")
    assert bad_handler.returncode == 2 and "cannot import handler module" in bad_handler.stderr
