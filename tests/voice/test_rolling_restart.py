"""A rolling restart of the engines during a conversation loses no turn (issue 16, "Must show").

Two replicas of STT and of TTS. Two kiosks talk to JARVIS while each engine replica in turn is
sent SIGTERM (it drains: new streams go to the other replica; a live TTS stream, one answer,
finishes; a live STT stream, a whole session, is handed over to the other replica at the end of
its member's turn), exits 0, and is started again on its port. Turns are counted by bench.turns:
lost = no answer before the next utterance or within 10 s.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from bench.turns import LOST_AFTER_S, Utterance, next_starts, summarize_kiosks
from jarvis_local.kiosk_sim import SimulatedKiosk, open_session, poll, synthesize_french
from jarvis_local.llm_standin import LLMStandIn, Say
from jarvis_local.speech_models import tiny_models
from jarvis_local.stack import LocalStack
from tests.conftest import LYON_KEY

pytestmark = pytest.mark.integration

AGENT = "jarvis-rolling"
# What the issue asks. On the 2-core box (2026-12-03, each kiosk with a warm job process): every
# drain handed its streams over between turns with 0 left and every replica exited 0, but 7 of 38
# turns were answered after 10 s (v2v p50 5.6 s): four sessions, four engines reloading in turn and
# the kiosks starved two cores; in a full CI run pytest itself then crashed (most likely its 300 s
# bound firing). Since the worker's CPU cuts of Dec 5, four kiosks lost 0 turns in 5 of 5 runs by
# hand (`ROLLING_KIOSKS=4`, about 75 s each; docs/ops.md); the suite runs two, to keep a margin on a
# loaded CI box.
KIOSKS = int(os.environ.get("ROLLING_KIOSKS", "2"))
MIN_TURNS = 2  # each kiosk talks at least this often, and on until every replica was restarted
MAX_TURNS = 16
# Spoken without an inner pause: the tiny STT's pause head ends a turn on any silent 80 ms frame
# (a comma), and a question split in two turns has its answer cut by its own second half.
# Checked frame by frame on the tiny engine.
QUESTIONS = [
    "Il reste de la place au cours de yoga",
    "Je voudrais réserver une séance avec un coach",
    "Est-ce que le sauna est ouvert aujourd'hui",
]


@pytest.fixture(scope="module")
def engines_env(stack: LocalStack, tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    models = tiny_models(Path(tmp_path_factory.mktemp("tiny-speech-rolling")))
    # Six slots: one replica alone must carry every session while the other restarts. The drain
    # bound is the default (30 s): no stream should need it.
    return stack.start_speech_engines(models, streams=6, replicas=2)


@pytest.fixture(scope="module")
async def token_url(stack: LocalStack, engines_env: dict[str, str]) -> AsyncIterator[str]:
    async with LLMStandIn(lambda _request: Say("D'accord, c'est noté.")) as llm:
        # A warm job process per kiosk: starting one while the engines reload is what starved the 4th.
        env = {**engines_env, **llm.worker_env, "JARVIS_NUM_IDLE_PROCESSES": str(KIOSKS)}
        yield await asyncio.to_thread(stack.start_jarvis, AGENT, env, "agent-rolling")


async def converse(kiosk: SimulatedKiosk, restarted: asyncio.Event) -> list[tuple[float, float, float | None]]:
    """Questions until MIN_TURNS are done and the restarts are over; (start, voice_end, first audio) each."""
    said: list[tuple[float, float, float | None]] = []
    while len(said) < MAX_TURNS and (len(said) < MIN_TURNS or not restarted.is_set()):
        text = QUESTIONS[len(said) % len(QUESTIONS)]
        pcm = await asyncio.to_thread(synthesize_french, text)
        started = time.perf_counter()
        turn = await kiosk.say(pcm, text)
        first = await poll(lambda: kiosk.heard.first_speech_after(turn.voice_end), LOST_AFTER_S + 1, every_s=0.02)  # noqa: B023
        if first is not None:  # let JARVIS finish before the next question (no barge-in)
            await poll(lambda: kiosk.heard.stopped_after(first, 0.6), 20, every_s=0.05)  # noqa: B023
        said.append((started, turn.voice_end, first))
    return said


async def test_a_rolling_restart_of_every_engine_replica_loses_no_turn(
    stack: LocalStack, engines_env: dict[str, str], token_url: str
) -> None:
    kiosks = [SimulatedKiosk() for _ in range(KIOSKS)]
    try:
        # One kiosk after the other, each with JARVIS before the next comes: the conversations start
        # from a known state before the restarts begin.
        for number, kiosk in enumerate(kiosks, 1):
            session = await open_session(token_url, LYON_KEY, "LYON-0001", kiosk_id=f"rolling-{number}")
            await kiosk.join(session["livekit_url"], session["token"])
            try:
                await poll(kiosk.agent, 90, what="JARVIS to join every kiosk")
            except AssertionError as exc:
                raise AssertionError(f"{exc}\nworker log:\n{stack.log_tail('agent-rolling', 80)}") from None
        for kiosk in kiosks:  # the greetings, heard out
            await poll(lambda: kiosk.heard.first_speech_after(0), 60, what="a greeting")  # noqa: B023
            await poll(lambda: kiosk.finished_speaking(0), 30, what="the greeting's end")  # noqa: B023

        restarted = asyncio.Event()

        async def rolling_restart() -> list[tuple[str, int, float]]:
            done = []
            replicas = engines_env["KYUTAI_STT_URLS"].split(",") + engines_env["KYUTAI_TTS_URLS"].split(",")
            try:
                for url in replicas:
                    await asyncio.sleep(2.0)  # some conversation on both replicas between restarts
                    started = time.perf_counter()
                    code = await asyncio.to_thread(stack.restart_engine, url)
                    done.append((url, code, time.perf_counter() - started))
            finally:
                restarted.set()
            return done

        restarting = asyncio.create_task(rolling_restart())
        conversations = await asyncio.gather(*(converse(k, restarted) for k in kiosks))
        restarts = await restarting
    finally:
        for kiosk in kiosks:
            await kiosk.leave()

    per_kiosk: list[tuple[list[Utterance], list[float]]] = []
    for said in conversations:
        nexts = next_starts([start for start, _, _ in said])
        per_kiosk.append(([Utterance(end, nxt, first) for (_, end, first), nxt in zip(said, nexts, strict=True)], []))
    summary = summarize_kiosks(per_kiosk)
    print("\nrolling restart:", json.dumps({"restarts": restarts, **summary}))
    drains = [
        line.split(": ", 1)[-1]
        for name in ("kyutai-stt", "kyutai-stt-1", "kyutai-tts", "kyutai-tts-1")
        for line in stack.log_tail(name, 400).splitlines()
        if "drain" in line
    ]
    print("drain log lines:", drains)
    # No stream waited for the drain bound: each STT stream was handed over at a turn's end.
    assert all("drained: 0 live stream(s) left" in line for line in drains if line.startswith("drained")), drains
    assert [code for _, code, _ in restarts] == [0, 0, 0, 0], restarts
    # The restarts happened during the conversation: no kiosk stopped at MAX_TURNS before they were over.
    assert all(len(said) < MAX_TURNS for said in conversations), [len(said) for said in conversations]
    assert summary["turns"] >= KIOSKS * MIN_TURNS
    # Issue 16 asks for 0. A turn answered after 10 s counts as lost: on this 2-core machine that was
    # CPU starvation while a replica reloaded (an expected failure until Dec 5, when the worker's
    # per-session CPU cuts made 4 kiosks hold in 5 of 5 runs by hand; docs/ops.md).
    assert summary["lost_turns"] == 0, summary
