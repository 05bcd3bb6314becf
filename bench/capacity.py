"""Fixed-capacity arithmetic shared by the engine benches (`bench.stt`, `bench.tts`).

A deployed engine is built with `capacity` slots and computes all of them at every step
(moshi's execution mask keeps idle rows' state unchanged with `torch.where`; it does not skip
their compute). So the engine benches hold the capacity fixed and vary the ACTIVE streams, and
separate what an active stream costs from what an idle slot costs:

- `active_stream_cost_ms`: least-squares slope of the rows' `step_ms_p50` over `active`, all at
  the same capacity: the step time one more live stream adds.
- `idle_slot_cost_ms`: (step at capacity C with `a` active − step of an engine of capacity `a`
  with the same `a` active) / (C − a), at a = 1: what each idle slot adds to every step.
- `skip_idle_slots_saves_pct` at a = 1 and a = C/4: 100 × (1 − sized / full), the share of the
  step a smaller batch of only the live slots would save (an engine sized to the live streams
  stands in for slicing the batch to them, which the engines do not do).

Timing on a shared CPU is noisy: these figures are for reading, never for gating.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

DEFAULT_CAPACITY = 32
BASE_LEVELS = [1, 2, 4, 8, 16, 32]


def active_levels(capacity: int, quick: bool, explicit: str | None = None) -> list[int]:
    """Active-stream counts for one capacity: BENCH.md's 1..32 clipped to it, doubling on up to
    it when it is larger (so 256 gives 1..256), and the capacity itself; quick keeps the ends."""
    if capacity < 1:
        raise ValueError("capacity must be at least 1")
    if explicit:
        levels = sorted({int(n) for n in explicit.split(",")})
        if levels[0] < 1 or levels[-1] > capacity:
            raise ValueError(f"active levels {levels} must lie in 1..{capacity} (the capacity)")
        return levels
    levels = [n for n in BASE_LEVELS if n <= capacity]
    while levels[-1] * 2 <= capacity:
        levels.append(levels[-1] * 2)
    if levels[-1] != capacity:
        levels.append(capacity)
    return [levels[0], levels[-1]] if quick else levels


def skip_idle_points(capacity: int) -> list[int]:
    """Active counts at which skipping idle slots is measured: 1 and a quarter of the capacity."""
    return sorted({1, max(1, capacity // 4)})


def measured_steps(records: Sequence[tuple[int, float]], active: int) -> tuple[list[float], list[int], bool]:
    """(step seconds, active per step, fallback) over the steps where all `active` streams ran.

    Steps while clients join and leave are not the load; when no step had every stream (a very
    loaded machine), every step is measured instead and `fallback` says so."""
    full = [(n, s) for n, s in records if n == active]
    fallback = not full
    chosen = list(records) if fallback else full
    return [s for _, s in chosen], [n for n, _ in chosen], fallback


def fill_pct(actives: Sequence[int], capacity: int) -> float:
    """Mean share of the capacity that carried a live stream, over the given steps."""
    if not actives:
        return 0.0
    return round(100 * sum(actives) / len(actives) / capacity, 1)


def slope(points: Sequence[tuple[float, float]]) -> float | None:
    """Least-squares slope of y over x; None with fewer than two distinct x."""
    if len({x for x, _ in points}) < 2:
        return None
    mean_x = sum(x for x, _ in points) / len(points)
    mean_y = sum(y for _, y in points) / len(points)
    covariance = sum((x - mean_x) * (y - mean_y) for x, y in points)
    variance = sum((x - mean_x) ** 2 for x, _ in points)
    return covariance / variance


def skip_idle_entry(capacity: int, active: int, full_ms: float, sized_ms: float) -> dict[str, Any]:
    """One comparison of a capacity-C step with a step of an engine sized to the live streams."""
    idle = capacity - active
    return {
        "active": active,
        "capacity": capacity,
        "step_ms_p50": round(full_ms, 3),
        "sized_capacity": active,
        "sized_step_ms_p50": round(sized_ms, 3),
        "saves_pct": round(100 * (1 - sized_ms / full_ms), 1) if full_ms > 0 else None,
        "idle_slot_cost_ms": round((full_ms - sized_ms) / idle, 4) if idle > 0 else None,
    }


def summary(capacity: int, rows: Sequence[dict[str, Any]], skip_idle: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """The benches' top-level cost keys (see the module docstring)."""
    active_cost = slope([(row["active"], row["step_ms_p50"]) for row in rows])
    at_one = next((entry for entry in skip_idle if entry["active"] == 1), None)
    return {
        "capacity": capacity,
        "active_stream_cost_ms": None if active_cost is None else round(active_cost, 4),
        "idle_slot_cost_ms": None if at_one is None else at_one["idle_slot_cost_ms"],
        "skip_idle_slots_saves_pct": {str(entry["active"]): entry["saves_pct"] for entry in skip_idle},
        "skip_idle": list(skip_idle),
    }
