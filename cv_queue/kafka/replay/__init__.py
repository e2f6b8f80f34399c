"""Replaying dead letters: back to the main topic, or to the parking lot once replayed too often.

- `request.py`: what a replay is asked (ReplayRequest) and what it reports (ReplayReport).
- `replayer.py`: `replay_dead_letters`, the replay itself (start here: its docstring says what is replayed, parked
  or refiled, and why nothing is ever skipped).

May import `metrics/`, `fleet/`, `admin/`, `client/` and `wire/`; never `worker/` (what both need lives below them).
"""
