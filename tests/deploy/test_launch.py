"""Every role of one host, installed by deploy/install.sh and run by deploy/launch.py (no systemd), on
loopback with the tiny Kyutai checkpoints and the LLM stand-in: the token service is ready, the
workers register, a kiosk session speaks, and its turn shows on the worker's /metrics.

PostgreSQL and Redis are the stack's (in production: the chain's Supabase and a shared Redis, not
installed by any role). LiveKit, both engines, the token service and two workers are the launcher's.
"""

from __future__ import annotations

import asyncio
import functools
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from jarvis_local.kiosk_sim import SimulatedKiosk, open_session, poll, synthesize_french
from jarvis_local.llm_standin import LLMStandIn, Say
from jarvis_local.speech_models import tiny_models
from jarvis_local.stack import LocalStack, free_port
from tests.conftest import CAMILLE, LYON_KEY
from tests.deploy.installer import ALL_ROLES, LAUNCH, install
from tests.deploy.observability import used_metrics

pytestmark = [pytest.mark.integration, pytest.mark.skipif(os.geteuid() != 0, reason="the installer runs as root")]

QUESTION = "Je voudrais voir la vidéo pour le squat."
ANSWER = "Bien sûr, la vidéo du squat arrive sur l'écran."
WORKERS = 2


def free_block(size: int) -> int:
    """A base port whose next ``size`` ports are free (the workers' metrics are base + 1, base + 2)."""
    for _ in range(50):
        base = free_port()
        try:
            for port in range(base + 1, base + size + 1):
                with socket.socket() as s:
                    s.bind(("127.0.0.1", port))
            return base
        except OSError:
            continue
    raise RuntimeError("no free block of ports")


def get(url: str) -> tuple[int, str]:
    with urllib.request.urlopen(url, timeout=5) as r:
        return r.status, r.read().decode()


def metric(text: str, name: str, labels: str = "") -> float:
    """The sum of a metric's samples (over job processes) whose labels contain ``labels``."""
    total = 0.0
    for line in text.splitlines():
        m = re.match(rf"^{re.escape(name)}(\{{[^}}]*\}})? ([0-9.eE+-]+)$", line)
        if m and labels in (m.group(1) or ""):
            total += float(m.group(2))
    return total


def environment(pid: int) -> dict[str, str]:
    """A running process's environment, as it was started."""
    items = Path(f"/proc/{pid}/environ").read_bytes().decode().split("\0")
    return dict(item.split("=", 1) for item in items if "=" in item)


def registered(worker_log: Path) -> bool:
    return b"registered worker" in worker_log.read_bytes()


def launcher_report(root: Path, out: Path) -> str:
    """What to read when the launcher did not get its instances ready: its own lines, the tail of
    each instance's log and the machine's load (a starved host and a crash loop look alike)."""
    logs = sorted((root / "var/log/jarvis").glob("*.log"))
    tails = "\n".join(
        f"--- {log.name}\n" + "\n".join(log.read_text("utf-8", "replace").splitlines()[-15:]) for log in logs
    )
    load = " ".join(f"{x:.1f}" for x in os.getloadavg())
    return f"load average {load}\n--- launcher.out\n{out.read_text()}\n{tails}"


def start_launcher(root: Path, out: Path) -> subprocess.Popen[bytes]:
    """deploy/launch.py as ops run it on a host without systemd (as root: --keep-user, see below)."""
    # --keep-user: this machine's Python lives under /root (pyenv), which the jarvis user cannot
    # execute; on a GPU pod everything runs as root the same way.
    with open(out, "wb") as f:
        return subprocess.Popen([sys.executable, str(LAUNCH), "--root", str(root), "--keep-user"],
                                stdout=f, stderr=subprocess.STDOUT)


@pytest.fixture()
async def llm() -> AsyncIterator[LLMStandIn]:
    async with LLMStandIn(lambda _request: Say(ANSWER)) as standin:
        yield standin


# About 150 s alone on 2 cores (the engines warm up on CPU); the default 300 s is short on a busy box.
@pytest.mark.timeout(600)
async def test_one_host_with_every_role_runs_from_the_generated_config(
    stack: LocalStack, llm: LLMStandIn, tmp_path: Path
) -> None:
    models = tiny_models(tmp_path / "tiny-speech")
    stt_env, tts_env = models.engine_env()
    ports = {"livekit": free_port(), "livekit_rtc_tcp": free_port(), "livekit_udp": free_port(socket.SOCK_DGRAM),
             "livekit_prometheus": free_port(), "token": free_port(), "stt": free_port(), "tts": free_port(),
             "worker_metrics": free_block(WORKERS)}
    root = tmp_path / "host"
    engine_env = {**stt_env, **tts_env, "KYUTAI_STT_MAX_STREAMS": "4", "KYUTAI_TTS_MAX_STREAMS": "4",
                  "KYUTAI_STT_TORCH_THREADS": "1", "KYUTAI_TTS_TORCH_THREADS": "1"}
    env = {"JARVIS_DATABASE_URL": stack.pg_dsn, "JARVIS_REDIS_URL": stack.redis_url, "NO_TORCH_COMPILE": "1",
           "JARVIS_NUM_IDLE_PROCESSES": "1", "KYUTAI_TTS_VOICE": models.tts_default_voice or "", **llm.worker_env}
    args = ["--roles", ALL_ROLES, "--gpus", "1", "--workers", str(WORKERS), "--loopback", "--engine-bind",
            "127.0.0.1", "--redis-address", f"127.0.0.1:{stack.redis_port}", "--redis-db", "2",
            *(f"--port={k}={v}" for k, v in ports.items()), *(f"--env={k}={v}" for k, v in env.items()),
            *(f"--engine-env={k}={v}" for k, v in engine_env.items())]
    install(root, *args)

    out = root / "launcher.out"
    started = time.monotonic()
    launcher = start_launcher(root, out)
    logs = root / "var/log/jarvis"
    try:
        try:
            await poll(lambda: "all ready" in out.read_text() or launcher.poll() is not None, 300, every_s=1.0,
                       what="the launcher's instances to be ready")
        except AssertionError as exc:
            raise AssertionError(f"{exc}\n{launcher_report(root, out)}") from None
        assert launcher.poll() is None, launcher_report(root, out)
        ready_s = time.monotonic() - started
        token_url = f"http://127.0.0.1:{ports['token']}"
        assert (await asyncio.to_thread(get, f"{token_url}/readyz"))[0] == 200
        for i in range(1, WORKERS + 1):
            await poll(functools.partial(registered, logs / f"jarvis-agent@{i}.log"), 60,
                       what=f"worker {i} to register with the launched LiveKit node")

        session = await open_session(token_url, LYON_KEY, CAMILLE["badge_id"])
        assert session["livekit_url"] == f"ws://127.0.0.1:{ports['livekit']}"
        kiosk = SimulatedKiosk()
        await kiosk.join(session["livekit_url"], session["token"])
        try:
            assert await poll(kiosk.agent, 60), "JARVIS did not join the kiosk's room"
            joined = time.perf_counter()
            await poll(lambda: kiosk.heard.first_speech_after(joined - 10), 30, what="the greeting's audio")
            # The greeting is over when the agent says it listens again after speaking (its audio may
            # pause mid-sentence on a busy machine, so silence alone is not the end).
            await poll(lambda: kiosk.finished_speaking(joined - 10), 90, every_s=0.1, what="the end of the greeting")
            turn = await kiosk.hear_answer(await kiosk.say(synthesize_french(QUESTION), QUESTION), 45)
            assert turn.v2v_ms is not None, "JARVIS never answered out loud"

            async def voice_metrics() -> str | None:
                texts = [(await asyncio.to_thread(get, f"http://127.0.0.1:{ports['worker_metrics'] + i}/metrics"))[1]
                         for i in range(1, WORKERS + 1)]
                text = "\n".join(texts)
                done = metric(text, "jarvis_voice_latency_seconds_count", 'stage="voice_to_voice"') >= 1
                return text if done and metric(text, "jarvis_voice_sessions_active") >= 1 else None

            # The turn is recorded by the session's job process once the answer finished playing: it
            # reaches /metrics only through PROMETHEUS_MULTIPROC_DIR, which the launcher gives each
            # worker as the unit does.
            text = await poll(voice_metrics, 90, every_s=0.5, what="the session's turn on the workers' /metrics")
        finally:
            await kiosk.leave()
        print(f"\nlauncher: every instance ready in {ready_s:.0f} s; the worker's /metrics: "
              f"{metric(text, 'jarvis_voice_latency_seconds_count'):.0f} stage samples, "
              f"{metric(text, 'jarvis_voice_sessions_active'):.0f} session(s) active")
        status, lk_metrics = await asyncio.to_thread(get, f"http://127.0.0.1:{ports['livekit_prometheus']}/metrics")
        assert status == 200
        # The dashboard's LiveKit panels name metrics this node exports, now that it served a room.
        exported = {line.split("{")[0].split(" ")[0] for line in lk_metrics.splitlines() if not line.startswith("#")}
        missing = {n for n in used_metrics() if n.startswith("livekit_")} - exported
        assert not missing, f"the dashboard names LiveKit metrics the node does not export: {missing}"
        # A crashed instance is started again (the units' Restart=on-failure): kill -9 the token service.
        token_pid = int(re.findall(r"started: jarvis-token \(pid (\d+)\)", out.read_text())[-1])
        os.kill(token_pid, signal.SIGKILL)
        await poll(lambda: out.read_text().count("ready: jarvis-token") >= 2, 60, every_s=0.5,
                   what="the launcher to restart the killed token service")
        assert (await asyncio.to_thread(get, f"{token_url}/readyz"))[0] == 200
        # The engines read only their model cache (the units' Environment=, applied by the launcher too).
        for engine in ("kyutai-stt@0", "kyutai-tts@0"):
            pid = int(re.findall(rf"started: {re.escape(engine)} \(pid (\d+)\)", out.read_text())[-1])
            env = environment(pid)
            assert env.get("HF_HUB_OFFLINE") == "1", engine
            assert env.get("HF_HOME") == str(root / "var/cache/jarvis/huggingface"), engine
        host = json.loads((root / "etc/jarvis/host.json").read_text())
        assert [i["name"] for i in host["instances"]] == [
            "livekit", "kyutai-stt@0", "kyutai-tts@0", "jarvis-token", "jarvis-agent@1", "jarvis-agent@2"]
    finally:
        # SIGTERM: workers first (they drain), then the token service, the engines, LiveKit.
        launcher.send_signal(signal.SIGTERM)
        try:
            code = await asyncio.to_thread(launcher.wait, 120)
        except subprocess.TimeoutExpired:
            launcher.kill()
            raise
    text_out = out.read_text()
    assert code == 0, text_out
    stops = [line.split()[1] for line in text_out.splitlines() if line.startswith("stopped:")]
    assert stops[0].startswith("jarvis-agent@") and stops[-1] == "livekit", text_out
