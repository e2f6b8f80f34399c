"""`relayout_worker_fleet`: scale out in one run. Stop the fleet, wait until every worker run committed and ended,
grow the topics, record the new layout, set the `worker_slots` partitions to its slots, start the fleet.

The broker-side steps (refusing while any worker is alive, growing through the provisioning code, recording the
layout) are cv_queue/kafka/fleet/relayout.py's, shared with `cv-queue fleet relayout`; this job adds what only Dagster
can do: the fleet's stop flag around them, and waiting for the worker *runs* to end. A refusal restores the flag
as it was, so the old fleet resumes unchanged. Any other failure leaves the fleet stopped (the topics may have
grown under it) and says so, with what to run next; the failure alert reports it.
"""

import time

import dagster as dg
from pydantic import Field

from cv_queue.defs import tags
from cv_queue.defs.fleet_state import fleet_stopped, set_fleet_stopped
from cv_queue.defs.resources import KafkaResource, QueueResource
from cv_queue.defs.slots import set_worker_slots
from cv_queue.defs.workers import wait_for_fleet_to_end
from cv_queue.kafka.fleet.relayout import RelayoutRefusedError, relayout

RELAYOUT_JOB = "relayout_worker_fleet"
RUNS_POLL_S = 2.0


class RelayoutConfig(dg.Config):
    partitions: int = Field(description="Partitions of the main and retry topics after the re-layout (only grows).")
    partitions_per_worker: int | None = Field(
        None, description="Partitions per worker slot; empty keeps the recorded layout's.")
    wait_s: float = Field(300.0, description="How long to wait for the worker runs (and any other live worker) to "
                                             "commit and end before refusing.")


def wait_for_worker_runs_to_end(context: dg.OpExecutionContext, deadline: float) -> None:
    """Wait until no partition_worker run is active (each commits and ends SUCCESS on the stop flag)."""
    context.log.info("step 2: waiting for the worker runs to commit and end")
    runs = wait_for_fleet_to_end(context.instance, max(0.0, deadline - time.monotonic()), context.log, RUNS_POLL_S)
    if runs:
        slots = ", ".join(sorted(r.tags.get(tags.WORKER_SLOT, r.run_id) for r in runs))
        raise RelayoutRefusedError(f"{len(runs)} worker run(s) still active after the wait (slots {slots}); "
                                   "nothing was changed")
    context.log.info("step 2: every worker run has ended")


def left_stopped_message(exc: BaseException) -> str:
    """What an operator must know when a re-layout failed part-way: the fleet is stopped, and how to go on."""
    return (f"re-layout failed: {type(exc).__name__}: {exc}. The worker fleet was left STOPPED: the topics may "
            f"already have grown, and the old fleet must not resume on them. Re-run {RELAYOUT_JOB} with the same "
            "config to complete it (growing again changes nothing; the layout is then recorded and the fleet "
            "started), or run start_worker_fleet if nothing changed (the topics and the recorded layout are as "
            "before).")


@dg.op
def relayout_fleet(context: dg.OpExecutionContext, config: RelayoutConfig, kafka: KafkaResource,
                   queue: QueueResource) -> dg.Output[dict]:
    instance = context.instance
    was_stopped = fleet_stopped(instance)
    deadline = time.monotonic() + config.wait_s
    set_fleet_stopped(instance, True, context.run_id)
    context.log.info("step 1: fleet stopped (the fleet sensor launches nothing, every worker run commits and ends)")
    try:
        wait_for_worker_runs_to_end(context, deadline)
        recorded = relayout(kafka.connection(), kafka.admin(), queue.settings(kafka), config.partitions,
                            config.partitions_per_worker, max(0.0, deadline - time.monotonic()),
                            lambda message: context.log.info(f"step 3: {message}"))
        slots = [slot.name for slot in recorded.layout.slots()]
        set_worker_slots(instance, slots)
    except RelayoutRefusedError as exc:
        if not was_stopped:
            set_fleet_stopped(instance, False, context.run_id)
        raise dg.Failure(description=f"re-layout refused: {exc}"
                                     f"{'' if was_stopped else ' The fleet was started again as it was.'}") from exc
    except Exception as exc:
        # The topics may already have grown: the old fleet must not resume on them, so the flag stays set.
        raise dg.Failure(description=left_stopped_message(exc)) from exc
    context.log.info(f"step 4: worker_slots partitions set to {slots}")
    set_fleet_stopped(instance, False, context.run_id)
    context.log.info("step 5: fleet started: the fleet sensor launches the new layout's slots on its next tick")
    return dg.Output({"partitions": recorded.partitions, "partitions_per_worker": recorded.partitions_per_worker,
                      "generation": recorded.generation},
                     metadata={"partitions": recorded.partitions, "slots": len(slots),
                               "generation": recorded.generation})


@dg.job(name=RELAYOUT_JOB, executor_def=dg.in_process_executor, tags={tags.ROLE: tags.ROLE_FLEET_CONTROL},
        description="Scale out: stop the fleet, wait for every slot to commit and end, grow the topics, record the "
                    "new layout and start the fleet on its slots. Refuses while a worker of the old layout lives.")
def relayout_worker_fleet() -> None:
    relayout_fleet()
