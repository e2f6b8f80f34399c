"""Talking to the broker: the clients, what they report, and the errors and calls that need care.

- `clients.py`: librdkafka configurations for each client role (start here); `client_log.py`: their error callbacks
  and log lines, deduplicated and redacted.
- `auth.py`: login, TLS and ACL failures, detected early and named; `failures.py`: the errors that end a process and
  their exit codes.
- `transaction.py`: producing a batch and committing offsets as one Kafka transaction (used by the worker's commit
  step and by replay); `stall.py`: the watchdog for librdkafka calls that ignore their timeout; `faults.py`: the crash
  tests' fault points.
- `producer.py`: enqueueing jobs with confirmed delivery (`cv-queue enqueue`, the bench, the tests).

May import `wire/` only (besides cv_queue.errors, headers, lanes, messages, settings); never admin, fleet, metrics,
worker or replay.
"""
