"""Classification matches exception *types* (and explicit causes), never message text."""

import json

import pytest

from cv_queue.errors import ErrorCategory, PermanentJobError, RateLimitedError, TransientJobError
from cv_queue.kafka.worker.classify import ErrorClassifier


class QuotaError(Exception):
    pass


class DailyQuotaError(QuotaError):
    pass


def test_messages_do_not_decide_the_category():
    classify = ErrorClassifier().classify
    # The original implementation routed by message prefix; these messages must not matter.
    assert classify(ValueError("rate limit exceeded")) == ErrorCategory.TRANSIENT
    assert classify(PermanentJobError("timeout")) == ErrorCategory.PERMANENT
    assert classify(TransientJobError("invalid argument")) == ErrorCategory.TRANSIENT
    assert classify(RateLimitedError("anything")) == ErrorCategory.RATE_LIMITED


def test_builtin_types():
    classify = ErrorClassifier().classify
    assert classify(TimeoutError()) == ErrorCategory.TRANSIENT
    assert classify(ConnectionResetError()) == ErrorCategory.TRANSIENT  # via ConnectionError in the MRO
    assert classify(KeyError("x")) == ErrorCategory.PERMANENT
    assert classify(FileNotFoundError()) == ErrorCategory.PERMANENT
    assert classify(json.JSONDecodeError("bad", "", 0)) == ErrorCategory.PERMANENT  # repaired first, never invalid


def test_unknown_exceptions_are_transient():
    assert ErrorClassifier().classify(QuotaError("?")) == ErrorCategory.TRANSIENT


def test_configured_rules_and_the_most_specific_wins():
    here = __name__
    classifier = ErrorClassifier({f"{here}.QuotaError": ErrorCategory.PERMANENT,
                                  f"{here}:DailyQuotaError": ErrorCategory.RATE_LIMITED})
    assert classifier.classify(QuotaError()) == ErrorCategory.PERMANENT
    assert classifier.classify(DailyQuotaError()) == ErrorCategory.RATE_LIMITED


def test_explicit_cause_is_followed():
    try:
        try:
            raise KeyError("missing")
        except KeyError as inner:
            raise RuntimeError("wrapped") from inner
    except RuntimeError as outer:
        assert ErrorClassifier().classify(outer) == ErrorCategory.PERMANENT


@pytest.mark.parametrize("path", ["nope", "json.nope", "json.dumps"])
def test_bad_rule_paths_are_refused(path):
    with pytest.raises((ValueError, ImportError)):
        ErrorClassifier({path: ErrorCategory.PERMANENT})
