"""What the workers agree on through the broker: the recorded layouts, who is alive, and who may read which partition.

- `layout.py`: the recorded worker layout (partitions, slot width) in the compacted layout topic; start here.
- `dlq_layout.py`: the recorded DLQ layout (which DLQ partitions stand for which error category), in the same topic.
- `presence.py`: which workers are alive, as members of the presence group.
- `join.py`: a starting worker joins the presence group and checks its layout against the recorded one
  (LayoutMismatchError, WorkerStartError).
- `fencing.py`: a worker fences every slot, of every layout, that overlaps its own.
- `relayout.py`: growing the topics and changing the slots, as one checked operation (`cv-queue fleet relayout`).

May import `admin/`, `client/` and `wire/`; never metrics, worker or replay.
"""
