"""Per-process set-up of every Ray worker of a fenrec job (``worker_process_setup_hook``).

Ray imports this module by path in each worker process before any task or actor code
runs, so it keeps to the standard library and never raises: a hook that fails stops the
worker from starting.
"""

from __future__ import annotations

import importlib.util
import logging

# Library loggers that print routine INFO lines in Ray workers (whose root logger is at INFO):
# faiss's loader tries the AVX2 build first and logs the fallback; Ray Data logs the plan of
# each worker's one-off shard read; Ray Train 2.60 logs every ray.train.report call under a
# logger named by its file path, which LoggingConfig does not reach.
QUIET_LOGGERS = ("faiss.loader", "ray.data")
QUIET_MODULE_FILE_LOGGERS = ("ray.train.v2._internal.execution.context",)


def quiet_worker_logs() -> None:
    """Raise the noisy library loggers above to WARNING (warnings and errors still show)."""
    for name in QUIET_LOGGERS:
        logging.getLogger(name).setLevel(logging.WARNING)
    for module in QUIET_MODULE_FILE_LOGGERS:
        try:
            spec = importlib.util.find_spec(module)
        except (ImportError, ValueError):
            continue
        if spec is not None and spec.origin:
            logging.getLogger(spec.origin).setLevel(logging.WARNING)


# Embedded local Ray only (it has no autoscaler): Ray Train 2.60's controller still registers
# its resource request with the autoscaling coordinator actor, and when that actor is slow to
# answer on a busy machine (a 5 s timeout) it logs a warning with a full traceback that calls
# itself "safe to ignore". On a cluster it stays visible: there a persistent failure means the
# autoscaler never hears of the run.
LOCAL_ONLY_QUIET_LOGGERS = ("ray.train.v2._internal.execution.scaling_policy.autoscaling_coordinator_client",)


def _errors_only(record: logging.LogRecord) -> bool:
    return record.levelno >= logging.ERROR


def quiet_local_worker_logs() -> None:
    """``quiet_worker_logs``, plus the autoscaler-request warning that means nothing without an
    autoscaler (errors still show). A filter, not a level: Ray Train's controller configures
    its loggers with ``logging.config.dictConfig`` after this hook, which resets the levels of
    existing ``ray.train`` loggers but keeps their filters."""
    quiet_worker_logs()
    for name in LOCAL_ONLY_QUIET_LOGGERS:
        logger = logging.getLogger(name)
        if _errors_only not in logger.filters:
            logger.addFilter(_errors_only)
