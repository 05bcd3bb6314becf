"""Overload runs pooled: two runs' kiosk records → one ratio over all their turns, read the way the
promise is read; a records file that is not one whole run is refused with its name."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

from bench.common import REPO


def kiosk(v2v_ms: list[float]) -> dict[str, Any]:
    """One simulated kiosk's record as ``bench.voice_loop`` writes it: a sentence every 10 s."""
    utterances = []
    for i, ms in enumerate(v2v_ms):
        start = 1000.0 + 10 * i
        utterances.append({"started": start, "voice_end": start + 2, "first_audio": start + 2 + ms / 1000,
                           "member_final": start + 2.3, "overlapped": False})
    return {"index": 0, "session_id": "s", "ready": True, "greeted": True, "error": None, "utterances": utterances,
            "onsets": [u["first_audio"] for u in utterances], "agent_turns": [], "junk_transcripts": 0,
            "answer_audio_jitter": []}


def write_run(path: Path, half: list[float], full: list[list[float]]) -> Path:
    lines = [{"sessions": 1, "records": [kiosk(half)]}, {"sessions": len(full), "records": [kiosk(f) for f in full]}]
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    return path


def pool(*paths: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "bench.overload", "--pool", *map(str, paths)], cwd=REPO,
                          capture_output=True, text=True, timeout=120)


def test_two_runs_pool_their_turns_into_one_ratio(tmp_path: Path) -> None:
    # Alone, run A reads 2.0 (its full level's two slow turns set its p95) and run B 0.5 (one slow
    # half turn sets its). Together, 20 half turns and 40 full ones: the p95s are the 19th and the
    # 38th fastest, 800 and 880 ms.
    a = write_run(tmp_path / "a.jsonl", [500.0] * 9 + [800.0], [[600.0] * 9 + [1600.0], [600.0] * 9 + [1600.0]])
    b = write_run(tmp_path / "b.jsonl", [500.0] * 8 + [800.0, 1760.0], [[600.0] * 9 + [880.0]] * 2)
    run = pool(a, b)
    assert run.returncode == 0, run.stderr
    payload = json.loads(run.stdout.strip().splitlines()[-1])
    assert payload["bench"] == "overload_pool"
    half, full = payload["results"]
    assert (half["level"], half["runs"], half["turns"], half["answered"], half["lost_turns"]) == ("half", 2, 20, 20, 0)
    assert (full["turns"], full["sessions"], full["lost_turns"]) == (40, [2], 0)
    assert (half["v2v_ms_p95"], full["v2v_ms_p95"]) == (800.0, 880.0)
    assert [r["v2v_p95_ratio"] for r in payload["runs"]] == [2.0, 0.5]
    assert payload["v2v_p95_ratio"] == 1.1
    low, high = payload["v2v_p95_ratio_ci90"]
    assert low <= 1.1 <= high
    assert payload["promise"] == {"v2v_p95_within_20pct": True, "no_lost_turns": True}


def test_a_records_file_of_one_level_is_refused_by_name(tmp_path: Path) -> None:
    half_only = tmp_path / "cut.jsonl"
    half_only.write_text(json.dumps({"sessions": 1, "records": [kiosk([500.0])]}) + "\n")
    run = pool(half_only)
    assert run.returncode != 0
    assert "cut.jsonl holds 1 level line(s)" in run.stderr
