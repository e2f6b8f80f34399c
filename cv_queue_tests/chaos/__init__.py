"""Chaos tests (issue 8): real broker, real worker processes, faults injected while jobs flow.

Each test counts every job by id in evaluate-results, the DLQ and the parking lot (read_committed), asserts that
none is lost and none duplicated, and prints its figures (run pytest with -s to see them).
"""
