"""Objects that settings name by dotted path (a job handler, a notifier, an exception class of the retry rules), and
the table of module paths that moved.

A path someone typed into a setting or a deployment outlives a refactoring: when a module moves, its old path keeps
working here, with a DeprecationWarning that names the new one. `import_attribute` is what every loader of such a
path calls (cv_queue.evaluation.handler.load_handler, cv_queue.kafka.worker.classify.import_exception,
cv_queue.defs.notify.load_notifier). The warning is also logged (logger `cv_queue`), since Python hides a
DeprecationWarning outside __main__ by default.
"""

import importlib
import logging
import warnings
from typing import Any

log = logging.getLogger("cv_queue")

#: Old module path -> the modules its names moved to, looked up in this order. A path whose module still exists (a
#: package now: cv_queue.kafka.worker, cv_queue.kafka.replay) is looked up here only for a name it does not have.
MOVED_MODULES: dict[str, tuple[str, ...]] = {
    # cv_queue/kafka/ was one flat folder (issue 18).
    "cv_queue.kafka.records": ("cv_queue.kafka.wire.records",),
    "cv_queue.kafka.delivery": ("cv_queue.kafka.wire.delivery",),
    "cv_queue.kafka.envelope": ("cv_queue.kafka.wire.envelope",),
    "cv_queue.kafka.fit": ("cv_queue.kafka.wire.fit",),
    "cv_queue.kafka.clients": ("cv_queue.kafka.client.clients",),
    "cv_queue.kafka.client_log": ("cv_queue.kafka.client.client_log",),
    "cv_queue.kafka.auth": ("cv_queue.kafka.client.auth",),
    "cv_queue.kafka.failures": ("cv_queue.kafka.client.failures",),
    "cv_queue.kafka.stall": ("cv_queue.kafka.client.stall",),
    "cv_queue.kafka.faults": ("cv_queue.kafka.client.faults",),
    "cv_queue.kafka.transaction": ("cv_queue.kafka.client.transaction",),
    "cv_queue.kafka.producer": ("cv_queue.kafka.client.producer",),
    "cv_queue.kafka.topics": ("cv_queue.kafka.admin.topics",),
    "cv_queue.kafka.lag": ("cv_queue.kafka.admin.lag",),
    "cv_queue.kafka.acls": ("cv_queue.kafka.admin.acls",),
    "cv_queue.kafka.fleet_layout": ("cv_queue.kafka.fleet.layout", "cv_queue.kafka.admin.names"),
    "cv_queue.kafka.dlq_layout": ("cv_queue.kafka.fleet.dlq_layout",),
    "cv_queue.kafka.presence": ("cv_queue.kafka.fleet.presence", "cv_queue.kafka.admin.names"),
    "cv_queue.kafka.layout": ("cv_queue.kafka.fleet.fencing",),
    "cv_queue.kafka.relayout": ("cv_queue.kafka.fleet.relayout",),
    "cv_queue.kafka.stats": ("cv_queue.kafka.metrics.stats",),
    "cv_queue.kafka.worker": ("cv_queue.kafka.worker.partition_worker",),
    "cv_queue.kafka.startup": ("cv_queue.kafka.worker.startup", "cv_queue.kafka.fleet.join"),
    "cv_queue.kafka.resume": ("cv_queue.kafka.worker.resume",),
    "cv_queue.kafka.intake": ("cv_queue.kafka.worker.intake",),
    "cv_queue.kafka.execution": ("cv_queue.kafka.worker.execution",),
    "cv_queue.kafka.pools": ("cv_queue.kafka.worker.pools",),
    "cv_queue.kafka.pool": ("cv_queue.kafka.worker.pool",),
    "cv_queue.kafka.async_pool": ("cv_queue.kafka.worker.async_pool",),
    "cv_queue.kafka.inline_pool": ("cv_queue.kafka.worker.inline_pool",),
    "cv_queue.kafka.classify": ("cv_queue.kafka.worker.classify",),
    "cv_queue.kafka.backoff": ("cv_queue.kafka.worker.backoff",),
    "cv_queue.kafka.routing": ("cv_queue.kafka.worker.routing",),
    "cv_queue.kafka.commit": ("cv_queue.kafka.worker.commit",),
    "cv_queue.kafka.tracker": ("cv_queue.kafka.worker.tracker",),
    "cv_queue.kafka.offset_map": ("cv_queue.kafka.worker.offset_map",),
    "cv_queue.kafka.inflight": ("cv_queue.kafka.worker.inflight",),
    "cv_queue.kafka.flow": ("cv_queue.kafka.worker.flow",),
    "cv_queue.kafka.progress": ("cv_queue.kafka.worker.progress",),
    "cv_queue.kafka.fleet_share": ("cv_queue.kafka.worker.fleet_share",),
    "cv_queue.kafka.replay": ("cv_queue.kafka.replay.replayer", "cv_queue.kafka.replay.request"),
    # The alerts resource left cv_queue/defs/notify.py (which keeps the alerts and their notifiers).
    "cv_queue.defs.notify": ("cv_queue.defs.alerts_resource",),
}


def import_attribute(module_name: str, attr: str) -> Any:
    """`getattr(importlib.import_module(module_name), attr)`, for a path someone typed: a module path that moved
    still resolves, with a DeprecationWarning naming the new path. Raises ImportError or AttributeError as that
    expression would."""
    try:
        module = importlib.import_module(module_name)
    except ImportError:
        if module_name not in MOVED_MODULES:
            raise
        module, missing = None, True
    else:
        missing = not hasattr(module, attr)
    if not missing:
        return getattr(module, attr)
    for new_name in MOVED_MODULES.get(module_name, ()):
        new_module = importlib.import_module(new_name)
        if hasattr(new_module, attr):
            message = (f"{module_name}:{attr} moved to {new_name}:{attr}; the old path still works for now, but is "
                       "deprecated: change the setting to the new one")
            warnings.warn(message, DeprecationWarning, stacklevel=2)
            log.warning("%s", message)  # a DeprecationWarning is hidden by default outside __main__
            return getattr(new_module, attr)
    if module is None:  # a moved module: none of the modules its names went to has this one
        raise AttributeError(f"module {module_name!r} (moved to {', '.join(MOVED_MODULES[module_name])}) has no "
                             f"attribute {attr!r}")
    raise AttributeError(f"module {module_name!r} has no attribute {attr!r}")
