"""The client's own ceiling: a plain confluent-kafka consume loop that only counts records (run as a process).

Usage: python -m cv_queue.bench.bare_consumer TOPIC COUNT READY_FILE
Prints one JSON line: {"count", "first_at", "last_at"} (wall-clock seconds).
"""

import json
import sys
import time
from pathlib import Path

from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition

from cv_queue.settings import KafkaConnection


def main() -> int:
    topic, count, ready = sys.argv[1], int(sys.argv[2]), Path(sys.argv[3])
    consumer = Consumer({**KafkaConnection().client_config(), "group.id": f"bare-{time.time()}",
                         "enable.auto.commit": False, "isolation.level": "read_committed",
                         "fetch.max.bytes": 1_048_576, "max.partition.fetch.bytes": 1_048_576,
                         "fetch.wait.max.ms": 100})
    partitions = consumer.list_topics(topic, timeout=10).topics[topic].partitions
    consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in partitions])
    consumer.consume(1, 1.0)  # connections up before the clock starts
    ready.write_text("ready")
    seen, first_at = 0, None
    deadline = time.monotonic() + 600
    while seen < count and time.monotonic() < deadline:
        batch = consumer.consume(1000, 0.05)
        if batch and first_at is None:
            first_at = time.time()
        seen += sum(1 for m in batch if m.error() is None)
    print(json.dumps({"count": seen, "first_at": first_at, "last_at": time.time()}))
    consumer.close()
    return 0 if seen >= count else 1


if __name__ == "__main__":
    sys.exit(main())
