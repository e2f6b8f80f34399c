"""The queue's settings as the CVQ_* environment gives them, read once when the code location loads: the defaults
of every Dagster resource and the schedules' and sensors' intervals. A module of its own, below every other defs
module, so that any of them can import it without importing the others."""

from cv_queue.settings import QueueSettings

DEFAULTS = QueueSettings()
