"""`python -m bench.tts --quick` at a fixed capacity: the shared JSON shape, with content
(timings are read, never judged: the machine is shared)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.timeout(420)
def test_the_quick_tts_bench_holds_the_capacity_and_varies_the_active_streams() -> None:
    env = {**os.environ, "NO_TORCH_COMPILE": "1", "OMP_NUM_THREADS": "1"}
    run = subprocess.run(
        [sys.executable, "-m", "bench.tts", "--quick", "--capacity", "4"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=400,
    )
    assert run.returncode == 0, run.stderr[-2000:]
    result = json.loads(run.stdout.strip().splitlines()[-1])
    assert result["bench"] == "tts" and result["weights"] == "tiny" and result["quick"] is True
    rows = result["results"]
    assert [row["active"] for row in rows] == [1, 4], "quick keeps the smallest and the largest level"
    assert {row["capacity"] for row in rows} == {4}, "one capacity for every row"
    for row in rows:
        assert {"step_ms_p50", "step_ms_p99", "rtf", "ttfa_ms_p50", "mem_per_stream_mb", "batch_fill_pct"} <= row.keys()
        assert row["streams"] == row["active"] and row["errors"] == 0
        assert 0 < row["batch_fill_pct"] <= 100
        assert row["step_ms_p50"] > 0 and row["step_ms_p99"] >= row["step_ms_p50"] and row["rtf"] > 0
        assert row["ttfa_ms_p50"] > 0 and row["mem_per_stream_mb"] > 0
        assert 0 < row["steps_measured"] <= row["steps_total"] and isinstance(row["fallback"], bool)
        if not row["fallback"]:
            assert row["batch_fill_pct"] == round(100 * row["active"] / 4, 1)
    assert result["capacity"] == 4 and result["active_stream_cost_ms"] is not None
    assert [entry["active"] for entry in result["skip_idle"]] == [1]
    entry = result["skip_idle"][0]
    assert entry["errors"] == 0 and entry["sized_capacity"] == 1
    assert entry["step_ms_p50"] > 0 and entry["sized_step_ms_p50"] > 0
    assert result["skip_idle_slots_saves_pct"] == {"1": entry["saves_pct"]}
    assert result["idle_slot_cost_ms"] == entry["idle_slot_cost_ms"]
    assert result["plugin_first_frame_ms_p50"] > 0


def test_the_graph_check_compares_the_codes_of_two_engines_stream_by_stream() -> None:
    """On a CPU both engines run eagerly, so the check must find them equal and say no graph was
    captured; on a GPU the same harness compares the graphed depformer with the eager one."""
    import torch

    from bench.tts import graph_check

    torch.set_num_threads(1)
    outcome = graph_check("cpu", torch.float32)

    assert outcome["frames_compared"] > 30, "three streams of a dozen words each"
    assert outcome["codes_equal"] is True
    assert outcome["graph_captured"] is False, "no CUDA graph on a CPU"
    assert outcome["eager_step_ms_p50"] > 0 and outcome["graphed_step_ms_p50"] > 0
