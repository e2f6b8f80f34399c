"""The broker layer: everything that speaks to Kafka/Redpanda. Nothing under this package imports Dagster."""
