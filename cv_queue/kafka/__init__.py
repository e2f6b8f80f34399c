"""The broker layer: everything that speaks to Kafka/Redpanda. Nothing under this package imports Dagster.

Subpackages, from the bottom up; each may import only those below it (the table is the layout-rules test's,
test_layout_rules.py in the test suite):

- `wire/`     the records: what is consumed and produced, and the `cvq.` headers that travel with them.
- `client/`   talking to the broker: librdkafka clients and their logs, authentication and the errors that end a
              process, the transaction loop, the stall watchdog, fault points, and the job producer.
- `admin/`    the broker's resources: topic specs and provisioning, ACLs, names, lag.
- `fleet/`    what the workers agree on through the broker: the recorded worker and DLQ layouts, presence,
              joining, fencing across layouts, and re-layout.
- `metrics/`  Prometheus metrics of workers and replays, and the counters a worker keeps.
- `worker/`   the partition worker's pipeline: start-up, intake, execution, routing, commit, flow control.
              Start reading at worker/partition_worker.py.
- `replay/`   replaying dead letters to the main topic or the parking lot.

`worker/` and `replay/` sit side by side on top and never import each other. Outside this package the layer imports
only the product's core modules (cv_queue.errors, headers, lanes, messages, settings) and the handler contract
(cv_queue.evaluation.handler); the Dagster layer (cv_queue.defs) and the CLI (cv_queue.cli) build on it.
"""
