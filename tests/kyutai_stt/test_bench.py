"""`python -m bench.stt` prints one JSON object in the shape the benchmarks share (timings not judged)."""

from __future__ import annotations

import json
import subprocess
import sys

from bench.common import REPO


def test_the_stt_benchmark_prints_its_json_shape() -> None:
    run = subprocess.run(
        [sys.executable, "-m", "bench.stt", "--quick", "--levels", "1,2", "--seconds", "1", "--turns", "1"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode == 0, run.stderr[-2000:]
    payload = json.loads(run.stdout.strip().splitlines()[-1])
    assert {"bench", "git_rev", "device", "weights", "quick", "results"} <= set(payload)
    assert payload["bench"] == "stt" and payload["weights"] == "tiny" and payload["quick"] is True
    assert {"eos_after_voice_ms", "final_after_voice_ms"} <= set(payload)
    assert [row["streams"] for row in payload["results"]] == [1, 2]
    for row in payload["results"]:
        assert {"step_ms_p50", "step_ms_p99", "rtf", "mem_per_stream_mb"} <= set(row)
        assert row["step_ms_p50"] > 0 and row["mem_per_stream_mb"] > 0
    assert payload["final_after_voice_ms"] > 0, "the turn was detected and finalised"
