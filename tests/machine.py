"""How much slower this machine runs right now than the quiet 2-core box our latency bounds were set on.

A latency bound in a test (a failover gap, a barge-in stop, a stream's longest pause) is the product's
promise on an unloaded host. CI runs the whole suite on a shared, slower box where the same code
takes longer for reasons that are not ours (one CI run: a 0.72 s TTS failover that takes 0.15 s
alone here). A test multiplies its bound by ``slowdown()``, measured just before the timed event and
never more than ``MAX_SLOWDOWN``: a quiet machine keeps the bound as written, so a regression still
fails, and each test prints the bound it used next to its figure.
"""

from __future__ import annotations

import statistics
import time

# The probe's median time on the quiet reference box (2 cores, nothing else running), in seconds.
REFERENCE_PROBE_S = 0.055
# Past this, the box is not slow but broken: a bound stretched further would prove nothing.
MAX_SLOWDOWN = 3.0


def _probe_s() -> float:
    """A fixed slice of pure-Python CPU work: it gets the share of a core the machine gives it now."""
    started = time.perf_counter()
    total = 0
    for i in range(400_000):
        total += i * i % 7
    return time.perf_counter() - started


def slowdown(samples: int = 7) -> float:
    """This machine's slowdown now, against the reference box: 1.0 on a quiet one, at most MAX_SLOWDOWN."""
    probe = statistics.median(_probe_s() for _ in range(samples))
    return min(MAX_SLOWDOWN, max(1.0, probe / REFERENCE_PROBE_S))

