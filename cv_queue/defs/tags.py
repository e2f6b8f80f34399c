"""Run tag keys. dagster.yaml's tag concurrency limits refer to these; a test keeps the two in step."""

ROLE = "cv-queue/role"
WORKER_SLOT = "cv-queue/worker-slot"
ROLE_WORKER = "worker"
ROLE_DLQ_REPLAY = "dlq-replay"
