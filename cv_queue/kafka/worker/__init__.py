"""The partition worker: one slot's partitions, processed concurrently, committed exactly once.

Start reading at `partition_worker.py` (PartitionWorker: its start-up, its poll loop, its shutdown). The pipeline,
top to bottom:

1. start-up: `startup.py` (topics, size limits, committed offsets), then fleet/join.py and fleet/fencing.py, then
   `resume.py` (where each partition resumes, and the map of offsets already done);
2. intake: `intake.py` turns each record into a task (or settles it at once);
3. execution: `pools.py` picks the pool (`pool.py` threads, `async_pool.py` an event loop, `inline_pool.py` the poll
   thread); `execution.py` runs one delivery of a job, with `classify.py` (failure categories by exception type) and
   `backoff.py` (in-process retries, retry-topic delays);
4. routing: `routing.py` makes each completion exactly one output: a result, a retry record or a dead letter;
5. commit: `commit.py` produces the released outputs and commits their offsets in one transaction
   (client/transaction.py), from `tracker.py` (offsets between fetched and committed), `offset_map.py` (the done
   offsets above the committed one, as commit metadata) and `inflight.py` (per-key order, delayed retries);
6. flow control: `flow.py` pauses partitions that hold too much;
7. reporting: `progress.py` (gauges, the progress line) and `fleet_share.py` (the handler's share of the provider's
   quota).

May import `metrics/`, `fleet/`, `admin/`, `client/` and `wire/`, and the handler contract
(cv_queue.evaluation.handler); never `replay/`.
"""
