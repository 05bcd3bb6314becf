"""Benchmarks run and print their JSON in the shape docs/BENCH.md sets, holding figures.

Timings are not judged (a loaded machine is slow), but a run where every turn was lost, a
session failed or v2v is missing is a broken bench, not a slow one."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from typing import Any

import pytest

from bench.common import REPO

COMMON = {"bench", "git_rev", "device", "weights", "quick", "results"}

CASES = {
    "token_service": (["--quick", "--seconds", "1"], {"rps", "p50_ms", "p99_ms", "errors"}, {"concurrency"}, "cache"),
    "voice_loop": (
        ["--quick", "--sessions", "1", "--turns", "1"],
        {"v2v_ms_p50", "v2v_ms_p95", "overhead_ms_p50", "turns", "lost_turns", "cpu_pct_per_session",
         "rss_mb_per_session", "member_jitter_buffer_ms", "answer_jitter_buffer_ms", "cores_pct"},
        {"stages_ms_p50"},
        "sessions",
    ),
    "kiosk_browser": (
        ["--quick", "--turns", "2"],
        {"v2v_ms_p50", "v2v_ms_p95", "turns", "lost_turns"},
        {"python_kiosk_v2v_ms_p50"},
        "sessions",
    ),
}


def assert_turns_were_answered(row: dict[str, Any]) -> None:
    """A voice bench row that holds figures: every session ran, turns were answered, v2v measured."""
    assert row.get("failed_sessions", 0) == 0, row
    assert row["turns"] > 0 and row["lost_turns"] < row["turns"], row
    # null when nothing was answered (bench/turns.py); a 0 would be a bench that measured nothing
    assert row["v2v_ms_p50"] is not None and row["v2v_ms_p50"] > 0, row
    assert row["v2v_ms_p95"] is not None and row["v2v_ms_p95"] >= row["v2v_ms_p50"], row


def assert_content(name: str, payload: dict[str, Any]) -> None:
    for row in payload["results"]:
        if name == "token_service":
            assert row["errors"] == 0 and row["rps"] > 0 and 0 < row["p50_ms"] <= row["p99_ms"], row
        else:
            assert_turns_were_answered(row)
        if name == "voice_loop":
            # read from WebRTC's own stats on both sides: the kiosk heard JARVIS, JARVIS heard the member
            assert row["answer_jitter_buffer_ms"] > 0, row
            assert row["agent_turns"] == 0 or row["member_jitter_buffer_ms"] > 0, row
            # where the host's cores went while the kiosks talked: every group worked, none beyond the host
            cores = row["cores_pct"]
            groups = {"worker", "engines", "kiosks", "sfu", "services", "bench"}
            assert set(cores) == groups | {"total"}, cores
            assert all(cores[group] > 0 for group in ("worker", "engines", "kiosks", "sfu")), cores
            assert cores["total"] <= 100 * (os.cpu_count() or 1) + 10, cores  # not beyond the host
            # each answered turn ended with a Marker through the STT engine, and the row read its wait there
            assert row["stt_marker_wait_ms_mean"] is not None and row["stt_marker_wait_ms_mean"] > 0, row
    if name == "kiosk_browser":
        assert payload["python_kiosk_v2v_ms_p50"] is not None and payload["python_kiosk_v2v_ms_p50"] > 0, payload


# The voice benches start the whole stack (and Chromium, tiny Kyutai engines) on a shared
# 2-core machine: about 2-3 minutes each with these quick options; the project's 300 s default
# would cut them on a loaded machine.
@pytest.mark.timeout(540)
@pytest.mark.parametrize("name", sorted(CASES))
def test_benchmark_prints_its_json_shape_and_real_figures(name: str) -> None:
    args, row_keys, top_keys, level = CASES[name]
    run = subprocess.run([sys.executable, "-m", f"bench.{name}", *args], cwd=REPO, capture_output=True,
                         text=True, timeout=500)
    assert run.returncode == 0, run.stderr[-2000:]
    payload = json.loads(run.stdout.strip().splitlines()[-1])
    assert COMMON | top_keys <= set(payload)
    assert payload["bench"] == name and payload["quick"] is True
    assert payload["results"], "no result rows"
    for row in payload["results"]:
        assert row_keys | {level} <= set(row), row
    assert_content(name, payload)
