"""Errors that end a process: what kind each is, and the exit code that tells an operator (or a supervisor) which.

A failure the broker will keep giving, however often the same step is redone, must end the process instead of being
retried for ever: a replay with a mistyped target topic held the one replay slot, and a worker whose write ACL was
revoked spun on aborted transactions without a word of why. Its kind decides the exit code:
- `denied`: the broker refuses an operation to the principal (a missing or revoked ACL): EXIT_DENIED (7), as at
  start-up (auth.py);
- `topic_state`: a topic is missing (deleted, or a mistyped target: auto-creation is off), or its log does not hold
  the offsets the queue committed on it (deleted and recreated, truncated, or retention deleted records no worker
  ran): EXIT_TOPIC_STATE (10);
- `fatal`: anything else the producer cannot go on with: EXIT_FATAL (4).
"""

from collections.abc import Iterable
from enum import StrEnum

from confluent_kafka import KafkaError, KafkaException, TopicCollection
from confluent_kafka.admin import AdminClient

from cv_queue.kafka.client.auth import EXIT_DENIED, authorization_code, denied
from cv_queue.settings import KafkaConnection

#: `cv-queue worker` / `dlq replay`: the producer cannot go on (a restart recovers, when the cause is passing).
EXIT_FATAL = 4
#: A topic is missing, or does not hold the group's committed offsets (README: exit codes).
EXIT_TOPIC_STATE = 10

# A produce or an AddPartitionsToTxn to a topic the broker does not have (librdkafka's own codes for a topic its
# metadata no longer lists included).
MISSING_TOPIC_CODES = frozenset({
    KafkaError.UNKNOWN_TOPIC_OR_PART, KafkaError._UNKNOWN_TOPIC, KafkaError._UNKNOWN_PARTITION,
})


class FailureKind(StrEnum):
    DENIED = "denied"
    TOPIC_STATE = "topic_state"
    FATAL = "fatal"

    @property
    def exit_code(self) -> int:
        return {FailureKind.DENIED: EXIT_DENIED, FailureKind.TOPIC_STATE: EXIT_TOPIC_STATE}.get(self, EXIT_FATAL)

    @property
    def hint(self) -> str:
        """What an operator does about it, for the end of the message."""
        if self == FailureKind.DENIED:
            return ("The broker denies this principal a write it needs: grant it (`cv-queue acls apply` as an admin "
                    "applies the queue's ACLs), or log in as a principal that holds it (KAFKA_SASL_USERNAME).")
        if self == FailureKind.TOPIC_STATE:
            return ("A topic it writes does not exist: create it (`cv-queue topics provision` creates the queue's "
                    "own), or correct the name.")
        return "A restart recovers when the cause has passed."


def kind_of(errors: Iterable[KafkaError]) -> FailureKind:
    """The kind of a failure from every Kafka error seen on the way (the call's own, and failed deliveries): a
    denial first, as no retry can grant an ACL, then a missing topic."""
    errors = list(errors)
    if any(authorization_code(e) is not None for e in errors):
        return FailureKind.DENIED
    if any(e.code() in MISSING_TOPIC_CODES for e in errors):
        return FailureKind.TOPIC_STATE
    return FailureKind.FATAL


def kind_of_exception(exc: BaseException) -> FailureKind:
    """The kind of any exception: a TransactionFatalError knows its own; a KafkaException by its code."""
    kind = getattr(exc, "kind", None)
    if isinstance(kind, FailureKind):
        return kind
    if isinstance(exc, TopicStateError):
        return FailureKind.TOPIC_STATE
    if isinstance(exc, KafkaException) and exc.args and isinstance(exc.args[0], KafkaError):
        return kind_of([exc.args[0]])
    return FailureKind.FATAL


class TopicStateError(RuntimeError):
    """A topic is missing, or its log does not hold the offsets committed on it: CLI exit code 10."""

    exit_code = EXIT_TOPIC_STATE


def require_topic(admin: AdminClient, topic: str, conn: KafkaConnection, role: str, timeout_s: float = 15.0) -> None:
    """Raise TopicStateError when `topic` does not exist (KafkaAuthorizationError when the principal may not even
    describe it). Asked with DescribeTopics, which never creates a topic, whatever the broker's auto-creation says."""
    try:
        admin.describe_topics(TopicCollection([topic]), request_timeout=timeout_s)[topic].result(timeout=timeout_s)
    except KafkaException as exc:
        if authorization_code(exc) is not None:
            raise denied(exc, conn, topic, "DESCRIBE") from exc
        if exc.args and isinstance(exc.args[0], KafkaError) and exc.args[0].code() in MISSING_TOPIC_CODES:
            raise TopicStateError(
                f"{role} {topic!r} does not exist on {conn.bootstrap_servers}, and topics are not created on "
                "demand: check its name, or create it first (`cv-queue topics provision` creates the queue's own "
                "topics)") from exc
        raise
