"""The Dagster layer: thin wiring of the broker layer (cv_queue.kafka) into resources, assets, jobs and sensors.

Dagster's Beta, Preview and Supersession warnings are filtered here, the first thing any process importing our
definitions runs (code server, daemon, run workers, tests): they speak of Dagster's own API life cycle (a sensor
decorator passing `owners=` internally, say), not of anything an operator can act on, and `make run` should
read cleanly. Deprecation warnings, which do call for a change, still show.
"""

import warnings

import dagster as dg

for _category in (dg.BetaWarning, dg.PreviewWarning, dg.SupersessionWarning):
    warnings.filterwarnings("ignore", category=_category)
