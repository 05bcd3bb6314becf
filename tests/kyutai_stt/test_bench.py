"""`python -m bench.stt` at a fixed capacity: one JSON object in the shared shape, with content
(timings are read, never judged: the machine is shared)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from bench.common import REPO


@pytest.mark.timeout(480)
def test_the_stt_benchmark_holds_the_capacity_and_varies_the_active_streams() -> None:
    run = subprocess.run(
        [sys.executable, "-m", "bench.stt", "--quick", "--capacity", "4", "--seconds", "1", "--turns", "1"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=450,
    )
    assert run.returncode == 0, run.stderr[-2000:]
    payload = json.loads(run.stdout.strip().splitlines()[-1])
    assert {"bench", "git_rev", "device", "weights", "quick", "results"} <= set(payload)
    assert payload["bench"] == "stt" and payload["weights"] == "tiny" and payload["quick"] is True
    assert {"eos_after_voice_ms", "final_after_voice_ms"} <= set(payload)
    rows = payload["results"]
    assert [row["active"] for row in rows] == [1, 4], "quick keeps the smallest and the largest level"
    assert {row["capacity"] for row in rows} == {4}, "one capacity for every row"
    for row in rows:
        assert {"step_ms_p50", "step_ms_p99", "rtf", "mem_per_stream_mb", "batch_fill_pct"} <= set(row)
        assert row["streams"] == row["active"]
        assert 0 < row["batch_fill_pct"] <= 100
        assert row["step_ms_p50"] > 0 and row["step_ms_p99"] >= row["step_ms_p50"] and row["rtf"] > 0
        assert row["mem_per_stream_mb"] > 0 and row["engine_step_ms_p50"] > 0
        assert 0 < row["steps_measured"] <= row["steps_total"]
        if not row["fallback"]:
            assert row["batch_fill_pct"] == round(100 * row["active"] / 4, 1)
    assert payload["capacity"] == 4 and payload["active_stream_cost_ms"] is not None
    assert [entry["active"] for entry in payload["skip_idle"]] == [1]
    entry = payload["skip_idle"][0]
    assert entry["step_ms_p50"] > 0 and entry["sized_step_ms_p50"] > 0 and entry["sized_capacity"] == 1
    assert payload["skip_idle_slots_saves_pct"] == {"1": entry["saves_pct"]}
    assert payload["idle_slot_cost_ms"] == entry["idle_slot_cost_ms"]
    assert payload["final_after_voice_ms"] > 0, "the turn was detected and finalised"
