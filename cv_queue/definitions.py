"""The one Dagster entry point: `dagster dev -w workspace.yaml` and `dagster-daemon` load `defs` from here."""

import dagster as dg

defs = dg.Definitions()
