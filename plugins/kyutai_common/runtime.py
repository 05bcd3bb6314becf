"""Python's garbage collector kept off the request path of a long-running server (the engine
servers, the token service).

A full collection holds the GIL while it scans every tracked object, and so stops both the model
thread and the event loop. A loaded engine tracks about half a million objects (torch's, moshi's
and the model's, all alive until exit): a full collection then took 280-380 ms on the reference
box, heard as a gap by every stream on the engine (TTS fuzz test, 2026-12-05: one 467 ms gap).
"""

from __future__ import annotations

import gc
import logging
import time
from collections.abc import Callable
from typing import Any

CollectionCallback = Callable[[str, dict[str, Any]], None]

# Collections longer than this get a log line: a stream's frame is 80 ms.
SLOW_COLLECTION_S = 0.05
_slow_collections_logged = False
_startup_frozen = False


def freeze_startup_objects(logger: logging.Logger) -> None:
    """Moves every object alive after loading and warm-up out of the collector's reach, so that
    a full collection scans only what streams have created since. Call after warm-up; once per
    process (later calls do nothing: in a process that already serves, the full collection
    before the freeze would be the very pause this avoids)."""
    global _startup_frozen
    if _startup_frozen:
        return
    _startup_frozen = True
    gc.collect()
    gc.freeze()
    logger.info("froze %d startup objects out of the garbage collector", gc.get_freeze_count())


def on_slow_collections(threshold_s: float, report: Callable[[int, float, int], None]) -> CollectionCallback:
    """A `gc.callbacks` entry that calls `report(generation, held_s, collected)` for each collection
    that held the process over `threshold_s`."""
    started: list[float] = []

    def on_collection(phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            started[:] = [time.perf_counter()]
        elif started and (held_s := time.perf_counter() - started[0]) > threshold_s:
            report(info["generation"], held_s, info["collected"])

    return on_collection


def log_slow_collections(logger: logging.Logger, threshold_s: float = SLOW_COLLECTION_S) -> None:
    """A warning for each collection that held the process over `threshold_s`: every stream or
    session it serves heard it as a gap. Once per process: later calls do nothing."""
    global _slow_collections_logged
    if _slow_collections_logged:
        return
    _slow_collections_logged = True

    def warn(generation: int, held_s: float, collected: int) -> None:
        logger.warning(
            "garbage collection of generation %d held the process for %.0f ms (%d objects collected)",
            generation,
            held_s * 1000,
            collected,
        )

    gc.callbacks.append(on_slow_collections(threshold_s, warn))
