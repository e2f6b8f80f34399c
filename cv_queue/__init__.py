"""cv-queue: a transactional Kafka/Redpanda job queue for AI CV evaluation, orchestrated by Dagster."""

__version__ = "0.1.0"
