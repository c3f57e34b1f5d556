"""Hold Ctrl-C / SIGTERM back while an epoch's results are committed.

An epoch ends with three writes: ``best.pt`` (when it improved), the ``metrics.jsonl`` line
and ``last.pt``. Each is atomic, but an interrupt between two of them leaves a run whose
files disagree (a metrics line without its checkpoint, or a ``best.pt`` newer than the
early-stopping state in ``last.pt``). ``--resume`` repairs the first, not the second when the
redone epoch trains to different weights. Inside :func:`deferred_interrupts` a SIGINT or
SIGTERM is recorded instead, and ``KeyboardInterrupt`` is raised when the block has finished,
so an interrupt stops the run either before the commit or after all of it.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from typing import Iterator

_SIGNALS = (signal.SIGINT, signal.SIGTERM)


@contextlib.contextmanager
def deferred_interrupts() -> Iterator[None]:
    """Run the block with SIGINT and SIGTERM deferred; raise ``KeyboardInterrupt`` after it if
    one arrived. Outside the main thread (where Python cannot set handlers) it does nothing."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    received: list[int] = []

    def record(signum: int, frame: object) -> None:
        received.append(signum)

    previous = {s: signal.signal(s, record) for s in _SIGNALS}
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
    if received:
        raise KeyboardInterrupt(f"signal {signal.Signals(received[0]).name} during the epoch's commit")
