"""Run tag keys. dagster.yaml's tag concurrency limits refer to these; a test keeps the two in step."""

ROLE = "cv-queue/role"
WORKER_SLOT = "cv-queue/worker-slot"
ROLE_WORKER = "worker"
ROLE_DLQ_REPLAY = "dlq-replay"
# stop_worker_fleet, start_worker_fleet and relayout_worker_fleet: one at a time (a stop issued during a relayout
# waits for it instead of being cleared by its success).
ROLE_FLEET_CONTROL = "fleet-control"
