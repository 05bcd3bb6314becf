"""A day of visits leaves one metric file set per job process: the worker folds those of ended
processes, so the scrape shows the same totals from a handful of files, and a job that was killed
mid-visit no longer counts as an active session. Real processes write through prometheus_client's
multiprocess mode into a temporary folder, as livekit-agents' job processes do."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry, generate_latest, multiprocess
from prometheus_client.parser import text_string_to_metric_families

from agent.metrics_files import fold_ended_processes

ROOT = Path(__file__).resolve().parents[1]

# One job process: a visit with two turns, an LLM error, and its session counted active while it runs.
VISIT = """
import sys, time
from agent.metrics import ERRORS, SESSIONS_ACTIVE, VOICE_LATENCY
SESSIONS_ACTIVE.inc()
VOICE_LATENCY.labels("voice_to_voice").observe(0.6)
VOICE_LATENCY.labels("voice_to_voice").observe(0.9)
ERRORS.labels("llm").inc()
if sys.argv[1] == "ends":
    SESSIONS_ACTIVE.dec()
else:
    print("in session", flush=True)
    time.sleep(600)
"""


def scrape(folder: Path) -> dict[str, float]:
    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry, path=str(folder))
    text = generate_latest(registry).decode()
    return {
        f"{sample.name}{sorted(sample.labels.items())}": sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


@pytest.fixture
def folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(tmp_path))
    return tmp_path


@pytest.fixture
def visits(folder: Path) -> Iterator[list[subprocess.Popen[bytes]]]:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "PROMETHEUS_MULTIPROC_DIR": str(folder)}
    running: list[subprocess.Popen[bytes]] = []

    def visit(how: str) -> subprocess.Popen[bytes]:
        proc = subprocess.Popen([sys.executable, "-c", VISIT, how], env=env, cwd=ROOT, stdout=subprocess.PIPE)
        running.append(proc)
        if how == "ends":
            assert proc.wait(timeout=60) == 0
        else:
            assert proc.stdout is not None and proc.stdout.readline() == b"in session\n"
        return proc

    for _ in range(6):
        visit("ends")
    killed = visit("stays")
    visit("stays")  # a kiosk still talking
    killed.send_signal(signal.SIGKILL)
    killed.wait(timeout=10)
    yield running
    for proc in running:
        proc.kill()
        proc.wait(timeout=10)


def test_ended_visits_fold_into_a_few_files_and_the_totals_stay(
    folder: Path, visits: list[subprocess.Popen[bytes]]
) -> None:
    before = scrape(folder)
    files_before = len(list(folder.glob("*.db")))
    # Eight visits: two turns and one LLM error each; two counted active (one was killed, its gauge stale).
    assert before["jarvis_voice_latency_seconds_count[('stage', 'voice_to_voice')]"] == 16
    assert before["jarvis_voice_errors_total[('type', 'llm')]"] == 8
    assert before["jarvis_voice_sessions_active[]"] == 2

    assert fold_ended_processes(folder) == 7  # six that ended, one killed; not the one still talking

    after = scrape(folder)
    assert after["jarvis_voice_latency_seconds_count[('stage', 'voice_to_voice')]"] == 16
    assert after["jarvis_voice_latency_seconds_sum[('stage', 'voice_to_voice')]"] == pytest.approx(8 * 1.5)
    assert after["jarvis_voice_latency_seconds_bucket[('le', '0.6'), ('stage', 'voice_to_voice')]"] == 8
    assert after["jarvis_voice_errors_total[('type', 'llm')]"] == 8
    assert after["jarvis_voice_sessions_active[]"] == 1, "the killed job's session is no longer active"
    files_after = sorted(p.name for p in folder.glob("*.db"))
    assert len(files_after) < files_before
    assert {"counter_ended.db", "histogram_ended.db"} <= set(files_after), files_after

    # More visits end later: folded into the same files, nothing counted twice.
    env = {**os.environ, "PYTHONPATH": str(ROOT), "PROMETHEUS_MULTIPROC_DIR": str(folder)}
    subprocess.run([sys.executable, "-c", VISIT, "ends"], env=env, cwd=ROOT, check=True, timeout=60)
    assert fold_ended_processes(folder) == 1
    assert fold_ended_processes(folder) == 0
    again = scrape(folder)
    assert again["jarvis_voice_latency_seconds_count[('stage', 'voice_to_voice')]"] == 18
    assert again["jarvis_voice_errors_total[('type', 'llm')]"] == 9
    assert sorted(p.name for p in folder.glob("*.db")) == files_after


def test_a_folder_with_foreign_files_is_left_alone(folder: Path) -> None:
    (folder / "notes.txt").write_text("ops")
    (folder / "weird_name_with_parts.db").write_bytes(b"")
    assert fold_ended_processes(folder) == 0
    assert {p.name for p in folder.iterdir()} == {"notes.txt", "weird_name_with_parts.db"}
