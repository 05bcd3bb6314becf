"""The fixed-capacity arithmetic of the engine benches (bench/capacity.py), on made-up steps."""

from __future__ import annotations

import pytest

from bench.capacity import active_levels, fill_pct, measured_steps, skip_idle_entry, skip_idle_points, slope, summary


def test_levels_are_clipped_to_the_capacity_and_reach_it() -> None:
    assert active_levels(32, quick=False) == [1, 2, 4, 8, 16, 32]
    assert active_levels(32, quick=True) == [1, 32]
    assert active_levels(4, quick=False) == [1, 2, 4]
    assert active_levels(12, quick=False) == [1, 2, 4, 8, 12]
    assert active_levels(256, quick=False) == [1, 2, 4, 8, 16, 32, 64, 128, 256]
    assert active_levels(256, quick=True) == [1, 256]
    assert active_levels(256, quick=True, explicit="64,1,256") == [1, 64, 256]
    with pytest.raises(ValueError):
        active_levels(8, quick=False, explicit="1,16")


def test_only_the_steps_with_every_stream_are_measured_and_a_fallback_says_so() -> None:
    records = [(1, 0.01), (3, 0.02), (4, 0.03), (4, 0.05), (2, 0.01)]
    assert measured_steps(records, 4) == ([0.03, 0.05], [4, 4], False)
    times, actives, fallback = measured_steps(records, 5)
    assert fallback and times == [0.01, 0.02, 0.03, 0.05, 0.01] and actives == [1, 3, 4, 4, 2]
    assert fill_pct([4, 4], 32) == 12.5
    assert fill_pct([1, 3], 4) == 50.0


def test_active_and_idle_costs() -> None:
    assert slope([(1, 10.0), (32, 41.0)]) == pytest.approx(1.0)
    assert slope([(1, 5.0)]) is None
    entry = skip_idle_entry(32, 1, full_ms=40.0, sized_ms=9.0)
    assert entry["saves_pct"] == 77.5 and entry["idle_slot_cost_ms"] == 1.0
    rows = [{"active": 1, "step_ms_p50": 40.0}, {"active": 32, "step_ms_p50": 71.0}]
    top = summary(32, rows, [entry, skip_idle_entry(32, 8, 48.0, 36.0)])
    assert top["active_stream_cost_ms"] == 1.0 and top["idle_slot_cost_ms"] == 1.0
    assert top["skip_idle_slots_saves_pct"] == {"1": 77.5, "8": 25.0}
    assert skip_idle_points(32) == [1, 8] and skip_idle_points(2) == [1]
