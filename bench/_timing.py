"""Interleaved A/B timing: arms measured in alternating order, round by round, in one process."""

from __future__ import annotations

import time
from typing import Callable


def interleaved(arms: dict[str, Callable[[], object]], reps: int, inner: int = 1) -> dict[str, list[float]]:
    """ms per call of each arm: ``reps`` rounds, each running every arm ``inner`` times in a
    row, the arms' order reversed every other round (so drift and cache effects fall on both)."""
    times: dict[str, list[float]] = {k: [] for k in arms}
    names = list(arms)
    for r in range(reps):
        for name in (names if r % 2 == 0 else names[::-1]):
            t0 = time.perf_counter()
            for _ in range(inner):
                arms[name]()
            times[name].append(1000 * (time.perf_counter() - t0) / inner)
    return times
