"""Engine-aware worker load (issue 16 item 5) on the real LiveKit server.

Two workers under one agent name, each with its own STT and TTS engines. When one worker's STT
engine is full, its load is 1.0 and LiveKit sends the next kiosk to the other worker; then the
other way round, so chance (one in two per job) cannot pass the test.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import msgpack
import pytest
import websockets
from livekit import rtc
from livekit.agents.worker import UPDATE_STATUS_INTERVAL

from jarvis_local.kiosk_sim import agent_participant, open_session, poll
from jarvis_local.llm_standin import LLMStandIn, Say
from jarvis_local.speech_models import tiny_models
from jarvis_local.stack import LocalStack
from tests.conftest import CAMILLE, LYON_KEY

AGENT = "jarvis-engine-load"
WORKERS = ("agent-load-a", "agent-load-b")


@dataclass
class Worker:
    log_name: str
    speech_env: dict[str, str]


@dataclass
class LoadServices:
    token_url: str
    workers: dict[str, Worker]


@pytest.fixture(scope="module")
async def services(stack: LocalStack, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[LoadServices]:
    models = tiny_models(Path(tmp_path_factory.mktemp("tiny-speech-load")))
    async with LLMStandIn([Say("D'accord.")] * 20) as llm:
        workers: dict[str, Worker] = {}
        for name in WORKERS:
            # Two slots per engine: a full engine is two raw streams away.
            env = await asyncio.to_thread(stack.start_speech_engines, models, 2)
            workers[name] = Worker(name, env)
        token_url = await asyncio.to_thread(stack.start_token_service, {"JARVIS_AGENT_NAME": AGENT})
        for worker in workers.values():
            env = {**worker.speech_env, **llm.worker_env, "JARVIS_NUM_IDLE_PROCESSES": "1", "JARVIS_AGENT_NAME": AGENT}
            await asyncio.to_thread(stack.start_agent_worker, env, worker.log_name)
        yield LoadServices(token_url, workers)


async def fill_stt(worker: Worker) -> list[websockets.ClientConnection]:
    """Raw streams on the worker's STT engine until it answers full (1013); the open ones hold it."""
    url = worker.speech_env["KYUTAI_STT_URL"] + "/api/asr-streaming"
    key = worker.speech_env.get("KYUTAI_STT_API_KEY", "public_token")
    held: list[websockets.ClientConnection] = []
    for _ in range(10):
        ws = await websockets.connect(url, additional_headers={"kyutai-api-key": key})
        if msgpack.unpackb(await ws.recv())["type"] != "Ready":
            with pytest.raises(websockets.ConnectionClosed):
                await ws.recv()
            assert ws.close_code == 1013
            return held
        held.append(ws)
    raise AssertionError("the STT engine never said it was full")


def log_text(stack: LocalStack, worker: Worker, start: int = 0) -> str:
    return (stack.workdir / f"{worker.log_name}.log").read_bytes()[start:].decode("utf-8", "replace")


def log_size(stack: LocalStack, worker: Worker) -> int:
    return (stack.workdir / f"{worker.log_name}.log").stat().st_size


async def session_worker(stack: LocalStack, services: LoadServices) -> tuple[str, rtc.Room]:
    """A kiosk session; returns the name of the worker whose job served it (and the kiosk's room)."""
    session = await open_session(services.token_url, LYON_KEY, CAMILLE["badge_id"])
    room = rtc.Room()
    await room.connect(session["livekit_url"], session["token"])
    await poll(lambda: agent_participant(room), 90, what="the agent to join and be ready")
    # The job's own log line, forwarded to its worker's log (JSON) a moment after the attribute.
    ready = re.compile(rf"session {session['session_id']}: ready")

    def served_by() -> list[str]:
        return [name for name, worker in services.workers.items() if ready.search(log_text(stack, worker))]

    served = await poll(served_by, 15, every_s=0.1, what="the job's ready line in a worker's log")
    assert len(served) == 1, served
    return served[0], room


async def test_a_worker_whose_engines_are_full_gets_no_job(stack: LocalStack, services: LoadServices) -> None:
    a, b = (services.workers[name] for name in WORKERS)
    rooms: list[rtc.Room] = []
    try:
        for full, other in ((a, b), (b, a)):
            since = log_size(stack, full)
            held = await fill_stt(full)
            try:
                # The worker saw it (engine poll, 1 s): from now on it passes jobs on, and its next
                # status message tells LiveKit its load is 1.0.
                await poll(
                    lambda: "worker full (" in log_text(stack, full, since),  # noqa: B023
                    15,
                    every_s=0.1,
                    what=f"{full.log_name} to report itself full",
                )
                served, room = await session_worker(stack, services)
                rooms.append(room)
                print(f"\n{full.log_name} engines full ({len(held)} raw STT streams): job ran on {served}")
                assert served == other.log_name
            finally:
                for ws in held:
                    await ws.close()
            await poll(
                lambda: "engines take sessions again" in log_text(stack, full, since),  # noqa: B023
                15,
                every_s=0.1,
                what=f"{full.log_name} to see its engines free again",
            )
            # ...and tells LiveKit with its next status message, up to 2.5 s later: a kiosk that
            # comes while LiveKit still counts both workers full gets no agent at all.
            await poll(
                lambda: "worker takes sessions again" in log_text(stack, full, since),  # noqa: B023
                15,
                every_s=0.1,
                what=f"{full.log_name} to take sessions again",
            )
            await asyncio.sleep(UPDATE_STATUS_INTERVAL + 0.5)
    finally:
        for room in rooms:
            await room.disconnect()
