"""`python -m bench.tts --quick` runs and prints the shared benchmark JSON shape."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_the_quick_tts_bench_prints_one_json_object_in_the_shared_shape() -> None:
    env = {**os.environ, "NO_TORCH_COMPILE": "1", "OMP_NUM_THREADS": "1"}
    run = subprocess.run(
        [sys.executable, "-m", "bench.tts", "--quick"], cwd=REPO, env=env, capture_output=True, text=True, timeout=240
    )
    assert run.returncode == 0, run.stderr[-2000:]
    result = json.loads(run.stdout.strip().splitlines()[-1])
    assert result["bench"] == "tts" and result["weights"] == "tiny" and result["quick"] is True
    assert [row["streams"] for row in result["results"]] == [1, 32]
    for row in result["results"]:
        assert {"step_ms_p50", "step_ms_p99", "rtf", "ttfa_ms_p50", "mem_per_stream_mb"} <= row.keys()
        assert row["errors"] == 0 and row["step_ms_p50"] > 0 and row["mem_per_stream_mb"] > 0
    assert result["plugin_first_frame_ms_p50"] > 0
