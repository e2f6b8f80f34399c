"""A real Apache Kafka broker (KRaft) on loopback, run from jars that Maven fetches from Maven Central.

Tests, CI and `make run` use it; users with Docker use Redpanda from docker-compose.yml instead.
"""
