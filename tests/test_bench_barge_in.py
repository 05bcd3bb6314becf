"""The barge-in bench: the member talks over JARVIS → the kiosk ducks JARVIS's voice, JARVIS
pauses, then stops for good; gym noises (a burst, a clap, a dropped weight, music, a cough)
played under JARVIS's answer → the kiosk ducks and comes back, silero's voice confirmation never stops it.
Prints its JSON in the shape docs/BENCH.md sets.

Timings are not judged here (a loaded machine is slow); that both steps happened is.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from bench.common import REPO

pytestmark = pytest.mark.integration


@pytest.mark.timeout(540)
def test_member_talks_over_jarvis_and_noises_do_not_stop_it() -> None:
    run = subprocess.run(
        [sys.executable, "-m", "bench.barge_in", "--quick", "--speech", "1", "--baseline", "0"],
        cwd=REPO, capture_output=True, text=True, timeout=500,
    )
    assert run.returncode == 0, run.stderr[-2000:]
    payload = json.loads(run.stdout.strip().splitlines()[-1])
    assert {"bench", "git_rev", "device", "weights", "quick", "results", "noise_kinds", "levels_db"} <= set(payload)
    rows = {row["case"]: row for row in payload["results"]}
    speech, noise = rows["speech"], rows["noise"]
    assert rows["backchannel"]["trials"] == 0  # --quick plays none
    assert {"pause_ms_p50", "pause_ms_p95", "stop_ms_p50", "stop_ms_p95", "trials", "missed"} <= set(speech)
    assert {"false_pause_rate", "false_stop_rate", "words_lost", "trials"} <= set(noise)

    assert speech["trials"] == 1 and speech["missed"] == 0, payload["trials"]
    assert speech["duck_ms_p50"] is not None and speech["duck_ms_p50"] > 0, "the kiosk never ducked JARVIS"
    assert speech["pause_ms_p50"] is not None and speech["pause_ms_p50"] > 0, "JARVIS never went quiet"
    assert speech["stop_ms_p50"] is not None, "JARVIS paused but was never stopped for good"
    assert noise["trials"] == len(payload["noise_kinds"]) == 5, payload["trials"]
    # the kiosk ducks on a noise it hears, and JARVIS's voice comes back after every one
    assert noise["unducked"] == round(noise["false_duck_rate"] * noise["trials"]), payload["trials"]
    # silero is the real model: none of the gym noises is voice to it
    assert noise["false_stop_rate_by_voice"] == 0, noise["by_kind"]
