"""Benchmarks run and print their JSON in the shape docs/BENCH.md sets (timings are not judged)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from bench.common import REPO

COMMON = {"bench", "git_rev", "device", "weights", "quick", "results"}

CASES = {
    "token_service": (["--quick", "--seconds", "1"], {"rps", "p50_ms", "p99_ms", "errors"}, {"concurrency"}, "cache"),
    "voice_loop": (
        ["--quick", "--sessions", "1", "--turns", "1"],
        {"v2v_ms_p50", "v2v_ms_p95", "overhead_ms_p50", "turns", "lost_turns", "cpu_pct_per_session",
         "rss_mb_per_session"},
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


@pytest.mark.parametrize("name", sorted(CASES))
def test_benchmark_prints_its_json_shape(name: str) -> None:
    args, row_keys, top_keys, level = CASES[name]
    run = subprocess.run([sys.executable, "-m", f"bench.{name}", *args], cwd=REPO, capture_output=True,
                         text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-2000:]
    payload = json.loads(run.stdout.strip().splitlines()[-1])
    assert COMMON | top_keys <= set(payload)
    assert payload["bench"] == name and payload["quick"] is True
    assert payload["results"], "no result rows"
    for row in payload["results"]:
        assert row_keys | {level} <= set(row), row
